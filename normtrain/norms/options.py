"""Knobs of the normalization methods: the `norm:` section of a recipe (minus `name`).

Each method file declares the knobs only it (and the methods built on it) reads,
as a dataclass named ``Options`` next to its builder; `SharedOptions` below holds
those every method or the bundle itself reads. `normtrain.norms.options_class()`
joins them all (built-in methods and the methods of installed packages) into
the one flat `NormOptions` a recipe's ``norm:`` section is read into and every
builder receives: each method reads the fields it needs and ignores the others,
so a recipe can switch ``--norm`` without editing its knobs.

A method's ``Options`` is read from the source without importing the method
(`normtrain.static.light` with ``upto="Options"``), so ``normtrain list keys``
and the strict checks of recipe keys stay free of torch. Keep it light: place it
after the imports, use only builtin types and the standard library in it (an
``Options`` that needs more makes the registry import the method, torch and all), give
every field a default and a docstring under it, and raise ValueError from its
``check()`` naming the first out-of-range field. Each key is declared once: a
method that reads another's knob (seqnorm reads ghost's ``ghost_groups``) does
not declare it again.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

#: Values of ``norm.residual`` (defined in norms/residual.py).
RESIDUAL_SCALINGS = ("none", "sqrt2", "rescale", "depth", "skipinit")


class NormShapeError(UsageError, ValueError):
    """A layer or batch shape that a method's knobs cannot handle (channels not divisible by
    ``groups``, per-process batch not divisible by ``ghost_groups``...). A ValueError for
    library callers and a UsageError (one line, exit 2) at the command line."""


@dataclass
class SharedOptions:
    """The knobs every method may read (the bundle reads the residual ones for all of them)."""

    eps: float = 1e-5
    """Numerical epsilon: BN/GN variance eps, WN/WS denominator eps (added to ||v|| or std)."""
    momentum: float = 0.1
    """Running-statistics momentum of BN-style layers (PyTorch convention)."""
    residual: str = "none"
    """Residual-branch scaling of every residual block, for any method, around the method's own join (so it composes with normprop's residual_scale): none; sqrt2 ((x + f)/sqrt(2), Balduzzi et al. 2017); rescale (a x + b f with a^2 + b^2 = 1, depth-dependent, Shao et al. 2020); depth (x + L^-p f, see residual_depth_power); skipinit (x + g f, learnable scalar g init 0: SkipInit / ReZero). Networks without residual blocks refuse anything but none."""
    residual_depth_power: float = 1.0
    """residual=depth: the branch is scaled by L^-p over the network's L residual blocks (1 = 1/L; 0.5 = 1/sqrt(L), Hayou et al. 2021)."""

    def check(self) -> None:
        """Raise ValueError naming the first out-of-range field."""
        if self.eps < 0:
            raise ValueError("eps must be >= 0")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError("momentum must be in [0, 1]")
        if self.residual not in RESIDUAL_SCALINGS:
            raise ValueError(f"residual: '{self.residual}' is not one of: {', '.join(RESIDUAL_SCALINGS)}")
        if self.residual_depth_power <= 0:
            raise ValueError("residual_depth_power must be > 0")
