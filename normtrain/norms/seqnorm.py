"""`seqnorm`: Sequential Normalization (Dimitriou & Arandjelović 2020 §2.1):

    "SeqNorm employs both GroupNorm and GhostNorm in a sequential manner.
    Initially, the input tensor is divided into (M, G_C, C/G_C, F) dimensions,
    normalizing across M x G_C number of slices, i.e. same as GroupNorm. Then
    [...] the input tensor is divided into (G_M, M/G_M, C, F) dimensions for
    normalizing over C x G_M slices of (M/G_M, F) dimensions."

Their eq. (1) has a single scale and shift after the Norm, so the GroupNorm step
has no affine and the GhostNorm step carries gamma and beta (DESIGN §3):
``GhostNorm_{G_M}(GroupNorm_{G_C}(x))`` with G_C = ``norm.groups`` (the paper's
best CIFAR-100 setting is G_C = 4, G_M = 8) and G_M = ``norm.ghost_groups``.
The paper notes the reverse order did worse (§3.3).

Precision under autocast: the GroupNorm step runs in the autocast dtype (gn.py's
`amp_group_norm`; CUDA autocast would run group_norm in fp32, writing an fp32 copy of
the activation and handing an fp32 activation on). The GhostNorm step then takes
GhostNorm's fused batch-norm path (see ghost.py).

Memory: as two layers, autograd keeps the input of each (GroupNorm's and GhostNorm's
permuted one), 1.5x bn's saved activation bytes on ResNet-50. A training forward runs
`_SeqNormFunction` instead: the same ATen kernels (``native_group_norm``, the chunk
permutation, ``native_batch_norm``), keeping only x and the per-group and per-chunk
statistics; its backward recomputes the GroupNorm output (one more GroupNorm forward
kernel) and calls the two kernels' own backward functions. Evaluation and torch.compile
run the two layers as written (tests check that both paths agree).
"""
from __future__ import annotations

import torch
from torch import nn

from .bundle import Normalizer
from .ghost import GhostBatchNorm, channels_to_chunks, chunks_to_channels
from .gn import amp_group_norm, autocast_dtype, check_groups


def _group_norm(x: torch.Tensor, groups: int, eps: float):
    n, c = x.shape[0], x.shape[1]
    return torch.native_group_norm(x, None, None, n, c, x[0, 0].numel(), groups, eps)


class _SeqNormFunction(torch.autograd.Function):
    """GroupNorm (no affine) then GhostNorm (affine) keeping x and statistics only (module doc).
    Returns (y, GhostNorm's chunk statistics (2, G_M, C): means and unbiased variances)."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, ghost_groups: int, eps: float):
        g = ghost_groups
        h, mean_g, rstd_g = _group_norm(x, groups, eps)
        hp = chunks_to_channels(h, g) if g > 1 else h
        w, b = (weight.repeat(g), bias.repeat(g)) if g > 1 else (weight, bias)
        stats = torch.ones(2, g * x.shape[1], dtype=weight.dtype, device=x.device)  # momentum 1: overwritten
        yp, save_mean, save_invstd = torch.native_batch_norm(hp, w, b, stats[0], stats[1], True, 1.0, eps)
        ctx.save_for_backward(x, mean_g, rstd_g, w, save_mean, save_invstd)
        ctx.groups, ctx.g, ctx.eps = groups, g, eps
        ctx.mark_non_differentiable(stats)
        y = channels_to_chunks(yp, g) if g > 1 else yp
        return y, stats.view(2, g, x.shape[1])

    @staticmethod
    def backward(ctx, dy, _dstats):
        x, mean_g, rstd_g, w, save_mean, save_invstd = ctx.saved_tensors
        g, c = ctx.g, x.shape[1]
        with torch.no_grad():
            h = _group_norm(x, ctx.groups, ctx.eps)[0]              # recomputed, not kept
            hp = chunks_to_channels(h, g) if g > 1 else h
            dyp = chunks_to_channels(dy, g) if g > 1 else dy
            dhp, dw, db = torch.ops.aten.native_batch_norm_backward(
                dyp, hp, w, None, None, save_mean, save_invstd, True, ctx.eps, [True, True, True])
            dh = channels_to_chunks(dhp, g) if g > 1 else dhp
            dx = torch.ops.aten.native_group_norm_backward(
                dh, x, mean_g, rstd_g, None, x.shape[0], c, x[0, 0].numel(), ctx.groups, [True, False, False])[0]
        if g > 1:
            dw, db = dw.view(g, c).sum(0), db.view(g, c).sum(0)
        return dx, dw, db, None, None, None


class SeqNorm(nn.Module):
    """GroupNorm(G_C groups, no affine) then GhostBatchNorm(G_M chunks, affine)."""

    def __init__(self, num_features: int, groups: int = 32, ghost_groups: int = 4, eps: float = 1e-5,
                 momentum: float | None = 0.1):
        super().__init__()
        check_groups(num_features, groups)
        self.groups = int(groups)
        self.eps = float(eps)
        self.ghost = GhostBatchNorm(num_features, ghost_groups, eps=eps, momentum=momentum, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or torch.compiler.is_compiling() or x.dim() < 2:
            return self.ghost(amp_group_norm(x, self.groups, None, None, self.eps))
        ghost = self.ghost
        ghost._chunk_size(x.shape[0])
        dtype = autocast_dtype(x)
        if dtype is not None:  # GroupNorm in the autocast dtype (`amp_group_norm`)
            x = x.to(dtype)
        if x.device.type != "cpu":  # as F.group_norm does: the CUDA kernels take NCHW only
            x = x.contiguous()
        y, stats = _SeqNormFunction.apply(x, ghost.weight, ghost.bias, self.groups, ghost.ghost_groups, self.eps)
        ghost._update_running_stats(stats)
        return y

    def extra_repr(self) -> str:
        return f"groups={self.groups}, eps={self.eps}"


class SequentialNorm(Normalizer):
    name = "seqnorm"
    default_bias = False
    tokens = "gn's token norm (no affine), then ghost's"
    channels_last_ok = False  # its GroupNorm step: CUDA group_norm is NCHW-only

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        o = self.options
        return SeqNorm(num_features, o.groups, o.ghost_groups, eps=o.eps, momentum=o.momentum)


def build(options):
    """SeqNorm: GroupNorm (no affine, norm.groups) then GhostNorm (norm.ghost_groups chunks)."""
    return SequentialNorm(options)
