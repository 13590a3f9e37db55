"""ImageNet-style folders, shared by the `dali` and `folder` backends.

Layout: ``<root>/train/<class>/<image>`` and ``<root>/val/<class>/<image>``
(ILSVRC2012 validation images must first be sorted into class folders:
``tools/sort_imagenet_val.py``). Both backends take their file lists from
`index()`, so they see the same files with the same labels: classes are the
sorted folder names of ``train/`` (torchvision ``ImageFolder`` and DALI's
``file_root`` order), files are sorted within a class.

Checks at build time (one line each, `UsageError`): missing or empty folders,
class folders that differ between train/ and val/ (named), a class without
images, ``data.num_classes`` different from the folder count. The scan is a
directory listing only (no per-file stat or decode), a few seconds for
ImageNet. Unreadable images are found when they are decoded (the error names
the file), or, with ``data.skip_corrupt: true``, by a pre-scan that decodes
every image of the split at 1/8 scale with PIL (JPEG DCT scaling; on all
cores, about a minute for ImageNet's 1.28M training images on 16 cores) and
drops the unreadable ones with a warning, so both backends train on the same
files.

The image pipelines (`ImagePipeline`) are specified here once and implemented
by each backend (DALI operators / torchvision transforms v2).
"""
from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError, readable

#: File extensions taken as images (case-insensitive); the formats both backends decode.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm")

#: ImageNet mean / std in 0..255 pixel units.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

#: gitman colour distortion, as torchvision ColorJitter(brightness, contrast, saturation, hue):
#: factors drawn uniformly from [1-0.4, 1+0.4]; hue shift uniform in [-0.1, 0.1] of the colour circle (±36°).
COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)

#: RandomResizedCrop ranges (Szegedy et al.; torchvision and DALI defaults).
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)

SORT_HINT = "sort the validation images into class folders with tools/sort_imagenet_val.py"


#: Largest image decoded, in pixels (width x height), read from the file's header before decoding: PIL's
#: decompression-bomb limit (about 89 M pixels, e.g. 9450 x 9450). A file claiming more is treated as corrupt
#: (a 20000 x 20000 PNG of a few KB would otherwise allocate gigabytes in a decoder).
MAX_PIXELS = 89_478_485
_quiet = False


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def check_header(path: str) -> None:
    """ValueError if `path` is not a regular file or its header claims more than `MAX_PIXELS` pixels.

    Reads the header only (PIL opens lazily), so a decompression bomb is refused before any decoder
    allocates its pixels."""
    from PIL import Image
    if not os.path.isfile(path):
        raise ValueError("not a regular file")
    global _quiet
    if not _quiet:  # PIL warns (1-2x its limit) or raises (beyond): both are our error below instead
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _quiet = True
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:  # beyond twice PIL's limit
        raise ValueError(f"{e} (a corrupt file or a decompression bomb)") from None
    if w * h > MAX_PIXELS:
        raise ValueError(f"its header claims {w} x {h} pixels, more than the {MAX_PIXELS} an image may have "
                         "(a corrupt file or a decompression bomb)")


def looks_like(path: Path) -> bool:
    """True if `path` has a train/ folder (the ImageNet-style layout); the details are checked by `index`."""
    return (Path(path) / "train").is_dir()


# -- the transforms, specified once ------------------------------------------------------

@dataclass(frozen=True)
class ImagePipeline:
    """What the image backends do to each image (both implement exactly this).

    train, by ``augment``:
      none      resize, centre crop (the evaluation transform)
      flip      resize, centre crop, horizontal flip (p=0.5)
      crop-flip resize (shorter side), random size x size crop, flip
      gitman    resize to resize x resize (aspect not kept), random crop, colour distortion
                (`COLOR_JITTER`), flip; scaled to [-1, 1] (Gitman & Ginsburg §4.2)
      rrc       random-resized crop (`RRC_SCALE`, `RRC_RATIO`) to size x size, flip
    eval: resize (square for gitman, shorter side otherwise) to ``resize``, centre crop ``size``.
    Then (x - mean) / std per channel in 0..255 units; output float32 NCHW.
    Training extras (`autoaug`, the data.* keys of the same names): RandAugment or TrivialAugment
    Wide on the uint8 crop after the flip; random erasing on the normalized batch, after cutout.
    """
    augment: str
    size: int
    resize: int
    square: bool
    mean: tuple
    std: tuple
    cutout: int
    randaugment: int = 0
    randaugment_magnitude: int = 9
    trivialaugment: bool = False
    random_erasing: float = 0.0

    @property
    def jitter(self):
        return COLOR_JITTER if self.augment == "gitman" else None


