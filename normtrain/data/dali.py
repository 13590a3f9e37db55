"""`dali`: ImageNet-style folders through NVIDIA DALI (import-guarded: normtrain never needs DALI).

The default for image folders when DALI imports and a GPU is present. Files and
labels come from `imagefolder.index` (the same as the `folder` backend: sorted
class folders); the pipelines implement `imagefolder.ImagePipeline`:

  reader   fn.readers.file(files, labels, shard_id=rank, num_shards=world, pad_last_batch=True)
           train: shuffle_after_epoch=True, shuffle_after_epoch_seed=<run seed> (see below)
           eval:  no shuffling, stick_to_shard=True
  decode   GPU: device="mixed" (nvJPEG / the hardware decoder) with nvJPEG buffers preallocated
           for full-size ImageNet (device/host memory padding, as NVIDIA's ResNet-50 pipelines
           do); CPU-only: device_id=None and fn.decoders.image(device="cpu") (DESIGN §7); rrc
           decodes only the crop window (fn.decoders.image_random_crop)
  threads  num_threads = data.workers, at most this process's share of the node's CPUs
           (CPUs / processes on the node): the decoder threads per GPU
  gitman   fn.resize to resize x resize, fn.crop at uniform random (crop_pos_x, crop_pos_y),
           fn.color_twist with brightness, contrast, saturation ~ U(0.6, 1.4) and hue ~ U(-36°, 36°)
           (torchvision ColorJitter(0.4, 0.4, 0.4, 0.1) ranges; DALI applies them as one colour
           matrix, contrast about mid-grey rather than the image mean), coin-flip mirror, [-1, 1]
  rrc      image_random_crop (area 0.08-1, aspect 3/4-4/3) + resize to size x size, mirror
  autoaug  data.randaugment / data.trivialaugment: DALI's auto_aug (rand_augment(n, m) /
           trivial_augment_wide, 31 magnitude bins, fill 0, translations relative to the crop) on
           the uint8 size x size crop after the flip, in a pipeline with enable_conditionals;
           data.random_erasing: torchvision's RandomErasing on the output batch (`autoaug`)
  eval     resize (square for gitman, shorter side otherwise) to resize, centre crop
  output   fn.crop_mirror_normalize: float32 NCHW, (x - mean) / std (NHWC, handed on as a channels_last
           NCHW view, when the engine runs channels_last: `use_channels_last`); DALIClassificationIterator;
           labels int64 on ctx.device. On the GPU the labels leave the pipeline with ``.gpu()``
           (as DALI's ResNet-50 example does): the copy happens inside DALI's prefetched
           pipeline, not as a pageable host-to-device copy that would block the training loop.

DALI versions: 1.33 or newer (pipeline checkpointing of the file reader and the random
operators, which the exact mid-epoch resume needs). Arguments newer than that are looked up
once in the installed DALI's operator schemas (`has_argument`) and left out where missing,
with one warning: ``shuffle_after_epoch_seed`` (DALI 2.2) falls back to DALI's fixed shuffle
seed, so the data order then does not change with ``run.seed`` (augmentation still does).

Epochs and sharding (differs from the torch rule of `base`, on purpose):
- Training: every epoch DALI shuffles the whole file list with one seed shared by
  all ranks (``shuffle_after_epoch``) and rank r reads the r-th contiguous shard of
  it, while the torch rule interleaves ranks batch by batch over the permutation.
  What the contract needs holds: with N ranks every sample is read at most once
  per epoch and ranks are disjoint; all but the remainder is used. Batches per
  epoch are ``num_samples // (batch * world)`` on every rank (as the torch rule):
  the partial last batch of each shard is dropped (``LastBatchPolicy.DROP``).
  ``pad_last_batch=True`` is set for training too: without it a shard whose size
  is not a multiple of the batch drifts into the next epoch's samples, and later
  epochs repeat images (measured with DALI 2.4). The order is DALI's own, so the
  two backends do not yield the same sequence for the same seed.
  Why not ``random_shuffle``: it permutes the file list once with a fixed seed
  (the same order for every ``seed`` and every epoch, measured with DALI 2.4) and
  then only mixes within its ``initial_fill`` buffer (1,024 images), so batches of
  ImageNet would hardly change between epochs; ``shuffle_after_epoch`` draws a new
  global permutation each epoch from our seed.
- Evaluation: DALI shards are the same contiguous ranges as `base.eval_shard`;
  ``LastBatchPolicy.PARTIAL`` with ``pad_last_batch=True``: the reader pads the
  last batch by repeating the last sample and the iterator trims the padding, so
  every sample is evaluated exactly once (a rank whose shard is shorter gets one
  batch fewer, as with the other backends).
- Resume: DALI checkpointing (``enable_checkpointing=True``). ``state_dict()`` holds
  ``iterator.checkpoints()`` (the serialized reader position and RNG states) with the
  (epoch, batch) it belongs to; ``load_state_dict()`` rebuilds the pipeline from it
  and the run continues with exactly the batches it would have produced. The
  checkpoint is per rank: under DDP give each rank its own (the engine's ``dist.gather_objects``
  collects them; a list or ``{"per_rank": [...]}`` is accepted). Without a usable
  checkpoint (another world size, batch or dataset, or only one rank's state with
  several ranks) every rank starts a fresh reader, consistently: the epoch then
  uses a fresh shuffle (not the interrupted run's) and ``start`` batches are skipped
  by reading them, with a warning.

Unreadable images: DALI's decode errors do not name the file, so on a decode
failure the split is scanned with PIL (up to 2 minutes) and the error names the
file found; ``data.skip_corrupt: true`` pre-scans and drops unreadable files
before the pipeline is built (`imagefolder`).
"""
from __future__ import annotations

