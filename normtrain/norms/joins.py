"""Residual-join building blocks shared by the bundle, `norm.residual` and the methods.

A residual block computes ``join(shortcut, branch)``. The pieces here import
nothing but torch, so every layer above them can use them: `bundle` (the plain
sum), `residual` (``norm.residual``'s branch gain for SkipInit/ReZero), `normprop`
(its /sqrt(2) modification) and `nf` (the NF-ResNet skip gain). Import order in
this folder runs one way: options -> joins -> residual -> bundle -> each method.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class Add(nn.Module):
    """Plain residual join: shortcut + branch."""

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return shortcut + branch


class ScaledResidual(nn.Module):
    """``(shortcut + branch) * scale``; NormProp's residual modification uses scale = 1/sqrt(2)."""

    def __init__(self, scale: float = 1.0 / math.sqrt(2.0)):
        super().__init__()
        self.scale = float(scale)

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return torch.add(shortcut, branch).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6f}"


class SkipGain(nn.Module):
    """``alpha * g * branch`` with g a learnable scalar, init `init` (0 = SkipInit, 1 for SPPs)."""

    def __init__(self, alpha: float, init: float = 0.0):
        super().__init__()
        self.alpha = float(alpha)
        self.gain = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.alpha * self.gain).to(x.dtype)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
