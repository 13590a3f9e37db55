"""The contract every data backend meets (DESIGN §6: "every data backend returns the same thing").

A backend is built once per split and process by ``build(cfg, split, ctx)`` and
returns a `Loader`:

- ``len(loader)``: batches this process yields per epoch;
- ``loader.epoch(e, start=0)``: an iterator over that epoch's batches from batch
  index ``start`` on (mid-epoch resume), each ``(x, y)`` with ``x`` a normalized
  float tensor and ``y`` int64 labels, **both already on ``ctx.device``**;
- ``num_classes``, ``in_shape`` (C, H, W of one sample), ``num_samples`` (the
  split's size over all processes);
- ``state_dict()`` / ``load_state_dict()``: anything beyond (epoch, start) that
  exact resume needs (e.g. a DALI reader checkpoint); ``{}`` for most. The state
  is per process: under DDP, the engine (through `dist.gather_objects`, a collective) collects every rank's
  for the checkpoint rank 0 writes, and ``load_state_dict`` accepts that
  ``{"per_rank": [...]}`` on every rank (each loader takes its own entry).

Sharding rule, the same for all backends so that N processes see exactly what
one process would: training batches are drawn from one global permutation per
epoch (seeded by ``ctx.seed`` and the epoch); global micro-batch k is
``perm[k*B : (k+1)*B]`` with ``B = ctx.batch_size * ctx.world`` and rank r takes
its r-th slice; the last incomplete global batch is dropped. Evaluation splits
the dataset into ``ctx.world`` contiguous shards and keeps every sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Tuple

import torch

Batch = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class DataContext:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    batch_size: int = 32
    """Per-process micro-batch size."""
    seed: int = 0
    train: bool = True
    """True for the training split (shuffled, augmented, last batch dropped)."""


class Loader:
    num_classes: int
    in_shape: tuple
    num_samples: int
    #: 4-d batches come in channels_last memory (NCHW shape, NHWC strides), see `use_channels_last`.
    channels_last: bool = False

    def use_channels_last(self, on: bool) -> None:
        """The engine runs the network in channels_last (`on`): a backend that can deliver batches in
        that layout at no cost does (DALI: NHWC output); the others leave the engine to convert."""

    def __len__(self) -> int:
        raise NotImplementedError

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The global sample order of one epoch, identical on every rank."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def train_indices(perm: torch.Tensor, ctx: DataContext, k: int) -> torch.Tensor:
    """Indices of this rank's share of global micro-batch k (see the sharding rule above)."""
    b = ctx.batch_size
    lo = k * b * ctx.world + ctx.rank * b
    return perm[lo:lo + b]


def train_batches_per_epoch(n: int, ctx: DataContext) -> int:
    return n // (ctx.batch_size * ctx.world)


def eval_shard(n: int, ctx: DataContext) -> range:
    """This rank's contiguous evaluation shard; shards cover [0, n) exactly once."""
    lo = n * ctx.rank // ctx.world
    hi = n * (ctx.rank + 1) // ctx.world
    return range(lo, hi)


class BatchAugment:
    """Device-side batch transforms for `TensorLoader` (whole datasets held on the device).

    - ``train(x, g, lo, total)``: ``x`` is this rank's slice ``[lo, lo + len(x))`` of a
      global micro-batch of ``total`` samples. Implementations draw every random
      parameter for all ``total`` samples from ``g`` (seeded identically on every
      rank from (seed, epoch, batch index)) and use their slice, so N ranks see
      exactly the augmentation one process would, and a resumed run the same as
      an uninterrupted one. Vectorised: no Python loop over samples.
    - ``eval(x)``: the deterministic evaluation transform (e.g. normalization, centre crop).
    - ``out_shape(shape)``: the sample shape both transforms produce from ``shape``.

    A plain callable ``augment(x, generator)`` is still accepted by TensorLoader
    (training only; evaluation batches are passed through unchanged).
    """

    def train(self, x: torch.Tensor, g: torch.Generator, lo: int, total: int) -> torch.Tensor:
        raise NotImplementedError

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def out_shape(self, shape) -> tuple:
        return tuple(shape)


class _CallableAugment(BatchAugment):
    """Adapter for the original protocol: ``augment(x, generator)`` with an optional ``out_shape``."""

    def __init__(self, fn):
        self.fn = fn

    def train(self, x, g, lo, total):
        return self.fn(x, g)

    def out_shape(self, shape):
        return tuple(self.fn.out_shape(shape)) if hasattr(self.fn, "out_shape") else tuple(shape)


def batch_generator(device, seed: int, epoch: int, k: int) -> torch.Generator:
    """The generator of global micro-batch k of an epoch: the same on every rank, resume-exact."""
    return torch.Generator(device=device).manual_seed((seed * 7919 + epoch) * 100_003 + k)


def require_batches(n_batches: int, num_samples: int, ctx: DataContext, what: str) -> None:
    """UsageError when a training split cannot fill a single global batch (the epoch would be empty)."""
    if ctx.train and n_batches < 1:
        from ..errors import UsageError
        raise UsageError(f"{what}: {num_samples} training samples do not fill one global batch of "
                         f"{ctx.batch_size * ctx.world} ({ctx.batch_size} per process x {ctx.world}); "
                         f"lower data.batch_size or use more data")


class TensorLoader(Loader):
    """A whole dataset held as tensors on the device (airbench style), with the sharding rule above.

    ``augment`` (optional): a `BatchAugment` (training and evaluation transforms,
    global-batch-consistent randomness) or a plain callable ``augment(x, generator)``
    applied to training batches only. ``x`` may be stored compactly (e.g. uint8) when
    the augment's transforms convert it.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, ctx: DataContext, augment=None):
        self.ctx = ctx
        self.x = x.to(ctx.device)
        self.y = y.to(ctx.device, torch.long)
        self.num_classes = num_classes
        self.num_samples = len(self.y)
        if augment is not None and not isinstance(augment, BatchAugment):
            augment = _CallableAugment(augment)
        self.augment = augment
        self.in_shape = tuple(self.x.shape[1:]) if augment is None else tuple(augment.out_shape(self.x.shape[1:]))

    def __len__(self) -> int:
        if self.ctx.train:
            return train_batches_per_epoch(self.num_samples, self.ctx)
        shard = eval_shard(self.num_samples, self.ctx)
        return -(-len(shard) // self.ctx.batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        ctx = self.ctx
        if ctx.train:
            perm = epoch_permutation(self.num_samples, ctx.seed, epoch).to(ctx.device)
            for k in range(start, len(self)):
                idx = train_indices(perm, ctx, k)
                x = self.x[idx]
                if self.augment is not None:
                    # Augmentation randomness is a function of (seed, epoch, k): resume-exact.
                    g = batch_generator(x.device, ctx.seed, epoch, k)
                    x = self.augment.train(x, g, ctx.rank * ctx.batch_size, ctx.batch_size * ctx.world)
                yield x, self.y[idx]
        else:
            shard = eval_shard(self.num_samples, ctx)
            for k in range(start, len(self)):
                lo = shard.start + k * ctx.batch_size
                hi = min(lo + ctx.batch_size, shard.stop)
                x = self.x[lo:hi]
                if self.augment is not None:
                    x = self.augment.eval(x)
                yield x, self.y[lo:hi]
