"""Data backends: each turns a `data:` recipe section into per-process loaders (see base.py).

| backend   | data                                   | where it lives                        |
|-----------|----------------------------------------|---------------------------------------|
| digits    | built-in 8x8 digits                    | device tensors                        |
| synthetic | random tensors                         | device tensors                        |
| cifar10   | CIFAR-10 python batches                | device tensors, device augmentations  |
| cifar100  | CIFAR-100 python batches               | device tensors, device augmentations  |
| mnist     | MNIST idx files (raw or .gz)           | device tensors, device augmentations  |
| folder    | ImageNet-style folders                 | torchvision decode + DataLoader       |
| dali      | ImageNet-style folders                 | NVIDIA DALI (GPU decode; CPU-only ok) |

Adding a backend: one file here with ``build(cfg, split, ctx) -> Loader`` and
one line ``"name": "module:builder"`` in ``BACKENDS`` (the builder's docstring,
or its module's, is its summary in ``normtrain list data``); teach ``resolve()``
to recognise its data if 'auto' should pick it. Importing this package imports
neither torch nor DALI.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..registry import Registry, lazy_getattr

# name -> "module:builder" in this folder, imported on first use (the backends import torch).
BACKENDS = Registry("data backend", {
    "digits": "builtin:build",
    "synthetic": "synthetic:build",
    "cifar10": "cifar:build_cifar10",
    "cifar100": "cifar:build_cifar100",
    "mnist": "mnist:build",
    "folder": "folder:build",
    "dali": "dali:build",
}, __name__)

__getattr__ = lazy_getattr(__name__, {"DataContext": "base", "Loader": "base"})

#: Names `data.source` accepts without a path.
BUILTIN_SOURCES = ("digits", "synthetic")

LAYOUTS = ("an ImageNet-style folder (train/<class>/<image>, val/<class>/<image>), CIFAR-10/100 python batches "
           "(data_batch_1..5 + test_batch, or train + test; or the .tar.gz), or MNIST idx files "
           "(train-images-idx3-ubyte[.gz], ...)")


def names() -> list[str]:
    return BACKENDS.names()


def image_folder_backend() -> str:
    """dali where it can run on a GPU, folder otherwise (DESIGN §7)."""
    import torch
    from . import dali
    return "dali" if torch.cuda.is_available() and dali.available() else "folder"


def detect(path: Path) -> str:
    """The backend for the dataset at `path` (auto-detection), or UsageError."""
    from . import cifar, imagefolder, mnist
    if imagefolder.looks_like(path):
        return image_folder_backend()
    if cifar.find(path, "cifar10") is not None:
        return "cifar10"
    if cifar.find(path, "cifar100") is not None:
        return "cifar100"
    if mnist.find(path) is not None:
        return "mnist"
    if path.is_dir() and not any(path.iterdir()):
        raise UsageError(f"data path {path} is empty; expected {LAYOUTS}")
    raise UsageError(f"data path {path}: no backend recognises its layout; expected {LAYOUTS}; "
                     f"or set data.backend to one of: {', '.join(names())}")


def resolve(cfg) -> str:
    """The backend name for a `data:` section: `data.backend`, or picked from `data.source`."""
    if cfg.backend != "auto":
        BACKENDS[cfg.backend]  # unknown backend -> UsageError listing the valid ones
        if cfg.backend == "dali":
            from . import dali
            dali.require()
        if cfg.backend not in BUILTIN_SOURCES:
            _existing(cfg.source)
        return cfg.backend
    if cfg.source in BUILTIN_SOURCES:
        return cfg.source
    if cfg.source in BACKENDS and not Path(cfg.source).exists():
        raise UsageError(f"data.source '{cfg.source}' names a backend that reads a dataset from disk: give the "
                         f"dataset's path with --data PATH (datasets are never downloaded)")
    return detect(_existing(cfg.source))


def _existing(source: str) -> Path:
    path = Path(source).expanduser()
    if source in BUILTIN_SOURCES:
        raise UsageError(f"data.backend needs a dataset path in data.source (--data), got built-in '{source}'")
    if not path.exists():
        raise UsageError(f"data path does not exist: {source} (give a dataset directory, or one of: {', '.join(BUILTIN_SOURCES)})")
    return path


def build(cfg, split: str, ctx: DataContext) -> Loader:
    """Build the loader of `split` for this process: 'train'; 'val', the evaluation split during
    training (held out of the training data with data.val_split, else the dataset's test split);
    'test', the dataset's test split (val/ of an image folder, the test set of CIFAR or MNIST)."""
    return BACKENDS[resolve(cfg)](cfg, split, ctx)


def has_test_split(cfg) -> bool:
    """Whether the data has a test split beside a held-out validation split (an image folder
    trained with data.val_split may have no val/ folder)."""
    backend = resolve(cfg)
    if backend in ("folder", "dali"):
        return (Path(cfg.source).expanduser() / "val").is_dir()
    return True


__all__ = ["BACKENDS", "DataContext", "Loader", "build", "detect", "names", "resolve"]
