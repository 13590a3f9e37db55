"""Adaptive gradient clipping (`train.grad_clip_mode: agc`; Brock, De, Smith & Simonyan 2021,
"High-Performance Large-Scale Image Recognition Without Normalization", §4.1):

    G_i <- lambda * (||W_i||* / ||G_i||) * G_i   if ||G_i|| / ||W_i||* > lambda,   else G_i
    ||W_i||* = max(||W_i||, eps),  eps = 1e-3

unit-wise: W_i and G_i are the weights and gradient of one output unit, i.e. one
row of a linear layer or one output channel (in x kh x kw) of a conv; a bias,
gain or other vector parameter is one unit as a whole (the official JAX code's
and timm's ``unitwise_norm`` for ndim <= 1). lambda is ``train.grad_clip``. The
paper does not clip the final linear layer; the classifier is found as the
module the normalization bundle built with ``last=True`` (`norms.bundle.output_layers`),
so no network's attribute names matter. Weights and gradients are those of the
raw parameters (the direction ``v`` of WN-style layers), as an optimizer sees them.

Reference code: timm's ``utils/agc.py`` (``adaptive_clip_grad``), which this
follows (clamping ||G_i|| at 1e-6 in the ratio so a zero gradient stays zero);
it leaves the choice of parameters to the caller, as here.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .norms.bundle import output_layers

#: Brock et al.'s floor on the unit-wise weight norm.
AGC_EPS = 1e-3


def unitwise_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm per output unit (dims 1.. of an (O, ...) weight, keepdim), or of the whole tensor if ndim <= 1."""
    if t.ndim <= 1:
        return torch.linalg.vector_norm(t)
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_(parameters: Iterable[torch.Tensor], clip: float, eps: float = AGC_EPS) -> None:
    """Clip each parameter's ``.grad`` in place, unit-wise, to ``clip * max(||W_i||, eps)``."""
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p.detach().float()).clamp_(min=eps).mul_(clip)
        grad = p.grad.detach()
        grad_norm = unitwise_norm(grad.float())
        factor = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp(min=1e-6), torch.ones_like(grad_norm))
        grad.mul_(factor.to(grad.dtype))


def agc_parameters(model: nn.Module) -> list[torch.Tensor]:
    """Parameters AGC clips: all of `model`'s with a gradient, except those of its output layer(s)."""
    skip = {id(p) for layer in output_layers(model) for p in layer.parameters()}
    return [p for p in model.parameters() if p.grad is not None and id(p) not in skip]
