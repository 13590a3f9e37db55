"""`ghost`: Ghost Normalization (Hoffer et al. 2017), as defined in Dimitriou &
Arandjelović 2020 §2.1 and their Figure 2 code:

    the M dimension is divided into G_M groups, normalizing over C x G_M slices
    of (M/G_M, F) values;  mu = 1/M sum x,  sigma^2 = 1/M sum (x - mu)^2  (eq. 2),
    x <- (x - mu) / sqrt(sigma^2 + eps)  (eq. 3)

i.e. BatchNorm computed separately on G_M = ``norm.ghost_groups`` contiguous
chunks of the per-process batch, with the *biased* variance of each chunk (this
reproduces the paper's §2.2 worked example exactly), followed by one affine
(gamma, beta) shared by all chunks. One vectorized computation, no loop over
chunks (both the fused path and the reference below).

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
for normalization", §3).

Which code runs: training forwards (eager and compiled) take `ghost_norm_fused`. It
permutes the batch so that the G_M chunks become channels, (M, C, *) ->
(M/G_M, G_M*C, *), and one ``F.batch_norm`` normalizes every chunk (cuDNN or ATen's
native batch-norm kernels, whose fp16/bf16 versions accumulate in fp32, as
SyncBatchNorm relies on); the output is permuted back. `ghost_norm_reference` is the
definition written out (the batch viewed as (G_M, M/G_M, C, *), eq. 2-3, the affine;
the code before the fused path); tests/test_ghost_fused.py checks the fused path
against it (output, gradients, running statistics; fp32, bf16, channels_last) and
tests/test_norms.py checks the layer against the paper's worked example and per-chunk
BatchNorm. For bf16 input the fused path moves about 26 bytes per element in forward
and backward against about 116 for the reference's fp32 copies (a traffic model), and
under torch.compile inductor lowers it as it lowers BatchNorm (docs/PERFORMANCE.md).
Evaluation is ``F.batch_norm`` with the running statistics.
Statistics are computed in fp32 for fp16/bf16 input on every path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .bundle import Normalizer
from .options import NormShapeError


@dataclass
class Options:
    ghost_groups: int = 4
    """GhostNorm G_M: number of contiguous chunks the per-process batch is split into (ghost, seqnorm)."""
    ghost_batch: int = 0
    """GhostNorm samples per chunk (the papers' 'ghost batch size'); when > 0 it sets ghost_groups = per-process micro-batch / ghost_batch, so a recipe keeps its statistics whatever the process count."""

    def check(self) -> None:
        if self.ghost_groups < 1:
            raise ValueError("ghost_groups must be >= 1")
        if self.ghost_batch < 0 or self.ghost_batch == 1:
            raise ValueError("ghost_batch must be 0 (use ghost_groups) or >= 2 samples per chunk")


def ghost_norm_reference(x: torch.Tensor, g: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The definition, written out: eq. 2-3 on each of the `g` contiguous chunks, then the affine.

    Returns (y, chunk means (G, C), unbiased chunk variances (G, C)). Statistics and the
    normalization run in fp32 for fp16/bf16 input (an fp32 copy of the activation).
    """
    n, c = x.shape[0], x.shape[1]
    m = n // g
    xg = x.reshape((g, m) + tuple(x.shape[1:]))          # a view: splits the batch dim only
    dims = (1,) + tuple(range(3, xg.dim()))               # chunk samples + spatial
    low_precision = x.dtype in (torch.float16, torch.bfloat16)
    stats_in = xg.float() if low_precision else xg     # statistics in fp32, as cuDNN BN does
    var, mean = torch.var_mean(stats_in, dim=dims, unbiased=False, keepdim=True)  # (G, 1, C, 1, ...)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.view((c,) + (1,) * (x.dim() - 2))
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.view((c,) + (1,) * (x.dim() - 2))
    # y = x * scale + shift: one pass over the data (scale and shift are per chunk and channel).
    # Low-precision input: fp32 scale/shift (rounding them to bf16 loses the mean), fp32 math, cast back.
    y = torch.addcmul(shift, xg, scale)
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    count = xg.numel() // (g * c)
    with torch.no_grad():
        chunk_vars = var.reshape(g, c) * (count / max(count - 1, 1))
    return y.reshape(x.shape), mean.detach().reshape(g, c), chunk_vars


def _layout(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-d tensor in that layout (and not also NCHW-contiguous), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _swap_chunks(x: torch.Tensor, a: int, b: int, fmt: torch.memory_format) -> torch.Tensor:
    """x viewed as (a, b, C, *S), dims 0 and 1 swapped, as a new (b, a*C, *S) tensor in layout `fmt`.

    One copy kernel; the result is a fresh tensor (not a view), so an in-place activation after
    the norm (ReLU's) does not send autograd through its view-rebase path, which copies the
    gradient into NCHW (the fake-CUDA audit counted 33 such copies in a ResNet-50's backward).
    """
    c, s = x.shape[1], tuple(x.shape[2:])
    out = torch.empty((b, a * c) + s, dtype=x.dtype, device=x.device, memory_format=fmt)
    out.view((b, a, c) + s).copy_(x.view((a, b, c) + s).transpose(0, 1))
    return out


class _ChunksToChannels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g: int):
        ctx.g, ctx.fmt = g, _layout(x)
        return _swap_chunks(x, g, x.shape[0] // g, ctx.fmt)

    @staticmethod
    def backward(ctx, grad):
        m = grad.shape[0]
        return _unswap(grad, ctx.g, m, ctx.fmt), None


def _unswap(y: torch.Tensor, g: int, m: int, fmt: torch.memory_format) -> torch.Tensor:
    """The inverse of `_swap_chunks`: (m, g*C, *S) -> (g*m, C, *S)."""
    c, s = y.shape[1] // g, tuple(y.shape[2:])
    out = torch.empty((g * m, c) + s, dtype=y.dtype, device=y.device, memory_format=fmt)
    out.view((g, m, c) + s).copy_(y.view((m, g, c) + s).transpose(0, 1))
    return out


class _ChannelsToChunks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, g: int):
        ctx.g, ctx.fmt = g, _layout(y)
        return _unswap(y, g, y.shape[0], ctx.fmt)

    @staticmethod
    def backward(ctx, grad):
        return _swap_chunks(grad, ctx.g, grad.shape[0] // ctx.g, ctx.fmt), None


def _chunks_to_channels_views(x: torch.Tensor, g: int) -> torch.Tensor:
    """`chunks_to_channels` with reshapes (what torch.compile traces; inductor turns it into indexing)."""
    n, c, s = x.shape[0], x.shape[1], tuple(x.shape[2:])
    m = n // g
    if _layout(x) == torch.channels_last:
        h = x.permute(0, 2, 3, 1).reshape((g, m) + s + (c,))            # a view of the NHWC memory
        return h.permute(1, 2, 3, 0, 4).reshape((m,) + s + (g * c,)).permute(0, 3, 1, 2)
    return x.reshape((g, m, c) + s).transpose(0, 1).reshape((m, g * c) + s)


def _channels_to_chunks_views(y: torch.Tensor, g: int) -> torch.Tensor:
    m, c, s = y.shape[0], y.shape[1] // g, tuple(y.shape[2:])
    if _layout(y) == torch.channels_last:
        h = y.permute(0, 2, 3, 1).reshape((m,) + s + (g, c))
        return h.permute(3, 0, 1, 2, 4).reshape((g * m,) + s + (c,)).permute(0, 3, 1, 2)
    return y.reshape((m, g, c) + s).transpose(0, 1).reshape((g * m, c) + s)


def chunks_to_channels(x: torch.Tensor, g: int) -> torch.Tensor:
    """(G*m, C, *S) -> (m, G*C, *S): channel j*C + c of sample i is channel c of sample j*m + i.

    One copy; a channels_last input gives a channels_last result (NHWC memory throughout),
    and the result is not a view (`_swap_chunks`).
    """
    if torch.compiler.is_compiling():
        return _chunks_to_channels_views(x, g)
    return _ChunksToChannels.apply(x, g)


def channels_to_chunks(y: torch.Tensor, g: int) -> torch.Tensor:
    """The inverse of `chunks_to_channels`."""
    if torch.compiler.is_compiling():
        return _channels_to_chunks_views(y, g)
    return _ChannelsToChunks.apply(y, g)


def _ghost_fused(x: torch.Tensor, g: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The same result as `ghost_norm_reference` through one fused batch-norm call; returns
    (y, statistics (2, G, C): the chunk means and the unbiased chunk variances).

    With the batch permuted so that chunk j's channel c becomes channel j*C + c of an
    (M/G_M, G_M*C, *) tensor (`chunks_to_channels`), per-channel batch statistics *are*
    the per-chunk statistics of eq. 2, so ``F.batch_norm`` (cuDNN / ATen's native
    kernels; their fp16/bf16 kernels accumulate in fp32, which SyncBatchNorm relies on)
    computes eq. 3 with gamma and beta repeated per chunk. Its running-stat update,
    into scratch buffers with momentum 1, returns exactly the chunk means and unbiased
    chunk variances the module's own update needs. The output has x's dtype.
    """
    c = x.shape[1]
    if g == 1:
        xp, w, b = x, weight, bias
    else:
        xp = chunks_to_channels(x, g)
        w = weight.repeat(g) if weight is not None else None
        b = bias.repeat(g) if bias is not None else None
    stats_dtype = weight.dtype if weight is not None else torch.promote_types(x.dtype, torch.float32)
    # One scratch tensor for both statistics (one fill kernel): with momentum 1 the kernel overwrites
    # it (0 x old + 1 x new), so any finite start does; rows: means, unbiased variances.
    stats = torch.ones(2, g * c, dtype=stats_dtype, device=x.device)
    yp = F.batch_norm(xp, stats[0], stats[1], w, b, True, 1.0, eps)
    y = yp if g == 1 else channels_to_chunks(yp, g)
    return y, stats.view(2, g, c)


def ghost_norm_fused(x: torch.Tensor, g: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same result as `ghost_norm_reference` through one fused batch-norm call (`_ghost_fused`):
    (y, chunk means (G, C), unbiased chunk variances (G, C))."""
    y, stats = _ghost_fused(x, g, weight, bias, eps)
    return y, stats[0], stats[1]


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
        self._chunk_size(x.shape[0])
        y, stats = _ghost_fused(x, self.ghost_groups, self.weight, self.bias, self.eps)
        self._update_running_stats(stats)
        return y

    @torch.no_grad()
    def _update_running_stats(self, stats: torch.Tensor) -> None:
        """One BN-momentum update from the chunk means and *unbiased* chunk variances, stats (2, G, C)
        (three kernels: both chunk averages in one reduction, one multi-tensor lerp, the count)."""
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        mean, var = stats.mean(1).unbind(0)
        running = [self.running_mean, self.running_var]
        torch._foreach_lerp_(running, [mean.to(running[0].dtype), var.to(running[1].dtype)], factor)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ghost_groups={self.ghost_groups}"


class GhostNorm(Normalizer):
    name = "ghost"
    default_bias = False
    tokens = "the tokens as positions: BatchNorm on norm.ghost_groups chunks of the samples, over their tokens"

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        o = self.options
        return GhostBatchNorm(num_features, o.ghost_groups, eps=o.eps, momentum=o.momentum)


def build(options):
    """GhostNorm: BatchNorm over norm.ghost_groups contiguous chunks of the per-process batch."""
    return GhostNorm(options)
