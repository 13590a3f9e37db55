"""`normprop`: Normalization Propagation (Arpit et al. 2016), as written in
Gitman & Ginsburg 2017 §3.2 for a conv followed by ReLU:

    o_j = 1/sqrt(1/2 (1 - 1/pi)) * [ ReLU( gamma_j (W_j * x) / (||W_j||_F + eps) + beta_j ) - sqrt(1/(2 pi)) ]

Split over the bundle: ``conv``/``linear`` compute ``gamma_j W_j*x/(||W_j||+eps) + beta_j``
(a WN layer whose gain is gamma, init ``norm.gamma_init`` = 1/1.21 as Arpit et al.,
and whose bias is beta, init 0), ``norm`` is the identity, and ``act`` is the
shifted and scaled ReLU ``c1 * (relu(x) - c0)`` with ``c0 = sqrt(1/(2 pi)) = 0.39894``
(mean of a rectified standard normal) and ``c1 = 1/sqrt(0.5 (1 - 1/pi))`` (one over
its standard deviation). "The above equation was derived under assumption that
gamma_j = 1 and beta_j = 0" (§3.2).

Residual networks: Gitman & Ginsburg §4.2 report that NormProp "required a
modification of the original algorithm to work with residual connections to
ensure that output of each layer stays normal". We implement it (DESIGN §3) as
the block output ``(shortcut + branch) / sqrt(2)``: the sum of two uncorrelated
unit-variance signals has variance 2. ``norm.residual_scale: false`` gives the
plain sum, for the `normprop-residual` scenario.

The output layer (``last=True``) is a plain WN layer with gain (init 1) and bias.

Under gradient accumulation the effective weight is computed once per optimizer
step, not per micro-batch (`ReparamConv2d`/`ReparamLinear` in wn.py, norms/step_weights.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .bundle import Normalizer
from .joins import Add, ScaledResidual
from .wn import WNConv2d, WNLinear


@dataclass
class Options:
    gamma_init: float = 1.0 / 1.21
    """NormProp gamma initial value (Arpit et al. use 1/1.21)."""
    residual_scale: bool = True
    """NormProp residual modification: residual block output (shortcut + branch) / sqrt(2) (normprop only; norm.residual scales the branches of any method)."""

    def check(self) -> None:
        if self.gamma_init <= 0:
            raise ValueError("gamma_init must be > 0")


#: Mean of ReLU(z), z ~ N(0, 1): sqrt(1/(2 pi)).
C0 = math.sqrt(1.0 / (2.0 * math.pi))
#: One over the standard deviation of ReLU(z): 1/sqrt(1/2 (1 - 1/pi)).
C1 = 1.0 / math.sqrt(0.5 * (1.0 - 1.0 / math.pi))


class NormPropReLU(nn.Module):
    """``c1 * (relu(x) - c0)``: a rectified standard normal re-normalized to mean 0, variance 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # relu saves its output for backward, so the affine step must not be in-place on it;
        # mul makes a fresh tensor that the in-place sub may reuse.
        return F.relu(x).mul(C1).sub_(C0 * C1)

    def extra_repr(self) -> str:
        return f"c0={C0:.5f}, c1={C1:.5f}"


class NormProp(Normalizer):
    name = "normprop"
    default_bias = True  # beta_j
    no_tokens = ("its shifted, scaled ReLU and its constants c0, c1 are those of a rectified unit normal, "
                 "derived for ReLU networks; a transformer's non-linearity is GELU")

    def _gamma(self, last: bool) -> float:
        return 1.0 if last else self.options.gamma_init

    def conv(self, in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, bias=None, last=False):
        return WNConv2d(in_ch, out_ch, kernel_size, stride, padding, groups, self._bias(bias),
                        eps=self.options.eps, gain_init=self._gamma(last))

    def linear(self, in_features, out_features, bias=None, last=False):
        return WNLinear(in_features, out_features, self._bias(bias),
                        eps=self.options.eps, gain_init=self._gamma(last))

    def act(self, num_features):
        return NormPropReLU()

    def residual(self, num_features=None):
        return ScaledResidual() if self.options.residual_scale else Add()


def build(options):
    """Normalization Propagation: WN-style convs whose gain is gamma, and a ReLU shifted and scaled to zero mean, unit variance."""
    return NormProp(options)
