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
import math
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


#: Channel counts at which each built-in network builds its normalization layers, from its options.
#: Read without torch (`preflight`): a norm.groups that does not divide one of them is bad input before
#: anything heavy is loaded (a network not listed, e.g. an installed one, is checked when it is built).
#: tests/test_models.py checks every entry against the built network.
_RESNET_WIDTHS = {64, 128, 256, 512, 1024, 2048}
NORM_WIDTHS = {
    "mlp": lambda widths=(512, 300), **_: set(widths),
    "linear50": lambda depth=50, width=64, **_: {width} if depth > 1 else set(),
    "cifar10-nv": lambda **_: {128, 256},
    "resnet18": lambda **_: {64, 128, 256, 512},
    "resnet50": lambda **_: set(_RESNET_WIDTHS),
    "resnet101": lambda **_: set(_RESNET_WIDTHS),
    "resnext50-32x4d": lambda **_: set(_RESNET_WIDTHS),
    "resnext101-32x4d": lambda **_: set(_RESNET_WIDTHS),
    "preact-resnet50": lambda **_: set(_RESNET_WIDTHS),
    "nf-resnet50": lambda **_: set(),
    "resnet8": lambda **_: {16, 32, 64},
    "resnet20": lambda **_: {16, 32, 64},
    "resnet56": lambda **_: {16, 32, 64},
    "wrn28-10": lambda **_: {16, 160, 320, 640},
    "vit-b16": lambda **_: {768},
    "vit-s16": lambda **_: {384},
    "vit-tiny-digits": lambda **_: {64},
    "convnext-tiny": lambda **_: {96, 192, 384, 768},
}

#: Upper bound of an integer size option (a width or depth far beyond any network).
MAX_SIZE = 1 << 24


def signature(name: str) -> inspect.Signature:
    """The signature of network `name`'s builder, read from its source without importing torch."""
    from .. import static
    module, attr = NETWORKS.source(name)
    try:
        fn = getattr(static.light(module), attr, None) if attr else None
    except Exception:  # noqa: BLE001 - no source to read (an installed, compiled network): import it
        fn = None
    return inspect.signature(fn if callable(fn) else NETWORKS[name])


def check_options(name: str, options: dict) -> None:
    """UsageError if network `name`'s builder does not take one of `options` (model.options / dropout), or a
    value is not of its default's kind: sizes positive integers, lists of them non-empty, switches true/false.

    Imports no torch: the builder's signature is read from its source."""
    params = signature(name).parameters
    unknown = sorted(k for k in options if k not in params)
    if unknown:
        allowed = [p for p in params if p not in ("norm", "num_classes", "in_shape")]
        raise UsageError(f"model '{name}' has no option '{unknown[0]}'; it takes: {', '.join(allowed) or 'none'} "
                         f"(after changing model.name, clear the old network's options with --set model.options={{}})")
    for key, value in options.items():
        default = params[key].default
        where = f"model.options.{key} of model '{name}'"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise UsageError(f"{where}: expected true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
                raise UsageError(f"{where}: expected a positive integer (at most {MAX_SIZE}), got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(f"{where}: expected a number, got {value!r}")
            if key.endswith("dropout") and not 0 <= value < 1:
                raise UsageError(f"{where}: expected a probability in [0, 1), got {value!r}")
        elif isinstance(default, (tuple, list)):
            if not isinstance(value, (list, tuple)) or not value or any(
                    isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SIZE for v in value):
                raise UsageError(f"{where}: expected a non-empty list of positive integers (at most {MAX_SIZE}), "
                                 f"got {value!r}")


def norm_widths(name: str, options: dict) -> set[int] | None:
    """The channel counts network `name` normalizes with these options (`NORM_WIDTHS`), None if not declared."""
    widths = NORM_WIDTHS.get(name)
    return None if widths is None else widths(**options)


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


__all__ = ["NETWORKS", "NORM_WIDTHS", "SCHEMES", "build", "check_options", "names", "norm_widths", "signature", "initialize", "residual_blocks", "signal_prop",
           "wire_residual_blocks"]
