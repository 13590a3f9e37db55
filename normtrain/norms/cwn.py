"""`cwn`: Centered Weight Normalization (Huang et al. 2017, "Centered Weight Normalization in Accelerating
Training of Deep Neural Networks", ICCV):

    w = g (v - 1/d 1 1^T v) / ||v - 1/d 1 1^T v||

each neuron's input weight v (d = fan-in: in x kh x kw for a conv, in_features
for a linear layer) is centred and scaled to zero mean and unit norm, "followed
by a learnable scalar parameter to adjust the norm of the weight" (the abstract;
the scalar g is per output channel, as WN's). ``norm.eps`` is added to the norm
as for ``wn``, so that a constant filter (zero once centred) stays finite. g starts
at 1, the bias at 0; every conv/linear layer is centred-WN, the output layer
included (the paper wraps CWN "as a linear module" to replace every standard
one), and there is no activation normalization.

Compared with WS (``ws``) the direction is the same, (v - mean)/std(v), but CWN's
is of unit *norm*, i.e. 1/sqrt(d) times WS's unit-variance weight, and carries a
learnable gain.
"""
from __future__ import annotations

import torch
from torch import nn

from .bundle import Normalizer
from .wn import ReparamConv2d, ReparamLinear, fan_dims, per_channel


class _CenteredWeightNorm:
    """Mixin: effective weight g (v - mean v) / (||v - mean v|| + eps), per output channel."""

    def _setup_cwn(self, eps: float) -> None:
        self.eps = float(eps)
        self.gain = nn.Parameter(torch.ones(self.weight.shape[0]))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def effective_weight(self) -> torch.Tensor:
        v = self.weight
        dims = fan_dims(v)
        centred = v - v.mean(dim=dims, keepdim=True)
        norm = torch.linalg.vector_norm(centred, dim=dims, keepdim=True)
        return centred * (per_channel(self.gain, v) / (norm + self.eps))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", cwn(eps={self.eps})"


class CWNConv2d(_CenteredWeightNorm, ReparamConv2d):
    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, bias=True, *, eps=1e-5):
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=padding, groups=groups, bias=bias)
        self._setup_cwn(eps)


class CWNLinear(_CenteredWeightNorm, ReparamLinear):
    def __init__(self, in_features, out_features, bias=True, *, eps=1e-5):
        super().__init__(in_features, out_features, bias=bias)
        self._setup_cwn(eps)


class CenteredWeightNorm(Normalizer):
    name = "cwn"
    default_bias = True
    tokens = "centred WN on every linear layer and the patch embedding; no activation norm"

    def conv(self, in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, bias=None, last=False):
        return CWNConv2d(in_ch, out_ch, kernel_size, stride, padding, groups, self._bias(bias), eps=self.options.eps)

    def linear(self, in_features, out_features, bias=None, last=False):
        return CWNLinear(in_features, out_features, self._bias(bias), eps=self.options.eps)


def build(options):
    """Centered WN: w = g (v - mean v) / ||v - mean v|| per output channel (Huang et al. 2017)."""
    return CenteredWeightNorm(options)
