"""Batch mixing (`data.mixup`, `data.cutmix`): torchvision.transforms.v2 MixUp / CutMix, on the device.

Applied by the engine to each training micro-batch after the backend's augmentation, so it
works the same for every backend (tensor datasets, folder, DALI batches on the GPU):

- MixUp (Zhang et al. 2018): ``x = lam x + (1 - lam) x_rolled``, labels mixed alike,
  ``lam ~ Beta(alpha, alpha)`` once per batch;
- CutMix (Yun et al. 2019): a box of area ``(1 - lam) H W`` from the rolled batch, labels
  mixed by the box's exact area;
- both on: one of the two per batch, with probability 1/2 each (``v2.RandomChoice``), as
  timm's default switch probability and torchvision's classification reference.

"Rolled" is the batch shifted by one sample (torchvision's pairing). Labels become
probability vectors over the classes; the loss is the cross-entropy with those targets
(label smoothing composes), and train/top1 counts the argmax of the mixed target. Mixing is
within each process's micro-batch, as timm's under DDP; lam and the box come from the
process's own CPU generator, which checkpoints save and restore, so resume stays exact.
"""
from __future__ import annotations

from ..errors import UsageError


def build(cfg, num_classes: int, in_shape):
    """A callable ``(x, y) -> (x, soft y)`` for the training batches, or None when both alphas are 0."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    if len(in_shape) != 3:
        keys = " and ".join(k for k, v in (("data.mixup", cfg.mixup), ("data.cutmix", cfg.cutmix)) if v)
        raise UsageError(f"{keys}: torchvision's MixUp/CutMix mix image batches (N, C, H, W); this data's "
                         f"samples have shape {list(in_shape)}")
    from torchvision.transforms import v2
    mixes = ([v2.MixUp(alpha=cfg.mixup, num_classes=num_classes)] if cfg.mixup else []) + \
            ([v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes)] if cfg.cutmix else [])
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
