"""`synthetic`: random tensors made directly on the device, for benchmarks and smoke tests.

Any sample shape (`data.synthetic_shape`) and class count (`data.synthetic_classes`);
unset, they are those of the recipe's own data (`config.synthetic_like`: cifar10-nv
gets 3x28x28 and 10 classes, resnet50-imagenet 3x224x224 and 1000).
Each sample is standard-normal noise plus a fixed class prototype (the outer product
of one random vector per dimension, so that 1000 classes of 3x224x224 cost kilobytes),
so the task is learnable (a loss that falls is a sign the loop works) at no extra cost. Batches
are a pure function of (seed, epoch, batch index, rank): resume-exact. Splits 'val' and 'test'
are the same evaluation samples.

Image augmentations (`data.randaugment`, `data.trivialaugment`, `data.random_erasing`; image
shapes [C, H, W] only) see each training sample as an image: x/4 + 1/2 clipped to [0, 1] and
quantised to uint8 (the noise has std 1 around the prototype, so this spans about +-2 std),
through the policy, and back as (u/255 - 1/2) * 4; erasing then works on that. Off, the
samples are untouched. For exercising and timing a recipe's augmentation, not for accuracy.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import torch

from ..config import synthetic_like
from . import autoaug
from .base import Batch, DataContext, Loader, eval_shard


class SyntheticLoader(Loader):
    def __init__(self, shape, num_classes: int, num_samples: int, ctx: DataContext, policy=None, eraser=None):
        self.ctx = ctx
        self.policy, self.eraser = (policy, eraser) if ctx.train else (None, None)
        self.in_shape = tuple(shape)
        self.num_classes = num_classes
        self.num_samples = num_samples
        g = torch.Generator().manual_seed(ctx.seed + 12345)
        # One factor per sample dimension and class: the class prototype is their outer product,
        # so it costs num_classes x (C + H + W) numbers, not num_classes x C x H x W.
        self.factors = [torch.randn(num_classes, d, generator=g).to(ctx.device) for d in shape]

    def prototypes(self, y: torch.Tensor) -> torch.Tensor:
        """0.5 x the outer product of class y's factors, shape (len(y), *in_shape); std 0.5 per element."""
        out = None
        for i, f in enumerate(self.factors):
            part = f[y].reshape(len(y), *([1] * i), -1, *([1] * (len(self.factors) - 1 - i)))
            out = part if out is None else out * part
        return 0.5 * out

    def __len__(self) -> int:
        if self.ctx.train:
            return self.num_samples // (self.ctx.batch_size * self.ctx.world)
        return -(-len(eval_shard(self.num_samples, self.ctx)) // self.ctx.batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        ctx = self.ctx
        shard = None if ctx.train else eval_shard(self.num_samples, ctx)
        for k in range(start, len(self)):
            n = ctx.batch_size if ctx.train else min(ctx.batch_size, shard.stop - shard.start - k * ctx.batch_size)
            key = (ctx.seed * 1009 + epoch) * 1_000_003 + (k * ctx.world + ctx.rank) * 2 + int(ctx.train)
            g = torch.Generator(device=ctx.device).manual_seed(key)
            y = torch.randint(0, self.num_classes, (n,), generator=g, device=ctx.device)
            x = torch.randn((n, *self.in_shape), generator=g, device=ctx.device).add_(self.prototypes(y))
            if self.policy is not None:
                u8 = x.mul(0.25).add_(0.5).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
                u8 = autoaug.per_image(u8, self.policy, autoaug.image_seeds(key, 0, n, autoaug.POLICY))
                x = u8.float().div_(255).sub_(0.5).mul_(4)
            if self.eraser is not None:
                x = autoaug.per_image(x, self.eraser, autoaug.image_seeds(key, 0, n, autoaug.ERASING))
            yield x, y


def build(cfg, split: str, ctx: DataContext):
    """Random tensors made on the device, shaped like the recipe's data (benchmarks and smoke tests)."""
    if not (cfg.synthetic_shape and cfg.synthetic_classes):
        # A data section made outside config.load (which fills these from the recipe's own data).
        cfg = dataclasses.replace(cfg)
        synthetic_like(cfg, cfg)
    n = cfg.synthetic_samples if split == "train" else max(cfg.synthetic_samples // 4, 1)
    classes = cfg.num_classes or cfg.synthetic_classes
    if autoaug.wanted(cfg) and len(cfg.synthetic_shape) != 3:
        autoaug.refuse(cfg, f"synthetic samples of shape {list(cfg.synthetic_shape)}")
    return SyntheticLoader(cfg.synthetic_shape, classes, n, ctx, autoaug.policy(cfg), autoaug.eraser(cfg))
