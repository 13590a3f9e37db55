"""`ln`: Layer Normalization (Ba, Kiros & Hinton 2016, "Layer Normalization", arXiv:1607.06450, eq. 4):

    mu = 1/H sum_i a_i,   sigma = sqrt(1/H sum_i (a_i - mu)^2),   y_i = g_i (a_i - mu) / sigma + b_i

over the H summed inputs of one layer for one sample (biased variance, ``norm.eps``
added to it as PyTorch does), with a per-unit gain g (init 1) and bias b (init 0).

What "the H inputs of a layer" are depends on the network, and ``ln`` keeps the
meaning each kind of network gives it:

- **Conv maps (ResNets, cifar10-nv, MLPs)**: GroupNorm with 1 group, statistics over all
  (C, H, W) values of a sample with a per-channel affine (Wu & He 2018 §3.1, the "LN"
  rows of the WS paper's Table 2; `gn.GroupNorm`). This is the meaning ``ln`` has had
  in normtrain from the start and it is unchanged.
- **Transformer tokens**: over the C features of each token by itself, with a
  per-feature affine, ``torch.nn.LayerNorm(C)``, as the Transformer and ViT use it
  (Vaswani et al. 2017; Dosovitskiy et al. 2021; torchvision's ViT): `token_norm`.
- **ConvNeXt's (N, C, H, W) maps** (stem, downsampling layers, head): over the C
  channels of each position, torchvision's ``LayerNorm2d`` (Liu et al. 2022, "A ConvNet
  for the 2020s": "LN ... over the channel dimension"): `channel_norm`. With these,
  ``vit-b16`` and ``convnext-tiny`` have torchvision's parameter names and counts.

The conv bias is off where the norm follows a conv (its shift replaces it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gn import GroupNorm


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each position of an (N, C, H, W) map (torchvision's ``LayerNorm2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LayerNorm(GroupNorm):
    name = "ln"
    tokens = "LayerNorm over each token's features (nn.LayerNorm); ConvNeXt: the channels of each position (LayerNorm2d)"

    def groups_for(self, num_features: int) -> int:
        return 1

    def token_norm(self, num_features: int) -> nn.Module:
        return nn.LayerNorm(num_features, eps=self.options.eps)

    def channel_norm(self, num_features: int) -> nn.Module:
        return LayerNorm2d(num_features, eps=self.options.eps)


def build(options):
    """LayerNorm: on conv maps GroupNorm with 1 group (all (C, H, W) of a sample); in transformers each token's features."""
    return LayerNorm(options)
