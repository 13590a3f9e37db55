"""`mnist`: the idx files, raw or gzipped, read from a local path (never downloaded).

Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally
``.gz``), in the given folder, its ``raw/`` or ``MNIST/raw/`` (torchvision's
layout). Any dataset in this format with 10 classes works (Fashion-MNIST).
Samples are 1x28x28; whole dataset on the device (see `tensors.py`).
"""
from __future__ import annotations

import gzip
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .base import DataContext
from .tensors import build_loader

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
NUM_CLASSES = 10


def _file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find(path) -> Path | None:
    """The folder holding the MNIST idx files at `path`, or None."""
    path = Path(path)
    for d in (path, path / "raw", path / "MNIST" / "raw"):
        if _file(d, FILES["train"][0]) and _file(d, FILES["train"][1]):
            return d
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if len(data) < 4 + 4 * ndim:
        raise UsageError(f"{path} is too short to be an idx file")
    zero, dtype, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or dims != ndim:
        raise UsageError(f"{path} is not a uint8 idx file with {ndim} dimension(s) "
                         f"(header: type 0x{dtype:02x}, {dims} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)):
        raise UsageError(f"{path}: header says {shape} but holds {len(body)} bytes")
    return np.frombuffer(body, np.uint8).reshape(shape).copy()


@lru_cache(maxsize=2)
def load_arrays(path: str):
    folder = find(path)
    if folder is None:
        raise UsageError(f"no MNIST idx files at {path}: expected {', '.join(FILES['train'] + FILES['test'])} "
                         "(optionally .gz), here, in raw/ or in MNIST/raw/")
    out = []
    for part, (img_name, lab_name) in FILES.items():
        img_path, lab_path = _file(folder, img_name), _file(folder, lab_name)
        if img_path is None or lab_path is None:
            raise UsageError(f"MNIST file missing in {folder}: {img_name if img_path is None else lab_name}[.gz]")
        x, y = read_idx(img_path, 3), read_idx(lab_path, 1).astype(np.int64)
        if len(x) != len(y):
            raise UsageError(f"{img_path} has {len(x)} images but {lab_path} has {len(y)} labels")
        if len(y) and y.max() >= NUM_CLASSES:
            raise UsageError(f"{lab_path}: labels outside 0..{NUM_CLASSES - 1}")
        out.append((x[:, None], y))
    return tuple(out)


def build(cfg, split: str, ctx: DataContext):
    """MNIST idx files (raw or .gz) from a local path, the whole set held on the device."""
    arrays = load_arrays(str(Path(cfg.source).expanduser()))
    return build_loader(cfg, split, ctx, "mnist", arrays, NUM_CLASSES)
