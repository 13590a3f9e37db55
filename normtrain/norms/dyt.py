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

Precision and memory: gamma, beta and alpha are applied in the input's dtype (the
authors' code promotes a bf16 input to fp32 through the (1,)-shaped alpha). The layer
is one autograd Function (`dynamic_tanh`) that saves only its input and recomputes
tanh(alpha x) in the backward pass: element-wise autograd would save the input (for
alpha's gradient) and tanh's output (for its own), twice what a LayerNorm saves (its
input); the gradients are the formula's, reductions accumulated in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .bundle import Normalizer

#: alpha_0 of the paper for vision models (ViT, ConvNeXt, and its default).
ALPHA_INIT = 0.5


@dataclass
class Options:
    dyt_alpha: float = 0.5
    """DyT: initial value alpha_0 of each layer's learnable scalar alpha in gamma tanh(alpha x) + beta (Zhu et al. 2025: 0.5, their default and every vision model's)."""

    def check(self) -> None:
        if self.dyt_alpha <= 0:
            raise ValueError("dyt_alpha must be > 0")


class _DynamicTanh(torch.autograd.Function):
    """``weight * tanh(alpha * x) + bias`` saving x alone; `view` shapes weight and bias against x."""

    @staticmethod
    def forward(ctx, x, alpha, weight, bias, view):
        a, w, b = alpha.to(x.dtype), weight.to(x.dtype).view(view), bias.to(x.dtype).view(view)
        ctx.save_for_backward(x, alpha, weight)
        ctx.view = view
        return torch.addcmul(b, torch.tanh(a * x), w)

    @staticmethod
    def backward(ctx, grad):
        x, alpha, weight = ctx.saved_tensors
        view = ctx.view
        t = torch.tanh(alpha.to(x.dtype) * x)               # recomputed: not saved in forward
        g_t = grad * weight.to(grad.dtype).view(view)        # d out / d tanh
        g_u = g_t * (1 - t * t)                              # d out / d (alpha x)
        # reduce over every dim but the channel's (the last one, or dim 1), in fp32
        keep = x.dim() - 1 if len(view) == 1 else 1
        dims = [d for d in range(x.dim()) if d != keep]
        acc = torch.promote_types(x.dtype, torch.float32)    # fp32 sums for fp16/bf16, float64 kept
        g_x = g_u * alpha.to(x.dtype) if ctx.needs_input_grad[0] else None
        g_alpha = (g_u.to(acc) * x.to(acc)).sum().reshape(alpha.shape).to(alpha.dtype) \
            if ctx.needs_input_grad[1] else None
        g_w = (grad.to(acc) * t.to(acc)).sum(dims).to(weight.dtype) if ctx.needs_input_grad[2] else None
        g_b = grad.to(acc).sum(dims).to(weight.dtype) if ctx.needs_input_grad[3] else None
        return g_x, g_alpha, g_w, g_b, None


def dynamic_tanh(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 channels_last: bool) -> torch.Tensor:
    """DyT(x) = weight * tanh(alpha * x) + bias, weight and bias on x's last dim (channels_last) or on dim 1."""
    view = (-1,) if channels_last else (-1,) + (1,) * (x.dim() - 2)
    return _DynamicTanh.apply(x, alpha, weight, bias, view)


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
        return dynamic_tanh(x, self.alpha, self.weight, self.bias, self.channels_last)

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
