"""Normalization methods, each a `Normalizer` bundle built by name.

    >>> from normtrain import norms
    >>> bundle = norms.get("wn", init="data")
    >>> conv = bundle.conv(64, 128, 3, padding=1)

Adding a method: one file in this folder with a ``build(options)`` function and
one line ``"name": "module:builder"`` in ``METHODS`` below; the builder's docstring
is its one-line summary in ``normtrain list norms``.
"""
from __future__ import annotations

import dataclasses

from ..errors import UsageError
from ..registry import Registry, lazy_getattr
from .options import NormOptions

# name -> "module:builder" in this folder, imported on first use (the methods import torch).
METHODS = Registry("norm", {
    "none": "none:build",
    "bn": "bn:build",
    "syncbn": "bn:build_sync",
    "wn": "wn:build",
    "normprop": "normprop:build",
    "trelu-wn": "trelu_wn:build",
    "gn": "gn:build_gn",
    "ln": "gn:build_ln",
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
}, __name__)

#: Methods whose normalization splits the channels into norm.groups groups (so norm.groups must divide
#: every normalized width; checked without torch by `preflight`, tested against each method's layers).
GROUPED = ("gn", "ws-gn", "seqnorm", "gn-wn", "evonorm-s0")

# The bundle and the method modules import torch: loaded when first asked for.
__getattr__ = lazy_getattr(__name__, {"Normalizer": "bundle", "data_init": "bundle", "micro_batches": "step_weights"})


def names() -> list[str]:
    return METHODS.names()


def check(name: str, **options) -> NormOptions:
    """Method `name`'s options, checked (UsageError, one line); imports no torch."""
    METHODS.require(name)
    valid = {f.name for f in dataclasses.fields(NormOptions)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise UsageError(f"unknown norm option '{unknown[0]}'; choose from: {', '.join(sorted(valid))}")
    opts = NormOptions(**options)
    try:
        opts.check()
    except ValueError as e:
        raise UsageError(f"norm.{e}") from None
    return opts


def get(name: str, **options) -> Normalizer:
    """Build method `name`'s bundle; `options` are fields of `NormOptions`."""
    return METHODS[name](check(name, **options))


__all__ = ["GROUPED", "Normalizer", "NormOptions", "METHODS", "check", "data_init", "get", "micro_batches", "names"]
