"""`digits`: the built-in real dataset, 1,797 8x8 handwritten digits (UCI "Optical
Recognition of Handwritten Digits", as shipped with scikit-learn; CC BY 4.0).

Vendored as `digits.npz` (uint8 pixels 0..16, labels). A fixed stratified split
(seed 0) keeps 360 images as the test split. Inputs are scaled to [0, 1] and
standardised with the training split's per-pixel mean and std (``data.normalize``
auto or per-pixel; ``per-channel``: one mean and std); ``minus-one-one`` scales
them to [-1, 1] instead, ``none`` keeps [0, 1]. With ``data.val_split = N``
another N images of the training split are held out (stratified, seed 0) as the
validation split ('val'); the standardisation still uses the whole training split
(1,437 images), so the test inputs do not change.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from . import autoaug
from .base import DataContext, TensorLoader
from .imagefolder import stratified_holdout

FILE = Path(__file__).with_name("digits.npz")
TEST_SIZE = 360


def _split(y: np.ndarray):
    """Stratified split: the same TEST_SIZE images every time."""
    rng = np.random.default_rng(0)
    test = []
    classes = np.unique(y)
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        test.extend(idx[: round(TEST_SIZE * len(idx) / len(y))])
    test = np.sort(np.array(test[:TEST_SIZE]))
    train = np.setdiff1d(np.arange(len(y)), test)
    return train, test


NORMALIZE = ("auto", "per-pixel", "per-channel", "minus-one-one", "none")


def load_arrays(normalize: str = "auto"):
    if normalize not in NORMALIZE:
        raise UsageError(f"data.normalize={normalize} is not supported for the built-in digits; "
                         f"choose from: {', '.join(NORMALIZE)}")
    with np.load(FILE) as f:
        x, y = f["images"].astype(np.float32) / 16.0, f["labels"].astype(np.int64)
    train, test = _split(y)
    if normalize in ("auto", "per-pixel"):
        mean, std = x[train].mean(0), x[train].std(0) + 1e-2  # some border pixels are constant
        x = (x - mean) / std
    elif normalize == "per-channel":  # one channel: one mean and std
        x = (x - x[train].mean()) / x[train].std()
    elif normalize == "minus-one-one":
        x = 2.0 * x - 1.0
    return (x[train], y[train]), (x[test], y[test])


def build(cfg, split: str, ctx: DataContext):
    """The built-in digits: 1,797 real 8x8 handwritten digits (UCI), no download; the default recipe's data."""
    autoaug.refuse(cfg, "the built-in digits (8x8 standardised features)")
    (xtr, ytr), test = load_arrays(cfg.normalize)
    val = test
    if cfg.val_split:
        tr, va = stratified_holdout(ytr, cfg.val_split)
        (xtr, ytr), val = (xtr[tr], ytr[tr]), (xtr[va], ytr[va])
    x, y = {"train": (xtr, ytr), "val": val, "test": test}[split]
    return TensorLoader(torch.from_numpy(np.ascontiguousarray(x))[:, None], torch.from_numpy(y), 10, ctx)
