"""`ws`, `ws-gn`, `ws-bn`: Weight Standardization (Qiao et al. 2019, eq. 2-4):

    W_hat[i, j] = (W[i, j] - mu_{W_i,.}) / (sigma_{W_i,.} + eps)
    mu = 1/I sum_j W[i, j],   sigma = sqrt(1/I sum_j (W[i, j] - mu)^2)        (biased)

per output channel i, over I = C_in x kernel size (DESIGN §3: eps = norm.eps
added to the std). The paper splits it into two steps (§2.2):

    eq. 5 (centering):  W_dot = W - 1/I 1 <1, W>
    eq. 6 (scaling):    W_hat = W_dot / sqrt(1/I <1, W_dot^2>)

``norm.ws_center`` / ``norm.ws_scale`` switch the steps (Table 2 "GN+WS+MO: GN+WS
with Eq. 5", "GN+WS+DO: GN+WS with Eq. 6"). Scale-only is eq. 6 applied to the
raw W exactly as written: W is divided by its root mean square
``sqrt(1/I sum_j W_ij^2)`` (+ eps), *not* by its standard deviation, and it is not
centred. With both steps the root mean square of the centred W is the biased std,
i.e. eq. 2. ``norm.ws_affine`` adds a learnable per-channel gain (init 1) and
shift (init 0) on W_hat ("GN+WS+AF: GN+WS with affine transformation on
weights", which "harms the training"; the paper's WS has none: "Note that we do
not have any affine transformation on W_hat").

Pairings: ``ws`` = WS convs with no activation norm (conv bias on by default, since
nothing re-centres the output), ``ws-gn`` = WS + GroupNorm(norm.groups) (the
paper's default, "GN+WS"), ``ws-bn`` = WS + BatchNorm ("BN+WS"); with a norm the
conv bias is off by default ("a standard convolutional layer with its bias term
set to 0", §2.1).

Linear layers: the paper standardizes "the weights in the convolutional layers"
only. Hidden linear layers are standardized too, per output row over the input
features (the same formula with I = in_features), so an MLP's hidden layers get
the method. The network's output layer (``last=True``, conv or linear) stays a
plain layer, as in the authors' ResNets where the classifier is an ordinary
``nn.Linear``: eq. 2 assumes "normalization layers such as BN or GN will
normalize this convolutional layer again", which never happens after the
output layer, and a standardized classifier would fix the logit scale to about
sqrt(I) times the feature scale.

Under gradient accumulation the effective weight is computed once per optimizer
step, not per micro-batch (`ReparamConv2d`/`ReparamLinear` in wn.py, norms/step_weights.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .bundle import Normalizer
from .gn import group_norm
from .wn import ReparamConv2d, ReparamLinear, fan_dims, per_channel


@dataclass
class Options:
    ws_center: bool = True
    """WS: subtract the per-output-channel weight mean (WS eq. 5 when used alone)."""
    ws_scale: bool = True
    """WS: divide by the per-output-channel root mean square of the (centred) weight + eps (WS eq. 6); with centering this is the biased std (eq. 2), alone it is the RMS of the raw weight."""
    ws_affine: bool = False
    """WS '+AF': learnable per-channel gain and bias on the standardized weight (WS Table 2, harmful)."""

    def check(self) -> None:
        if not (self.ws_center or self.ws_scale):
            raise ValueError("ws_center and ws_scale cannot both be false")


class _Standardize:
    """Mixin: effective weight = WS(self.weight) (eq. 5 and/or 6, optional affine)."""

    def _setup_ws(self, eps: float, center: bool, scale: bool, affine: bool) -> None:
        if not (center or scale):
            raise ValueError("weight standardization needs centering, scaling or both")
        self.eps, self.center, self.scale, self.affine = float(eps), bool(center), bool(scale), bool(affine)
        out = self.weight.shape[0]
        if affine:
            self.weight_gain = nn.Parameter(torch.ones(out))
            self.weight_shift = nn.Parameter(torch.zeros(out))
        else:
            self.register_parameter("weight_gain", None)
            self.register_parameter("weight_shift", None)

    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        dims = fan_dims(w)
        if self.center and self.scale:  # eq. 2: (W - mean) / (biased std + eps)
            var, mean = torch.var_mean(w, dim=dims, unbiased=False, keepdim=True)
            w_hat = (w - mean) * (var.sqrt() + self.eps).reciprocal()
        elif self.center:  # eq. 5 only
            w_hat = w - w.mean(dim=dims, keepdim=True)
        else:  # eq. 6 only, on the raw W: divide by the root mean square
            rms = w.square().mean(dim=dims, keepdim=True).sqrt()
            w_hat = w * (rms + self.eps).reciprocal()
        if self.affine:
            w_hat = torch.addcmul(per_channel(self.weight_shift, w), w_hat, per_channel(self.weight_gain, w))
        return w_hat

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ws(center={self.center}, scale={self.scale}, affine={self.affine})"


class WSConv2d(_Standardize, ReparamConv2d):
    """Conv with a standardized weight (WS eq. 2); ``self.weight`` is the raw W."""

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, bias=False, *,
                 eps=1e-5, center=True, scale=True, affine=False):
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=padding, groups=groups, bias=bias)
        self._setup_ws(eps, center, scale, affine)


class WSLinear(_Standardize, ReparamLinear):
    """Linear layer with each weight row standardized over the input features."""

    def __init__(self, in_features, out_features, bias=False, *, eps=1e-5, center=True, scale=True, affine=False):
        super().__init__(in_features, out_features, bias=bias)
        self._setup_ws(eps, center, scale, affine)


class WeightStandardization(Normalizer):
    """`ws`: WS convs, no activation normalization."""

    name = "ws"
    default_bias = True
    tokens = "WS on every linear layer and the patch embedding (the classifier plain); no activation norm"

    def _ws(self) -> dict:
        o = self.options
        return dict(eps=o.eps, center=o.ws_center, scale=o.ws_scale, affine=o.ws_affine)

    def conv(self, in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, bias=None, last=False):
        if last:
            return super().conv(in_ch, out_ch, kernel_size, stride, padding, groups, bias, last)
        return WSConv2d(in_ch, out_ch, kernel_size, stride, padding, groups, self._bias(bias), **self._ws())

    def linear(self, in_features, out_features, bias=None, last=False):
        if last:
            return super().linear(in_features, out_features, bias, last)
        return WSLinear(in_features, out_features, self._bias(bias), **self._ws())


class WSGroupNorm(WeightStandardization):
    """`ws-gn`: WS convs + GroupNorm(norm.groups) (the paper's GN+WS)."""

    name = "ws-gn"
    default_bias = False
    tokens = "WS linear layers and gn's token norm (groups of features over all the tokens of a sample)"
    channels_last_ok = False  # CUDA group_norm is NCHW-only

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        return group_norm(num_features, self.options.groups, self.options.eps)


class WSBatchNorm(WeightStandardization):
    """`ws-bn`: WS convs + per-process BatchNorm (the paper's BN+WS)."""

    name = "ws-bn"
    default_bias = False
    tokens = "WS linear layers and bn's token norm (each feature over the (N, L) tokens of the batch)"

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        return cls(num_features, eps=self.options.eps, momentum=self.options.momentum)


def build(options):
    """Weight Standardization alone: zero-mean, unit-std conv weights, no activation norm (a control; deep nets overflow)."""
    return WeightStandardization(options)


def build_gn(options):
    """Weight Standardization + GroupNorm (the WS paper's GN+WS)."""
    return WSGroupNorm(options)


def build_bn(options):
    """Weight Standardization + BatchNorm (the WS paper's BN+WS)."""
    return WSBatchNorm(options)
