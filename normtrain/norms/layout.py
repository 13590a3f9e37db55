"""How a method's conv norm is applied to a transformer's tokens (`Normalizer.token_norm`).

A ViT's activations are tokens with the features last, (N, L, C); a ConvNeXt block
holds its map channels-last, (N, H, W, C). Both are, without a copy, the (N, C, L, 1)
map in channels_last memory that a conv norm takes: the L tokens (H x W positions)
are its spatial positions. `AsMap` hands that view to a method's ``norm(C, dims=2)``
module, so every method keeps its own definition with the tokens as positions: BN's
statistics are over the (N, L) values of a feature, GhostNorm's over chunks of samples,
GroupNorm's over groups of features and all tokens of a sample. The result comes back
in the input's layout.
"""
from __future__ import annotations

import torch
from torch import nn


def as_map(x: torch.Tensor) -> torch.Tensor:
    """(N, ..., C) -> the (N, C, L, 1) view of it, L the product of the middle dims (channels_last memory)."""
    n, c = x.shape[0], x.shape[-1]
    return x.reshape(n, -1, c).transpose(1, 2).unsqueeze(-1)


def from_map(y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The inverse of `as_map`: (N, C, L, 1) -> `shape` (N, ..., C)."""
    return y.squeeze(-1).transpose(1, 2).reshape(shape)


class AsMap(nn.Module):
    """Apply `norm` (a module for (N, C, H, W) maps) to (N, ..., C) tokens as the (N, C, L, 1) map they view."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"token norm: expected tokens (N, ..., C), got shape {tuple(x.shape)}")
        return from_map(self.norm(as_map(x)), x.shape)


def is_token_family_norm(m: nn.Module) -> bool:
    """The norm modules the transformer methods add (RMSNorm, DynamicTanh), for code that finds normalization
    layers by type (log.track_norms, the bn-cost scenario). `AsMap` is not one: the norm inside it is."""
    from .dyt import DynamicTanh
    from .rmsn import SampleRMSNorm
    return isinstance(m, (nn.RMSNorm, SampleRMSNorm, DynamicTanh))