import functools
import os
import re
import warnings
from typing import Iterator

import torch

from .. import dist
from ..errors import UsageError, readable
from . import autoaug, imagefolder
from .augment import cutout
from .base import Batch, DataContext, Loader, batch_generator, eval_shard, require_batches, train_batches_per_epoch
from .folder import usable_workers

INSTALL_HINT = "pip install normtrain[dali] (or pip install nvidia-dali-cuda130), or use data.backend=folder"
READER = "Reader"
#: Oldest DALI with pipeline checkpointing of fn.readers.file and the random operators (DALI 1.33
#: release notes: "enhanced experimental support for checkpointing").
MIN_VERSION = (1, 33)
#: nvJPEG buffer preallocation of the mixed decoder, big enough for every image of full-size
#: ImageNet without reallocation: the values of NVIDIA DeepLearningExamples' ResNet-50 DALI
#: pipeline (PyTorch/Classification/ConvNets/image_classification/dali.py) and of DALI's own
#: ResNet-50 example (docs/examples/use_cases/pytorch/resnet50/main.py). DALI's defaults are
#: 16 MiB / 8 MiB. hw_decoder_load stays at DALI's default (0.65), as both references leave it.
DEVICE_MEMORY_PADDING = 211025920
HOST_MEMORY_PADDING = 140544512

_import_error: str | None = None
_checked = False
_warned_missing: set = set()


def _version_tuple(v: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:2])


def available() -> bool:
    """True if DALI (>= MIN_VERSION) and its PyTorch plugin import (checked once per process)."""
    global _checked, _import_error
    if not _checked:
        _checked = True
        try:
            import nvidia.dali
            import nvidia.dali.plugin.pytorch  # noqa: F401
            version = getattr(nvidia.dali, "__version__", "0")
            if _version_tuple(version) < MIN_VERSION:
                _import_error = (f"DALI {version} is older than {'.'.join(map(str, MIN_VERSION))}, which the dali "
                                 "backend needs for exact resume")
        except Exception as e:  # noqa: BLE001 - any import failure means unusable
            _import_error = f"{type(e).__name__}: {e}".splitlines()[0]
    return _import_error is None


def version() -> str | None:
    """The installed DALI's version string, or None when it cannot be imported."""
    try:
        import nvidia.dali
        return nvidia.dali.__version__
    except Exception:  # noqa: BLE001
        return None


