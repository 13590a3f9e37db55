"""`trelu-wn`: Weight Normalization with Translated ReLU (Xiang & Li 2017), as
written in Gitman & Ginsburg 2017 §3.2:

    o_j = TReLU_{a_j}( W_j * x / (||W_j||_F + eps) ),   TReLU_a(x) := ReLU(x - a) + a

"Bias beta and scale gamma are applied only to the output of the last layer to
restore the representational power of the network":

    o_j^last = gamma_j x_j^last + beta_j

So hidden conv/linear layers are ``W / (||W|| + eps)`` with no gain and no bias
(the method's definition fixes this, whatever bias the network asks for), the
activation is TReLU with a learnable per-channel threshold ``a`` (init 0), and
the output layer (``last=True``) is a WN layer with gain gamma (init 1) and bias
beta (init 0), always. ``ReLU(x - a) + a`` equals ``max(x, a)``, which is how it
is computed (one fused op).

Under gradient accumulation the effective weight is computed once per optimizer
step, not per micro-batch (`ReparamConv2d`/`ReparamLinear` in wn.py, norms/step_weights.py).
"""
from __future__ import annotations

import torch
from torch import nn

from .bundle import Normalizer
from .wn import WNConv2d, WNLinear


class TReLU(nn.Module):
    """``relu(x - a) + a == max(x, a)`` with a learnable threshold ``a`` per channel (dim 1), init 0."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features
        self.a = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a.view((-1,) + (1,) * (x.dim() - 2))
        return torch.maximum(x, a.to(x.dtype))

    def extra_repr(self) -> str:
        return str(self.num_features)


class TReLUWeightNorm(Normalizer):
    name = "trelu-wn"
    default_bias = False

    def conv(self, in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, bias=None, last=False):
        if last:  # o_last = gamma * x_last + beta
            return WNConv2d(in_ch, out_ch, kernel_size, stride, padding, groups, True, eps=self.options.eps)
        return WNConv2d(in_ch, out_ch, kernel_size, stride, padding, groups, False, eps=self.options.eps,
                        gain=False)

    def linear(self, in_features, out_features, bias=None, last=False):
        if last:
            return WNLinear(in_features, out_features, True, eps=self.options.eps)
        return WNLinear(in_features, out_features, False, eps=self.options.eps, gain=False)

    def act(self, num_features):
        return TReLU(num_features)


def build(options):
    """WN without gain or bias in hidden layers, TReLU max(x, a) with learnable a; scale and bias on the last layer only."""
    return TReLUWeightNorm(options)
