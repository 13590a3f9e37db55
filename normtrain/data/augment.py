"""Batched augmentations on the device (tensor datasets; cutout for every backend).

All ops take a whole batch and draw their random parameters for a *global*
micro-batch of ``total`` samples from one generator, then keep this rank's
slice ``[lo, lo + len(x))`` (see `base.BatchAugment`): N processes see exactly
what one process would, and a resumed run what an uninterrupted one would.
No Python loop over samples: crops are gathers with index arithmetic.

Pipelines (`data.augment`) for 32x32 / 28x28 tensor datasets:
  none           normalization only
  flip           horizontal flip with p = 0.5
  crop-flip      random image_size x image_size crop (no padding) + flip; eval: centre crop
                 (cifar10-nv: 28x28 crops of the 32x32 images)
  cifar-padcrop  pad 4 on each side (`data.pad_mode`: reflect, the WRN paper's choice, or zero
                 = zeros after normalization, i.e. the mean colour), random crop back to the
                 image size, flip; eval: the image as is
  cutout         (any pipeline, `data.cutout` = side S) one S x S square per image, centre uniform
                 over the image (the square may be clipped at the border; DeVries & Taylor 2017),
                 set to 0 after normalization; training only
With `data.randaugment` / `data.trivialaugment` the uint8 images first go through the
torchvision policy image by image, and `data.random_erasing` erases after cutout (autoaug.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .autoaug import ERASING, POLICY, image_seeds, per_image
from .base import BatchAugment

PAD = 4


def _slice(t: torch.Tensor, lo: int, n: int) -> torch.Tensor:
    return t[lo:lo + n]


def random_offsets(g: torch.Generator, total: int, span_h: int, span_w: int, lo: int, n: int):
    """Per-sample crop offsets in [0, span] for the global batch, this rank's slice."""
    dev = g.device
    oy = torch.randint(0, span_h + 1, (total,), generator=g, device=dev)
    ox = torch.randint(0, span_w + 1, (total,), generator=g, device=dev)
    return _slice(oy, lo, n), _slice(ox, lo, n)


def crop(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, size: int) -> torch.Tensor:
    """x[b, :, oy[b]:oy[b]+size, ox[b]:ox[b]+size] for every b, as one gather."""
    b, c = x.shape[:2]
    ar = torch.arange(size, device=x.device)
    rows = (oy.to(x.device)[:, None] + ar)[:, None, :, None]      # B,1,S,1
    cols = (ox.to(x.device)[:, None] + ar)[:, None, None, :]      # B,1,1,S
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return x[bi, ci, rows, cols]


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def random_flip(x: torch.Tensor, g: torch.Generator, lo: int, total: int) -> torch.Tensor:
    flip = _slice(torch.rand(total, generator=g, device=g.device) < 0.5, lo, len(x)).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def cutout(x: torch.Tensor, size: int, g: torch.Generator, lo: int, total: int) -> torch.Tensor:
    """Zero one size x size square per image, centre uniform over the image, clipped at the border."""
    h, w = x.shape[-2:]
    cy, cx = random_offsets(g, total, h - 1, w - 1, lo, len(x))
    top, left = (cy - size // 2).to(x.device), (cx - size // 2).to(x.device)
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    in_y = (ys[None] >= top[:, None]) & (ys[None] < top[:, None] + size)     # B,H
    in_x = (xs[None] >= left[:, None]) & (xs[None] < left[:, None] + size)   # B,W
    mask = in_y[:, :, None] & in_x[:, None, :]
    return x.masked_fill(mask[:, None], 0.0)


class TensorAugment(BatchAugment):
    """Normalization + one of the pipelines above, for uint8 (or float) NCHW batches on the device.

    ``mean`` / ``std``: float tensors broadcastable to one sample (C,1,1) or (C,H,W),
    in 0..1 pixel units (uint8 inputs are divided by 255 first).
    """

    def __init__(self, mode: str, mean: torch.Tensor, std: torch.Tensor, size: int = 0,
                 pad_mode: str = "reflect", cutout: int = 0, policy=None, eraser=None):
        self.mode, self.size, self.pad_mode, self.cutout_size = mode, size, pad_mode, cutout
        self.mean, self.std = mean, std
        self.policy, self.eraser = policy, eraser  # autoaug.policy / autoaug.eraser, or None

    def out_shape(self, shape) -> tuple:
        shape = tuple(shape)
        if self.mode == "crop-flip":
            return shape[:-2] + (self.size, self.size)
        return shape

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        else:
            x = x.float()
        if self.mean.device != x.device:  # moved once, not per batch (a host-to-device copy syncs)
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x - self.mean) / self.std

    def train(self, x, g, lo, total):
        if self.policy is not None:
            x = per_image(x, self.policy, image_seeds(g.initial_seed(), lo, len(x), POLICY))
        x = self.normalize(x)
        n = len(x)
        if self.mode == "crop-flip":
            h, w = x.shape[-2:]
            oy, ox = random_offsets(g, total, h - self.size, w - self.size, lo, n)
            x = crop(x, oy, ox, self.size)
        elif self.mode == "cifar-padcrop":
            h, w = x.shape[-2:]
            padded = F.pad(x, (PAD,) * 4, mode="reflect") if self.pad_mode == "reflect" else F.pad(x, (PAD,) * 4)
            oy, ox = random_offsets(g, total, 2 * PAD, 2 * PAD, lo, n)
            x = crop(padded, oy, ox, h)
        if self.mode in ("flip", "crop-flip", "cifar-padcrop"):
            x = random_flip(x, g, lo, total)
        if self.cutout_size:
            x = cutout(x, self.cutout_size, g, lo, total)
        if self.eraser is not None:
            x = per_image(x, self.eraser, image_seeds(g.initial_seed(), lo, len(x), ERASING))
        return x

    def eval(self, x):
        x = self.normalize(x)
        if self.mode == "crop-flip":
            x = center_crop(x, self.size)
        return x
