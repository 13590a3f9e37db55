"""Small image datasets held whole on the device (CIFAR-10/100, MNIST; airbench style).

Shared by `cifar` and `mnist`: the optional stratified hold-out
(``data.val_split``), normalization statistics of the training part, and the
batched device augmentations of `augment.py`, all behind a `TensorLoader`.

Images stay uint8 on the device (CIFAR-10: 150 MB) and are normalized per
batch. Normalization (``data.normalize``):
  auto / per-channel  mean and std per channel over the training part
  per-pixel           mean and std per pixel position over the training part (cifar10-nv);
                      the std is floored at 0.05 (in 0..1 pixel units) so that pixels that
                      are constant in training (MNIST borders) do not divide by ~0
  imagenet            ImageNet mean/std (3-channel data only)
  minus-one-one       x / 127.5 - 1
  none                x / 255
With ``data.val_split = N > 0`` the split 'val' is N training images held out
(stratified, fixed seed 0) and 'train' the rest; 'test' is always the test set (the
final evaluation's test/* metrics, `normtrain eval --split test`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UsageError
from . import autoaug
from .augment import TensorAugment
from .base import DataContext, TensorLoader, require_batches
from .imagefolder import stratified_holdout

PER_PIXEL_STD_FLOOR = 0.05
TENSOR_AUGMENTS = ("none", "flip", "crop-flip", "cifar-padcrop")


def _moments(x: np.ndarray, axes) -> tuple:
    """Mean and (biased) std of uint8 images in 0..1 units over `axes`, in float64 chunks (no big temporaries)."""
    s = s2 = 0.0
    for lo in range(0, len(x), 4096):
        part = torch.from_numpy(x[lo:lo + 4096]).double().div_(255.0)
        s = s + part.sum(dim=axes, keepdim=True)
        s2 = s2 + (part * part).sum(dim=axes, keepdim=True)
    count = int(np.prod([x.shape[a] for a in axes]))
    mean = s / count
    var = (s2 / count - mean * mean).clamp_min(0)
    return mean[0].float(), var.sqrt()[0].float()


def normalization(cfg, x_train: np.ndarray, name: str):
    """(mean, std) tensors in 0..1 units, broadcastable to one sample (C,H,W)."""
    mode = cfg.normalize
    c = x_train.shape[1]
    if mode in ("auto", "per-channel"):
        mean, std = _moments(x_train, (0, 2, 3))
        # Below a millionth of the pixel range is rounding (E[x^2] - E[x]^2): the channel is constant.
        flat = [c for c, s in enumerate(std.flatten().tolist()) if s < 1e-6]
        if flat:
            raise UsageError(f"{name}: channel {flat[0]} of the training images is constant (std 0), so per-channel "
                             "normalization would divide by zero; check the data, or set data.normalize to "
                             "minus-one-one or none")
        return mean, std
    if mode == "per-pixel":
        mean, std = _moments(x_train, (0,))
        return mean, std.clamp_min(PER_PIXEL_STD_FLOOR)
    if mode == "imagenet":
        if c != 3:
            raise UsageError(f"data.normalize=imagenet needs 3-channel images; {name} has {c} channel(s)")
        return (torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1))
    if mode == "minus-one-one":
        return torch.full((c, 1, 1), 0.5), torch.full((c, 1, 1), 0.5)
    if mode == "none":
        return torch.zeros(c, 1, 1), torch.ones(c, 1, 1)
    raise UsageError(f"data.normalize={mode} is not supported for {name}")


def make_augment(cfg, shape, mean, std, name: str) -> TensorAugment:
    _, h, w = shape
    aug = cfg.augment
    if aug not in TENSOR_AUGMENTS:
        raise UsageError(f"data.augment={aug} is for ImageNet-style image folders; "
                         f"{name} supports: {', '.join(TENSOR_AUGMENTS)}")
    size = cfg.image_size
    if aug == "crop-flip":
        if not 0 < size < min(h, w):
            raise UsageError(f"data.augment=crop-flip needs data.image_size between 1 and {min(h, w) - 1} "
                             f"for the {h}x{w} images of {name} (cifar10-nv uses 28), got {size}")
    elif size not in (0, h):
        raise UsageError(f"data.image_size {size} does not fit {name} ({h}x{w} images) with augment={aug}; "
                         f"use 0, or augment=crop-flip for smaller crops")
    out = size if aug == "crop-flip" else h
    if cfg.cutout > out:
        raise UsageError(f"data.cutout {cfg.cutout} is larger than the {out}-pixel images of {name}")
    return TensorAugment(aug, mean, std, size=size, pad_mode=getattr(cfg, "pad_mode", "reflect"), cutout=cfg.cutout,
                         policy=autoaug.policy(cfg), eraser=autoaug.eraser(cfg))


def build_loader(cfg, split: str, ctx: DataContext, name: str, arrays, num_classes: int) -> TensorLoader:
    """`arrays` = ((x_train, y_train), (x_test, y_test)) as uint8 NCHW / int64 numpy arrays."""
    (xtr, ytr), (xte, yte) = arrays
    if cfg.num_classes and cfg.num_classes != num_classes:
        raise UsageError(f"data.num_classes is {cfg.num_classes} but {name} has {num_classes} classes")
    test = (xte, yte)
    if cfg.val_split:
        tr, va = stratified_holdout(ytr, cfg.val_split)
        (xtr, ytr), (xte, yte) = (xtr[tr], ytr[tr]), (xtr[va], ytr[va])
    mean, std = normalization(cfg, xtr, name)
    aug = make_augment(cfg, xtr.shape[1:], mean, std, name)
    x, y = {"train": (xtr, ytr), "val": (xte, yte), "test": test}[split]
    loader = TensorLoader(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), num_classes, ctx, augment=aug)
    require_batches(len(loader), loader.num_samples, ctx, name)
    return loader
