"""Per-image augmentation policies and random erasing, from torchvision (`data.randaugment`,
`data.trivialaugment`, `data.random_erasing`), for every backend but the built-in digits.

- ``policy(cfg)``: ``torchvision.transforms.v2.RandAugment(num_ops=N, magnitude=M)`` or
  ``TrivialAugmentWide()`` (fill 0), applied to uint8 CHW images *before* normalization, as
  torchvision's and timm's training references do. The folder backend runs it in its
  DataLoader workers after the crop and flip; the tensor datasets (CIFAR, MNIST) and the
  synthetic backend run it on the device, image by image (`per_image`), before their
  crop/flip (so the crop of crop-flip sees the augmented 32x32 image); the dali backend uses
  DALI's own ``auto_aug`` (dali.py).
- ``eraser(cfg)``: ``RandomErasing(p, scale=(0.02, 1/3), ratio=(0.3, 3.3), value=0)`` on the
  normalized batch on the device, image by image (0 is the mean colour after normalization;
  timm's default mode 'const' does the same), after cutout.

Randomness: torchvision's transforms draw from the CPU default generator. `per_image` gives
every image its own seed, a function of the run seed, the epoch, the batch index and the
image's index in the *global* batch (`image_seeds`), so N processes augment exactly as one
would, a resumed run as an uninterrupted one, and nothing of the training RNG stream is
consumed. Cost: a Python loop over the images (torchvision applies one random operation to
a whole batch): fine in loader workers, and for CIFAR-sized images on the device.
"""
from __future__ import annotations

import torch

from ..errors import UsageError

#: Image seeds are drawn below this bound.
_SEED_RANGE = 2 ** 62


def wanted(cfg) -> list[str]:
    """The per-image augmentation keys `cfg` turns on (for error messages)."""
    on = [("randaugment", cfg.randaugment), ("trivialaugment", cfg.trivialaugment),
          ("random_erasing", cfg.random_erasing)]
    return [f"data.{k}" for k, v in on if v]


def refuse(cfg, what: str) -> None:
    """UsageError if `cfg` asks for a per-image augmentation that data `what` cannot take."""
    keys = wanted(cfg)
    if keys:
        raise UsageError(f"{' and '.join(keys)}: {what} are not images; these augmentations are for image data "
                         f"(cifar10, cifar100, mnist, folder, dali, synthetic images)")


def policy(cfg):
    """The automatic augmentation policy for uint8 CHW images, or None."""
    if not (cfg.randaugment or cfg.trivialaugment):
        return None
    from torchvision.transforms import v2
    if cfg.randaugment:
        return v2.RandAugment(num_ops=cfg.randaugment, magnitude=cfg.randaugment_magnitude)
    return v2.TrivialAugmentWide()


def eraser(cfg):
    """Random erasing for normalized CHW images, or None."""
    if not cfg.random_erasing:
        return None
    from torchvision.transforms import v2
    return v2.RandomErasing(p=cfg.random_erasing, scale=(0.02, 1 / 3), ratio=(0.3, 3.3), value=0)


#: Streams of `image_seeds`: the policy and the erasing of one image draw independently.
POLICY, ERASING = 0, 1


def image_seeds(batch_seed: int, lo: int, n: int, stream: int = POLICY) -> list[int]:
    """Seeds of images lo..lo+n-1 of a global batch whose generator was seeded with `batch_seed`
    (e.g. `base.batch_generator(...).initial_seed()`): no draw from any generator, no device sync."""
    return [((batch_seed * 2 + stream) * 6_700_417 + lo + i) % _SEED_RANGE for i in range(n)]


def per_image(x: torch.Tensor, transform, seeds) -> torch.Tensor:
    """``transform`` applied to every image of the batch `x`, image i under seed ``seeds[i]``;
    the caller's CPU generator state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        out = []
        for img, seed in zip(x, seeds):
            torch.default_generator.manual_seed(int(seed))
            out.append(transform(img))
    return torch.stack(out) if out else x
