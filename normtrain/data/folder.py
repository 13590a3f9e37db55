"""`folder`: ImageNet-style folders with torchvision (decode + transforms v2) and a DataLoader.

The fallback for image folders when DALI or a GPU is missing (DESIGN §7), and
the reference the DALI backend is tested against: same files, labels and
pipelines (`imagefolder.ImagePipeline`), same output (float32 NCHW normalized
on ``ctx.device``, int64 labels).

- Decoding: ``torchvision.io.decode_image`` (JPEG/PNG/WebP/GIF, sniffed from the
  bytes, converted to RGB); other formats through PIL.
- Transforms v2 on uint8 tensors in the workers (RandAugment / TrivialAugment Wide last,
  `autoaug`); batches travel as uint8
  (pinned when the device is CUDA, copied with ``non_blocking``) and are
  converted and normalized on the device; cutout and random erasing there too.
- Sharding: the torch rule of `base` exactly, by a batch sampler (one global
  permutation per epoch; rank slices; start index for resume). Each sample's
  augmentation is seeded by (seed, epoch, sample index), so it does not depend
  on the worker count, the number of processes or where a run was resumed.
- ``data.workers`` DataLoader workers (persistent when > 0; at most the CPUs
  this process may use); 0 decodes in the main process.
- A file that cannot be decoded stops the run with a `UsageError` naming it
  (``data.skip_corrupt: true`` pre-scans and skips unreadable files instead,
  see `imagefolder`; one that still fails later is dropped from its batch with
  a warning).
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .. import threads
from ..errors import UsageError
from . import autoaug, imagefolder
from .augment import cutout
from .base import (Batch, DataContext, Loader, batch_generator, epoch_permutation, eval_shard,
                   require_batches, train_batches_per_epoch, train_indices)

_TV_FORMATS = (".jpg", ".jpeg", ".png", ".webp", ".gif")


def decode(path: str) -> torch.Tensor:
    """uint8 RGB CHW tensor of the image at `path`.

    Its header is checked first (`imagefolder.check_header`: a regular file of at most MAX_PIXELS
    pixels). The bytes are read by Python, so any file name works (torchvision's read_file takes
    UTF-8 names only)."""
    import torchvision.io as tio
    imagefolder.check_header(path)
    if path.lower().endswith(_TV_FORMATS):
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)
            f.readinto(data)
        img = tio.decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=tio.ImageReadMode.RGB)
        if img.dtype != torch.uint8:  # 16-bit PNG
            from torchvision.transforms.v2.functional import to_dtype
            img = to_dtype(img, torch.uint8, scale=True)
        return img
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor
    with Image.open(path) as im:
        return pil_to_tensor(im.convert("RGB"))


class ColorDistortion:
    """Brightness, contrast, saturation and hue jitter in this fixed order (torchvision ColorJitter ranges).

    Fixed order to match DALI's single ``fn.color_twist`` (torchvision's
    ColorJitter shuffles the order per image).
    """

    def __init__(self, brightness, contrast, saturation, hue):
        self.b, self.c, self.s, self.h = brightness, contrast, saturation, hue

    def __call__(self, img):
        from torchvision.transforms.v2 import functional as F
        r = torch.rand(4)
        img = F.adjust_brightness(img, 1 - self.b + 2 * self.b * float(r[0]))
        img = F.adjust_contrast(img, 1 - self.c + 2 * self.c * float(r[1]))
        img = F.adjust_saturation(img, 1 - self.s + 2 * self.s * float(r[2]))
        return F.adjust_hue(img, -self.h + 2 * self.h * float(r[3]))


def transforms(spec: imagefolder.ImagePipeline, train: bool):
    """The torchvision implementation of `spec` (a list of callables on uint8 CHW tensors)."""
    base = _transforms(spec, train)
    policy = autoaug.policy(spec) if train else None
    return base + [policy] if policy is not None else base


def _transforms(spec: imagefolder.ImagePipeline, train: bool):
    from torchvision.transforms import v2
    s, r = spec.size, spec.resize
    resize = v2.Resize((r, r) if spec.square else r, antialias=True)
    if not train or spec.augment == "none":
        return [resize, v2.CenterCrop(s)]
    if spec.augment == "flip":
        return [resize, v2.CenterCrop(s), v2.RandomHorizontalFlip()]
    if spec.augment == "crop-flip":
        return [resize, v2.RandomCrop(s), v2.RandomHorizontalFlip()]
    if spec.augment == "gitman":
        return [resize, v2.RandomCrop(s), ColorDistortion(*spec.jitter), v2.RandomHorizontalFlip()]
    if spec.augment == "rrc":
        return [v2.RandomResizedCrop(s, scale=imagefolder.RRC_SCALE, ratio=imagefolder.RRC_RATIO, antialias=True),
                v2.RandomHorizontalFlip()]
    raise UsageError(f"data.augment={spec.augment} is not available for image folders")


def _reason(e: Exception) -> str:
    """One line for a decoder exception, without torchvision's source locations."""
    text = (str(e).strip().splitlines() or [""])[0]
    text = re.sub(r"^\w+, \S+\.cpp:\d+, ", "", text)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def usable_workers(requested: int) -> int:
    """`data.workers`, at most the CPUs this process may use (affinity and cgroup quota,
    `threads.available`; more only oversubscribes them)."""
    return min(requested, threads.available())


class _Bad:
    """A sample that could not be decoded (reported by the main process, not the worker)."""

    def __init__(self, path, reason):
        self.path, self.reason = path, reason


