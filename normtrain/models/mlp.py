"""Multi-layer perceptrons.

- ``mlp``: fully-connected ReLU network; default widths 512-300 give the
  784-512-300-10 MNIST MLP of the GhostNorm paper (Dimitriou & Arandjelović 2020 §3.1).
  Each hidden layer is linear -> norm -> act, built through the bundle.
- ``linear50``: the 50-layer *linear*, bias-free, 64-wide network of Gitman &
  Ginsburg §5 (no activation; weight methods reparametrise every layer,
  activation-norm methods add their norm after each hidden layer).
"""
from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from ..norms import Normalizer


class MLP(nn.Module):
    def __init__(self, norm: Normalizer, num_classes: int, in_shape: Sequence[int],
                 widths: Sequence[int] = (512, 300), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = math.prod(in_shape)
        for w in widths:
            layers += [norm.linear(prev, w), *norm.norm_act(w, dims=1)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = w
        layers.append(norm.linear(prev, num_classes, bias=True, last=True))
        self.net = nn.Sequential(*layers)
        self.output = norm.output(num_classes)

    def forward(self, x):
        return self.output(self.net(x))


class DeepLinear(nn.Module):
    """Linear, bias-free stack: in -> width x (depth - 1) -> classes, no non-linearity."""

    def __init__(self, norm: Normalizer, num_classes: int, in_shape: Sequence[int],
                 depth: int = 50, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = math.prod(in_shape)
        for _ in range(depth - 1):
            layers += [norm.linear(prev, width, bias=False), norm.norm(width, dims=1)]
            prev = width
        layers.append(norm.linear(prev, num_classes, bias=False, last=True))
        self.net = nn.Sequential(*layers)
        self.output = norm.output(num_classes)

    def forward(self, x):
        return self.output(self.net(x))


def build_mlp(norm, num_classes, in_shape, widths=(512, 300), dropout=0.0):
    """MLP: linear -> norm -> ReLU per hidden layer, widths from model.options (default 512-300, GhostNorm §3.1)."""
    return MLP(norm, num_classes, in_shape, widths=tuple(widths), dropout=dropout)


def build_linear50(norm, num_classes, in_shape, depth=50, width=64, dropout=0.0):
    """50 linear, bias-free, 64-wide layers with no activation (Gitman & Ginsburg §5's diverging WN test)."""
    return DeepLinear(norm, num_classes, in_shape, depth=depth, width=width)
