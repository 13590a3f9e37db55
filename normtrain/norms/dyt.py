"""`dyt`: Dynamic Tanh (Zhu, Chen, He, LeCun & Liu 2025, "Transformers without Normalization", CVPR, eq. 1):

    DyT(x) = gamma * tanh(alpha * x) + beta

an element-wise operation in place of each normalization layer: no statistics at all.
alpha is one learnable scalar per layer, initialised at alpha_0 = ``norm.dyt_alpha``
(0.5, the paper's default and the value of every vision model it trains); gamma
(init 1) and beta (init 0) are per-channel vectors, as the affine of the LN it replaces.

As the authors' code defines it (github.com/jiachenzhu/DyT, ``dynamic_tanh.py``):
``alpha = Parameter(ones(1) * alpha_init_value)`` (shape (1,)), ``weight`` = gamma,
``bias`` = beta, and a ``channels_last`` flag: True where it replaces an
``nn.LayerNorm`` (features last: a ViT's tokens, inside a ConvNeXt block), False
where it replaces ConvNeXt's ``LayerNorm2d`` on an (N, C, H, W) map (gamma and beta
broadcast over dim 1). `convert_ln_to_dyt` there replaces every LayerNorm of the
network, the final one included; here every ``token_norm``/``channel_norm`` of a
transformer and every ``norm`` of a conv net is a DyT.

Conv nets (ResNets, in place of BN, as the paper's ResNet-50 / VGG19 experiment in its
limitations section): the channels-first form on (N, C, H, W), (N, C) for linear
layers; the conv bias is off where it follows a conv (beta replaces it).

Precision: gamma, beta and alpha are applied in the input's dtype (under bf16 autocast
the layer computes and saves bf16, as the matmuls around it do; the authors' code
promotes to fp32 through the (1,)-shaped alpha).
"""
from __future__ import annotations

import torch
from torch import nn

from .bundle import Normalizer

#: alpha_0 of the paper for vision models (ViT, ConvNeXt, and its default).
ALPHA_INIT = 0.5


class DynamicTanh(nn.Module):
    """``weight * tanh(alpha * x) + bias``; weight and bias on the last dim (channels_last) or on dim 1."""

    def __init__(self, normalized_shape: int, channels_last: bool, alpha_init_value: float = ALPHA_INIT):
        super().__init__()
        self.normalized_shape = normalized_shape
        self.alpha_init_value = float(alpha_init_value)
        self.channels_last = bool(channels_last)
        self.alpha = nn.Parameter(torch.ones(1) * alpha_init_value)
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight.to(x.dtype), self.bias.to(x.dtype)
        if not self.channels_last:
            view = (-1,) + (1,) * (x.dim() - 2)
            w, b = w.view(view), b.view(view)
        return torch.addcmul(b, torch.tanh(self.alpha.to(x.dtype) * x), w)

    def extra_repr(self) -> str:
        return (f"normalized_shape={self.normalized_shape}, alpha_init_value={self.alpha_init_value}, "
                f"channels_last={self.channels_last}")


class DyT(Normalizer):
    name = "dyt"
    default_bias = False  # beta replaces the conv bias, as for bn
    tokens = "Dynamic Tanh on each element, gamma and beta per feature (the paper's replacement for LN)"

    def _layer(self, num_features: int, channels_last: bool) -> nn.Module:
        return DynamicTanh(num_features, channels_last, self.options.dyt_alpha)

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        return self._layer(num_features, channels_last=False)

    def token_norm(self, num_features: int) -> nn.Module:
        return self._layer(num_features, channels_last=True)

    def channel_norm(self, num_features: int) -> nn.Module:
        return self._layer(num_features, channels_last=False)


def build(options):
    """Dynamic Tanh: gamma tanh(alpha x) + beta element-wise, alpha a learnable scalar (init 0.5), no statistics (Zhu et al. 2025)."""
    return DyT(options)
