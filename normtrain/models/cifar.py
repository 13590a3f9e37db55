"""cifar10-nv: the 12-layer CIFAR-10 network of Gitman & Ginsburg 2017, Table 2
(NVCaffe's `cifar10_nv`), input 3x28x28:

    conv1-ReLU 3x3x128, conv2-ReLU 3x3x128, conv3-BN-ReLU 3x3x128, MAX-pool 3/2 -> 14x14
    conv4-ReLU 3x3x256, conv5-ReLU 3x3x256, conv6-BN-ReLU 3x3x256, MAX-pool 3/2 -> 7x7
    conv7-ReLU 3x3x320 (no padding) -> 5x5, conv8-ReLU 1x1x320, conv9-ReLU 1x1x10,
    AVE-pool 5x5 -> 10, softmax

Caffe pooling rounds the output size up, hence ``ceil_mode=True`` (28 -> 14 -> 7).
The activation normalization sits only where the table has BN (after conv3 and
conv6); weight-normalization methods reparametrise every conv ("applied after
each layer", §4.1). Note the ReLU after conv9, just before the average pool.

Option ``width`` multiplies the channel counts 128/256/320 (rounded; 1 = the
paper's network), for CPU-sized runs of the same architecture.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..norms import Normalizer
from .pool import GlobalAvgPool2d


class Cifar10NV(nn.Module):
    def __init__(self, norm: Normalizer, num_classes: int = 10, in_shape: Sequence[int] = (3, 28, 28),
                 dropout: float = 0.0, width: float = 1.0):
        super().__init__()
        c_in = in_shape[0]
        c1, c2, c3 = (max(1, round(c * width)) for c in (128, 256, 320))

        def unit(cin, cout, k, pad, normed, last=False):
            # Layers without a norm after them keep Caffe's conv bias.
            conv = norm.conv(cin, cout, k, padding=pad, bias=None if normed else True, last=last)
            return [conv, *(norm.norm_act(cout) if normed else (nn.Identity(), norm.act(cout)))]

        layers = (unit(c_in, c1, 3, 1, False) + unit(c1, c1, 3, 1, False) + unit(c1, c1, 3, 1, True)
                  + [nn.MaxPool2d(3, 2, padding=0, ceil_mode=True)]
                  + unit(c1, c2, 3, 1, False) + unit(c2, c2, 3, 1, False) + unit(c2, c2, 3, 1, True)
                  + [nn.MaxPool2d(3, 2, padding=0, ceil_mode=True)]
                  + unit(c2, c3, 3, 0, False) + unit(c3, c3, 1, 0, False))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += unit(c3, num_classes, 1, 0, False, last=True)
        layers += [GlobalAvgPool2d(), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.output = norm.output(num_classes)  # after the final ReLU and pooling (trelu-wn's gamma, beta)

    def forward(self, x):
        return self.output(self.net(x))


def build_cifar10_nv(norm, num_classes, in_shape, dropout=0.0, width=1.0):
    """Gitman & Ginsburg's 12-layer Caffe CIFAR-10 net (3x28x28 input, Table 2)."""
    return Cifar10NV(norm, num_classes, in_shape, dropout=dropout, width=width)
