"""Weight initialisation schemes selectable in a recipe (`model.init`).

- ``kaiming``: torchvision's ResNet init: He normal, fan_out, for ReLU on every
  convolution; Linear layers (the classifier, MLP layers) keep PyTorch's own
  default (weight and bias uniform(+-1/sqrt(fan_in))), as torchvision leaves its
  ``fc`` (ResNet-50's classifier std ~0.013; He fan_out there would give
  sqrt(2/classes), 0.45 for 10 classes, and an initial loss far above ln(classes)).
  Torchvision's convolutions have no bias; ours (``none``) start at 0. Its
  optional zero-init of each block's last BN gamma is ``model.options:
  {zero_init_residual: true}``, off by default as there.
- ``xavier``: Glorot uniform (Gitman & Ginsburg §4.2 "Weights were initialized
  using Xavier initialization").
- ``caffe-xavier``: Caffe's "xavier" filler, uniform(±sqrt(3 / fan_in)) (DESIGN
  §4: not PyTorch's xavier; used by cifar10-nv).
- ``default``: leave PyTorch's per-layer defaults.

A recipe that states its own init keeps it (Gitman & Ginsburg's Xavier; Caffe's
xavier for cifar10-nv): ``xavier`` and ``caffe-xavier`` set conv and Linear
weights, biases 0. Only the raw weight tensor is touched (``weight`` or, for
reparametrised layers, ``weight_v``), so a method's own parameters (WN gain,
TReLU threshold, NF skip gain) keep their method-defined init.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UsageError
from . import SCHEMES  # the names live in the package so that checking them needs no torch


def _raw_weight(m: nn.Module):
    w = getattr(m, "weight_v", None)
    if isinstance(w, torch.Tensor):
        return w
    w = getattr(m, "weight", None)
    return w if isinstance(w, nn.Parameter) else None


@torch.no_grad()
def initialize(model: nn.Module, scheme: str) -> None:
    if scheme not in SCHEMES:
        raise UsageError(f"unknown model.init '{scheme}'; choose from: {', '.join(SCHEMES)}")
    if scheme == "default":
        return
    for m in model.modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        if scheme == "kaiming" and not isinstance(m, nn.Conv2d):
            continue  # torchvision: Linear layers keep PyTorch's default
        w = _raw_weight(m)
        if w is None or w.dim() < 2:
            continue
        if scheme == "kaiming":
            nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
        elif scheme == "xavier":
            nn.init.xavier_uniform_(w)
        else:  # caffe-xavier
            fan_in = w[0].numel()
            bound = math.sqrt(3.0 / fan_in)
            nn.init.uniform_(w, -bound, bound)
        b = getattr(m, "bias", None)
        if isinstance(b, nn.Parameter):
            nn.init.zeros_(b)