def image_pipeline(cfg) -> ImagePipeline:
    aug = cfg.augment
    if aug == "cifar-padcrop":
        raise UsageError("data.augment=cifar-padcrop is for 32x32 tensor datasets (cifar10, cifar100, mnist); "
                         "for image folders use gitman, rrc, crop-flip, flip or none")
    size = cfg.image_size or 224
    resize = int(round(size * 256 / 224))
    norm = cfg.normalize
    if norm == "auto":
        norm = "minus-one-one" if aug == "gitman" else "imagenet"
    if norm in ("per-pixel", "per-channel"):
        raise UsageError(f"data.normalize={norm} needs statistics of a tensor dataset (cifar10, cifar100, mnist); "
                         "for image folders use imagenet, minus-one-one or none")
    mean, std = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD),
                 "minus-one-one": ((127.5,) * 3, (127.5,) * 3),
                 "none": ((0.0,) * 3, (255.0,) * 3)}[norm]
    if cfg.cutout >= size:
        raise UsageError(f"data.cutout {cfg.cutout} must be smaller than the {size}-pixel crop")
    return ImagePipeline(aug, size, resize, aug == "gitman", tuple(mean), tuple(std), cfg.cutout,
                         cfg.randaugment, cfg.randaugment_magnitude, cfg.trivialaugment, cfg.random_erasing)


# -- the file index -----------------------------------------------------------------------

@dataclass
class FolderIndex:
    root: Path
    split_dir: Path          # where the files come from (train/ for the val_split hold-out)
    classes: list            # sorted class folder names; label = position
    files: list              # absolute paths, str
    labels: list             # int, same length
    skipped: list            # (path, reason) dropped by skip_corrupt


def _subdirs(path: Path) -> list:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise UsageError(f"cannot list {path}: {e.strerror}") from None


def _list_images(folder: Path) -> tuple[list, list]:
    """(regular files, other entries) named like images in `folder`: a FIFO, socket or device named x.jpg
    is never opened (reading it could block for ever)."""
    try:
        entries = [e for e in os.scandir(folder) if is_image_file(e.name) and not e.is_dir()]
        return sorted(e.name for e in entries if e.is_file()), sorted(e.name for e in entries if not e.is_file())
    except OSError as e:
        raise UsageError(f"cannot list {readable(folder)}: {e.strerror}") from None


def _names(items, limit=8) -> str:
    items = list(items)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def classes_of(root: Path, cfg) -> list:
    """The class list (sorted train/ folder names), after checking train/ against val/ and num_classes."""
    root = Path(root)
    train = root / "train"
    if not root.is_dir():
        raise UsageError(f"data path {root} is not a directory")
    if not train.is_dir():
        raise UsageError(f"data path {root} has no train/ folder; expected train/<class>/<image> and val/<class>/<image>")
    classes = _subdirs(train)
    if not classes:
        loose = sum(1 for e in os.scandir(train) if is_image_file(e.name))
        what = f"{loose} images directly in it" if loose else "nothing in it"
        raise UsageError(f"{train} has no class folders ({what}); expected train/<class>/<image>")
    if cfg.val_split == 0:
        val = root / "val"
        if not val.is_dir():
            raise UsageError(f"data path {root} has no val/ folder: add val/<class>/<image> "
                             f"({SORT_HINT}), or hold out training images with data.val_split=N")
        vclasses = _subdirs(val)
        if not vclasses:
            loose = sum(1 for e in os.scandir(val) if is_image_file(e.name))
            if loose:
                raise UsageError(f"{val} holds {loose} images but no class folders: {SORT_HINT}")
            raise UsageError(f"{val} is empty: expected val/<class>/<image>")
        if vclasses != classes:
            only_t, only_v = sorted(set(classes) - set(vclasses)), sorted(set(vclasses) - set(classes))
            parts = []
            if only_t:
                parts.append(f"only in train/: {_names(only_t)}")
            if only_v:
                parts.append(f"only in val/: {_names(only_v)}")
            raise UsageError(f"class folders differ between {train} ({len(classes)}) and {val} ({len(vclasses)}): "
                             + "; ".join(parts))
    if cfg.num_classes and cfg.num_classes != len(classes):
        raise UsageError(f"data.num_classes is {cfg.num_classes} but {train} has {len(classes)} class folders")
    return classes


