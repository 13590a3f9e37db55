"""`ghost`: Ghost Normalization (Hoffer et al. 2017), as defined in Dimitriou &
Arandjelović 2020 §2.1 and their Figure 2 code:

    the M dimension is divided into G_M groups, normalizing over C x G_M slices
    of (M/G_M, F) values;  mu = 1/M sum x,  sigma^2 = 1/M sum (x - mu)^2  (eq. 2),
    x <- (x - mu) / sqrt(sigma^2 + eps)  (eq. 3)

i.e. BatchNorm computed separately on G_M = ``norm.ghost_groups`` contiguous
chunks of the per-process batch, with the *biased* variance of each chunk (this
reproduces the paper's §2.2 worked example exactly), followed by one affine
(gamma, beta) shared by all chunks. One vectorized computation: the batch is
viewed as (G_M, M/G_M, C, ...) and reduced over (M/G_M, spatial).

Running statistics ("accumulated in the same way as BatchNorm", §2.3 — the
paper omits them from its code): one update per forward, with PyTorch's BN
momentum rule, from
  - running_mean: the mean of the G_M chunk means (= the batch mean), and
  - running_var:  the mean of the chunks' *unbiased* variances (each chunk's
    biased variance times n/(n-1), n = M/G_M x spatial size).
This is what nn.BatchNorm would record if it saw the chunks one at a time
(it stores unbiased variances), averaged, and equals nn.BatchNorm exactly when
G_M = 1. Evaluation uses the running statistics, like BN.

Errors (NormShapeError, a ValueError): the per-process batch M must be divisible
by G_M and each chunk needs at least 2 samples ("A ratio of 1 would be undefined
for normalization", §3). Statistics are computed in fp32 for fp16/bf16 input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .bundle import Normalizer
from .options import NormShapeError


class GhostBatchNorm(_NormBase):
    """BatchNorm over `ghost_groups` contiguous chunks of the batch; input (N, C) or (N, C, *)."""

    def __init__(self, num_features: int, ghost_groups: int = 4, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine, track_running_stats=True)
        if ghost_groups < 1:
            raise ValueError(f"GhostNorm: ghost_groups must be >= 1, got {ghost_groups}")
        self.ghost_groups = int(ghost_groups)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GhostNorm: expected input (N, C) or (N, C, ...), got shape {tuple(x.shape)}")

    def _chunk_size(self, n: int) -> int:
        g = self.ghost_groups
        if n % g != 0 or n // g < 2:
            raise NormShapeError(
                f"GhostNorm: the per-process batch of {n} samples must split into G_M={g} chunks of at least "
                f"2 samples each (batch size divisible by G_M and >= {2 * g}); got batch size {n}, G_M={g}")
        return n // g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        n, c = x.shape[0], x.shape[1]
        g = self.ghost_groups
        m = self._chunk_size(n)
        xg = x.reshape((g, m) + tuple(x.shape[1:]))          # a view: splits the batch dim only
        dims = (1,) + tuple(range(3, xg.dim()))               # chunk samples + spatial
        low_precision = x.dtype in (torch.float16, torch.bfloat16)
        stats_in = xg.float() if low_precision else xg     # statistics in fp32, as cuDNN BN does
        var, mean = torch.var_mean(stats_in, dim=dims, unbiased=False, keepdim=True)  # (G, 1, C, 1, ...)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.view((c,) + (1,) * (x.dim() - 2))
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias.view((c,) + (1,) * (x.dim() - 2))
        # y = x * scale + shift: one pass over the data (scale and shift are per chunk and channel).
        # Low-precision input: fp32 scale/shift (rounding them to bf16 loses the mean), fp32 math, cast back.
        y = torch.addcmul(shift, xg, scale)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        y = y.reshape(x.shape)
        self._update_running_stats(mean, var, xg.numel() // (g * c))
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        c = self.num_features
        chunk_means = mean.reshape(-1, c)                                   # (G, C)
        chunk_vars = var.reshape(-1, c) * (count / max(count - 1, 1))       # unbiased, (G, C)
        self.running_mean.lerp_(chunk_means.mean(0).to(self.running_mean.dtype), factor)
        self.running_var.lerp_(chunk_vars.mean(0).to(self.running_var.dtype), factor)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ghost_groups={self.ghost_groups}"


class GhostNorm(Normalizer):
    name = "ghost"
    default_bias = False

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        o = self.options
        return GhostBatchNorm(num_features, o.ghost_groups, eps=o.eps, momentum=o.momentum)


def build(options):
    """GhostNorm: BatchNorm over norm.ghost_groups contiguous chunks of the per-process batch."""
    return GhostNorm(options)
