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
        view = (1, -1) + (1,) * (x.dim() - 2)
        xf = x.float()
        nu2 = xf.square()
        if x.dim() > 2:
            nu2 = nu2.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        eps = self.eps if self.eps_l is None else self.eps + self.eps_l.abs()
        y = xf * torch.rsqrt(nu2 + eps)
        return torch.addcmul(self.bias.view(view), y, self.weight.view(view)).to(x.dtype)

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
