"""Global average pooling whose gradient keeps the input's memory layout.

``nn.AdaptiveAvgPool2d(1)`` computes ``x.mean((2, 3))`` (ATen's fast path for output size 1)
and its backward is ``grad.expand(x.shape) / (H W)``: the division writes a new NCHW
tensor, so in a channels_last network the first backward kernel of the last block
(ReLU's, or the norm's) mixes NCHW and channels_last and converts one of them (the fake-CUDA
audit counts it, docs/PERFORMANCE.md). Here the backward divides the small (N, C) gradient
and returns it expanded (a view, no kernel), so the next kernel writes its result in the
layout of its other input, the saved channels_last activation. Same values as
``nn.AdaptiveAvgPool2d(1)`` (of which this is a subclass) in forward and backward.
"""
from __future__ import annotations

import torch
from torch import nn


class _SpatialMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.mean(tuple(range(2, x.dim())), keepdim=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        count = 1
        for s in ctx.shape[2:]:
            count *= s
        return (grad / count).expand(ctx.shape)


class GlobalAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)``: (N, C, H, W) -> (N, C, 1, 1), with a layout-preserving gradient."""

    def __init__(self):
        super().__init__(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # inductor writes its own kernel either way
            return super().forward(x)
        return _SpatialMean.apply(x)
