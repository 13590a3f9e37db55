"""Checks of a resolved recipe done before any process is started or file written.

Shared by the commands (train, sweep, the scenarios that train): they sit above
this module and import it, never each other.
"""
from __future__ import annotations

from . import config
from .errors import UsageError


def check_names(recipe: config.Recipe) -> None:
    """UsageError for an unknown method, network, init or data source; imports no torch."""
    from . import data, models, norms
    norms.METHODS.require(recipe.norm.name)
    models.NETWORKS.require(recipe.model.name)
    if recipe.model.init not in models.SCHEMES:
        raise UsageError(f"unknown model.init '{recipe.model.init}'; choose from: {', '.join(models.SCHEMES)}")
    data.resolve(recipe.data)
    if recipe.optim.name in ("lamb", "lars"):
        import importlib.util
        if importlib.util.find_spec("timm") is None:
            raise UsageError(f"optim.name={recipe.optim.name} uses timm's implementation, which is not installed: "
                             "pip install normtrain[timm] (or pip install timm)")


def check_shapes(recipe: config.Recipe) -> None:
    """UsageError if the method splits channels into norm.groups groups and one of the network's
    normalized widths does not divide (models.NORM_WIDTHS); imports no torch."""
    from . import models, norms
    if recipe.norm.name not in norms.GROUPED:
        return
    widths = models.norm_widths(recipe.model.name, recipe.model.options)
    bad = sorted(w for w in widths or () if w % recipe.norm.groups)
    if bad:
        raise UsageError(f"norm {recipe.norm.name} splits channels into norm.groups={recipe.norm.groups} groups, "
                         f"which does not divide the width(s) {', '.join(map(str, bad))} of model "
                         f"{recipe.model.name} (it normalizes {', '.join(map(str, sorted(widths)))} channels): "
                         f"choose norm.groups dividing every one")


def validate(recipe: config.Recipe) -> None:
    """UsageError (one line) for a method, network option, data source or init the recipe cannot use.

    Everything that can be read from the recipe alone is checked before torch is imported."""
    from . import models, norms
    check_names(recipe)  # first: an unknown name is reported without importing torch
    models.check_options(recipe.model.name, recipe.model.builder_options())
    norms.check(recipe.norm.name, **recipe.norm.options())
    check_shapes(recipe)
    norms.get(recipe.norm.name, **recipe.norm.options())  # the method's own checks (imports torch)


def nnodes(value: str) -> tuple[int, int]:
    """`--nnodes N` or `MIN:MAX` as (min, max); UsageError (one line) for anything else."""
    parts = str(value).split(":")
    try:
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise ValueError
        lo, hi = (int(parts[0]), int(parts[-1]))
    except ValueError:
        raise UsageError(f"--nnodes: expected a positive integer N or MIN:MAX (e.g. 2 or 1:4), got '{value}'") from None
    if lo < 1 or hi < lo:
        raise UsageError(f"--nnodes: expected 1 <= MIN <= MAX, got '{value}'")
    return lo, hi
