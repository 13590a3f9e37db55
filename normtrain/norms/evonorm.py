"""`evonorm-b0`, `evonorm-s0`: the evolved normalization-activation layers of Liu, Brock, Simonyan & Le 2020
("Evolving Normalization-Activation Layers", NeurIPS), as the paper and the authors' code define them:

    EvoNorm-B0:  y = x / max( sqrt(s^2_{b,w,h}(x) + eps),  v1 x + sqrt(s^2_{w,h}(x) + eps) ) * gamma + beta
    EvoNorm-S0:  y = x * sigmoid(v1 x) / sqrt(s^2_{w,h,c/g}(x) + eps) * gamma + beta

s^2 are biased variances: over the batch and the spatial positions per channel
(B0's batch statistic), over the spatial positions per sample and channel (B0's
instance statistic), and over a group of C/g channels and the spatial positions
per sample (S0, like GroupNorm with g = ``norm.groups`` groups). v1, gamma
(init 1) and beta (init 0) are per channel; eps is ``norm.eps`` (1e-5, the
authors' value). Each layer is both the normalization and the activation, so
the bundle returns it from ``norm_act`` with an identity activation.

Placement follows the authors' ResNet code (tensorflow/tpu
models/official/resnet/resnet_model.py, ``norm_activation`` / ``evonorm``) and
timm (``apply_act=False``): where a norm is *not* followed by an activation (the
last norm of a post-activation residual block, the projection shortcut, the
hidden layers of linear50), the layer is the affine part alone, ``x gamma +
beta`` (the authors' ``nonlinearity=False``); where an activation is not
preceded by a norm (after a residual join, cifar10-nv's unnormalized layers) it
stays a ReLU, as the authors keep ``tf.nn.relu`` after the residual addition.
Conv biases are off where an EvoNorm follows.

B0 keeps a moving average of the batch variance for evaluation (momentum
``norm.momentum``): like timm's ``EvoNorm2dB0`` we store the unbiased variance
(PyTorch's BN convention, n/(n-1) correction); the authors' TF code averages
the biased one. timm uses eps 1e-3 for B0; we keep the authors' 1e-5.
Statistics are computed in fp32. S0 needs C divisible by ``norm.groups`` (a
clear error otherwise, as ``gn``; the authors' code silently lowers the group
count until it divides C). Input (N, C) (``dims=1``) is treated as a 1x1 map:
B0's instance variance is then 0 and S0 normalizes over the C/g channels of a group.

DDP (``evonorm-b0``): the batch variance is that of each process's own batch,
like ``bn``; DDP broadcasts rank 0's running variance with the weights at each
forward. ``evonorm-s0`` uses no batch statistics.
"""
from __future__ import annotations

import torch
from torch import nn

from .bundle import Normalizer
from .gn import check_groups


class _EvoNorm(nn.Module):
    """Shared parameters: gamma, beta and, for the non-linear layer, v1."""

    def __init__(self, num_features: int, nonlinear: bool = True, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.nonlinear = bool(nonlinear)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(num_features))   # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))    # beta
        if nonlinear:
            self.v = nn.Parameter(torch.ones(num_features))    # v1
        else:
            self.register_parameter("v", None)

    @staticmethod
    def _view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.view((1, -1) + (1,) * (x.dim() - 2))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"EvoNorm: expected input (N, C) or (N, C, ...), got shape {tuple(x.shape)}")

    def _affine(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self._view(self.bias, y), y, self._view(self.weight, y)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, nonlinear={self.nonlinear}, eps={self.eps}"


class EvoNormB0(_EvoNorm):
    """``x / max(sqrt(var_batch + eps), v1 x + sqrt(var_instance + eps)) * gamma + beta``."""

    def __init__(self, num_features: int, nonlinear: bool = True, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, nonlinear, eps)
        self.momentum = float(momentum)
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        xf = x.float()
        if not self.nonlinear:
            return self._affine(xf, x)
        flat = xf.reshape(x.shape[0], x.shape[1], -1)              # (N, C, HW)
        if self.training:
            var = flat.var(dim=(0, 2), unbiased=False)
            n = flat.shape[0] * flat.shape[2]
            with torch.no_grad():  # running average of the unbiased variance (timm; PyTorch BN)
                self.running_var.lerp_((var.detach() * (n / max(n - 1, 1))).to(self.running_var.dtype),
                                       self.momentum)
        else:
            var = self.running_var.float()
        left = self._view(torch.sqrt(var + self.eps), xf)
        instance_std = torch.sqrt(flat.var(dim=2, unbiased=False, keepdim=True) + self.eps).view(
            x.shape[:2] + (1,) * (x.dim() - 2))
        right = xf * self._view(self.v, xf) + instance_std
        return self._affine(xf / torch.maximum(left, right), x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", momentum={self.momentum}"


class EvoNormS0(_EvoNorm):
    """``x * sigmoid(v1 x) / sqrt(var_group + eps) * gamma + beta``, group statistics per sample."""

    def __init__(self, num_features: int, groups: int = 32, nonlinear: bool = True, eps: float = 1e-5):
        super().__init__(num_features, nonlinear, eps)
        if nonlinear:  # the affine-only layer has no group statistics
            check_groups(num_features, groups)
        self.groups = int(groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        xf = x.float()
        if not self.nonlinear:
            return self._affine(xf, x)
        grouped = xf.reshape(x.shape[0], self.groups, -1)          # (N, G, C/G * HW)
        group_std = torch.sqrt(grouped.var(dim=2, unbiased=False, keepdim=True) + self.eps)
        group_std = group_std.expand_as(grouped).reshape(x.shape)
        y = xf * torch.sigmoid(xf * self._view(self.v, xf)) / group_std
        return self._affine(y, x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", groups={self.groups}"


class EvoNormB0Bundle(Normalizer):
    name = "evonorm-b0"
    default_bias = False
    no_tokens = ("EvoNorm layers are normalization-activation layers replacing BN + ReLU; a transformer's norms "
                 "are not followed by an activation, so each would be its affine part alone")

    def _layer(self, num_features: int, nonlinear: bool) -> nn.Module:
        o = self.options
        return EvoNormB0(num_features, nonlinear=nonlinear, eps=o.eps, momentum=o.momentum)

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        return self._layer(num_features, nonlinear=False)  # no activation follows: affine only

    def norm_act(self, num_features: int, dims: int = 2) -> tuple[nn.Module, nn.Module]:
        return self._layer(num_features, nonlinear=True), nn.Identity()


class EvoNormS0Bundle(EvoNormB0Bundle):
    name = "evonorm-s0"

    def _layer(self, num_features: int, nonlinear: bool) -> nn.Module:
        o = self.options
        return EvoNormS0(num_features, groups=o.groups, nonlinear=nonlinear, eps=o.eps)


def build_b0(options):
    """EvoNorm-B0: x / max(sqrt(batch var), v x + sqrt(instance var)), one fused norm-activation layer (Liu et al. 2020)."""
    return EvoNormB0Bundle(options)


def build_s0(options):
    """EvoNorm-S0: x sigmoid(v x) / group std, batch-independent, one fused norm-activation layer (Liu et al. 2020)."""
    return EvoNormS0Bundle(options)
