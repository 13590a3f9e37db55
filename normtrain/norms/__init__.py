"""Normalization methods, each a `Normalizer` bundle built by name.

    >>> from normtrain import norms
    >>> bundle = norms.get("wn", init="data")
    >>> conv = bundle.conv(64, 128, 3, padding=1)

Adding a method: one file in this folder with a ``build(options)`` function (its
docstring is the method's one-line summary in ``normtrain list norms``), an
``Options`` dataclass if the method has knobs of its own (see `options`), and one
line ``"name": "module:builder"`` in ``METHODS`` below. A method from another
package registers the same builder through the entry-point group
``normtrain.norms`` instead of the line (README, "Adding a method").
"""
from __future__ import annotations

import dataclasses
import functools
import importlib

from .. import static
from ..errors import UsageError
from ..registry import Registry, lazy_getattr
from .options import SharedOptions

# name -> "module:builder" in this folder, imported on first use (the methods import torch).
METHODS = Registry("norm", {
    "none": "none:build",
    "bn": "bn:build",
    "syncbn": "bn:build_sync",
    "wn": "wn:build",
    "normprop": "normprop:build",
    "trelu-wn": "trelu_wn:build",
    "gn": "gn:build_gn",
    "ln": "ln:build",
    "in": "gn:build_in",
    "ws": "ws:build",
    "ws-gn": "ws:build_gn",
    "ws-bn": "ws:build_bn",
    "ghost": "ghost:build",
    "seqnorm": "seqnorm:build",
    "nf": "nf:build",
    "brn": "brn:build",
    "mobn-wn": "mobn_wn:build",
    "cwn": "cwn:build",
    "gn-wn": "gn_wn:build",
    "frn": "frn:build",
    "evonorm-b0": "evonorm:build_b0",
    "evonorm-s0": "evonorm:build_s0",
    "rmsn": "rmsn:build",
    "dyt": "dyt:build",
}, __name__, group="normtrain.norms")

#: Methods whose normalization splits the channels into norm.groups groups (so norm.groups must divide
#: every normalized width; checked without torch by `preflight`, tested against each method's layers).
GROUPED = ("gn", "ws-gn", "seqnorm", "gn-wn", "evonorm-s0")

# The bundle and the method modules import torch: loaded when first asked for.
_lazy = lazy_getattr(__name__, {"Normalizer": "bundle", "data_init": "bundle", "micro_batches": "step_weights"})


def __getattr__(name: str):
    if name == "NormOptions":
        return options_class()
    return _lazy(name)


def names() -> list[str]:
    """Every method's name, sorted alphabetically (built-in and installed ones)."""
    return METHODS.names()


def method_options(module: str) -> type | None:
    """The ``Options`` dataclass method module `module` declares, or None; read from its source
    (`static.light`) without importing it, or imported when the light reading cannot define it."""
    try:
        cls = getattr(static.light(module, upto="Options"), "Options", None)
    except LookupError:  # the module declares no Options
        return None
    except ModuleNotFoundError:  # no source to read (a compiled module): import it
        cls = getattr(importlib.import_module(module), "Options", None)
        if cls is None:
            return None
    if not dataclasses.is_dataclass(cls):
        cls = getattr(importlib.import_module(module), "Options", None)  # it needs a left-out name
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise UsageError(f"{module}.Options must be a dataclass (see normtrain.norms.options)")
    return cls


@functools.lru_cache(maxsize=None)
def options_class() -> type:
    """`NormOptions`: one flat dataclass of every norm knob, `SharedOptions` plus the ``Options`` of every
    method module (built-in ones first, then installed ones), whose ``check()`` runs each part's check.

    A key may be declared once only (UsageError naming both places otherwise), and every field needs
    a default. Cached: built once per process, the first time a recipe or a bundle needs it.
    """
    owner = {f.name: f"{SharedOptions.__module__}.SharedOptions" for f in dataclasses.fields(SharedOptions)}
    parts = [SharedOptions]
    for module in METHODS.modules():
        cls = method_options(module)
        if cls is None:
            continue
        for f in dataclasses.fields(cls):
            if f.name in owner or f.name == "name":
                raise UsageError(f"norm option '{f.name}' of {module}.Options is already declared by "
                                 f"{owner.get(f.name, 'the recipe (norm.name)')}; declare each norm.* key once")
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UsageError(f"norm option '{f.name}' of {module}.Options needs a default")
            owner[f.name] = f"{module}.Options"
        parts.append(cls)

    def check(self) -> None:
        """Raise ValueError naming the first out-of-range field (each part's own check)."""
        for part in parts:
            if "check" in vars(part):
                part.check(self)

    # Fields in order: the shared ones, then each method's (dataclass collects them from the last base up).
    cls = type("NormOptions", tuple(reversed(parts)), {
        "__module__": __name__, "__qualname__": "NormOptions", "check": check,
        "__doc__": "Every norm.* knob: SharedOptions and each method's Options (normtrain.norms.options_class)."})
    cls = dataclasses.dataclass(cls)
    cls._owners = dict(owner)  # key -> "module.Options" that declares it
    return cls


def check(name: str, **options):
    """Method `name`'s options (a `NormOptions`), checked (UsageError, one line); imports no torch."""
    METHODS.require(name)
    opts_cls = options_class()
    valid = {f.name for f in dataclasses.fields(opts_cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise UsageError(f"unknown norm option '{unknown[0]}'; choose from: {', '.join(sorted(valid))}")
    opts = opts_cls(**options)
    try:
        opts.check()
    except ValueError as e:
        raise UsageError(f"norm.{e}") from None
    return opts


def get(name: str, **options) -> Normalizer:
    """Build method `name`'s bundle; `options` are fields of `NormOptions` (norm.* keys)."""
    return METHODS[name](check(name, **options))


__all__ = ["GROUPED", "Normalizer", "NormOptions", "METHODS", "SharedOptions", "check", "data_init", "get",
           "method_options", "micro_batches", "names", "options_class"]
