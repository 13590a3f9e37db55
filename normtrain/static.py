"""Reading normtrain's own modules without importing torch: docstrings and light definitions.

`normtrain --help`, `normtrain list`, `normtrain scenario NAME --help` and bad input
must answer in a fraction of a second, so they never import torch (about 2 s and
600 MB). Two tools make that possible without moving code out of the files where
it belongs:

- `docstring(module, attr)`: the docstring of a module, function or class, read
  from the source with `ast` (``normtrain list`` takes its one-line summaries here);
- `light(module)`: a stand-in for a module built from its own source with the
  imports of heavy libraries left out. Imports of the standard library (and PyYAML)
  run; a normtrain module imported by it is imported for real when its own imports
  are light (`is_light`), and otherwise replaced by its own stand-in; anything
  else (torch, numpy, ...) is skipped. Each top-level statement then runs on its
  own, and one that needs a skipped name (a class deriving from ``nn.Module``) is
  left out. Functions run when called, so a function that uses torch fails only if
  it is called on the stand-in. Scenario parameters (`Params` dataclasses, their
  defaults, docs and ``check()``) are read this way.

Stand-ins are registered in ``sys.modules`` under ``normtrain._light.<name>`` (so
that ``inspect`` and ``typing.get_type_hints`` find their source and globals), never
under the real name: a later real import is unaffected.
"""
from __future__ import annotations

import __future__
import ast
import importlib.util
import inspect
import io
import re
import sys
import tokenize
import types
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PREFIX = "normtrain._light."
#: Third-party packages as cheap to import as the standard library.
CHEAP = {"yaml"}


def path_of(module: str) -> Path | None:
    """The source file of module `module` (dotted, absolute), or None.

    normtrain's own modules are found from this file's location. Any other module
    (a method or network an installed package registers, see `normtrain.registry`)
    is found with `importlib.util.find_spec`, which imports its parent packages but
    not the module itself: call it only with such names, never with torch's.
    """
    parts = module.split(".")
    if parts[0] != "normtrain":
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        origin = getattr(spec, "origin", None) if spec is not None else None
        return Path(origin) if origin and origin.endswith(".py") else None
    base = ROOT.joinpath(*parts[1:])
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


@lru_cache(maxsize=None)
def parse(path: str) -> ast.Module:
    """The syntax tree of a source file, parsed once per process."""
    return ast.parse(Path(path).read_text(), path)


def _tree(module: str) -> ast.Module:
    path = path_of(module)
    if path is None:
        raise ModuleNotFoundError(module)
    return parse(str(path))


@lru_cache(maxsize=None)
def head(path: str, upto: str) -> ast.Module:
    """The syntax tree of a source file's beginning, up to the end of its top-level definition `upto`.

    Parses only that prefix (a method's ``Options`` sits after the imports of a file
    that goes on for hundreds of lines). The prefix ends at the first line after the
    definition's header that starts in column 0 and leaves a complete module; a line
    in column 0 inside a string or brackets leaves an incomplete one and is passed
    over. LookupError if the file has no such top-level definition.
    """
    text = Path(path).read_text()
    m = re.search(rf"^(?:async\s+def|def|class)\s+{re.escape(upto)}\b", text, re.M)
    if m is None:
        raise LookupError(f"{path} has no top-level definition '{upto}'")
    for line in re.finditer(r"^[^\s#]", text[m.end():], re.M):
        try:
            return ast.parse(text[:m.end() + line.start()], path)
        except SyntaxError:
            continue
    return parse(path)


def docstring(module: str, attr: str | None = None) -> str:
    """The docstring of `module` or of its top-level function/class `attr` ('' if it has none).

    Read with `tokenize` from the first lines of the module or of the definition only, not by
    parsing the whole file: `normtrain list` reads dozens of them.
    """
    path = path_of(module)
    if path is None:
        raise ModuleNotFoundError(module)
    text = path.read_text()
    if attr is not None:
        m = re.search(rf"^(?:async\s+def|def|class)\s+{re.escape(attr)}\b", text, re.M)
        if m is None:
            return ""
        text = text[m.start():]
    depth, header_done = 0, attr is None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if not header_done:  # skip the def/class line(s) up to the ':' outside brackets
                if tok.type == tokenize.OP and tok.string in "([{":
                    depth += 1
                elif tok.type == tokenize.OP and tok.string in ")]}":
                    depth -= 1
                elif tok.type == tokenize.OP and tok.string == ":" and depth == 0:
                    header_done = True
                continue
            if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.ENCODING):
                continue
            if tok.type == tokenize.STRING:
                value = ast.literal_eval(tok.string)
                return inspect.cleandoc(value) if isinstance(value, str) else ""
            return ""
    except (tokenize.TokenError, SyntaxError, ValueError):
        return ""
    return ""


