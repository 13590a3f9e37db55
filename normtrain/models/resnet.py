"""Residual networks, every layer built through the normalization bundle.

ImageNet networks (torchvision's "v1.5" layout, He et al. 2016a with the stride
on the 3x3 conv of the bottleneck):

- ``resnet18`` (basic blocks [2, 2, 2, 2]), ``resnet50`` ([3, 4, 6, 3]) and
  ``resnet101`` ([3, 4, 23, 3]) bottlenecks.
- ``resnext50-32x4d`` / ``resnext101-32x4d``: the same bottlenecks with a
  grouped 3x3 conv, cardinality 32 and 4 channels per group (Xie et al. 2017;
  the WS paper §3.1 trains both as "32x4d"). torchvision ships
  ``resnext50_32x4d`` but only ``resnext101_32x8d``; ours is 32x4d throughout.

With ``bn`` the parameter names and shapes are torchvision's (conv1, bn1,
layer1.0.conv1, ..., layer1.0.downsample.0/1, fc), so a torchvision state_dict
loads as is; ResNet-50 has torchvision's 25,557,032 parameters.
The last norm of each block keeps gamma = 1 unless ``zero_init_residual=True``
(Goyal et al.'s trick, off by default as in torchvision).

CIFAR networks:

- ``resnet56`` / ``resnet20``: He et al. 2016a §4.2, 3 stages of 9 (resnet20: 3)
  basic blocks with 16/32/64 channels on 32x32 inputs. The paper's CIFAR nets use shortcut *option A*
  (identity with zero-padded channels, stride-2 subsampling); we use **option B**
  (a 1x1 projection conv + norm where the shape changes, identity elsewhere) so
  that every layer, shortcuts included, goes through the bundle: NormProp's
  normalized projection and WN's reparametrised conv then apply to the shortcut
  too. This adds 2 projections (2,560 conv weights + their norms) to the
  853,018 parameters of the option-A network.
- ``wrn28-10``: Zagoruyko & Komodakis 2016, WRN-28-10: pre-activation "wide
  basic" blocks (norm-act-conv3x3-[dropout]-norm-act-conv3x3), 4 blocks per
  stage, widths 160/320/640 (16 x k, k = 10), a 1x1 projection on the
  pre-activated input where the shape changes, final norm-act-pool-fc.
  ``block_dropout`` is the paper's dropout between the two convs of a block.

Pre-activation ResNet-50 (``preact-resnet50``; He et al. 2016b "Identity
mappings", in the layout of the Hoedt 2022 blog's ``PreResidualBottleneck``):
in a block with a projection the pre-activation (norm + act) is applied to the
block input *globally* (both the projection and the residual branch see it);
in the other blocks it is the first part of the residual branch and the
identity shortcut carries the raw sum. The first block of the network has no
pre-activation (the stem already ends with norm-act-maxpool); the projection
shortcut is a plain 1x1 conv (He 2016b); a final norm + act precede the pool.

Every residual join is ``norm.residual(channels)`` (NormProp's /sqrt(2)
modification and trelu-wn's weighted addition live there; `models.build` wraps
it with the ``norm.residual`` scaling and ``model.drop_path``); a norm directly
followed by its activation is one ``norm.norm_act(...)`` call (EvoNorm fuses the
pair); the classifier is ``norm.linear(..., last=True)`` followed by
``norm.output(num_classes)`` (trelu-wn's scale and bias); ``dropout`` is applied to the pooled features
before the classifier.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..norms import Normalizer
from .pool import GlobalAvgPool2d


# -- ImageNet ResNet / ResNeXt (v1.5) ------------------------------------------------

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, norm: Normalizer, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        self.conv1 = norm.conv(inplanes, planes, 3, stride=stride, padding=1)
        self.bn1, self.relu1 = norm.norm_act(planes)
        self.conv2 = norm.conv(planes, planes, 3, padding=1)
        self.bn2 = norm.norm(planes)
        self.downsample = downsample
        self.join = norm.residual(planes)
        self.relu = norm.act(planes)

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.join(identity, out))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, groups) -> 1x1 x4, torchvision's v1.5 bottleneck."""

    expansion = 4

    def __init__(self, norm: Normalizer, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = norm.conv(inplanes, width, 1)
        self.bn1, self.relu1 = norm.norm_act(width)
        self.conv2 = norm.conv(width, width, 3, stride=stride, padding=1, groups=groups)
        self.bn2, self.relu2 = norm.norm_act(width)
        self.conv3 = norm.conv(width, planes * self.expansion, 1)
        self.bn3 = norm.norm(planes * self.expansion)
        self.downsample = downsample
        self.join = norm.residual(planes * self.expansion)
        self.relu = norm.act(planes * self.expansion)

    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.join(identity, out))