@contextlib.contextmanager
def _seeded(key: int):
    """Seed the CPU generator that torchvision's random transforms use, for one sample."""
    if get_worker_info() is not None:  # a worker process: its RNG is ours
        torch.default_generator.manual_seed(key)
        yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(key)
            yield


class Files(Dataset):
    """Items are (index, seed key or None); returns (uint8 CHW crop, label) or `_Bad`."""

    def __init__(self, files, labels, train_tf, eval_tf):
        self.files, self.labels = files, labels
        self.train_tf, self.eval_tf = train_tf, eval_tf

    def __len__(self):
        return len(self.files)

    def __getitem__(self, item):
        i, key = item
        path = self.files[i]
        try:
            img = decode(path)
        except Exception as e:  # noqa: BLE001 - any decoder failure
            return _Bad(path, _reason(e))
        if key is None:
            for t in self.eval_tf:
                img = t(img)
        else:
            with _seeded(key):
                for t in self.train_tf:
                    img = t(img)
        return img, self.labels[i]


def _collate(samples):
    bad = [s for s in samples if isinstance(s, _Bad)]
    good = [s for s in samples if not isinstance(s, _Bad)]
    x = torch.stack([s[0] for s in good]) if good else None
    y = torch.tensor([s[1] for s in good], dtype=torch.long)
    return x, y, bad


def sample_key(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 2_147_483_647 + index) & (2 ** 63 - 1)


class BatchSampler:
    """This rank's batches of one epoch from batch `start` on (the sharding rule of `base`)."""

    def __init__(self, n: int, ctx: DataContext):
        self.n, self.ctx = n, ctx
        self.epoch, self.start = 0, 0

    def set(self, epoch: int, start: int):
        self.epoch, self.start = epoch, start

    def total(self) -> int:
        if self.ctx.train:
            return train_batches_per_epoch(self.n, self.ctx)
        return -(-len(eval_shard(self.n, self.ctx)) // self.ctx.batch_size)

    def __len__(self):
        return max(self.total() - self.start, 0)

    def __iter__(self):
        ctx = self.ctx
        if ctx.train:
            perm = epoch_permutation(self.n, ctx.seed, self.epoch)
            for k in range(self.start, self.total()):
                yield [(i, sample_key(ctx.seed, self.epoch, i)) for i in train_indices(perm, ctx, k).tolist()]
        else:
            shard = eval_shard(self.n, ctx)
            for k in range(self.start, self.total()):
                lo = shard.start + k * ctx.batch_size
                yield [(i, None) for i in range(lo, min(lo + ctx.batch_size, shard.stop))]


class FolderLoader(Loader):
    def __init__(self, cfg, split: str, ctx: DataContext):
        idx = imagefolder.index(cfg, split)
        self.ctx, self.cfg = ctx, cfg
        self.spec = imagefolder.image_pipeline(cfg)
        self.classes = idx.classes
        self.files = idx.files
        self.split_dir = idx.split_dir
        self.num_classes = len(idx.classes)
        self.num_samples = len(idx.files)
        self.in_shape = (3, self.spec.size, self.spec.size)
        self.sampler = BatchSampler(self.num_samples, ctx)
        require_batches(len(self), self.num_samples, ctx, str(idx.split_dir))
        dataset = Files(idx.files, idx.labels, transforms(self.spec, True), transforms(self.spec, False))
        workers = usable_workers(cfg.workers)
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=workers, collate_fn=_collate,
                                 pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,
                                 prefetch_factor=4 if workers > 0 else None)
        self.mean = torch.tensor(self.spec.mean, device=ctx.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.spec.std, device=ctx.device).view(1, 3, 1, 1)
        self.eraser = autoaug.eraser(self.spec)

    def __len__(self) -> int:
        return self.sampler.total()

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        ctx = self.ctx
        if start >= len(self):
            return
        self.sampler.set(epoch, start)
        for k, (x, y, bad) in enumerate(self.loader, start):
            if bad:
                if not self.cfg.skip_corrupt:
                    b = bad[0]
                    raise UsageError(f"cannot decode image {imagefolder.readable(b.path)} ({b.reason}); remove or "
                                     f"replace it, or set data.skip_corrupt=true to skip unreadable images")
                for b in bad:
                    warnings.warn(f"data.skip_corrupt: dropped unreadable image {imagefolder.readable(b.path)} "
                                  f"({b.reason})", stacklevel=2)
                if x is None:
                    continue
            x = x.to(ctx.device, non_blocking=True)
            y = y.to(ctx.device, non_blocking=True)
            x = (x.float() - self.mean) / self.std
            if ctx.train and self.spec.cutout:
                g = batch_generator(x.device, ctx.seed, epoch, k)
                x = cutout(x, self.spec.cutout, g, ctx.rank * ctx.batch_size, ctx.batch_size * ctx.world)
            if ctx.train and self.eraser is not None:
                seeds = autoaug.image_seeds(batch_generator(x.device, ctx.seed, epoch, k).initial_seed(),
                                            ctx.rank * ctx.batch_size, len(x), autoaug.ERASING)
                x = autoaug.per_image(x, self.eraser, seeds)
            yield x, y


def build(cfg, split: str, ctx: DataContext) -> FolderLoader:
    """ImageNet-style folders decoded by torchvision in DataLoader workers (CPU decode, any machine)."""
    return FolderLoader(cfg, split, ctx)
