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
"""
from __future__ import annotations

from dataclasses import dataclass

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


def group_norm(num_channels: int, groups: int, eps: float, affine: bool = True) -> nn.GroupNorm:
    """nn.GroupNorm(groups, C) after checking that C splits into `groups` groups."""
    check_groups(num_channels, groups)
    return nn.GroupNorm(groups, num_channels, eps=eps, affine=affine)


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