def stratified_holdout(labels: np.ndarray, n_val: int, seed: int = 0):
    """(train_idx, val_idx): exactly n_val indices held out, each class in proportion (largest remainder), fixed seed."""
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 < n_val < n:
        raise UsageError(f"data.val_split {n_val} must be between 1 and the {n} training samples - 1")
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n_val / n
    take = np.floor(quota).astype(int)
    rest = n_val - take.sum()
    order = np.lexsort((classes, -(quota - take)))  # largest remainder first, ties by class
    take[order[:rest]] += 1
    rng = np.random.default_rng(seed)
    val = []
    for c, t in zip(classes, take):
        idx = np.flatnonzero(labels == c)
        val.append(rng.permutation(idx)[:t])
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, int)
    train = np.setdiff1d(np.arange(n), val)
    return train, val


def check_image(path: str):
    """None if PIL decodes `path` (JPEG at 1/8 scale, cheap), else the reason."""
    from PIL import Image
    try:
        check_header(path)
        with Image.open(path) as im:
            im.draft("RGB", (1, 1))  # JPEG: decode at the smallest DCT scale; other formats: full decode
            im.load()
        return None
    except Exception as e:  # noqa: BLE001 - any failure means unreadable
        return f"{type(e).__name__}: {e}"


def scan(files, threads: int = 0, time_limit: float = float("inf")):
    """[(path, reason)] of the unreadable files among `files` (threads: PIL releases the GIL while decoding).

    Stops after `time_limit` seconds; returns (bad, complete).
    """
    threads = threads or os.cpu_count() or 1
    bad, t0, done = [], time.perf_counter(), 0
    chunk = 4096
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for lo in range(0, len(files), chunk):
            part = files[lo:lo + chunk]
            for path, reason in zip(part, pool.map(check_image, part)):
                if reason is not None:
                    bad.append((path, reason))
            done += len(part)
            if time.perf_counter() - t0 > time_limit:
                break
    return bad, done >= len(files)


def index(cfg, split: str) -> FolderIndex:
    """Files and labels of `split` ('train', 'val': the evaluation split, held out of train/ with
    data.val_split, else val/; 'test': always val/), checked."""
    root = Path(cfg.source).expanduser()
    classes = classes_of(root, cfg)
    held_out = cfg.val_split > 0 and split != "test"
    split_dir = root / ("train" if held_out or split == "train" else "val")
    files, labels, special = [], [], []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():  # val_split: val/ is not used; otherwise classes_of checked the names
            raise UsageError(f"{readable(folder)} is missing")
        names, others = _list_images(folder)
        special += [str(folder / f) for f in others]
        if not names:
            raise UsageError(f"{readable(folder)} has no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
        files += [str(folder / f) for f in names]
        labels += [label] * len(names)
    if special and not cfg.skip_corrupt:
        raise UsageError(f"{readable(special[0])} is named like an image but is not a regular file (a FIFO, socket "
                         f"or device){f' (+{len(special) - 1} more)' if len(special) > 1 else ''}; remove it, or "
                         "set data.skip_corrupt=true to skip it")
    if held_out:
        tr, va = stratified_holdout(np.array(labels), cfg.val_split)
        keep = tr if split == "train" else va
        files = [files[i] for i in keep]
        labels = [labels[i] for i in keep]
    skipped = [(f, "not a regular file") for f in special]
    if cfg.skip_corrupt:
        bad, _ = scan(files, threads=max(cfg.workers, os.cpu_count() or 1))
        skipped += bad
        if skipped:
            bad = {p for p, _ in skipped}
            kept = [(f, lab) for f, lab in zip(files, labels) if f not in bad]
            files, labels = [f for f, _ in kept], [lab for _, lab in kept]
            warnings.warn(f"data.skip_corrupt: skipped {len(skipped)} unreadable image(s) in {readable(split_dir)} "
                          f"(first: {readable(skipped[0][0])}: {skipped[0][1]})", stacklevel=2)
    return FolderIndex(root, split_dir, classes, files, labels, skipped)


def corrupt_error(files, split_dir, detail: str = "", time_limit: float = 120.0) -> UsageError:
    """A decoder failed somewhere in `files` without naming the file: find it with PIL and name it.

    Used by the DALI backend, whose decode errors do not say which file failed.
    """
    bad, complete = scan(list(files), time_limit=time_limit)
    hint = "remove or replace it, or set data.skip_corrupt=true to skip unreadable images"
    if bad:
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        return UsageError(f"cannot decode image {readable(bad[0][0])} ({bad[0][1]}){more}; {hint}")
    where = "" if complete else f" (PIL scan of {split_dir} stopped after {time_limit:.0f}s)"
    detail = f": {detail}" if detail else ""
    return UsageError(f"an image in {split_dir} could not be decoded{detail}{where}; "
                      f"data.backend=folder names the file, or set data.skip_corrupt=true")
