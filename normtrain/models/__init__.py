"""Networks, built by name through a normalization bundle.

    >>> from normtrain import models
    >>> net = models.build("cifar10-nv", "bn", num_classes=10, in_shape=(3, 28, 28))

Adding a network: one file in this folder with a builder
``build_x(norm, num_classes, in_shape, **options) -> nn.Module`` and one line
``"name": "module:builder"`` in ``NETWORKS`` below; the builder's docstring is
its one-line summary in ``normtrain list models``. Builders take the bundle and
never branch on its name. A network from another package registers its builder
through the entry-point group ``normtrain.networks`` instead of the line (README,
"Adding a method or a network").
"""
from __future__ import annotations

import inspect
from typing import Sequence

from ..errors import UsageError
from ..registry import Registry, lazy_getattr

# name -> "module:builder" in this folder, imported on first use (the networks import torch).
NETWORKS = Registry("model", {
    "mlp": "mlp:build_mlp",
    "linear50": "mlp:build_linear50",
    "cifar10-nv": "cifar:build_cifar10_nv",
    "resnet18": "resnet:build_resnet18",
    "resnet50": "resnet:build_resnet50",
    "resnet101": "resnet:build_resnet101",
    "resnext50-32x4d": "resnet:build_resnext50_32x4d",
    "resnext101-32x4d": "resnet:build_resnext101_32x4d",
    "preact-resnet50": "resnet:build_preact_resnet50",
    "nf-resnet50": "nf_resnet:build_nf_resnet50",
    "resnet8": "resnet:build_resnet8",
    "resnet20": "resnet:build_resnet20",
    "resnet56": "resnet:build_resnet56",
    "wrn28-10": "resnet:build_wrn28_10",
    "vit-s16": "vit:build_vit_s16",
    "vit-b16": "vit:build_vit_b16",
    "vit-tiny-digits": "vit:build_vit_tiny_digits",
    "convnext-tiny": "convnext:build_convnext_tiny",
}, __name__, group="normtrain.networks")

#: Weight initialisation schemes (`model.init`), implemented in init.py.
SCHEMES = ("kaiming", "xavier", "caffe-xavier", "default")

__getattr__ = lazy_getattr(__name__, {"initialize": "init", "residual_blocks": "signal", "signal_prop": "signal"})


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
          init: str = "kaiming", drop_path: float = 0.0, **options) -> torch.nn.Module:
    """Build network `name` with normalization `norm` (a method name or a bundle).

    `init` is one of `SCHEMES`; `drop_path` the stochastic-depth rate of
    the last residual block (see `wire_residual_blocks`); `options` go to the
    network's builder (e.g. ``dropout``, ``widths``); unknown options are an error.
    """
    from .. import norms
    from .init import initialize
    builder = NETWORKS[name]
    bundle = norms.get(norm) if isinstance(norm, str) else norm
    check_options(name, options)
    if not 0.0 <= drop_path < 1.0:
        raise UsageError(f"model.drop_path must be in [0, 1), got {drop_path}")
    model = builder(bundle, num_classes, tuple(in_shape), **options)
    wire_residual_blocks(model, bundle, name, drop_path)
    initialize(model, init)
    return model


def wire_residual_blocks(model: nn.Module, bundle, name: str, drop_path: float = 0.0) -> None:
    """Give block i of the network's L residual blocks (forward order) its join: the method's join wrapped
    with the ``norm.residual`` scaling for (i, L) and stochastic depth at rate drop_path * (i + 1) / L.

    Done once here, from the network's structure (modules with a ``join``), so no network has to know
    its depth or branch on a method. Without residual blocks only the defaults are accepted.
    """
    scaling = bundle.options.residual
    if scaling == "none" and drop_path == 0:
        return
    from .signal import residual_blocks
    blocks = residual_blocks(model)
    if not blocks:
        wanted = [s for s, on in ((f"norm.residual={scaling}", scaling != "none"),
                                  (f"model.drop_path={drop_path}", drop_path > 0)) if on]
        raise UsageError(f"{' and '.join(wanted)}: these act on residual blocks and model '{name}' has none "
                         f"(use a ResNet, WRN or NF-ResNet, or keep norm.residual=none and model.drop_path=0)")
    from ..norms.residual import drop_rates
    rates = drop_rates(drop_path, len(blocks))
    for i, (_, block) in enumerate(blocks):
        block.join = bundle.residual_join(block.join, i, len(blocks), rates[i])


__all__ = ["NETWORKS", "SCHEMES", "build", "check_options", "names", "initialize", "residual_blocks", "signal_prop",
           "wire_residual_blocks"]
