"""`wn`: Weight Normalization (Salimans & Kingma 2016), as written in Gitman &
Ginsburg 2017 §3.2:

    o_j = gamma_j * (W_j * x) / (||W_j||_F + eps) + beta_j

i.e. the effective weight of output channel j is ``g_j * v_j / (||v_j|| + eps)``
with the norm over (in, kh, kw) (a linear layer: over the input features of
row j), plus a bias. ``g`` starts at 1 (the paper's equation) and the bias at 0; with
``norm.init: data`` the layer runs Salimans & Kingma's data-dependent
initialisation on its first training forward (see `WNConv2d`).

This file also holds the reparametrised-layer bases shared by the other
weight methods (normprop, trelu-wn, ws, nf): they subclass nn.Conv2d /
nn.Linear, keep the raw direction as ``self.weight`` (so init schemes,
channels_last, parameter counts and optimizers see an ordinary layer) and
compute the effective weight in ``forward`` with a few tensor ops. Under gradient
accumulation the engine has that weight computed once per optimizer step instead
of once per micro-batch (forward and backward of the reparametrisation), see
`normtrain.norms.step_weights`; every subclass inherits this from the bases.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .bundle import Normalizer


@dataclass
class Options:
    init: str = "unit"
    """WN initialisation: 'unit' (g = 1, b = 0, the paper's equation) or 'data' (Salimans & Kingma data-dependent init on the first batch)."""

    def check(self) -> None:
        if self.init not in ("unit", "data"):
            raise ValueError("init must be 'unit' or 'data'")


# -- shared helpers -------------------------------------------------------------
def fan_dims(w: torch.Tensor) -> tuple[int, ...]:
    """Dims of a weight that belong to one output channel: (in, kh, kw) for a conv, (in,) for a linear."""
    return tuple(range(1, w.dim()))


def per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a per-output-channel vector (O,) so it broadcasts against weight `like` (O, ...)."""
    return t.view((-1,) + (1,) * (like.dim() - 1))


def unit_direction(v: torch.Tensor, eps: float) -> torch.Tensor:
    """``v / (||v|| + eps)`` per output channel (the WN direction)."""
    norm = torch.linalg.vector_norm(v, dim=fan_dims(v), keepdim=True)
    return v * (norm + eps).reciprocal()


class _StepWeight:
    """What the reparametrised bases share: ``forward`` takes its weight from `current_weight`.

    Outside an accumulated optimizer step that is ``effective_weight()``, recomputed at
    every call. During one (`normtrain.norms.step_weights.micro_batches`, which the
    engine runs around each step's micro-batches) ``step_weight`` holds the weight the
    step computed once, and training forwards use it; so subclasses (every weight
    method) only define ``effective_weight`` and inherit the cache.
    """

    #: Set by `micro_batches` for one optimizer step; None (the class default) otherwise.
    step_weight: torch.Tensor | None = None

    def effective_weight(self) -> torch.Tensor:
        return self.weight

    def current_weight(self) -> torch.Tensor:
        w = self.step_weight
        if w is None or not (self.training and torch.is_grad_enabled()):
            return self.effective_weight()
        return w


class ReparamConv2d(_StepWeight, nn.Conv2d):
    """nn.Conv2d whose effective weight is ``effective_weight()``, computed from the raw ``self.weight``."""

    channel_dim = 1

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self._conv_forward(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_weight(x, self.current_weight(), self.bias)


class ReparamLinear(_StepWeight, nn.Linear):
    """nn.Linear whose effective weight is ``effective_weight()``, computed from the raw ``self.weight``."""

    channel_dim = -1

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_weight(x, self.current_weight(), self.bias)


# -- weight normalization -------------------------------------------------------
class _WeightNorm:
    """Mixin: ``w = g * v / (||v|| + eps)`` (``g`` optional) plus optional data-dependent init."""

    def _setup_wn(self, eps: float, gain: bool, gain_init: float = 1.0, data_init: bool = False) -> None:
        self.eps = float(eps)
        out = self.weight.shape[0]
        if self.bias is not None:  # beta starts at 0 (the papers' WN/NormProp/TReLU init)
            nn.init.zeros_(self.bias)
        if gain:
            self.gain = nn.Parameter(torch.full((out,), float(gain_init)))
        else:
            self.register_parameter("gain", None)
        # Buffer so that the flag travels with state_dict / checkpoints; the Python
        # mirror is what forward reads (no device sync per step).
        self.register_buffer("data_init_pending", torch.tensor(bool(data_init)))
        self.needs_data_init = bool(data_init)

    def effective_weight(self) -> torch.Tensor:
        v = self.weight
        norm = torch.linalg.vector_norm(v, dim=fan_dims(v), keepdim=True)
        scale = (norm + self.eps).reciprocal()
        if self.gain is not None:
            scale = scale * per_channel(self.gain, v)
        return v * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.needs_data_init and self.training:
            self._data_init(x)
        return super().forward(x)

    @torch.no_grad()
    def _data_init(self, x: torch.Tensor) -> None:
        """Salimans & Kingma §3: t = v.x/||v||; g = 1/std(t), b = -mean(t)/std(t) (biased std, per channel).

        Without a bias only g is set (unit variance; the mean is left as is).
        """
        t = self.apply_weight(x, unit_direction(self.weight, self.eps), None)
        dims = tuple(d for d in range(t.dim()) if d != self.channel_dim % t.dim())
        var, mean = torch.var_mean(t.float(), dim=dims, unbiased=False)
        inv_std = torch.rsqrt(var + 1e-10)  # Salimans & Kingma's code adds 1e-10
        if self.gain is not None:
            self.gain.copy_(inv_std)
        if self.bias is not None:
            self.bias.copy_(-mean * inv_std)
        self.needs_data_init = False
        self.data_init_pending.fill_(False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.needs_data_init = bool(self.data_init_pending)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}, gain={self.gain is not None}"


class WNConv2d(_WeightNorm, ReparamConv2d):
    """Weight-normalized conv: ``w_j = g_j v_j / (||v_j|| + eps)``; ``self.weight`` is v, ``self.gain`` is g."""

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, bias=True, *,
                 eps=1e-5, gain=True, gain_init=1.0, data_init=False):
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=padding, groups=groups, bias=bias)
        self._setup_wn(eps, gain, gain_init, data_init)


class WNLinear(_WeightNorm, ReparamLinear):
    """Weight-normalized linear layer: row j is ``g_j v_j / (||v_j|| + eps)``."""

    def __init__(self, in_features, out_features, bias=True, *, eps=1e-5, gain=True, gain_init=1.0,
                 data_init=False):
        super().__init__(in_features, out_features, bias=bias)
        self._setup_wn(eps, gain, gain_init, data_init)


class WeightNorm(Normalizer):
    name = "wn"
    default_bias = True  # beta_j of the paper's equation
    tokens = "WN on every linear layer and the patch embedding; no activation norm"

    def conv(self, in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, bias=None, last=False):
        return WNConv2d(in_ch, out_ch, kernel_size, stride, padding, groups, self._bias(bias),
                        eps=self.options.eps, data_init=self.options.init == "data")

    def linear(self, in_features, out_features, bias=None, last=False):
        return WNLinear(in_features, out_features, self._bias(bias),
                        eps=self.options.eps, data_init=self.options.init == "data")


def build(options):
    """Weight Normalization: w = g v / (||v|| + eps) per output channel, plus bias (norm.init: unit or data)."""
    return WeightNorm(options)
