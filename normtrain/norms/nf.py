"""`nf`: the pieces of Normalizer-Free ResNets (Brock et al. 2021a), following
Hoedt, Hochreiter & Klambauer 2022 ("Normalization is dead, long live
normalization!", sections "Imitating Signal Propagation" and "Extra Code
Snippets") and DESIGN §3. Notation of Brock et al. (and DESIGN); the blog swaps
the names (its ``alpha`` is our 1/beta, its ``beta`` our alpha):

    h_{i+1} = h_i + alpha * skip_gain * f_i(h_i / beta_i),   beta_i = sqrt(Var[h_i])

- No activation normalization: ``norm()`` is the identity.
- Scaled weight standardization (the blog's "rescaled CWN"; Brock et al.'s
  WSConv2D):  W_hat = gain * (W - mean(W)) / sqrt(max(N * var(W), 1e-4)),
  mean and biased variance per output channel over its N = fan-in = C_in x kh x kw
  weights, learnable per-channel ``gain`` (init 1), conv bias on (init 0). The 1e-4 floor
  is Brock et al.'s constant, not ``norm.eps``. Hidden linear layers get the same
  treatment; the output layer (``last=True``) is a plain layer (the NF-ResNet
  classifier is an ordinary linear layer).
- Activation: ``gamma * relu(x)``, gamma = 1.7139588594436646, Brock et al.'s
  estimate of 1/std(relu(z)) for z ~ N(0, 1), so the output has unit *variance*
  (its second moment is gamma^2/2 = 1.47).
- Expected-variance bookkeeping (the blog's ``NFResidualNetwork._make_subnet``):
  the expected variance starts at 1; a block's input is divided by
  beta = sqrt(expected variance); after a block the variance grows by alpha^2, and
  after a transition block (the first block of a stage, whose shortcut also sees
  the normalized input) it is reset to 1 + alpha^2. See `expected_variances`,
  `block_betas` and `VarianceTracker`.
- ``residual()`` stays a plain sum: the network scales the branch itself, e.g.
  with ``SkipGain(bundle.nf_alpha, bundle.nf_skip_gain)`` (a learnable scalar,
  init 0 = SkipInit by default) and ``Scale(1 / beta)`` on the block input.

Under gradient accumulation the effective weight is computed once per optimizer
step, not per micro-batch (`ReparamConv2d`/`ReparamLinear` in wn.py, norms/step_weights.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .bundle import Normalizer
from .joins import SkipGain  # noqa: F401 - the NF block's skip gain: nf.SkipGain
from .wn import ReparamConv2d, ReparamLinear, fan_dims, per_channel


@dataclass
class Options:
    nf_alpha: float = 0.2
    """NF-ResNet alpha: rate at which the expected variance grows per residual block."""
    nf_skip_gain: float = 0.0
    """NF-ResNet initial learnable gain on each residual branch (0 = SkipInit; 1 for signal-propagation plots)."""

    def check(self) -> None:
        if self.nf_alpha <= 0:
            raise ValueError("nf_alpha must be > 0")


#: Brock et al.'s ReLU gamma: 1/std(relu(z)), z ~ N(0, 1) (analytically 1/sqrt(0.5 (1 - 1/pi)) = 1.71285).
RELU_GAMMA = 1.7139588594436646
#: Floor on N * var(W) in scaled WS (Brock et al.'s WSConv2D eps).
SCALED_WS_EPS = 1e-4


# -- layers ---------------------------------------------------------------------
class _ScaledStandardize:
    """Mixin: W_hat = gain * (W - mean) / sqrt(max(fan_in * var, 1e-4)), per output channel."""

    def _setup_sws(self, floor: float = SCALED_WS_EPS) -> None:
        self.floor = float(floor)
        self.gain = nn.Parameter(torch.ones(self.weight.shape[0]))
        if self.bias is not None:  # Brock et al. initialise the bias at 0
            nn.init.zeros_(self.bias)

    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        fan_in = w[0].numel()
        var, mean = torch.var_mean(w, dim=fan_dims(w), unbiased=False, keepdim=True)
        scale = torch.rsqrt(torch.clamp(var * fan_in, min=self.floor)) * per_channel(self.gain, w)
        return (w - mean) * scale

    def extra_repr(self) -> str:
        return super().extra_repr() + ", scaled_ws=True"


class ScaledWSConv2d(_ScaledStandardize, ReparamConv2d):
    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, bias=True):
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=padding, groups=groups, bias=bias)
        self._setup_sws()


class ScaledWSLinear(_ScaledStandardize, ReparamLinear):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias=bias)
        self._setup_sws()


class GammaReLU(nn.Module):
    """``gamma * relu(x)``; the default gamma gives unit variance for standard normal input."""

    def __init__(self, gamma: float = RELU_GAMMA):
        super().__init__()
        self.gamma = float(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) * self.gamma  # not in-place: relu keeps its output for backward

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


class Scale(nn.Module):
    """Multiply by a fixed float (the blog's ``Scaling``), e.g. 1/beta on a block's input."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


# -- expected-variance bookkeeping ------------------------------------------------
class VarianceTracker:
    """Analytic Var[h] through an NF-ResNet, block by block (the blog's ``_expected_var``)."""

    def __init__(self, alpha: float, initial: float = 1.0):
        self.alpha = float(alpha)
        self.var = float(initial)

    def block(self, transition: bool = False) -> float:
        """Return beta = sqrt(expected variance of this block's input), then advance past the block."""
        beta = math.sqrt(self.var)
        self.var = (1.0 if transition else self.var) + self.alpha ** 2
        return beta


def expected_variances(blocks_per_stage: Sequence[int], alpha: float, initial: float = 1.0) -> list[list[float]]:
    """Expected variance of each block's input, per stage; the first block of each stage is a transition block.

    >>> expected_variances([2, 2], 0.2)   # doctest: +ELLIPSIS
    [[1.0, 1.04...], [1.08..., 1.04...]]
    """
    tracker = VarianceTracker(alpha, initial)
    out = []
    for n in blocks_per_stage:
        stage = []
        for i in range(n):
            stage.append(tracker.var)
            tracker.block(transition=(i == 0))
        out.append(stage)
    return out


def block_betas(blocks_per_stage: Sequence[int], alpha: float, initial: float = 1.0) -> list[list[float]]:
    """beta_i = sqrt(expected variance) of each block's input (the block computes f(h / beta_i))."""
    return [[math.sqrt(v) for v in stage] for stage in expected_variances(blocks_per_stage, alpha, initial)]


# -- bundle -------------------------------------------------------------------------
class NormalizerFree(Normalizer):
    name = "nf"
    default_bias = True
    no_tokens = ("NF-ResNets are a ReLU residual-block design (scaled WS with ReLU's gamma, x + alpha f(x / beta) "
                 "with the expected variance of ReLU stages); nothing of it is defined for attention and GELU")

    def conv(self, in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, bias=None, last=False):
        if last:
            return super().conv(in_ch, out_ch, kernel_size, stride, padding, groups, bias, last)
        return ScaledWSConv2d(in_ch, out_ch, kernel_size, stride, padding, groups, self._bias(bias))

    def linear(self, in_features, out_features, bias=None, last=False):
        if last:
            return super().linear(in_features, out_features, bias, last)
        return ScaledWSLinear(in_features, out_features, self._bias(bias))

    def act(self, num_features):
        return GammaReLU(RELU_GAMMA)


def build(options):
    """Normalizer-Free ResNet pieces: scaled WS convs, gamma-scaled ReLU, x + alpha * f(x / beta) blocks, no activation norm."""
    return NormalizerFree(options)
