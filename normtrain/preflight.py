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


def validate(recipe: config.Recipe) -> None:
    """UsageError (one line) for a method, network option, data source or init the recipe cannot use."""
    from . import models, norms
    check_names(recipe)  # first: an unknown name is reported without importing torch
    norms.get(recipe.norm.name, **recipe.norm.options())
    models.check_options(recipe.model.name, recipe.model.builder_options())
