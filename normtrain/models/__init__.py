"""Networks, built by name through a normalization bundle.

    >>> from normtrain import models
    >>> net = models.build("cifar10-nv", "bn", num_classes=10, in_shape=(3, 28, 28))

Adding a network: one file in this folder with a builder
``build_x(norm, num_classes, in_shape, **options) -> nn.Module`` and one line in
``NETWORKS`` below. Builders take the bundle and never branch on its name.
"""
from __future__ import annotations

import inspect
from typing import Sequence

from torch import nn

from .. import norms as _norms
from ..errors import UsageError
from ..registry import Registry
from . import cifar, mlp, nf_resnet, resnet
from .init import SCHEMES, initialize
from .signal import residual_blocks, signal_prop

NETWORKS = Registry("model", {
    "mlp": mlp.build_mlp,
    "linear50": mlp.build_linear50,
    "cifar10-nv": cifar.build_cifar10_nv,
    "resnet18": resnet.build_resnet18,
    "resnet50": resnet.build_resnet50,
    "resnet101": resnet.build_resnet101,
    "resnext50-32x4d": resnet.build_resnext50_32x4d,
    "resnext101-32x4d": resnet.build_resnext101_32x4d,
    "preact-resnet50": resnet.build_preact_resnet50,
    "nf-resnet50": nf_resnet.build_nf_resnet50,
    "resnet20": resnet.build_resnet20,
    "resnet56": resnet.build_resnet56,
    "wrn28-10": resnet.build_wrn28_10,
})


def names() -> list[str]:
    return NETWORKS.names()


def check_options(name: str, options: dict) -> None:
    """UsageError if network `name`'s builder does not take one of `options` (model.options / dropout)."""
    params = inspect.signature(NETWORKS[name]).parameters
    unknown = sorted(k for k in options if k not in params)
    if unknown:
        allowed = [p for p in params if p not in ("norm", "num_classes", "in_shape")]
        raise UsageError(f"model '{name}' has no option '{unknown[0]}'; it takes: {', '.join(allowed) or 'none'} "
                         f"(after changing model.name, clear the old network's options with --set model.options={{}})")


def build(name: str, norm, num_classes: int, in_shape: Sequence[int] = (3, 224, 224),
          init: str = "kaiming", **options) -> nn.Module:
    """Build network `name` with normalization `norm` (a method name or a bundle).

    `init` is one of models.init.SCHEMES; `options` go to the network's builder
    (e.g. ``dropout``, ``widths``); unknown options are an error.
    """
    builder = NETWORKS[name]
    bundle = _norms.get(norm) if isinstance(norm, str) else norm
    check_options(name, options)
    model = builder(bundle, num_classes, tuple(in_shape), **options)
    initialize(model, init)
    return model


__all__ = ["NETWORKS", "SCHEMES", "build", "check_options", "names", "initialize", "residual_blocks", "signal_prop"]
