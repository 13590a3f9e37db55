"""Global average pooling whose gradient keeps the input's memory layout.

``nn.AdaptiveAvgPool2d(1)`` computes ``x.mean((2, 3))`` (ATen's fast path for output size 1)
and its backward is ``grad.expand(x.shape) / (H W)``: the division writes a new NCHW
tensor (an expanded input gives TensorIterator no layout to follow), so in a channels_last
network the backward kernels of the last block mix NCHW and channels_last, and where
they are elementwise (NormProp's or NF's activation, a mean-only BN) the NCHW gradient
runs on through the whole backward pass (the fake-CUDA audit counts these conversions,
docs/PERFORMANCE.md). Here the backward divides the small (N, C) gradient and writes it,
expanded, in the input's layout: the same one full-size write as before, in the layout the
rest of the network uses. Same values as ``nn.AdaptiveAvgPool2d(1)`` (of which this is a
subclass) in forward and backward.
"""
from __future__ import annotations

import torch
from torch import nn


class _SpatialMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        ctx.layout = torch.channels_last if cl else torch.contiguous_format
        return x.mean(tuple(range(2, x.dim())), keepdim=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        count = 1
        for s in ctx.shape[2:]:
            count *= s
        return (grad / count).expand(ctx.shape).contiguous(memory_format=ctx.layout)


class GlobalAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)``: (N, C, H, W) -> (N, C, 1, 1), with a layout-preserving gradient."""

    def __init__(self):
        super().__init__(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # inductor writes its own kernel either way
            return super().forward(x)
        return _SpatialMean.apply(x)