def _package(module: str) -> str:
    return module if path_of(module).name == "__init__.py" else module.rpartition(".")[0]


def _absolute(node: ast.ImportFrom, module: str) -> str:
    if not node.level:
        return node.module or ""
    base = _package(module).split(".")
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str):
    """(kind, target, names) for each top-level import of `module`: kind 'import' or 'from'."""
    for node in _tree(module).body:
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name, None
        elif isinstance(node, ast.ImportFrom):
            yield node, _absolute(node, module), [a.name for a in node.names]


def _external_ok(name: str) -> bool:
    top = name.split(".")[0]
    return top == "__future__" or top in sys.stdlib_module_names or top in CHEAP


@lru_cache(maxsize=None)
def is_light(module: str, _seen: frozenset = frozenset()) -> bool:
    """True if importing normtrain module `module` imports nothing heavy (checked from the sources;
    a module already imported costs nothing more and counts as light)."""
    if module in sys.modules:
        return True
    seen = _seen | {module}
    parts = module.split(".")
    for i in range(1, len(parts)):  # importing a.b.c imports a and a.b first
        parent = ".".join(parts[:i])
        if parent not in seen and not is_light(parent, seen):
            return False
    for _, target, names in _imports(module):
        if not target.startswith("normtrain"):
            if not _external_ok(target):
                return False
            continue
        targets = [target] + [f"{target}.{n}" for n in names or () if path_of(f"{target}.{n}")]
        for t in targets:
            if path_of(t) is not None and t not in seen and not is_light(t, seen):
                return False
    return True


def _resolve(module: str):
    """A normtrain module for real if it is light, otherwise its stand-in."""
    if is_light(module):
        __import__(module)
        return sys.modules[module]
    return light(module)


def _resolve_light(module: str):
    """A normtrain module if it is already imported, otherwise None (left out): deciding whether an
    unimported module is light means parsing it and its imports, which costs more than the quick
    read this serves."""
    return sys.modules.get(module)


def light(module: str, upto: str | None = None) -> types.ModuleType:
    """The stand-in of module `module` (see the module docstring); cached.

    With `upto`, only the source up to the end of the top-level definition `upto` is
    read (`head`; LookupError if there is none) and of the normtrain modules it imports
    only those already imported are used: a quick read of one declaration near the top
    of a heavy file, such as a method's ``Options`` (which needs only the standard library).
    """
    name = PREFIX + module + (f":{upto}" if upto else "")
    if name in sys.modules:
        return sys.modules[name]
    path = path_of(module)
    if path is None:
        raise ModuleNotFoundError(module)
    tree = _tree(module) if upto is None else head(str(path), upto)
    resolve = _resolve if upto is None else _resolve_light
    mod = types.ModuleType(name, docstring(module) or None)
    # Relative imports inside its functions resolve against the real package.
    mod.__dict__.update(__file__=str(path), __package__=_package(module), __spec__=None)
    sys.modules[name] = mod
    flags = 0
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            for a in node.names:
                flags |= getattr(__future__, a.name).compiler_flag
            continue
        try:
            if isinstance(node, ast.Import):
                for a in node.names:
                    if _external_ok(a.name):
                        __import__(a.name)
                        mod.__dict__[a.asname or a.name.split(".")[0]] = (
                            sys.modules[a.name] if a.asname else sys.modules[a.name.split(".")[0]])
                continue
            if isinstance(node, ast.ImportFrom):
                target = _absolute(node, module)
                if target.startswith("normtrain"):
                    for a in node.names:
                        sub = f"{target}.{a.name}"
                        source = resolve(sub) if path_of(sub) is not None else None
                        if source is not None:
                            mod.__dict__[a.asname or a.name] = source
                        elif path_of(sub) is None and a.name in vars(resolve(target) or types.ModuleType("")):
                            mod.__dict__[a.asname or a.name] = vars(resolve(target))[a.name]
                        # else: a package's lazily loaded attribute (loading it imports torch), or a
                        # heavy module read with `upto`: left out
                elif _external_ok(target):
                    src = __import__(target, fromlist=[a.name for a in node.names])
                    for a in node.names:
                        mod.__dict__[a.asname or a.name] = getattr(src, a.name)
                continue
            code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec", flags=flags, dont_inherit=True)
            exec(code, mod.__dict__)
        except Exception:  # noqa: BLE001 - needs something left out: leave this definition out too
            continue
    return mod
