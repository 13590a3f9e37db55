"""`synthetic`: random tensors made directly on the device, for benchmarks and smoke tests.

Any sample shape (`data.synthetic_shape`) and class count (`data.synthetic_classes`).
Each sample is standard-normal noise plus a fixed class prototype, so the task is
learnable (a loss that falls is a sign the loop works) at no extra cost. Batches
are a pure function of (seed, epoch, batch index, rank): resume-exact.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .base import Batch, DataContext, Loader, eval_shard


class SyntheticLoader(Loader):
    def __init__(self, shape, num_classes: int, num_samples: int, ctx: DataContext):
        self.ctx = ctx
        self.in_shape = tuple(shape)
        self.num_classes = num_classes
        self.num_samples = num_samples
        g = torch.Generator().manual_seed(ctx.seed + 12345)
        self.prototypes = (0.5 * torch.randn(num_classes, *shape, generator=g)).to(ctx.device)

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
            x = torch.randn((n, *self.in_shape), generator=g, device=ctx.device)
            yield x.add_(self.prototypes[y]), y


def build(cfg, split: str, ctx: DataContext):
    """Random tensors made on the device, shaped like the recipe's data (benchmarks and smoke tests)."""
    n = cfg.synthetic_samples if split == "train" else max(cfg.synthetic_samples // 4, 1)
    classes = cfg.num_classes or cfg.synthetic_classes
    return SyntheticLoader(cfg.synthetic_shape, classes, n, ctx)
