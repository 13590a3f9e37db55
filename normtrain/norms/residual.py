"""`norm.residual`: residual-branch scalings for any method, and stochastic depth, at each residual join.

A residual block computes ``join(shortcut, branch)`` with the method's join
(``bundle.residual()``: a plain sum, NormProp's ``(x + f)/sqrt(2)``, ...). This
module wraps that join so that, for block ``i`` (0-based, forward order) of the
network's ``L`` residual blocks, it computes

    join(a_i * shortcut, b_i * g * drop_i(branch))

whatever the method's join is (the scaling composes with it: under ``normprop``
with ``norm.residual_scale: true`` the /sqrt(2) of its join comes on top).
``norm.residual`` picks ``(a_i, b_i, g)``:

- ``none``: a = b = 1, no gain (the default; the join is left untouched).
- ``sqrt2``: a = b = 1/sqrt(2), the fixed rescaling that keeps the sum of two
  uncorrelated unit-variance signals at unit variance (after Balduzzi et al.
  2017, "The shattered gradients problem", ICML; the same arithmetic as
  NormProp's residual modification, Gitman & Ginsburg §4.2).
- ``rescale``: a_i^2 + b_i^2 = 1 with a depth-dependent split (Shao, Hu et al.
  2020, "Is normalization indispensable for training deep neural networks?",
  NeurIPS, RescaleNet): a_i = sqrt((i + c)/(i + c + 1)), b_i = sqrt(1/(i + c + 1))
  with c = L - 1. The offset c is the released RescaleNet code's (its identity
  multiplier is sqrt(k/(k + 1)) with k counting from L - 1); that code keeps the
  branch multiplier at L^-1/2 for every block and learns a scalar on it, so
  a^2 + b^2 = 1 holds there only for the first block. We take b_i = sqrt(1 - a_i^2)
  so that the constraint, on which the paper's variance argument rests, holds
  for every block; there is no learnable scalar here.
- ``depth``: a = 1, b = L^-p with p = ``norm.residual_depth_power``: p = 1 is the
  "1/L" depth scaling, p = 0.5 the 1/sqrt(L) of Hayou et al. 2021 ("Stable
  ResNet", AISTATS) and depth-muP, which keeps the output variance bounded as L
  grows.
- ``skipinit``: a = b = 1 and a learnable scalar gain g on the branch, initialised
  at 0 so every block starts as the identity: SkipInit (De & Smith 2020, "Batch
  normalization biases residual blocks towards the identity function in deep
  networks", NeurIPS) and, in the same form, ReZero (Bachlechner et al. 2020,
  "ReZero is all you need", x_{i+1} = x_i + alpha_i F(x_i), alpha_i = 0 at init).
  The gain is ``joins.SkipGain`` (with alpha 1), the NF-ResNet skip gain.

Stochastic depth (Huang et al. 2016, "Deep networks with stochastic depth",
ECCV; ``model.drop_path``) drops the branch of each sample with probability
``drop_i`` during training and divides the kept ones by the survival probability
(the "row" mode of ``torchvision.ops.StochasticDepth``, as timm's drop_path), so
the expectation is unchanged and evaluation is the identity. The rates grow
linearly with depth, Huang et al.'s linear decay rule p_l = 1 - l/L (1 - p_L) for
l = 1..L: block i drops with probability ``drop_path * (i + 1)/L``, the last block
with ``drop_path``. (timm's ``linspace(0, drop_path, L)`` gives the first block 0
instead; the difference is one step of the ramp.)
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .joins import SkipGain
from .options import RESIDUAL_SCALINGS as SCALINGS


def coefficients(kind: str, index: int, depth: int, power: float = 1.0) -> tuple[float, float]:
    """(a_i, b_i): the fixed multipliers of shortcut and branch for block `index` of `depth` blocks."""
    if not 0 <= index < depth:
        raise ValueError(f"block index {index} outside 0..{depth - 1}")
    if kind in ("none", "skipinit"):
        return 1.0, 1.0
    if kind == "sqrt2":
        return 1.0 / math.sqrt(2.0), 1.0 / math.sqrt(2.0)
    if kind == "rescale":
        c = depth - 1
        return math.sqrt((index + c) / (index + c + 1)), math.sqrt(1.0 / (index + c + 1))
    if kind == "depth":
        return 1.0, float(depth) ** -power
    raise ValueError(f"unknown residual scaling '{kind}'; choose from: {', '.join(SCALINGS)}")


def drop_rates(drop_path: float, depth: int) -> list[float]:
    """Huang et al.'s linear rule: block i (0-based) of `depth` drops its branch with probability drop_path (i+1)/depth."""
    return [drop_path * (i + 1) / depth for i in range(depth)]


class ResidualJoin(nn.Module):
    """``inner(a * shortcut, b * g * drop(branch))`` around a method's join `inner`."""

    def __init__(self, inner: nn.Module, shortcut_scale: float = 1.0, branch_scale: float = 1.0,
                 gain: bool = False, drop_rate: float = 0.0):
        super().__init__()
        self.inner = inner
        self.shortcut_scale = float(shortcut_scale)
        self.branch_scale = float(branch_scale)
        self.skip = SkipGain(1.0, 0.0) if gain else None
        if drop_rate > 0:
            # Lazy import: torchvision is only needed when stochastic depth is on.
            from torchvision.ops import StochasticDepth
            self.drop = StochasticDepth(drop_rate, "row")
        else:
            self.drop = None

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if self.drop is not None:
            branch = self.drop(branch)  # identity in eval mode
        if self.skip is not None:
            branch = self.skip(branch)
        if self.branch_scale != 1.0:
            branch = branch * self.branch_scale
        if self.shortcut_scale != 1.0:
            shortcut = shortcut * self.shortcut_scale
        return self.inner(shortcut, branch)

    def extra_repr(self) -> str:
        return (f"shortcut_scale={self.shortcut_scale:.6g}, branch_scale={self.branch_scale:.6g}, "
                f"gain={self.skip is not None}")


def wrap(inner: nn.Module, kind: str, index: int, depth: int, power: float = 1.0,
         drop_rate: float = 0.0) -> nn.Module:
    """The join of block `index` of `depth`: `inner` itself when nothing changes (state_dict keys stay as they are)."""
    if kind == "none" and drop_rate == 0:
        return inner
    a, b = coefficients(kind, index, depth, power)
    return ResidualJoin(inner, a, b, gain=kind == "skipinit", drop_rate=drop_rate)
