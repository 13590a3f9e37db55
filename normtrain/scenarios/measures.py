"""Measurements of a network in training that several scenarios share: row coherence of its
weights and the output norm of each of its residual blocks. Not a scenario.

Row coherence (Gitman & Ginsburg 2017 footnote 2): for a weight with rows w_i (one per output
channel, a conv's kernel flattened), ``max_{i != j} |w_i . w_j| / (||w_i|| ||w_j||)``. WN keeps a
layer's output norm equal to its input's only while it is small ("W is close to orthogonal").
"""
from __future__ import annotations

import torch
from torch import nn


def row_coherence(w: torch.Tensor) -> float:
    """max_{i != j} |w_i . w_j| / (||w_i|| ||w_j||) over the rows of a weight (Gitman & Ginsburg footnote 2)."""
    w = w.detach().float().flatten(1)
    if w.shape[0] < 2:
        return 0.0
    u = w / w.norm(dim=1, keepdim=True).clamp_min(1e-30)
    g = (u @ u.t()).abs()
    g.fill_diagonal_(0.0)
    return float(g.max())


def row_coherences(weights: list[torch.Tensor]) -> list[float]:
    """`row_coherence` of each weight, computed in one batched product per weight shape (one sync in all)."""
    out: list = [None] * len(weights)
    shapes: dict = {}
    for i, w in enumerate(weights):
        shapes.setdefault(tuple(w.detach().flatten(1).shape), []).append(i)
    for (rows, _), idx in shapes.items():
        if rows < 2:
            for i in idx:
                out[i] = torch.zeros(())
            continue
        w = torch.stack([weights[i].detach().float().flatten(1) for i in idx])
        u = w / w.norm(dim=2, keepdim=True).clamp_min(1e-30)
        g = (u @ u.transpose(1, 2)).abs()
        g.diagonal(dim1=1, dim2=2).zero_()
        for i, v in zip(idx, g.amax(dim=(1, 2))):
            out[i] = v
    return [float(v) for v in torch.stack(out).tolist()]


class BlockNorms:
    """Mean per-sample L2 norm of the output of the first conv/linear layer (after the activation norm that
    runs right after it, if any, as `normtrain.engine.NormTracker` measures it, so BN-family methods are
    seen normalized) and of every residual block (a module with a ``join``,
    `normtrain.models.residual_blocks`), recorded by forward hooks on the forwards made while ``active`` is
    set. ``names``: 'first' then the blocks in forward order.

        probe = BlockNorms(model)
        probe.active = True; model(x); probe.active = False
        probe.values   # {'first': ..., 'layer1.0': ..., ...}
    """

    def __init__(self, model: nn.Module):
        from ..models import residual_blocks
        from .common import is_norm_layer
        self.active = False
        self.values: dict[str, float] = {}
        blocks = residual_blocks(model)
        self.names = ["first"] + [n for n, _ in blocks]
        self._handles = [b.register_forward_hook(self._hook(n)) for n, b in blocks]
        # The first layer's output point is found in the first forward: the first conv/linear to finish, or the
        # norm layer that finishes right after it.
        self._order: list[nn.Module] = []
        self._first_handles = [m.register_forward_hook(self._find_first) for m in model.modules()
                               if isinstance(m, (nn.Conv2d, nn.Linear)) or is_norm_layer(m)]
        self._is_norm = is_norm_layer

    @staticmethod
    def _norm(output) -> float:
        return float(output.detach().float().flatten(1).norm(dim=1).mean())

    def _find_first(self, module, inputs, output):
        # Norms are taken now: a later in-place activation may overwrite this output.
        self._order.append((module, self._norm(output)))
        layers = [i for i, (m, _) in enumerate(self._order) if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not layers or len(self._order) < layers[0] + 2:
            return
        i = layers[0]
        point, value = self._order[i + 1] if self._is_norm(self._order[i + 1][0]) else self._order[i]
        for h in self._first_handles:
            h.remove()
        self._first_handles, self._order = [], []
        self._handles.append(point.register_forward_hook(self._hook("first")))
        if self.active:
            self.values["first"] = value

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if self.active:
                self.values[name] = self._norm(output)
        return hook

    def remove(self) -> None:
        for h in self._handles + self._first_handles:
            h.remove()
        self._handles, self._first_handles = [], []


def plateau_tolerance(losses, window: float = 0.1, rel: float = 0.05) -> float:
    """The relative decline `common.plateaued` should allow on a noisy per-step loss curve: `rel`, or two
    standard errors of the difference of the two window means (from the values' spread about their
    window's mean), relative to the earlier window's mean, whichever is larger. A decline inside the
    curve's own step-to-step noise is not evidence that training is still improving."""
    import math
    xs = [float(x) for x in losses if x is not None and math.isfinite(float(x))]
    k = max(1, int(len(xs) * window))
    if len(xs) < 2 * k or k < 2:
        return rel
    last, before = xs[-k:], xs[-2 * k:-k]
    ml, mb = sum(last) / k, sum(before) / k
    var = (sum((x - ml) ** 2 for x in last) + sum((x - mb) ** 2 for x in before)) / (2 * k - 2)
    se = math.sqrt(2 * var / k)
    return max(rel, 2 * se / abs(mb)) if mb else rel


def settled(losses, window: float = 0.1, rel: float = 0.05) -> bool:
    """`common.plateaued` with `plateau_tolerance`: the last `window` of the curve is not below the window
    before it by more than `rel` or than the curve's noise allows."""
    from .common import plateaued
    return plateaued(losses, window, plateau_tolerance(losses, window, rel))
