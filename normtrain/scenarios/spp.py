"""Signal-propagation plots (SPPs) shared by the SPP scenarios: their input, stages and curve shapes.

Not a scenario: signal-prop, nf-ablation and residual-scalings use it (one scenario
never imports another). The statistics themselves are collected by
`normtrain.models.signal.signal_prop` (per residual block: variance and squared
mean of the block output, variance of the residual branch); this module says
which blocks form a stage and what shape a per-block variance curve has:

- a *stage* is a run of consecutive blocks under the same parent module
  ('layer2.0', 'layer2.1', ... -> stage 'layer2');
- within a stage a curve *rises* when it increases at every block, and a least-squares
  line through it has R^2 (`r_squared`); `log_r_squared` is the same fit on log values
  (exponential growth is a line there);
- it *drops at a transition* when the first block of the next stage is below the last
  block of this one (BN's "reset" after every sub-network, Hoedt et al. 2022 Fig. 4);
- `increment_ratio`: the geometric mean over the stages of how much each within-stage
  increment exceeds the previous one, ~1 for linear growth, > 1 for accelerating
  (exponential) growth.

Pure functions on lists of numbers (no torch), except `input_batch` and `he_init`; and
what the three scenarios share of their setting: the paper's white-noise input
(`PAPER`) and its size parameters with their checks (`Params`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import common
from .paper import Paper

#: The paper's own setting, for `--scale paper` (`paper.Paper`): white noise of ImageNet's shape.
PAPER = Paper(
    where="Hoedt et al. 2022 (blog), \"Moment Control\", Fig. 4-5 (torch.randn(1000, 3, 224, 224) through the ResNets)",
    dataset=None,
    gpus=1,
    params={"image_size": 224, "batch_size": 1000},
)


@dataclass
class Params(common.Params):
    image_size: int = 64
    """Input resolution (the blog's 224; 64 keeps the default fast on CPU)."""
    batch_size: int = 32
    """White-noise batch size (the blog's 1000)."""

    def check(self) -> None:
        super().check()
        common.positive("image_size", self.image_size)
        if self.batch_size < 2:
            raise ValueError("batch_size: needs >= 2 (variances)")


def input_batch(ctx, batch_size: int, image_size: int, seed: int):
    """The SPP input: white noise N(0, 1) of shape (batch_size, 3, image_size, image_size) (Hoedt's
    ``torch.randn(1000, 3, 224, 224)``), or with ``--data`` one evaluation batch of it with its
    channel repeated to 3 when it has one."""
    import torch

    if ctx.data:
        x = next(iter(common.loader(ctx, batch_size, "val", image_size).epoch(0)))[0]
        if x.shape[1] != 3:
            x = x[:, :1].expand(-1, 3, -1, -1).contiguous()
        return x
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, image_size, image_size, generator=g).to(ctx.device)


def he_init(model) -> None:
    """He (fan-in, ReLU gain) normal init of every conv/linear weight, biases 0: a variance-preserving forward
    (the premise of the residual scalings and of the NF-ResNet ablations)."""
    import torch
    from torch import nn
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def pearson(a: list[float], b: list[float]) -> float:
    """Pearson correlation of two equally long lists (nan when undefined)."""
    n = len(a)
    if n < 2 or n != len(b):
        return float("nan")
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else float("nan")


def r_squared(y: list[float]) -> float:
    """R^2 of a least-squares line through (0, y0), (1, y1), ..."""
    x = list(range(len(y)))
    r = pearson(x, y)
    return r * r if math.isfinite(r) else float("nan")


def log_r_squared(y: list[float]) -> float:
    """R^2 of a least-squares line through (i, log y_i) (nan if a value is not positive)."""
    if not all(math.isfinite(v) and v > 0 for v in y):
        return float("nan")
    return r_squared([math.log(v) for v in y])


def stage_slices(stages: list[int]) -> list[tuple[int, int]]:
    """[(start, stop)] of consecutive equal stage ids."""
    out, start = [], 0
    for i in range(1, len(stages) + 1):
        if i == len(stages) or stages[i] != stages[start]:
            out.append((start, i))
            start = i
    return out


def stage_ids(names: list[str]) -> list[int]:
    """Stage of each block from its module name ('layer2.3' -> the 'layer2' group), in order of appearance."""
    ids, seen = [], {}
    for n in names:
        key = n.rsplit(".", 1)[0] if "." in n else n
        ids.append(seen.setdefault(key, len(seen)))
    return ids


def shape_stats(var: list[float], stages: list[int]) -> dict:
    """Does the curve rise within every stage, how well does a line fit each stage of >= 3 blocks,
    does it drop at every transition, and its last/first ratio."""
    sl = stage_slices(stages)
    rising = all(all(var[i + 1] > var[i] for i in range(a, b - 1)) for a, b in sl)
    r2 = [r_squared(var[a:b]) for a, b in sl if b - a >= 3]
    drops = [var[b] < var[b - 1] for (a, b) in sl[:-1]]
    return {"rising_within_stages": rising, "stage_r2": r2, "drops_at_transitions": drops,
            "growth": var[-1] / var[0] if var[0] > 0 else float("inf")}


def diffs(v: list[float]) -> list[float]:
    return [b - a for a, b in zip(v, v[1:])]


def stage_growth(var: list[float], stages: list[int]) -> list[float]:
    """max / min of the curve within each stage of >= 2 blocks (inf if a value is not positive)."""
    out = []
    for a, b in stage_slices(stages):
        if b - a < 2:
            continue
        part = var[a:b]
        out.append(max(part) / min(part) if all(math.isfinite(v) and v > 0 for v in part) else float("inf"))
    return out


def increment_ratio(var: list[float], stages: list[int]) -> float:
    """Geometric mean, over consecutive within-stage increments d_i = v_{i+1} - v_i that are both
    positive, of d_{i+1} / d_i: about 1 for linear growth, the per-block factor q for v ~ q^i
    (exponential growth); nan when no stage has two positive increments in a row."""
    logs = []
    for a, b in stage_slices(stages):
        d = diffs(var[a:b])
        logs += [math.log(y / x) for x, y in zip(d, d[1:]) if x > 0 and y > 0 and math.isfinite(x + y)]
    return math.exp(sum(logs) / len(logs)) if logs else float("nan")
