"""`cifar10` and `cifar100`: the official python-pickle batches, read from a local path (never downloaded).

Accepted paths (``--data``): the folder holding the batches, its parent
(``cifar-10-batches-py`` / ``cifar-100-python`` inside), or the downloaded
archive itself (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``).

- CIFAR-10: ``data_batch_1`` .. ``data_batch_5`` (train, 50,000) and ``test_batch`` (10,000);
- CIFAR-100: ``train`` (50,000) and ``test`` (10,000) with ``fine_labels`` (100 classes).

The pickles are loaded with a restricted unpickler that only builds dicts,
lists, strings, numbers and numpy arrays. Whole dataset on the device; see
`tensors.py` for normalization, the hold-out split and the augmentations.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .base import DataContext
from .tensors import build_loader

SPECS = {
    "cifar10": {"subdir": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "label_key": "labels", "classes": 10},
    "cifar100": {"subdir": "cifar-100-python", "train": ["train"], "test": ["test"],
                 "label_key": "fine_labels", "classes": 100},
}


class _SafeUnpickler(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


class _Source:
    """The batch files of one dataset: a folder, or members of a .tar.gz archive."""

    def __init__(self, where: Path, archive: Path | None = None, members: dict | None = None):
        self.where, self.archive, self.members = where, archive, members or {}

    def has(self, name: str) -> bool:
        return name in self.members if self.archive else (self.where / name).is_file()

    def label(self, name: str) -> str:
        return f"{self.archive}:{self.members[name]}" if self.archive else str(self.where / name)

    def read(self, name: str) -> bytes:
        if self.archive:
            with tarfile.open(self.archive) as tar:
                f = tar.extractfile(self.members[name])
                return f.read()
        return (self.where / name).read_bytes()


def _archive_source(path: Path, spec: dict) -> _Source | None:
    try:
        with tarfile.open(path) as tar:
            names = {Path(m.name).name: m.name for m in tar.getmembers()
                     if m.isfile() and Path(m.name).parent.name == spec["subdir"]}
    except (tarfile.TarError, OSError):
        return None
    if all(n in names for n in spec["train"][:1] + spec["test"]):
        return _Source(path, archive=path, members=names)
    return None


def find(path, name: str) -> _Source | None:
    """The batches of `name` ('cifar10' / 'cifar100') at `path`, or None."""
    spec, path = SPECS[name], Path(path)
    if path.is_file() and (path.name.endswith((".tar.gz", ".tgz", ".tar"))):
        return _archive_source(path, spec)
    for d in (path, path / spec["subdir"]):
        src = _Source(d)
        if src.has(spec["train"][0]) and src.has(spec["test"][0]):
            return src
    return None


def _load_batch(src: _Source, member: str, label_key: str, classes: int):
    where = src.label(member)
    if not src.has(member):
        raise UsageError(f"CIFAR file missing: {where}")
    try:
        obj = _SafeUnpickler(io.BytesIO(src.read(member)), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise UsageError(f"cannot read CIFAR batch {where}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{where} is not a CIFAR batch (expected a dict)")
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in obj or label_key not in obj:
        raise UsageError(f"{where} is not a CIFAR batch of this dataset (keys: {', '.join(sorted(obj))}; "
                         f"expected data and {label_key})")
    x = np.asarray(obj["data"])
    y = np.asarray(obj[label_key], dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
        raise UsageError(f"{where}: expected uint8 data of shape (N, 3072) and N labels, "
                         f"got {x.dtype} {x.shape} and {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise UsageError(f"{where}: labels outside 0..{classes - 1}")
    return x.reshape(-1, 3, 32, 32), y


@lru_cache(maxsize=2)
def load_arrays(path: str, name: str):
    src = find(path, name)
    if src is None:
        spec = SPECS[name]
        raise UsageError(f"no {name} batches at {path}: expected {', '.join(spec['train'] + spec['test'])} "
                         f"(python version), here or in {spec['subdir']}/, or the .tar.gz archive")
    spec = SPECS[name]
    out = []
    for part in ("train", "test"):
        xs, ys = zip(*(_load_batch(src, m, spec["label_key"], spec["classes"]) for m in spec[part]))
        out.append((np.concatenate(xs), np.concatenate(ys)))
    return tuple(out)


def _build(name: str, cfg, split: str, ctx: DataContext):
    arrays = load_arrays(str(Path(cfg.source).expanduser()), name)
    return build_loader(cfg, split, ctx, name, arrays, SPECS[name]["classes"])


def build_cifar10(cfg, split: str, ctx: DataContext):
    """CIFAR-10 python batches (50k/10k 3x32x32, 10 classes) from a local path, whole set on the device."""
    return _build("cifar10", cfg, split, ctx)


def build_cifar100(cfg, split: str, ctx: DataContext):
    """CIFAR-100 python batches (50k/10k 3x32x32, 100 classes) from a local path, whole set on the device."""
    return _build("cifar100", cfg, split, ctx)
