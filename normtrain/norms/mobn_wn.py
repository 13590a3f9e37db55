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
        view = (1, -1) + (1,) * (x.dim() - 2)
        if self.training:
            mean = x.float().mean(dim=(0,) + tuple(range(2, x.dim())))
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
        else:
            mean = self.running_mean
        # fp32 arithmetic for fp16/bf16 input: rounding the shift to bf16 would lose small means
        return (x.float() + (self.bias - mean).view(view)).to(x.dtype)

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
