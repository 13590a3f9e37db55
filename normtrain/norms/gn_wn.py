"""`gn-wn`: Weight Normalization convs followed by GroupNorm, the "GN+WN [36]" row of
Qiao et al. 2019's Table 2 (ResNet-50 on ImageNet at 1 image per GPU, 25.09% top-1
error against GN's 24.81% and GN+WS's 23.72%):

    conv:  w_j = g_j v_j / (||v_j|| + eps)   (Salimans & Kingma 2016, as `wn`)
    norm:  GroupNorm(norm.groups, C)          (as `gn`)

The WN layers keep their gain g (init 1) although GN's affine follows, as
Salimans & Kingma define WN; they have no bias where GN follows (GN's shift
replaces it) and one where the network asks for it (unnormalized layers, the
output layer). ``norm.init: data`` gives WN's data-dependent init of g.
"""
from __future__ import annotations

from torch import nn

from .gn import group_norm
from .wn import WeightNorm


class GroupNormWeightNorm(WeightNorm):
    name = "gn-wn"
    default_bias = False  # GroupNorm's shift replaces the conv bias
    channels_last_ok = False  # CUDA group_norm is NCHW-only (as gn)
    tokens = "WN linear layers and gn's token norm (groups of features over all the tokens of a sample)"

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        return group_norm(num_features, self.options.groups, self.options.eps)


def build(options):
    """WN layers followed by GroupNorm (the WS paper's GN+WN row of Table 2)."""
    return GroupNormWeightNorm(options)
