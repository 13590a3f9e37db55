"""Name -> builder tables shared by methods, networks, data backends and scenarios.

An entry is ``"module:attribute"`` (or ``"module"`` for the module itself),
relative to the registry's package, and is imported on first use. Listing the
names, their one-line summaries (read from the docstrings in the source, see
`normtrain.static`) and rejecting an unknown name import nothing, so `normtrain
list`, `--help` and bad input answer without loading torch.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Dict, Generic, Iterable, NamedTuple, TypeVar

from . import static
from .errors import UsageError

T = TypeVar("T")


def first_paragraph(doc: str) -> str:
    """The first paragraph of a docstring on one line."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def lazy_getattr(package: str, attributes: Dict[str, str]):
    """A module ``__getattr__`` (PEP 562) for `package`: ``attributes`` maps a name to the
    submodule that defines it; any other name is tried as a submodule. So
    ``from normtrain.norms import Normalizer`` and ``norms.wn`` work while importing the
    package itself stays light."""
    def __getattr__(name: str):
        if name in attributes:
            return getattr(importlib.import_module(f"{package}.{attributes[name]}"), name)
        if not name.startswith("__"):
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__


def may_declare(group: str) -> bool:
    """Whether an installed distribution may declare entry points in `group`: a look for the section
    ``[group]`` in the entry_points.txt of the *.dist-info / *.egg-info folders on sys.path (about 2 ms,
    where importing importlib.metadata costs 35), which importlib.metadata then reads properly.
    True when in doubt (a zip or egg file on sys.path)."""
    header = f"[{group}]"
    for entry in sys.path:
        path = entry or os.curdir
        if os.path.isfile(path):
            return True
        try:
            folder = os.scandir(path)
        except OSError:
            continue
        with folder:
            for item in folder:
                if item.name.endswith((".dist-info", ".egg-info")):
                    try:
                        with open(os.path.join(item.path, "entry_points.txt"), encoding="utf-8",
                                  errors="replace") as f:
                            if header in f.read():
                                return True
                    except OSError:
                        continue
    return False


class Installed(NamedTuple):
    """An entry an installed package declares through an entry point (``module:attr``), not yet imported."""
    module: str
    attr: str | None


class Registry(Generic[T]):
    """A read-only mapping from a user-facing name to a builder, loaded on first use.

    Unknown names raise UsageError listing every valid choice, so every registry
    gives the same one-line error at the command line.

    With `group`, installed packages add entries through that Python entry-point
    group (``[project.entry-points."normtrain.norms"] mine = "my_pkg.mine:build"``):
    they are looked up the first time a name is not a built-in one or the names are
    listed, and are imported, like the built-in entries, only when used. A package's
    entry may not take a built-in name (it is left out, with a warning).
    """

    def __init__(self, kind: str, items: Dict[str, object], package: str = "", group: str | None = None):
        self.kind = kind
        self.package = package
        self.group = group
        self._items = dict(items)
        self._plugins_read = group is None
        self._packages: Dict[str, str] = {}

    def _plugins(self) -> None:
        """Add the entries installed packages declare in entry-point group `group` (once)."""
        if self._plugins_read:
            return
        self._plugins_read = True
        if not may_declare(self.group):
            return
        from importlib.metadata import entry_points  # ~35 ms to import: only when a package may declare some
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                dist = getattr(ep.dist, "name", None) or "an installed package"
                print(f"normtrain: warning: {dist} registers {self.kind} '{ep.name}' ({ep.value}) in entry-point "
                      f"group {self.group}, but that name is taken; ignored", file=sys.stderr)
                continue
            self._items[ep.name] = Installed(ep.module, ep.attr or None)
            self._packages[ep.name] = getattr(ep.dist, "name", None) or ep.value

    def _where(self, name: str) -> tuple[str, str | None]:
        entry = self._items[name]
        if isinstance(entry, Installed):
            return entry.module, entry.attr
        module, _, attr = entry.partition(":")
        return f"{self.package}.{module}", attr or None

    def require(self, name: str) -> None:
        """UsageError unless `name` is registered (imports no entry)."""
        if name not in self:
            raise UsageError(f"unknown {self.kind} '{name}'; choose from: {', '.join(self.names())}")

    def __getitem__(self, name: str) -> T:
        self.require(name)
        entry = self._items[name]
        if isinstance(entry, (str, Installed)):
            module, attr = self._where(name)
            obj = importlib.import_module(module)
            entry = getattr(obj, attr) if attr else obj
            self._items[name] = entry
        return entry

    def __contains__(self, name: str) -> bool:
        if name not in self._items:
            self._plugins()
        return name in self._items

    def names(self) -> list[str]:
        self._plugins()
        return sorted(self._items)

    def items(self) -> Iterable[tuple[str, T]]:
        """(name, builder) pairs; imports every entry."""
        return [(n, self[n]) for n in self.names()]

    def modules(self) -> list[str]:
        """The modules that define the entries, once each, built-in ones first in registration order (imports none)."""
        self._plugins()
        return list(dict.fromkeys(self.source(n)[0] for n in self._items))

    def package_of(self, name: str) -> str | None:
        """The installed distribution that registered entry `name`, or None for a built-in one."""
        self.require(name)
        return self._packages.get(name)

    def source(self, name: str) -> tuple[str, str | None]:
        """(module, attribute or None) of entry `name`, without importing it."""
        self.require(name)
        entry = self._items[name]
        if isinstance(entry, (str, Installed)):
            return self._where(name)
        if isinstance(entry, type(importlib)):
            return entry.__name__, None
        return entry.__module__, entry.__name__

    def summary(self, name: str) -> str:
        """The first paragraph of the entry's docstring (of its module if it has none), read from the source."""
        module, attr = self.source(name)
        doc = static.docstring(module, attr) if attr else ""
        return first_paragraph(doc or static.docstring(module))
