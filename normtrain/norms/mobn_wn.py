"""`mobn-wn`: Weight Normalization with mean-only batch normalization (Salimans & Kingma 2016, §3.2):

    t = w . x  with  w = g v / ||v||  (WN, eq. 2),   t~ = t - mu[t] + b,   y = phi(t~)

"subtract out the minibatch means like with full batch normalization, but we do
not divide by the minibatch standard deviations"; mu[t] is the minibatch mean
of the pre-activation, replaced at test time by a running average of it.

Split over the bundle: ``conv``/``linear`` are WN layers (`wn.WNConv2d`, gain g
init 1, ``norm.eps`` added to ||v||, ``norm.init: data`` for the data-dependent
init of g) without a bias where a norm follows (the norm's b replaces it) and
with one where the network asks for it (unnormalized layers, the output layer);
``norm`` is `MeanOnlyBatchNorm`: per channel, subtract the mean over the
(N, H, W) positions of the per-process batch (train) or the running mean
(eval, updated with ``norm.momentum`` as PyTorch's BN does), then add the
learnable bias b (init 0). Nothing is divided: the scale is WN's g.

DDP: the mean is that of each process's own batch, like ``bn``; DDP broadcasts
rank 0's running mean with the weights at each forward.
"""
from __future__ import annotations

import torch
from torch import nn

from .wn import WeightNorm


def mean_only_reference(x: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """``x - mean + b`` per channel, with the batch mean (fp32) unless `mean` is given; output in x's dtype."""
    view = (1, -1) + (1,) * (x.dim() - 2)
    if mean is None:
        mean = x.float().mean(dim=(0,) + tuple(range(2, x.dim())))
    return (x.float() + (bias - mean).view(view)).to(x.dtype)


class _MeanOnly(torch.autograd.Function):
    """Training ``x - mean_B(x) + b``, keeping nothing for the backward pass:
    dx = dy - mean_B(dy), db = sum dy (per channel). Returns (y, batch mean)."""

    @staticmethod
    def forward(ctx, x, bias):
        dims = (0,) + tuple(range(2, x.dim()))
        mean = x.mean(dim=dims, dtype=torch.float32)
        ctx.mark_non_differentiable(mean)
        return mean_only_reference(x, bias, mean), mean

    @staticmethod
    def backward(ctx, dy, _dmean):
        dims = (0,) + tuple(range(2, dy.dim()))
        view = (1, -1) + (1,) * (dy.dim() - 2)
        dx = (dy - dy.mean(dim=dims, dtype=torch.float32).view(view)).to(dy.dtype)
        return dx, dy.sum(dim=dims, dtype=torch.float32)


class MeanOnlyBatchNorm(nn.Module):
    """``x - mean_B(x) + b`` per channel (running mean at eval), for (N, C) or (N, C, *) input."""

    def __init__(self, num_features: int, momentum: float = 0.1):
        super().__init__()
        self.num_features = num_features
        self.momentum = float(momentum)
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"MeanOnlyBatchNorm: expected input (N, C) or (N, C, ...), got shape {tuple(x.shape)}")
        # fp32 arithmetic for fp16/bf16 input: rounding the shift to bf16 would lose small means
        if not self.training:
            return mean_only_reference(x, self.bias, self.running_mean)
        if torch.compiler.is_compiling():
            y = mean_only_reference(x, self.bias)
            mean = x.float().mean(dim=(0,) + tuple(range(2, x.dim())))
        else:  # the same, with nothing saved for the backward pass (`_MeanOnly`)
            y, mean = _MeanOnly.apply(x, self.bias)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}"


class MeanOnlyBNWeightNorm(WeightNorm):
    """`wn`'s layers (without their bias, which the mean-only BN's b replaces) and a mean-only BN."""

    name = "mobn-wn"
    default_bias = False  # the mean-only BN's b
    tokens = "WN linear layers and mean-only BN of each feature over the (N, L) tokens of the batch"

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        return MeanOnlyBatchNorm(num_features, momentum=self.options.momentum)


def build(options):
    """WN layers followed by mean-only BatchNorm: subtract the batch mean, then a bias (Salimans & Kingma §3.2)."""
    return MeanOnlyBNWeightNorm(options)
