"""NF-ResNet-50: Normalizer-Free pre-activation ResNet (Brock, De & Smith 2021a), in the
layout of the Hoedt 2022 blog's ``NFResidualNetwork`` / ``NFResidualBottleneck``.

No activation normalization anywhere. Each block computes

    out = shortcut + alpha * skip_gain * f(x / beta)

- ``beta = sqrt(expected variance)`` of the block input, tracked analytically
  as in the blog's ``_make_subnet``: the expected variance starts at 1; every
  block adds ``alpha**2``; the first (transition) block of a stage resets it to
  ``1 + alpha**2`` (its pre-activation is applied to the skip path as well, so
  the signal it passes on has unit variance plus one branch of growth).
- ``alpha = norm.nf_alpha`` (0.2), ``skip_gain`` a learnable scalar per block
  initialised to ``norm.nf_skip_gain`` (0 = SkipInit; 1 for signal-propagation plots).
- The pre-activation is "scale by 1/beta, then act". In a transition block it is
  applied to the block input globally (projection and residual branch both see
  it); elsewhere it is the head of the residual branch and the identity shortcut
  carries the un-scaled sum. The very first block has no pre-activation (the
  stem ends with act + maxpool), exactly as the blog's ``no_preact=True``.
- Scaled-WS convolutions and the gamma-scaled ReLU come from the bundle
  (``norm.conv`` and ``norm.act``); the network never calls ``norm.norm``.
- Head: act, global average pool, dropout, ``norm.linear(last=True)``.

Signal propagation: each block is an ``NFBottleneck`` whose ``residual_branch``
is one module, so forward hooks on the block and on ``block.residual_branch``
give the block output and the (un-scaled) residual-branch output; each block
also records the bookkeeping, ``block.beta`` (input std it divides by) and
``block.expected_var`` (the expected variance of its output).
``models.signal.signal_prop(model, x)`` collects the blog's statistics.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..norms import Normalizer
from .pool import GlobalAvgPool2d


class Scale(nn.Module):
    """Multiply by a fixed scalar (the blog's ``Scaling``)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def extra_repr(self) -> str:
        return f"{self.scale:.6g}"

    def forward(self, x):
        return x * self.scale


class NFBottleneck(nn.Module):
    expansion = 4

    def __init__(self, norm: Normalizer, inplanes: int, planes: int, stride: int = 1,
                 project: bool = False, beta: float = 1.0, alpha: float = 0.2,
                 expected_var: float = 1.0, no_preact: bool = False):
        super().__init__()
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.expected_var = float(expected_var)
        preact = [] if no_preact else [Scale(1.0 / beta), norm.act(inplanes)]
        if project:
            self.preact = nn.Sequential(*preact)
            residual_preact = []
        else:
            self.preact = nn.Identity()
            residual_preact = preact
        out = planes * self.expansion
        self.downsample = norm.conv(inplanes, out, 1, stride=stride) if project else nn.Identity()
        self.residual_branch = nn.Sequential(
            *residual_preact,
            norm.conv(inplanes, planes, 1), norm.act(planes),
            norm.conv(planes, planes, 3, stride=stride, padding=1), norm.act(planes),
            norm.conv(planes, out, 1),
        )
        self.skip_gain = nn.Parameter(torch.tensor(float(norm.nf_skip_gain)))
        self.join = norm.residual(out)

    def extra_repr(self) -> str:
        return f"beta={self.beta:.4f}, alpha={self.alpha}, expected_var={self.expected_var:.4f}"

    def forward(self, x):
        x = self.preact(x)
        skip = self.downsample(x)
        residual = self.residual_branch(x)
        return self.join(skip, residual * (self.alpha * self.skip_gain))


class NFResNet(nn.Module):
    def __init__(self, norm: Normalizer, layers: Sequence[int], num_classes: int = 1000,
                 in_shape: Sequence[int] = (3, 224, 224), dropout: float = 0.0):
        super().__init__()
        self.alpha = float(norm.nf_alpha)
        self._inplanes = 64
        self._expected_var = 1.0
        self.stem = nn.Sequential(
            norm.conv(in_shape[0], 64, 7, stride=2, padding=3), norm.act(64),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.layer1 = self._make_layer(norm, 64, layers[0], no_preact=True)
        self.layer2 = self._make_layer(norm, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(norm, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(norm, 512, layers[3], stride=2)
        c = 512 * NFBottleneck.expansion
        self.final_act = norm.act(c)
        self.avgpool = GlobalAvgPool2d()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = norm.linear(c, num_classes, bias=True, last=True)
        self.output = norm.output(num_classes)

    def _make_layer(self, norm, planes, blocks, stride=1, no_preact=False):
        a = self.alpha
        project = stride != 1 or self._inplanes != planes * NFBottleneck.expansion
        # Transition block: divides by the current expected std, then the variance restarts at 1 + alpha^2.
        beta = self._expected_var ** 0.5
        self._expected_var = 1.0 + a ** 2
        layers = [NFBottleneck(norm, self._inplanes, planes, stride, project=project, beta=beta, alpha=a,
                               expected_var=self._expected_var, no_preact=no_preact)]
        self._inplanes = planes * NFBottleneck.expansion
        for _ in range(1, blocks):
            beta = self._expected_var ** 0.5
            self._expected_var += a ** 2
            layers.append(NFBottleneck(norm, self._inplanes, planes, beta=beta, alpha=a,
                                       expected_var=self._expected_var))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(self.final_act(x)), 1)
        return self.output(self.fc(self.dropout(x)))


def build_nf_resnet50(norm, num_classes, in_shape, dropout=0.0):
    """NF-ResNet-50: pre-activation bottlenecks x + alpha * skip_gain * f(x / beta), no activation norm (Brock et al.; use --norm nf)."""
    return NFResNet(norm, [3, 4, 6, 3], num_classes, in_shape, dropout=dropout)