@functools.lru_cache(maxsize=None)
def has_argument(schema: str, argument: str) -> bool:
    """Whether the installed DALI's operator `schema` (e.g. 'readers__File') takes `argument`.

    Read from the operator schemas DALI's backend registers (`nvidia.dali.backend.TryGetSchema`,
    what `nvidia.dali.ops` builds its Python operators from); False if the schema cannot be read.
    """
    try:
        from nvidia.dali import backend
        s = backend.TryGetSchema(schema)
        return bool(s is not None and s.HasArgument(argument))
    except Exception:  # noqa: BLE001 - an unreadable schema: treat the argument as missing
        return False


def _warn_missing(argument: str, consequence: str) -> None:
    """One warning per process and argument (the reader is rebuilt on resume and per split)."""
    if argument not in _warned_missing:
        _warned_missing.add(argument)
        warnings.warn(f"dali loader: DALI {version()} has no fn.readers.file argument '{argument}' "
                      f"(DALI 2.2 or newer has it): {consequence}", stacklevel=3)


def reader_args(train: bool, shuffle_seed: int, warn: bool = True) -> dict:
    """fn.readers.file's sampling arguments, with what the installed DALI lacks left out
    (`warn`: say so, once per process; rank 0 does, the others stay quiet)."""
    if not train:
        return dict(stick_to_shard=True)
    args = dict(shuffle_after_epoch=True)
    if has_argument("readers__File", "shuffle_after_epoch_seed"):
        args["shuffle_after_epoch_seed"] = shuffle_seed
    elif warn:
        _warn_missing("shuffle_after_epoch_seed", "every epoch is still a fresh global shuffle, but from DALI's "
                      "fixed seed, so the data order does not change with run.seed (augmentations do); "
                      "use data.backend=folder for seed-dependent order")
    return args


def decoder_args(gpu: bool) -> dict:
    """Extra arguments of the image decoders: nvJPEG buffer padding on the GPU (mixed) decoder only,
    as the references do (DALI's example passes 0 for the CPU decoder, which ignores them)."""
    if not gpu:
        return {}
    return dict(device_memory_padding=DEVICE_MEMORY_PADDING, host_memory_padding=HOST_MEMORY_PADDING)


