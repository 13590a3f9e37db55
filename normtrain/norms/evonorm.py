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

Memory: written as tensor ops (`b0_reference`, `s0_reference`, `affine_reference`),
autograd keeps fp32 copies of the input and of several intermediate activations per
layer (about 2.6x / 2.9x bn's saved activation bytes on ResNet-50 under bf16 autocast,
docs/PERFORMANCE.md). The training forwards run `_B0`, `_S0` and `_Affine` instead:
autograd Functions that keep only the input, in its own dtype, and per-channel or
per-(sample, group) statistics, and whose backward recomputes the rest (the gradients
written out in their docstrings). Tests check them against the reference formulas,
forward and backward; torch.compile traces the references (inductor decides itself
what to keep).
"""
from __future__ import annotations

import torch
from torch import nn

from .bundle import Normalizer
from .gn import check_groups


def _view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel vector (C,) viewed to broadcast against x (N, C, *)."""
    return t.view((1, -1) + (1,) * (x.dim() - 2))


def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.dim()))


def _instance_stats(xf: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, sqrt(var + eps)) over the spatial positions of each sample and channel, keepdim; a
    1x1 map for (N, C) input (variance 0)."""
    if xf.dim() == 2:
        return xf, torch.full_like(xf, eps ** 0.5)
    var, mean = torch.var_mean(xf, dim=_spatial(xf), correction=0, keepdim=True)
    return mean, torch.sqrt(var + eps)


def _group_view(xf: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, *S) -> (N, G, C/G, *S): a view in either memory layout (no copy)."""
    return xf.view((xf.shape[0], groups, xf.shape[1] // groups) + tuple(xf.shape[2:]))


def _group_stats(xf: torch.Tensor, groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, sqrt(var + eps)) over each sample's groups of C/G channels and the spatial positions,
    shaped (N, G, 1, ...) to broadcast against `_group_view`."""
    xg = _group_view(xf, groups)
    var, mean = torch.var_mean(xg, dim=tuple(range(2, xg.dim())), correction=0, keepdim=True)
    return mean, torch.sqrt(var + eps)


# -- the definitions as tensor ops (what the tests compare with; what torch.compile traces) ------
def affine_reference(x, weight, bias):
    """``x gamma + beta`` (the layer where no activation follows), computed in fp32."""
    return torch.addcmul(_view(bias, x), x.float(), _view(weight, x)).to(x.dtype)


def b0_reference(x, v, weight, bias, eps: float, running_var: torch.Tensor | None = None):
    """EvoNorm-B0; the batch variance of x, or `running_var` when given (evaluation). Returns (y, batch var)."""
    xf = x.float()
    if running_var is None:
        var = xf.var(dim=(0,) + _spatial(x), unbiased=False)
    else:
        var = running_var.float()
    left = _view(torch.sqrt(var + eps), xf)
    right = xf * _view(v, xf) + _instance_stats(xf, eps)[1]
    return affine_reference(xf / torch.maximum(left, right), weight, bias).to(x.dtype), var


def s0_reference(x, v, weight, bias, groups: int, eps: float):
    """EvoNorm-S0."""
    xf = x.float()
    std = _group_stats(xf, groups, eps)[1]
    h = _group_view(xf * torch.sigmoid(xf * _view(v, xf)), groups) / std
    return affine_reference(h.view(x.shape), weight, bias).to(x.dtype)


# -- the same, keeping only x for the backward pass -------------------------------------------------
class _Affine(torch.autograd.Function):
    """`affine_reference` keeping x (its own dtype) and gamma: dx = dy gamma, dgamma = sum dy x, dbeta = sum dy."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return affine_reference(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dims = (0,) + _spatial(x)
        dyf = dy.float()
        dx = (dyf * _view(weight, x)).to(x.dtype) if ctx.needs_input_grad[0] else None
        dweight = (dyf * x.float()).sum(dims) if ctx.needs_input_grad[1] else None
        dbias = dyf.sum(dims) if ctx.needs_input_grad[2] else None
        return dx, dweight, dbias


class _B0(torch.autograd.Function):
    """`b0_reference`, keeping x, the batch mean and std (C) and the instance means and stds (N, C).

    With den = max(L, R), L = sqrt(s2_b + eps) per channel, R = v x + s_i, s_i = sqrt(s2_i + eps),
    u = x / den, G = dy gamma and q = -G u / den (the gradient reaching den), split into q_R where
    R is the max and q_L elsewhere:
        dx = G / den + v q_R + (x - mu_i) / (K s_i) sum_K q_R + (x - mu_b) / (M L) sum_M q_L
        dv = sum q_R x,  dgamma = sum dy u,  dbeta = sum dy
    (K: the spatial positions of one sample and channel, M: those of a channel over the batch; the
    batch term only in training, where L depends on x).
    """

    @staticmethod
    def forward(ctx, x, v, weight, bias, running_var, eps: float):
        xf = x.float()
        training = running_var is None
        if training:
            var, mean_b = torch.var_mean(xf, dim=(0,) + _spatial(x), correction=0)
        else:
            var, mean_b = running_var.float(), None
        left = torch.sqrt(var + eps)
        mean_i, std_i = _instance_stats(xf, eps)
        den = torch.maximum(_view(left, xf), torch.addcmul(std_i, xf, _view(v, xf)))
        ctx.save_for_backward(x, v, weight, left, mean_b, mean_i, std_i)
        ctx.eps = eps
        y = affine_reference(xf / den, weight, bias).to(x.dtype)
        ctx.mark_non_differentiable(var)
        return y, var

    @staticmethod
    def backward(ctx, dy, _dvar):
        x, v, weight, left, mean_b, mean_i, std_i = ctx.saved_tensors
        xf, dyf = x.float(), dy.float()
        spatial = _spatial(x)
        dims = (0,) + spatial
        right = torch.addcmul(std_i, xf, _view(v, xf))
        lv = _view(left, xf)
        right_wins = right > lv
        den = torch.where(right_wins, right, lv)
        u = xf / den
        g = dyf * _view(weight, xf)
        q = -g * u / den
        q_right = torch.where(right_wins, q, 0)
        dx = dv = None
        if ctx.needs_input_grad[0]:
            dx = g / den + q_right * _view(v, xf)
            if spatial:
                k = xf[0, 0].numel()
                dx = dx + (xf - mean_i) * (q_right.sum(spatial, keepdim=True) / (k * std_i))
            if mean_b is not None:
                m = xf.numel() // xf.shape[1]
                q_left = (q - q_right).sum(dims)
                dx = dx + (xf - _view(mean_b, xf)) * _view(q_left / (m * left), xf)
            dx = dx.to(x.dtype)
        if ctx.needs_input_grad[1]:
            dv = (q_right * xf).sum(dims)
        dweight = (dyf * u).sum(dims) if ctx.needs_input_grad[2] else None
        dbias = dyf.sum(dims) if ctx.needs_input_grad[3] else None
        return dx, dv, dweight, dbias, None, None


class _S0(torch.autograd.Function):
    """`s0_reference`, keeping x and the group means and stds (N, G).

    With sigma = sigmoid(v x), h = x sigma, G = dy gamma, per group of K = C/g x spatial values:
        dx = G / s (sigma + v x sigma (1 - sigma)) - (x - mu) / (K s^3) sum_K G h
        dv = sum G x^2 sigma (1 - sigma) / s,  dgamma = sum dy h / s,  dbeta = sum dy
    """

    @staticmethod
    def forward(ctx, x, v, weight, bias, groups: int, eps: float):
        xf = x.float()
        mean, std = _group_stats(xf, groups, eps)
        ctx.save_for_backward(x, v, weight, mean, std)
        ctx.groups = groups
        h = _group_view(xf * torch.sigmoid(xf * _view(v, xf)), groups) / std
        return affine_reference(h.view(x.shape), weight, bias).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, v, weight, mean, std = ctx.saved_tensors
        groups = ctx.groups
        xf, dyf = x.float(), dy.float()
        dims = (0,) + _spatial(x)
        vx = _view(v, xf)
        sig = torch.sigmoid(xf * vx)
        h = xf * sig
        g = _group_view(dyf * _view(weight, xf), groups)            # (N, G, C/G, *S)
        gs = g / std                                                # dL/dh
        dsig = sig * (1 - sig)
        dx = dv = None
        if ctx.needs_input_grad[0]:
            hg = _group_view(h, groups)
            k = hg[0, 0].numel()
            red = tuple(range(2, hg.dim()))
            corr = (gs * hg).sum(red, keepdim=True) / (k * std.square())
            dx = (gs * _group_view(sig + xf * vx * dsig, groups) - (_group_view(xf, groups) - mean) * corr)
            dx = dx.view(x.shape).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dv = (gs.view(x.shape) * xf.square() * dsig).sum(dims)
        dweight = (dyf * (_group_view(h, groups) / std).view(x.shape)).sum(dims) if ctx.needs_input_grad[2] else None
        dbias = dyf.sum(dims) if ctx.needs_input_grad[3] else None
        return dx, dv, dweight, dbias, None, None


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

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"EvoNorm: expected input (N, C) or (N, C, ...), got shape {tuple(x.shape)}")

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return affine_reference(x, self.weight, self.bias)
        return _Affine.apply(x, self.weight, self.bias)

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
        if not self.nonlinear:
            return self._affine(x)
        running = None if self.training else self.running_var
        if torch.compiler.is_compiling():
            y, var = b0_reference(x, self.v, self.weight, self.bias, self.eps, running)
        else:
            y, var = _B0.apply(x, self.v, self.weight, self.bias, running, self.eps)
        if self.training:
            n = x.numel() // x.shape[1]
            with torch.no_grad():  # running average of the unbiased variance (timm; PyTorch BN)
                self.running_var.lerp_((var.detach() * (n / max(n - 1, 1))).to(self.running_var.dtype),
                                       self.momentum)
        return y

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
        if not self.nonlinear:
            return self._affine(x)
        if torch.compiler.is_compiling():
            return s0_reference(x, self.v, self.weight, self.bias, self.groups, self.eps)
        return _S0.apply(x, self.v, self.weight, self.bias, self.groups, self.eps)

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
