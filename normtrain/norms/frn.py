"""`frn`: Filter Response Normalization with a Thresholded Linear Unit (Singh & Krishnan 2020, CVPR, §3):

    nu^2 = sum_i x_i^2 / N                 (eq. 1; N = H x W, per sample and channel)
    x_hat = x / sqrt(nu^2 + eps)           (eq. 2)
    y = gamma x_hat + beta                 (eq. 3)
    z = max(y, tau)                        (eq. 4, TLU; gamma, beta, tau per channel)

No mean is subtracted and nothing depends on the batch. Split over the bundle:
``norm`` is FRN (eqs. 1-3, gamma init 1, beta 0), ``act`` is TLU (eq. 4, tau
init 0, the same function as trelu-wn's TReLU, which it reuses), so a norm
followed by an activation is FRN + TLU, the pair that replaces BN + ReLU in the
paper; a norm alone (the last one of a post-activation block) is FRN without
TLU, an activation alone (after a residual join) is TLU. Conv biases are off
where FRN follows (its beta replaces them).

Epsilon: ``norm.eps`` (default 1e-5, as timm's ``FilterResponseNormTlu2d``; the
paper uses 1e-6: set ``norm.eps: 1e-6``). ``norm.frn_learn_eps: true`` gives the
paper's learned variant for 1x1 activation maps and fully connected layers,
where N = 1 makes eq. 2 nearly sign(x): eps = norm.eps + |eps_l| with eps_l a
learnable scalar per layer initialised to 1e-4 (the paper's code adds
``tf.abs(epsilon)``; its 1e-4 init and 1e-6 floor are as the TF-Addons review
of the paper quotes them). Input (N, C) (``dims=1``) is normalized per sample
and channel over its single value, as a 1x1 map.

Reference code: timm's ``layers/filter_response_norm.py`` computes the same
``x * rsqrt(mean_HW(x^2) + eps)``, affine and ``max(x, tau)`` with the mean of
squares in fp32; we follow it, and add the learned-eps option it lacks.

Memory: written as tensor ops, autograd would keep an fp32 copy of every input and
normalized activation for the backward pass (about 2.9x bn's saved activation bytes on
ResNet-50 under bf16 autocast, docs/PERFORMANCE.md). `frn_function` keeps only the
input, in its own dtype, and the per-(sample, channel) ``1/sqrt(nu^2 + eps)``, and its
backward recomputes the rest from them; `frn_reference` is eqs. 1-3 as tensor ops (what
torch.compile traces: inductor decides itself what to keep), and tests check that the
two agree, forward and backward. TLU keeps only its output (trelu_wn.TReLU).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .bundle import Normalizer
from .trelu_wn import TReLU


@dataclass
class Options:
    frn_learn_eps: bool = False
    """FRN: learn the epsilon, eps = norm.eps + |eps_l| with eps_l a learnable scalar per layer, init 1e-4 (Singh & Krishnan 2020, for 1x1 activation maps and fully connected layers)."""


#: Initial value of the learned eps_l (Singh & Krishnan 2020, learned-epsilon variant).
LEARNED_EPS_INIT = 1e-4


def _view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.view((1, -1) + (1,) * (x.dim() - 2))


def frn_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                  eps_l: torch.Tensor | None = None) -> torch.Tensor:
    """Eqs. 1-3 as tensor ops, statistics in fp32, output in x's dtype."""
    xf = x.float()
    nu2 = xf.square()
    if x.dim() > 2:
        nu2 = nu2.mean(dim=tuple(range(2, x.dim())), keepdim=True)
    eps = eps if eps_l is None else eps + eps_l.abs()
    y = xf * torch.rsqrt(nu2 + eps)
    return torch.addcmul(_view(bias, x), y, _view(weight, x)).to(x.dtype)


class _FRN(torch.autograd.Function):
    """`frn_reference` that saves x (its own dtype) and r = 1/sqrt(nu^2 + eps) only.

    With x_hat = x r and dx_hat = dy gamma (per sample and channel, over the K = H x W positions):
    dx = r (dx_hat - x_hat mean_K(dx_hat x_hat)), dgamma = sum dy x_hat, dbeta = sum dy,
    d eps = -1/2 sum r^2 sum_K(dx_hat x_hat) (times sign(eps_l) for the learned eps).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps_l, eps: float):
        xf = x.float()
        dims = tuple(range(2, x.dim()))
        nu2 = xf.square().mean(dim=dims, keepdim=True) if dims else xf.square()
        r = torch.rsqrt(nu2 + (eps if eps_l is None else eps + eps_l.abs()))
        ctx.save_for_backward(x, r, weight, eps_l)
        return torch.addcmul(_view(bias, x), xf * r, _view(weight, x)).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, r, weight, eps_l = ctx.saved_tensors
        dims = tuple(range(2, x.dim()))
        channel_dims = (0,) + dims
        dyf = dy.float()
        x_hat = x.float() * r
        dx_hat = dyf * _view(weight, x)
        dx = dweight = dbias = deps = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[3]:
            proj = dx_hat * x_hat
            proj = proj.mean(dim=dims, keepdim=True) if dims else proj
            if ctx.needs_input_grad[0]:
                dx = (r * torch.addcmul(dx_hat, x_hat, proj, value=-1)).to(x.dtype)
            if ctx.needs_input_grad[3]:
                count = x[0, 0].numel()
                deps = (-0.5 * count * (r.square() * proj).sum() * torch.sign(eps_l)).to(eps_l.dtype)
        if ctx.needs_input_grad[1]:
            dweight = (dyf * x_hat).sum(dim=channel_dims)
        if ctx.needs_input_grad[2]:
            dbias = dyf.sum(dim=channel_dims)
        return dx, dweight, dbias, deps, None


def frn_function(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                 eps_l: torch.Tensor | None = None) -> torch.Tensor:
    """`frn_reference`'s value and gradients, keeping only x and r for the backward pass (`_FRN`)."""
    return _FRN.apply(x, weight, bias, eps_l, eps)


class FilterResponseNorm(nn.Module):
    """``gamma * x / sqrt(mean_{H,W}(x^2) + eps) + beta`` per sample and channel; input (N, C) or (N, C, *)."""

    def __init__(self, num_features: int, eps: float = 1e-5, learn_eps: bool = False):
        super().__init__()
        self.num_features = num_features
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        if learn_eps:
            self.eps_l = nn.Parameter(torch.tensor(LEARNED_EPS_INIT))
        else:
            self.register_parameter("eps_l", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"FRN: expected input (N, C) or (N, C, ...), got shape {tuple(x.shape)}")
        if torch.compiler.is_compiling():
            return frn_reference(x, self.weight, self.bias, self.eps, self.eps_l)
        return frn_function(x, self.weight, self.bias, self.eps, self.eps_l)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, learn_eps={self.eps_l is not None}"


class FilterResponseNormTLU(Normalizer):
    name = "frn"
    default_bias = False  # FRN's beta replaces the conv bias
    no_tokens = ("FRN is one half of FRN + TLU, the pair that replaces BN + ReLU (without TLU's learned "
                 "threshold nothing centres it); a transformer's norms are not followed by an activation")

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        return FilterResponseNorm(num_features, eps=self.options.eps, learn_eps=self.options.frn_learn_eps)

    def act(self, num_features: int) -> nn.Module:
        return TReLU(num_features)  # TLU: max(y, tau), tau learnable per channel, init 0


def build(options):
    """FRN + TLU: gamma x / sqrt(mean_HW x^2 + eps) + beta, then max(y, tau); batch-independent (Singh & Krishnan 2020)."""
    return FilterResponseNormTLU(options)