def decoder_threads(requested: int, local_processes: int, cpus: int | None = None) -> int:
    """DALI CPU threads for one process: `data.workers`, at most this process's share of the CPUs.

    With one process per GPU, `local_processes` pipelines share the node, so each gets
    cpus // local_processes (DLE runs 8 threads per GPU on a DGX-1V and 16 on a DGX A100,
    about its cores per GPU); more threads than that only oversubscribe the cores.
    """
    cpus = cpus if cpus is not None else usable_workers(os.cpu_count() or 1)
    return max(1, min(requested, cpus // max(1, local_processes)))


def require() -> None:
    if not available():
        raise UsageError(f"data.backend=dali needs NVIDIA DALI >= {'.'.join(map(str, MIN_VERSION))}, which cannot be "
                         f"used here ({_import_error}): {INSTALL_HINT}")


def _define(spec: imagefolder.ImagePipeline, files, labels, train: bool, shard: int, world: int,
            shuffle_seed: int, gpu: bool, layout: str = "CHW"):
    """The DALI graph of `spec` (called inside a pipeline_def)."""
    from nvidia.dali import fn, types
    sampling = reader_args(train, shuffle_seed, warn=shard == 0)
    jpegs, label = fn.readers.file(files=files, labels=labels, shard_id=shard, num_shards=world,
                                   pad_last_batch=True, name=READER, **sampling)
    dev = "mixed" if gpu else "cpu"
    dec = decoder_args(gpu)
    s, r = spec.size, spec.resize
    aug = spec.augment if train else "none"
    pos_x = pos_y = 0.5
    if aug == "rrc":
        images = fn.decoders.image_random_crop(jpegs, device=dev, output_type=types.RGB,
                                               random_area=list(imagefolder.RRC_SCALE),
                                               random_aspect_ratio=list(imagefolder.RRC_RATIO), num_attempts=100,
                                               **dec)
        images = fn.resize(images, resize_x=s, resize_y=s)
    else:
        images = fn.decoders.image(jpegs, device=dev, output_type=types.RGB, **dec)
        images = fn.resize(images, resize_x=r, resize_y=r) if spec.square else fn.resize(images, resize_shorter=r)
        if aug in ("crop-flip", "gitman"):
            pos_x, pos_y = fn.random.uniform(range=(0.0, 1.0)), fn.random.uniform(range=(0.0, 1.0))
    if aug == "gitman":
        images = fn.crop(images, crop=(s, s), crop_pos_x=pos_x, crop_pos_y=pos_y)
        pos_x = pos_y = 0.5
        b, c, sat, h = spec.jitter
        images = fn.color_twist(images, brightness=fn.random.uniform(range=(1 - b, 1 + b)),
                                contrast=fn.random.uniform(range=(1 - c, 1 + c)),
                                saturation=fn.random.uniform(range=(1 - sat, 1 + sat)),
                                hue=fn.random.uniform(range=(-360.0 * h, 360.0 * h)))
    mirror = fn.random.coin_flip(probability=0.5) if aug != "none" else 0
    if train and (spec.randaugment or spec.trivialaugment):
        # DALI's auto_aug on the s x s crop, after the flip (as torchvision's policy in `folder`); fill 0 as there.
        from nvidia.dali.auto_aug import rand_augment, trivial_augment
        images = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="HWC", crop=(s, s),
                                          crop_pos_x=pos_x, crop_pos_y=pos_y, mirror=mirror)
        pos_x = pos_y = 0.5
        mirror = 0
        if spec.randaugment:
            images = rand_augment.rand_augment(images, n=spec.randaugment, m=spec.randaugment_magnitude,
                                               shape=(s, s), fill_value=0)
        else:
            images = trivial_augment.trivial_augment_wide(images, shape=(s, s), fill_value=0)
    images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout=layout, crop=(s, s),
                                      crop_pos_x=pos_x, crop_pos_y=pos_y, mean=list(spec.mean), std=list(spec.std),
                                      mirror=mirror)
    # Labels to the GPU inside the pipeline, as DALI's ResNet-50 example does (`labels.gpu()`).
    return images, (label.gpu() if gpu else label)


def _dali_reason(message: str) -> str:
    """The operator's own message out of a DALI error (the part after 'encountered:')."""
    m = re.search(r"encountered:\s*(.+?)(?:\n|$)", message)
    return (m.group(1) if m else message.strip().splitlines()[-1]).strip()


