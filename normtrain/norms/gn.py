"""`gn`, `ln`, `in`: Group Normalization (Wu & He 2018) and its two extremes, as
described in Dimitriou & Arandjelović 2020 §2.1 and the WS paper (Qiao et al.
2019, Table 2 rows LN / IN / GN):

    GroupNorm: the C dimension is divided into G_C groups, (M, G_C, C/G_C, F);
    statistics over M x G_C slices of (C/G_C, F) values, biased variance.

``gn`` = ``nn.GroupNorm(norm.groups, C)`` (default 32 groups), ``in`` = GroupNorm
with C groups (InstanceNorm), both with a per-channel affine; ``ln`` (ln.py) is
GroupNorm with 1 group on conv maps. The conv bias is off by
default (the norm's shift replaces it). ``norm(C, dims=1)`` takes (N, C) input
too. C must be divisible by the number of groups (a clear NormShapeError, a
ValueError, otherwise).

Precision under autocast (`AmpGroupNorm`): CUDA autocast runs group_norm in fp32, so
every GN layer would write an fp32 copy of its bf16 input, save it for the backward
pass and hand an fp32 activation to the next layer (about 2.4x bn's saved activation
bytes on ResNet-50, docs/PERFORMANCE.md). GN runs in the autocast dtype instead, as
timm's ``fast_norm.fast_group_norm`` does: its fp16/bf16 CUDA and CPU kernels accumulate
the statistics in fp32 anyway, and only the output is rounded, as for BatchNorm.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .bundle import Normalizer
from .options import NormShapeError


@dataclass
class Options:
    groups: int = 32
    """GroupNorm groups (gn, ws-gn, gn-wn, evonorm-s0; the G_C of seqnorm). ln = 1 group, in = one per channel."""

    def check(self) -> None:
        if self.groups < 1:
            raise ValueError("groups must be >= 1")


def check_groups(num_channels: int, groups: int) -> None:
    if groups < 1 or num_channels % groups != 0:
        raise NormShapeError(f"GroupNorm: {num_channels} channels are not divisible into {groups} groups "
                             f"(C={num_channels}, groups={groups}); choose norm.groups dividing every layer's width")


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype in force for x's device, or None (also for devices without autocast: meta)."""
    device = x.device.type
    if not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def amp_group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float) -> torch.Tensor:
    """``F.group_norm`` that, under autocast, runs in the autocast dtype (timm's ``fast_group_norm``)
    instead of autocast's fp32; outside autocast it is ``F.group_norm``."""
    dtype = autocast_dtype(x)
    if dtype is None:
        return F.group_norm(x, groups, weight, bias, eps)
    device = x.device.type
    x = x.to(dtype)
    weight = weight.to(dtype) if weight is not None else None
    bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(device, enabled=False):
        return F.group_norm(x, groups, weight, bias, eps)


class AmpGroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters and state_dict) running in the autocast dtype (`amp_group_norm`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return amp_group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def group_norm(num_channels: int, groups: int, eps: float, affine: bool = True) -> nn.GroupNorm:
    """`AmpGroupNorm`(groups, C) after checking that C splits into `groups` groups."""
    check_groups(num_channels, groups)
    return AmpGroupNorm(groups, num_channels, eps=eps, affine=affine)


class GroupNorm(Normalizer):
    name = "gn"
    default_bias = False
    channels_last_ok = False  # CUDA group_norm is NCHW-only
    tokens = ("the tokens as positions: statistics over groups of norm.groups features and all the tokens "
              "of a sample")

    def groups_for(self, num_features: int) -> int:
        return self.options.groups

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        return group_norm(num_features, self.groups_for(num_features), self.options.eps)


class InstanceNorm(GroupNorm):
    name = "in"
    tokens = "the tokens as positions: each feature over the tokens of a sample"

    def groups_for(self, num_features: int) -> int:
        return num_features


def build_gn(options):
    """GroupNorm: statistics over groups of norm.groups channels (default 32) per sample."""
    return GroupNorm(options)


def build_in(options):
    """InstanceNorm as GroupNorm with one group per channel: statistics over (H, W) of each channel and sample."""
    return InstanceNorm(options)