def _projection(norm: Normalizer, inplanes: int, outplanes: int, stride: int) -> nn.Module:
    """Option-B shortcut: 1x1 conv + norm, both from the bundle (torchvision's `downsample`)."""
    return nn.Sequential(norm.conv(inplanes, outplanes, 1, stride=stride), norm.norm(outplanes))


def _zero_last_gamma(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (BasicBlock, Bottleneck)):
            w = getattr(m.last_norm(), "weight", None)
            if isinstance(w, nn.Parameter):
                nn.init.zeros_(w)


class ResNet(nn.Module):
    def __init__(self, norm: Normalizer, block, layers: Sequence[int], num_classes: int = 1000,
                 in_shape: Sequence[int] = (3, 224, 224), groups: int = 1, width_per_group: int = 64,
                 dropout: float = 0.0, zero_init_residual: bool = False):
        super().__init__()
        self.inplanes = 64
        self.groups, self.base_width = groups, width_per_group
        self.conv1 = norm.conv(in_shape[0], 64, 7, stride=2, padding=3)
        self.bn1, self.relu = norm.norm_act(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(norm, block, 64, layers[0])
        self.layer2 = self._make_layer(norm, block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(norm, block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(norm, block, 512, layers[3], stride=2)
        self.avgpool = GlobalAvgPool2d()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = norm.linear(512 * block.expansion, num_classes, bias=True, last=True)
        self.output = norm.output(num_classes)
        if zero_init_residual:
            _zero_last_gamma(self)

    def _make_layer(self, norm, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = _projection(norm, self.inplanes, planes * block.expansion, stride)
        layers = [block(norm, self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(norm, self.inplanes, planes, groups=self.groups, base_width=self.base_width))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.output(self.fc(self.dropout(x)))


# -- pre-activation ResNet-50 (He et al. 2016b; Hoedt 2022 blog) ----------------------

def _out_of_place(m: nn.Module) -> nn.Module:
    """`m` with in-place computation switched off (modules that have an ``inplace`` flag, e.g. nn.ReLU)."""
    if getattr(m, "inplace", False):
        m.inplace = False
    return m


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck as in the Hoedt blog's ``PreResidualBottleneck``.

    ``residual_branch`` is one module, so a forward hook on it gives the
    residual-branch output and a hook on the block gives the block output.
    """

    expansion = 4

    def __init__(self, norm: Normalizer, inplanes: int, planes: int, stride: int = 1,
                 project: bool = False, no_preact: bool = False):
        super().__init__()
        preact = [] if no_preact else list(norm.norm_act(inplanes))
        if project:
            # The pre-activation is shared by the projection and the residual branch.
            self.preact = nn.Sequential(*preact)
            residual_preact = []
        else:
            self.preact = nn.Identity()
            # The block input is also the identity shortcut: an in-place activation applied to it
            # (methods whose norm is the identity, e.g. none or wn, with ReLU(inplace=True)) would
            # overwrite the shortcut with ReLU(x).
            residual_preact = [_out_of_place(m) for m in preact]
        out = planes * self.expansion
        self.downsample = norm.conv(inplanes, out, 1, stride=stride) if project else nn.Identity()
        self.residual_branch = nn.Sequential(
            *residual_preact,
            norm.conv(inplanes, planes, 1), *norm.norm_act(planes),
            norm.conv(planes, planes, 3, stride=stride, padding=1), *norm.norm_act(planes),
            norm.conv(planes, out, 1),
        )
        self.join = norm.residual(out)

    def forward(self, x):
        x = self.preact(x)
        return self.join(self.downsample(x), self.residual_branch(x))


class PreActResNet(nn.Module):
    def __init__(self, norm: Normalizer, layers: Sequence[int], num_classes: int = 1000,
                 in_shape: Sequence[int] = (3, 224, 224), dropout: float = 0.0):
        super().__init__()
        block = PreActBottleneck
        self.inplanes = 64
        self.stem = nn.Sequential(
            norm.conv(in_shape[0], 64, 7, stride=2, padding=3), *norm.norm_act(64),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.layer1 = self._make_layer(norm, block, 64, layers[0], no_preact=True)
        self.layer2 = self._make_layer(norm, block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(norm, block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(norm, block, 512, layers[3], stride=2)
        c = 512 * block.expansion
        self.final = nn.Sequential(*norm.norm_act(c))
        self.avgpool = GlobalAvgPool2d()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = norm.linear(c, num_classes, bias=True, last=True)
        self.output = norm.output(num_classes)

    def _make_layer(self, norm, block, planes, blocks, stride=1, no_preact=False):
        project = stride != 1 or self.inplanes != planes * block.expansion
        layers = [block(norm, self.inplanes, planes, stride, project=project, no_preact=no_preact)]
        self.inplanes = planes * block.expansion
        layers += [block(norm, self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(self.final(x)), 1)
        return self.output(self.fc(self.dropout(x)))


# -- CIFAR: ResNet-56 (option B) and WRN-28-10 ------------------------------------------

class CifarResNet(nn.Module):
    """He et al. 2016a §4.2: conv3x3-16, 3 stages of n basic blocks (16/32/64), pool, fc; depth 6n+2."""

    def __init__(self, norm: Normalizer, depth: int = 56, num_classes: int = 10,
                 in_shape: Sequence[int] = (3, 32, 32), dropout: float = 0.0):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        self.inplanes = 16
        self.conv1 = norm.conv(in_shape[0], 16, 3, padding=1)
        self.bn1, self.relu = norm.norm_act(16)
        self.layer1 = self._make_layer(norm, 16, n)
        self.layer2 = self._make_layer(norm, 32, n, stride=2)
        self.layer3 = self._make_layer(norm, 64, n, stride=2)
        self.avgpool = GlobalAvgPool2d()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = norm.linear(64, num_classes, bias=True, last=True)
        self.output = norm.output(num_classes)

    def _make_layer(self, norm, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = _projection(norm, self.inplanes, planes, stride)  # option B
        layers = [BasicBlock(norm, self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(norm, planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.output(self.fc(self.dropout(x)))


class WideBasic(nn.Module):
    """Zagoruyko & Komodakis' pre-activation wide basic block: B(3,3) with optional dropout between the convs."""

    def __init__(self, norm: Normalizer, inplanes: int, planes: int, stride: int = 1,
                 block_dropout: float = 0.0):
        super().__init__()
        self.bn1, self.relu1 = norm.norm_act(inplanes)
        self.conv1 = norm.conv(inplanes, planes, 3, stride=stride, padding=1)
        self.bn2, self.relu2 = norm.norm_act(planes)
        self.dropout = nn.Dropout(block_dropout) if block_dropout > 0 else nn.Identity()
        self.conv2 = norm.conv(planes, planes, 3, padding=1)
        project = stride != 1 or inplanes != planes
        # Projection on the pre-activated input, as in the authors' code.
        self.shortcut = norm.conv(inplanes, planes, 1, stride=stride) if project else None
        self.join = norm.residual(planes)

    def forward(self, x):
        o = self.relu1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        y = self.relu2(self.bn2(self.conv1(o)))
        y = self.conv2(self.dropout(y))
        return self.join(skip, y)


class WideResNet(nn.Module):
    def __init__(self, norm: Normalizer, depth: int = 28, widen: int = 10, num_classes: int = 100,
                 in_shape: Sequence[int] = (3, 32, 32), dropout: float = 0.0, block_dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = norm.conv(in_shape[0], widths[0], 3, padding=1)
        stages, cin = [], widths[0]
        for i, (w, s) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = [WideBasic(norm, cin if j == 0 else w, w, s if j == 0 else 1, block_dropout) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.layer1, self.layer2, self.layer3 = stages
        self.bn, self.relu = norm.norm_act(widths[3])
        self.avgpool = GlobalAvgPool2d()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = norm.linear(widths[3], num_classes, bias=True, last=True)
        self.output = norm.output(num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = torch.flatten(self.avgpool(self.relu(self.bn(x))), 1)
        return self.output(self.fc(self.dropout(x)))


# -- builders (registered in models/__init__.py) --------------------------------------

def build_resnet18(norm, num_classes, in_shape, dropout=0.0, zero_init_residual=False):
    """ResNet-18: basic blocks [2, 2, 2, 2], ImageNet layout (torchvision's)."""
    return ResNet(norm, BasicBlock, [2, 2, 2, 2], num_classes, in_shape, dropout=dropout,
                  zero_init_residual=zero_init_residual)


def build_resnet50(norm, num_classes, in_shape, dropout=0.0, zero_init_residual=False):
    """ResNet-50: bottlenecks [3, 4, 6, 3], torchvision's v1.5 layout (25,557,032 parameters with bn)."""
    return ResNet(norm, Bottleneck, [3, 4, 6, 3], num_classes, in_shape, dropout=dropout,
                  zero_init_residual=zero_init_residual)


def build_resnet101(norm, num_classes, in_shape, dropout=0.0, zero_init_residual=False):
    """ResNet-101: bottlenecks [3, 4, 23, 3], torchvision's v1.5 layout."""
    return ResNet(norm, Bottleneck, [3, 4, 23, 3], num_classes, in_shape, dropout=dropout,
                  zero_init_residual=zero_init_residual)


def build_resnext50_32x4d(norm, num_classes, in_shape, dropout=0.0, zero_init_residual=False):
    """ResNeXt-50 32x4d: ResNet-50's bottlenecks with a grouped 3x3 conv, 32 groups of 4 channels."""
    return ResNet(norm, Bottleneck, [3, 4, 6, 3], num_classes, in_shape, groups=32, width_per_group=4,
                  dropout=dropout, zero_init_residual=zero_init_residual)


def build_resnext101_32x4d(norm, num_classes, in_shape, dropout=0.0, zero_init_residual=False):
    """ResNeXt-101 32x4d: ResNet-101's bottlenecks with a grouped 3x3 conv, 32 groups of 4 channels."""
    return ResNet(norm, Bottleneck, [3, 4, 23, 3], num_classes, in_shape, groups=32, width_per_group=4,
                  dropout=dropout, zero_init_residual=zero_init_residual)


def build_preact_resnet50(norm, num_classes, in_shape, dropout=0.0):
    """Pre-activation ResNet-50: norm -> act -> conv bottlenecks, identity shortcuts carry the raw sum (He et al. 2016b)."""
    return PreActResNet(norm, [3, 4, 6, 3], num_classes, in_shape, dropout=dropout)


def build_resnet8(norm, num_classes, in_shape, dropout=0.0):
    """ResNet-8 for CIFAR: 3 stages of 1 basic block, 16/32/64 channels (a CPU-sized residual net)."""
    return CifarResNet(norm, 8, num_classes, in_shape, dropout=dropout)


def build_resnet20(norm, num_classes, in_shape, dropout=0.0):
    """ResNet-20 for CIFAR: 3 stages of 3 basic blocks, 16/32/64 channels, projection shortcuts (option B); 0.27M parameters."""
    return CifarResNet(norm, 20, num_classes, in_shape, dropout=dropout)


def build_resnet56(norm, num_classes, in_shape, dropout=0.0):
    """ResNet-56 for CIFAR: 3 stages of 9 basic blocks, 16/32/64 channels, projection shortcuts (option B)."""
    return CifarResNet(norm, 56, num_classes, in_shape, dropout=dropout)


def build_wrn28_10(norm, num_classes, in_shape, dropout=0.0, block_dropout=0.0):
    """WRN-28-10 for CIFAR: pre-activation wide basic blocks, widths 160/320/640 (Zagoruyko & Komodakis)."""
    return WideResNet(norm, 28, 10, num_classes, in_shape, dropout=dropout, block_dropout=block_dropout)
