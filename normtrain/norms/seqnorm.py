"""`seqnorm`: Sequential Normalization (Dimitriou & Arandjelović 2020 §2.1):

    "SeqNorm employs both GroupNorm and GhostNorm in a sequential manner.
    Initially, the input tensor is divided into (M, G_C, C/G_C, F) dimensions,
    normalizing across M x G_C number of slices, i.e. same as GroupNorm. Then
    [...] the input tensor is divided into (G_M, M/G_M, C, F) dimensions for
    normalizing over C x G_M slices of (M/G_M, F) dimensions."

Their eq. (1) has a single scale and shift after the Norm, so the GroupNorm step
has no affine and the GhostNorm step carries gamma and beta (DESIGN §3):
``GhostNorm_{G_M}(GroupNorm_{G_C}(x))`` with G_C = ``norm.groups`` (the paper's
best CIFAR-100 setting is G_C = 4, G_M = 8) and G_M = ``norm.ghost_groups``.
The paper notes the reverse order did worse (§3.3).

Precision under autocast: the GroupNorm step runs in the autocast dtype (gn.py's
`amp_group_norm`; CUDA autocast would run group_norm in fp32, writing an fp32 copy of
the activation and handing an fp32 activation on). The GhostNorm step then takes
GhostNorm's fused batch-norm path (see ghost.py).
"""
from __future__ import annotations

import torch
from torch import nn

from .bundle import Normalizer
from .ghost import GhostBatchNorm
from .gn import amp_group_norm, check_groups


class SeqNorm(nn.Module):
    """GroupNorm(G_C groups, no affine) then GhostBatchNorm(G_M chunks, affine)."""

    def __init__(self, num_features: int, groups: int = 32, ghost_groups: int = 4, eps: float = 1e-5,
                 momentum: float | None = 0.1):
        super().__init__()
        check_groups(num_features, groups)
        self.groups = int(groups)
        self.eps = float(eps)
        self.ghost = GhostBatchNorm(num_features, ghost_groups, eps=eps, momentum=momentum, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost(amp_group_norm(x, self.groups, None, None, self.eps))

    def extra_repr(self) -> str:
        return f"groups={self.groups}, eps={self.eps}"


class SequentialNorm(Normalizer):
    name = "seqnorm"
    default_bias = False
    channels_last_ok = False  # its GroupNorm step: CUDA group_norm is NCHW-only

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        o = self.options
        return SeqNorm(num_features, o.groups, o.ghost_groups, eps=o.eps, momentum=o.momentum)


def build(options):
    """SeqNorm: GroupNorm (no affine, norm.groups) then GhostNorm (norm.ghost_groups chunks)."""
    return SequentialNorm(options)
