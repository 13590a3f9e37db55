"""`trelu-wn`: Weight Normalization with Translated ReLU (Xiang & Li 2017), as
written in Gitman & Ginsburg 2017 §3.2:

    o_j = TReLU_{a_j}( W_j * x / (||W_j||_F + eps) ),   TReLU_a(x) := ReLU(x - a) + a

"Bias beta and scale gamma are applied only to the output of the last layer to
restore the representational power of the network":

    o_j^last = gamma_j x_j^last + beta_j

So hidden conv/linear layers are ``W / (||W|| + eps)`` with no gain and no bias
(the method's definition fixes this, whatever bias the network asks for), the
activation is TReLU with a learnable per-channel threshold ``a`` (init 0), and
``ReLU(x - a) + a`` equals ``max(x, a)``, which is how it is computed (one fused op).

As the authors ran it (Xiang & Li, "On the effects of batch and weight
normalization in generative adversarial networks", arXiv:1704.03971, and their
code: github.com/stormraiser/GAN-weight-norm for the paper's networks,
github.com/stormraiser/gan-weightnorm-resnet for the residual ones):

- The scale and bias sit *after* the last layer, not inside it: the output
  layer (``last=True``) is a WN layer without gain or bias, and ``output()``
  returns `Affine`, gamma * x + beta per channel (gamma init 1, beta init 0), applied
  to the network's output after whatever follows the output layer (the
  residual repo's ``modules/Affine.py``, used as the ``post`` module of the
  generator's last block in place of its activation). In cifar10-nv the last
  conv is followed by TReLU and average pooling: the affine comes after them
  (pooling is linear per channel, so this is gamma * TReLU(...) + beta), not
  between the conv and its TReLU.
- Residual joins (``norm.trelu_join: weighted``): the residual repo's
  ``modules/WeightNormalizedAddition.py``, a learnable weighted sum whose
  per-channel weights are L2-normalised across the two operands,

      out_c = (w_s,c * shortcut_c + w_b,c * branch_c) / sqrt(w_s,c^2 + w_b,c^2 + 1e-6)

  initialised as ``ResidueBlock`` does (``WeightNormalizedAddition(2, C,
  torch.Tensor([0, 1]))`` over the operands (residue, shortcut)): branch weight
  0, shortcut weight 1, so every block starts as its shortcut alone (then its
  activation). `WeightedAddition` below. ``norm.trelu_join: add`` (the default)
  keeps the plain sum, since Gitman & Ginsburg's §3.2 defines no join; the
  ``resnet50-imagenet`` recipe selects ``weighted``.

Not taken from that code: its activation is a translated *PReLU* (``TPReLU``:
a learnable slope clamped to [0, 1], init 0.25, around the translation); we keep
Gitman & Ginsburg's TReLU (slope 0), the method as the paper under test defines it.

Under gradient accumulation the effective weight is computed once per optimizer
step, not per micro-batch (`ReparamConv2d`/`ReparamLinear` in wn.py, norms/step_weights.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .bundle import Normalizer
from .joins import Add
from .wn import WNConv2d, WNLinear


@dataclass
class Options:
    trelu_join: str = "add"
    """trelu-wn residual join: 'add' (plain sum) or 'weighted' (Xiang & Li's L2-normalised weighted addition, init: the shortcut alone)."""

    def check(self) -> None:
        if self.trelu_join not in ("add", "weighted"):
            raise ValueError("trelu_join must be 'add' or 'weighted'")


#: Added to the squared norm of the join weights (Xiang & Li's WeightNormalizedAddition).
JOIN_EPS = 1e-6


def _per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a per-channel vector (C,) so that it broadcasts against `like` (N, C, ...)."""
    return t.view((1, -1) + (1,) * (like.dim() - 2)).to(like.dtype)


def _threshold(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return a.view((-1,) + (1,) * (x.dim() - 2)).to(x.dtype)


class _TReLU(torch.autograd.Function):
    """``z = max(x, a)`` keeping only z for the backward pass (``torch.maximum`` keeps x, which
    nothing else keeps, while z is the next layer's input, kept by it anyway): where z > a the
    gradient goes to x, elsewhere (x <= a, z = a) to a, summed per channel in fp32."""

    @staticmethod
    def forward(ctx, x, a):
        z = torch.maximum(x, _threshold(a, x))
        ctx.save_for_backward(z, a)
        return z

    @staticmethod
    def backward(ctx, dz):
        z, a = ctx.saved_tensors
        above = z > _threshold(a, z)
        dx = torch.where(above, dz, 0) if ctx.needs_input_grad[0] else None
        da = None
        if ctx.needs_input_grad[1]:
            dims = tuple(d for d in range(z.dim()) if d != 1)
            da = torch.where(above, 0, dz).sum(dim=dims, dtype=torch.float32).to(a.dtype)
        return dx, da


class TReLU(nn.Module):
    """``relu(x - a) + a == max(x, a)`` with a learnable threshold ``a`` per channel (dim 1), init 0."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features
        self.a = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # inductor decides itself what to keep
            return torch.maximum(x, _threshold(self.a, x))
        return _TReLU.apply(x, self.a)

    def extra_repr(self) -> str:
        return str(self.num_features)


class Affine(nn.Module):
    """``gamma * x + beta`` per channel (dim 1), gamma init 1, beta init 0 (Xiang & Li's ``Affine``)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(_per_channel(self.bias, x), x, _per_channel(self.weight, x))

    def extra_repr(self) -> str:
        return str(self.num_features)


class WeightedAddition(nn.Module):
    """Join ``(w_s shortcut + w_b branch) / sqrt(w_s^2 + w_b^2 + 1e-6)`` per channel; init w_s = 1, w_b = 0.

    Xiang & Li's ``WeightNormalizedAddition`` for two operands. The two weight
    vectors are separate 1-d parameters (so ``optim.no_decay_norm_bias`` treats
    them like other gains); `normalized()` gives the weights actually applied.
    """

    def __init__(self, num_features: int, eps: float = JOIN_EPS):
        super().__init__()
        self.num_features = num_features
        self.eps = float(eps)
        self.shortcut_weight = nn.Parameter(torch.ones(num_features))
        self.branch_weight = nn.Parameter(torch.zeros(num_features))

    def normalized(self) -> tuple[torch.Tensor, torch.Tensor]:
        inv = torch.rsqrt(self.shortcut_weight.square() + self.branch_weight.square() + self.eps)
        return self.shortcut_weight * inv, self.branch_weight * inv

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        ws, wb = self.normalized()
        return torch.addcmul(shortcut * _per_channel(ws, shortcut), branch, _per_channel(wb, branch))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class TReLUWeightNorm(Normalizer):
    name = "trelu-wn"
    default_bias = False
    no_tokens = "its TReLU is the network's activation in place of ReLU; a transformer's non-linearity is GELU"

    def conv(self, in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, bias=None, last=False):
        # Every layer, the output layer included, is W/(||W|| + eps): gamma and beta come after it (`output`).
        return WNConv2d(in_ch, out_ch, kernel_size, stride, padding, groups, False, eps=self.options.eps,
                        gain=False)

    def linear(self, in_features, out_features, bias=None, last=False):
        return WNLinear(in_features, out_features, False, eps=self.options.eps, gain=False)

    def act(self, num_features):
        return TReLU(num_features)

    def residual(self, num_features=None):
        if self.options.trelu_join == "add":
            return Add()
        if num_features is None:
            raise ValueError("trelu-wn's weighted join needs the channel count: call residual(num_features)")
        return WeightedAddition(num_features)

    def output(self, num_features):
        return Affine(num_features)


def build(options):
    """WN without gain or bias in hidden layers, TReLU max(x, a) with learnable a; scale and bias on the last layer only."""
    return TReLUWeightNorm(options)