class DALILoader(Loader):
    def __init__(self, cfg, split: str, ctx: DataContext):
        require()
        idx = imagefolder.index(cfg, split)
        for f in idx.files:  # DALI takes file names as UTF-8 text; the folder backend reads any name
            try:
                f.encode("utf-8")
            except UnicodeEncodeError:
                raise UsageError(f"file name {readable(f)} is not UTF-8, which DALI cannot open: rename it, or "
                                 "use data.backend=folder") from None
        self.cfg, self.ctx = cfg, ctx
        self.spec = imagefolder.image_pipeline(cfg)
        self.files, self.labels, self.split_dir = idx.files, idx.labels, idx.split_dir
        self.classes = idx.classes
        self.num_classes = len(idx.classes)
        self.num_samples = len(idx.files)
        self.in_shape = (3, self.spec.size, self.spec.size)
        if self.num_samples < ctx.world:
            raise UsageError(f"{idx.split_dir}: {self.num_samples} images cannot be sharded over {ctx.world} processes")
        require_batches(len(self), self.num_samples, ctx, str(idx.split_dir))
        self.gpu = ctx.device.type == "cuda"
        self.eraser = autoaug.eraser(self.spec)
        self._owner = None
        self._warned = False
        self._build(None)

    # -- pipeline ---------------------------------------------------------------------------

    def _build(self, checkpoint):
        from nvidia.dali import pipeline_def
        from nvidia.dali.plugin.pytorch import DALIClassificationIterator, LastBatchPolicy
        ctx = self.ctx
        device_id = None
        if self.gpu:
            device_id = ctx.device.index if ctx.device.index is not None else torch.cuda.current_device()
        # The reader's shuffle is shared by all ranks; augmentation randomness differs per rank.
        shuffle_seed = (ctx.seed * 7919 + 17) % (2 ** 31)
        pipe_seed = (ctx.seed * 1_000_003 + ctx.rank * 7919 + 1) % (2 ** 31)
        self.num_threads = decoder_threads(self.cfg.workers, dist.local_world_size())
        # Automatic augmentation (DALI's auto_aug) needs conditional execution.
        conditionals = ctx.train and bool(self.spec.randaugment or self.spec.trivialaugment)
        pipe = pipeline_def(_define, enable_checkpointing=True, **({"enable_conditionals": True} if conditionals else {}))(
            self.spec, self.files, self.labels, ctx.train, ctx.rank, ctx.world, shuffle_seed, self.gpu,
            "HWC" if self.channels_last else "CHW",
            batch_size=ctx.batch_size, num_threads=self.num_threads, device_id=device_id,
            seed=pipe_seed, prefetch_queue_depth=2, checkpoint=checkpoint)
        policy = LastBatchPolicy.DROP if ctx.train else LastBatchPolicy.PARTIAL
        self._it = self._guard(lambda: DALIClassificationIterator(pipe, reader_name=READER, last_batch_policy=policy,
                                                                  auto_reset=True))
        # The reader's epoch_size is the whole split; DALI's own batch count must cover ours.
        epoch_size = pipe.reader_meta(READER)["epoch_size"]
        if epoch_size != self.num_samples or (ctx.train and len(self._it) < len(self)):
            raise RuntimeError(f"DALI reader sees {epoch_size} samples and {len(self._it)} batches; "
                               f"expected {self.num_samples} and {len(self)}")
        self._epoch, self._pos = 0, 0
        self._fresh = checkpoint is None

    def _guard(self, fn):
        """Run a DALI call; decode failures become a UsageError naming the file."""
        try:
            return fn()
        except RuntimeError as e:
            msg = str(e)
            if "decoders" in msg or "nvImageCodec" in msg or "decode" in msg.lower():
                raise imagefolder.corrupt_error(self.files, self.split_dir, _dali_reason(msg)) from None
            raise

    def _next(self):
        """The next DALI batch, or None at the end of DALI's epoch (the iterator then resets itself)."""
        def step():
            try:
                return next(self._it)
            except StopIteration:
                return None
        return self._guard(step)

    def _finish_epoch(self):
        """Read to the end of DALI's epoch (the dropped partial batch, or what a caller left unread)."""
        while self._next() is not None:
            pass
        if self.ctx.train:
            self._epoch += 1
        self._pos = 0

    def _warn(self, msg: str):
        if not self._warned:
            warnings.warn(f"dali loader (rank {self.ctx.rank}): {msg}", stacklevel=3)
            self._warned = True

    def _seek(self, epoch: int, start: int):
        if not self.ctx.train:
            if self._pos > 0:
                self._finish_epoch()
        else:
            if self._epoch > epoch or (self._epoch == epoch and self._pos > start):
                self._warn(f"asked for epoch {epoch} batch {start} behind the reader (epoch {self._epoch} batch "
                           f"{self._pos}): restarting the reader with a fresh shuffle")
                self._build(None)
                self._epoch = epoch
            if self._epoch < epoch and self._pos > 0:
                self._finish_epoch()
            if self._epoch < epoch:
                if not (self._fresh and epoch == 0):
                    self._warn(f"no DALI reader checkpoint for epoch {epoch}: it uses the reader's next shuffle, "
                               "not the one of the interrupted run")
                self._epoch = epoch
            if start > self._pos:
                self._warn(f"skipping {start - self._pos} batches of epoch {epoch} by reading them")
        while self._pos < start:
            if self._next() is None:
                raise RuntimeError(f"DALI ended epoch {epoch} after {self._pos} batches; expected {len(self)}")
            self._pos += 1

    # -- the Loader contract ----------------------------------------------------------------------

    def use_channels_last(self, on: bool) -> None:
        """NHWC output from the pipeline, handed on as an NCHW-shaped view with channels_last strides, as
        DeepLearningExamples' DALI loaders do for --memory-format nhwc: no layout copy per batch."""
        if bool(on) != self.channels_last:
            self.channels_last = bool(on)
            self._build(None)  # before the first batch (the engine calls it while setting up)

    def __len__(self) -> int:
        ctx = self.ctx
        if ctx.train:
            return train_batches_per_epoch(self.num_samples, ctx)
        return -(-len(eval_shard(self.num_samples, ctx)) // ctx.batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        ctx = self.ctx
        n = len(self)
        if start >= n:
            return
        self._seek(epoch, start)
        token = self._owner = object()
        while self._pos < n:
            if self._owner is not token:
                raise RuntimeError("dali loader: a newer epoch() iterator has taken over this loader")
            batch = self._next()
            if batch is None:
                raise RuntimeError(f"DALI ended the epoch after {self._pos} of {n} batches")
            self._pos += 1
            x, y = batch[0]["data"], batch[0]["label"]
            if self.channels_last:
                x = x.permute(0, 3, 1, 2)  # (N, H, W, C) memory as an (N, C, H, W) channels_last tensor
            x = x.to(ctx.device, non_blocking=True)
            y = y.reshape(-1).to(ctx.device, torch.long, non_blocking=True)
            if ctx.train and self.spec.cutout:
                g = batch_generator(x.device, ctx.seed, epoch, self._pos - 1)
                x = cutout(x, self.spec.cutout, g, ctx.rank * ctx.batch_size, ctx.batch_size * ctx.world)
            if ctx.train and self.eraser is not None:
                seeds = autoaug.image_seeds(batch_generator(x.device, ctx.seed, epoch, self._pos - 1).initial_seed(),
                                            ctx.rank * ctx.batch_size, len(x), autoaug.ERASING)
                x = autoaug.per_image(x, self.eraser, seeds)
            yield x, y
        # Consume DALI's end of epoch (its dropped partial batch) unless state_dict() already did.
        if self._owner is token and self._pos == n and (not ctx.train or self._epoch == epoch):
            self._finish_epoch()

    def _identity(self) -> dict:
        ctx = self.ctx
        return {"backend": "dali", "world": ctx.world, "batch_size": ctx.batch_size,
                "num_samples": self.num_samples, "seed": ctx.seed, "augment": self.spec.augment}

    def state_dict(self) -> dict:
        if not self.ctx.train:
            return {}
        if self._pos >= len(self):
            self._finish_epoch()  # the same position, expressed as the start of the next epoch
        return {**self._identity(), "rank": self.ctx.rank, "epoch": self._epoch, "pos": self._pos,
                "checkpoint": self._it.checkpoints()[0]}

    def load_state_dict(self, state) -> None:
        ctx = self.ctx
        if not ctx.train or not state:
            return
        states = state.get("per_rank") if isinstance(state, dict) and "per_rank" in state else state
        mine, why = None, ""
        if isinstance(states, list):
            if len(states) == ctx.world and isinstance(states[ctx.rank], dict):
                mine = states[ctx.rank]
            else:
                why = f"saved for {len(states)} processes, running {ctx.world}"
        elif isinstance(states, dict):
            if ctx.world == 1:
                mine = states
            else:
                why = "the checkpoint holds one rank's DALI state (save every rank's, as the engine does)"
        if mine is not None:
            ident = self._identity()
            diff = [k for k in ident if mine.get(k) != ident[k]]
            if diff or mine.get("rank") != ctx.rank or "checkpoint" not in mine:
                why = "it was saved with a different " + (", ".join(diff) or "rank")
                mine = None
        if mine is None:
            self._warn(f"DALI state not restored ({why}); the reader restarts")
            return
        self._build(mine["checkpoint"])
        self._epoch, self._pos = mine["epoch"], mine["pos"]


def build(cfg, split: str, ctx: DataContext) -> DALILoader:
    """ImageNet-style folders decoded by NVIDIA DALI, on the GPU (mixed) or CPU-only; needs nvidia-dali."""
    return DALILoader(cfg, split, ctx)
