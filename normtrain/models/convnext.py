"""ConvNeXt (Liu, Mao, Wu, Feichtenhofer, Darrell & Xie 2022, "A ConvNet for the 2020s", CVPR), in
torchvision's layout (``torchvision.models.ConvNeXt``), every layer through the bundle.

    stem: conv 4x4 stride 4 + channel norm                       (features.0)
    4 stages of blocks (features.1, .3, .5, .7), between them a channel norm + conv 2x2 stride 2
    block: depthwise conv 7x7 -> channels-last -> token norm -> linear C->4C -> GELU -> linear 4C->C
           -> back to (N, C, H, W) -> x + layer_scale * branch    (layer_scale init 1e-6)
    head: global average pool -> channel norm -> flatten -> linear (classifier)

- ``convnext-tiny``: ConvNeXt-T, stages of depth (3, 3, 9, 3) and width (96, 192, 384,
  768); with ``ln`` it has torchvision ``convnext_tiny``'s 28,589,128 parameters (and its
  parameter names: torchvision state_dicts load as they are).

ConvNeXt's LayerNorms come from the bundle: ``channel_norm(C)`` where torchvision has
``LayerNorm2d`` on an (N, C, H, W) map (stem, downsampling, head) and ``token_norm(C)``
inside a block, on the channels-last map (N, H, W, C). With ``ln`` both are LayerNorm over
the C channels of each position; ``dyt`` puts the authors' DynamicTanh in both places
(channels_first / channels_last, as their ``convert_ln_to_dyt``); ``bn`` is BatchNorm over
(N, H, W) per channel (the paper's starting point, which LN replaced, §2.6). Each block's
join is ``bundle.residual(C)``: ``model.drop_path`` sets the stochastic depth (torchvision's
convnext_tiny uses 0.1; the rates grow linearly as for every network here, see
norms/residual.py) and ``norm.residual`` applies. GELU is the architecture's.

Initialisation (``model.init: default``, the ConvNeXt recipe's setting) is torchvision's and
the paper's: conv and linear weights truncated normal with std 0.02, biases 0.
``no_weight_decay()`` names the layer scales: the authors' code keeps them 1-d and out of
weight decay; torchvision's shape (C, 1, 1) is kept here so that its state_dicts load.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import UsageError
from ..norms import Normalizer

#: (width, blocks) of each stage of ConvNeXt-T (Liu et al. 2022 §3, torchvision's convnext_tiny).
TINY = ((96, 3), (192, 3), (384, 9), (768, 3))


class Permute(nn.Module):
    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)


class CNBlock(nn.Module):
    """torchvision's ``CNBlock``: ``join(x, layer_scale * block(x))``."""

    def __init__(self, norm: Normalizer, dim: int, layer_scale: float):
        super().__init__()
        self.block = nn.Sequential(
            norm.conv(dim, dim, 7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            norm.token_norm(dim),
            norm.linear(dim, 4 * dim, bias=True),
            nn.GELU(),
            norm.linear(4 * dim, dim, bias=True),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.join = norm.residual(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.join(x, self.layer_scale * self.block(x))


class ConvNeXt(nn.Module):
    def __init__(self, norm: Normalizer, num_classes: int, in_shape: Sequence[int], stages=TINY,
                 layer_scale: float = 1e-6, dropout: float = 0.0):
        super().__init__()
        if len(in_shape) != 3 or min(in_shape[1:]) < 32:
            raise UsageError(f"ConvNeXt downsamples by 32: it needs images (C, H, W) of at least 32x32; "
                             f"got input shape {tuple(in_shape)} (set data.image_size)")
        first = stages[0][0]
        layers: list[nn.Module] = [nn.Sequential(norm.conv(in_shape[0], first, 4, stride=4, bias=True),
                                                 norm.channel_norm(first))]
        for i, (width, blocks) in enumerate(stages):
            layers.append(nn.Sequential(*(CNBlock(norm, width, layer_scale) for _ in range(blocks))))
            if i + 1 < len(stages):
                layers.append(nn.Sequential(norm.channel_norm(width),
                                            norm.conv(width, stages[i + 1][0], 2, stride=2, bias=True)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = stages[-1][0]
        # torchvision's indices: classifier.0 the norm, .2 the linear layer (model.dropout sits with the flatten)
        flatten = nn.Sequential(nn.Flatten(1), nn.Dropout(dropout)) if dropout > 0 else nn.Flatten(1)
        self.classifier = nn.Sequential(norm.channel_norm(last), flatten,
                                        norm.linear(last, num_classes, bias=True, last=True))
        self.output = norm.output(num_classes)
        self._init_torchvision()

    @torch.no_grad()
    def _init_torchvision(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """The layer scales: 1-d (no weight decay) in the ConvNeXt code, (C, 1, 1) here as in torchvision (timm's convention)."""
        return {n for n, _ in self.named_parameters() if n.endswith("layer_scale")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.classifier(self.avgpool(self.features(x))))


def build_convnext_tiny(norm, num_classes, in_shape, dropout=0.0, layer_scale=1e-6):
    """ConvNeXt-T: stages (3, 3, 9, 3) x (96, 192, 384, 768), torchvision's layout (28,589,128 parameters with ln)."""
    return ConvNeXt(norm, num_classes, in_shape, TINY, layer_scale, dropout)
