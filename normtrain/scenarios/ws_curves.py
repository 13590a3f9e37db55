"""WS training curves: GN, GN + eq. 6, GN + eq. 5, GN + WS in that order of loss (WS paper Fig. 4 left/middle).

Qiao et al. 2019 §2.3, Fig. 4 (left and middle: "Training ResNet-50 on ImageNet
with GN, Eq. 5 and 6 ... the training dynamics"): "we train four models,
including ResNet-50 with GN, ResNet-50 with GN+Eq. 5, ResNet-50 with GN+Eq. 6
and ResNet-50 with GN+Eq. 5&6 ... we observe that Eq. 6 slightly improves the
training speed and performances of models with or without Eq. 5 while the major
improvements are from Eq. 5." Their Table 2 has the same order in top-1 error:
GN 24.81, GN+WS+DO (eq. 6) 24.60, GN+WS+MO (eq. 5) 23.96, GN+WS 23.72.

What runs: ``model`` (default ``resnet20``) with GroupNorm (``groups``) after
every conv, its convs plain (``gn``), scaled only (``ws-gn`` with
``norm.ws_center=false``: eq. 6, W / rms(W)), centred only (``ws_scale=false``:
eq. 5, W - mean(W)) or standardized (``ws-gn``: eq. 5 and 6), each trained for
``steps`` SGD steps from the same initial raw weights per seed, for ``seeds``
seeds (seed s: initial weights and data order), on the built-in digits (or
``--data``). Per run: the training-loss curve, the final training loss (mean
over the last ``tail`` of the steps) and the evaluation loss and top-1 of the
final weights.

Verdict, three parts, all the paper's sentence: ``eq6-without-eq5`` (GN+eq. 6
ends below GN), ``eq6-with-eq5`` (GN+WS below GN+eq. 5) and ``eq5-major`` (eq.
5's gain over GN exceeds eq. 6's), in final training loss. Seed s of every
configuration shares its initial weights and data order, so each gap is taken
per seed (paired) and is *shown* at >= 2 standard errors and >= ``min_effect``;
shown equal (the 2-SE interval inside +-min_effect) is not reproduced; anything
else is inconclusive, and the headline gives the smallest gap these seeds could
detect (the power) and the measured ``seeds_to_decide``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import models, norms
from . import common

USES_DATA = True

CLAIM = ("Training with GN, GN + eq. 5 (weight centering), GN + eq. 6 (weight scaling) and GN + WS (both): eq. 6 "
         "slightly improves training with or without eq. 5, and the major improvement comes from eq. 5, so the final "
         "training loss orders GN > GN+eq. 6 > GN+eq. 5 > GN+WS (Qiao et al. 2019 §2.3, Fig. 4 left/middle).")

#: (name, method, norm options): the expected order, worst to best.
CONFIGS = (("gn", "gn", {}), ("gn+eq6", "ws-gn", {"ws_center": False}), ("gn+eq5", "ws-gn", {"ws_scale": False}),
           ("gn+ws", "ws-gn", {}))
COLORS = {"gn": "tab:gray", "gn+eq6": "tab:orange", "gn+eq5": "tab:green", "gn+ws": "tab:blue"}


@dataclass
class Params(common.Params):
    model: str = "resnet20"
    """Network (its convs become WS convs for the eq. 5 / eq. 6 / WS runs)."""
    groups: int = 8
    """GroupNorm groups (must divide every width: resnet20 has 16/32/64 channels)."""
    steps: int = 150
    """Training steps per run."""
    batch_size: int = 32
    """Mini-batch size."""
    lr: float = 0.0125
    """SGD learning rate (momentum 0.9); the paper's 0.1 for 256 images scaled linearly to the batch of 32."""
    weight_decay: float = 0.0
    """SGD weight decay."""
    seeds: int = 3
    """Seeds per configuration (seed, seed + 1, ...): initial weights and data order."""
    tail: float = 0.2
    """Final training loss = mean over this last fraction of the steps."""
    min_effect: float = 0.01
    """Smallest gap in final training loss (nats) that counts as an improvement."""
    image_size: int = 0
    """With --data: resize to this size (0 = natural size)."""
    threads: int = 1
    """CPU threads (small layers: 1 is fastest)."""

    def check(self) -> None:
        super().check()
        common.known(self.model)
        for k in ("groups", "steps", "batch_size", "lr", "seeds", "min_effect"):
            common.positive(k, getattr(self, k))
        common.positive("weight_decay", self.weight_decay, allow_zero=True)
        common.positive("image_size", self.image_size, allow_zero=True)
        if not 0 < self.tail <= 1:
            raise ValueError("tail: must be in (0, 1]")


def final_loss(losses: list[float], tail: float) -> float:
    """Mean of the last `tail` fraction of the losses (nan if any of them is not finite)."""
    k = max(1, int(round(tail * len(losses))))
    part = losses[-k:]
    return sum(part) / k if all(v == v and abs(v) != float("inf") for v in part) else float("nan")


def verdict(final: dict, min_effect: float = 0.01) -> dict:
    """final[config] = per-seed final training losses, for the four CONFIGS names (seed i of every config shares
    its initial weights and data order, so gaps are paired by seed)."""
    names = [c[0] for c in CONFIGS]
    if any(not final.get(n) for n in names):
        return common.not_judged(CLAIM, "needs runs of gn, gn+eq6, gn+eq5 and gn+ws")
    f = final
    rule = (f"shown at >= 2 standard errors of the per-seed (paired) gaps and >= {min_effect:g}; inconclusive "
            f"below, with the seeds that would decide it")
    d6 = common.paired_difference(f["gn"], f["gn+eq6"], min_effect)
    d6w = common.paired_difference(f["gn+eq5"], f["gn+ws"], min_effect)
    gain5 = [a - b for a, b in zip(f["gn"], f["gn+eq5"])]
    gain6 = [a - b for a, b in zip(f["gn"], f["gn+eq6"])]
    dmaj = common.paired_difference(gain5, gain6, min_effect)
    parts = [
        common.part("eq6-without-eq5", "Eq. 6 (weight scaling) slightly improves training without eq. 5: GN+eq. 6 "
                    "ends below GN (Qiao et al. 2019 §2.3, Fig. 4 left/middle).", "paper", common.state_greater(d6),
                    f"GN - GN+eq6 final loss {common.shown_text(d6)}", "GN's final training loss is above GN+eq6's, "
                    + rule),
        common.part("eq6-with-eq5", "Eq. 6 slightly improves training with eq. 5: GN+WS ends below GN+eq. 5.",
                    "paper", common.state_greater(d6w), f"GN+eq5 - GN+WS final loss {common.shown_text(d6w)}",
                    "GN+eq5's final training loss is above GN+WS's, " + rule),
        common.part("eq5-major", "The major improvement comes from eq. 5 (centering): its gain over GN is larger "
                    "than eq. 6's.", "paper", common.state_greater(dmaj),
                    f"gain of eq. 5 {common.mean_std(gain5)[0]:.3g}, of eq. 6 {common.mean_std(gain6)[0]:.3g}: "
                    f"difference {common.shown_text(dmaj)}",
                    "(GN - GN+eq5) exceeds (GN - GN+eq6), " + rule),
    ]
    d5 = common.paired_difference(f["gn"], f["gn+eq5"], min_effect)
    power = max(d["detectable"] for d in (d6, d6w, dmaj) if math.isfinite(d["detectable"])) if all(
        math.isfinite(d["detectable"]) for d in (d6, d6w, dmaj)) else float("nan")
    headline = (f"loss gain of eq. 5 {common.shown_text(d5)}; of eq. 6 without eq. 5 {d6['gap']:+.2g}, with it "
                f"{d6w['gap']:+.2g} ({len(f['gn'])} seeds detect gaps >= {power:.2g})")
    return common.verdict_of(CLAIM, parts, headline)


def smooth(xs: list[float], k: int) -> list[float]:
    """Trailing moving average over k values."""
    out, acc = [], []
    for x in xs:
        acc.append(x)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot(ctx, p: Params, runs: dict, final: dict, evals: dict, v: dict) -> None:
    import numpy as np
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, 3, panel=(5.0, 4.6))
        ax = axes[0][0]
        k = max(1, p.steps // 15)
        for name, _, _ in CONFIGS:
            curves = np.array([smooth(r["losses"], k) for r in runs[name] if len(r["losses"]) == p.steps])
            if not len(curves):
                continue
            m, s = curves.mean(0), curves.std(0)
            ax.plot(range(1, p.steps + 1), m, color=COLORS[name], label=name)
            ax.fill_between(range(1, p.steps + 1), np.maximum(m - s, 1e-6), m + s, color=COLORS[name], alpha=0.15)
        ax.set_yscale("log")
        ax.set_title(f"{p.model}: training loss ({k}-step mean; band ± std)")
        ax.set_xlabel("SGD step")
        ax.set_ylabel("cross-entropy")
        ax.legend()
        for ax, data, title, ylab in ((axes[0][1], final, f"final training loss (last {p.tail:.0%} of steps)",
                                       "cross-entropy"),
                                      (axes[0][2], evals, "evaluation top-1 of the final weights", "top-1 (%)")):
            for i, (name, _, _) in enumerate(CONFIGS):
                vals = [x for x in data[name] if x == x]
                mean, sd = common.mean_std(vals)
                ax.bar(i, mean, yerr=sd, color=COLORS[name], alpha=0.6, capsize=6)
                ax.plot([i] * len(vals), vals, "o", color="k", ms=5)
            ax.set_xticks(range(len(CONFIGS)), [c[0] for c in CONFIGS])
            ax.set_title(title)
            ax.set_xlabel("configuration (bars: mean ± std, dots: seeds)")
            ax.set_ylabel(ylab)
        ctx.savefig(fig, "ws_curves.png", v)


def run(ctx, p: Params) -> dict:
    val = common.epoch_batches(common.loader(ctx, 256, "val", p.image_size))
    runs = {name: [] for name, _, _ in CONFIGS}
    bar = ctx.progress(total=len(CONFIGS) * p.seeds, desc="ws-curves")
    for s in range(p.seed, p.seed + p.seeds):
        ld = common.loader(ctx, p.batch_size, "train", p.image_size, seed=s)
        batches = common.take(ld, p.steps)
        for name, method, opts in CONFIGS:
            torch.manual_seed(s)
            model = models.build(p.model, norms.get(method, groups=p.groups, **opts), ld.num_classes,
                                 ld.in_shape).to(ctx.device)
            opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=0.9, weight_decay=p.weight_decay)
            r = common.train_steps(model, opt, batches, p.steps,
                                   on_step=lambda i, x, name=name, s=s: ctx.scalar(f"{name}/seed{s}/train_loss", x, i))
            r.update({"seed": s, "final_loss": final_loss(r["losses"], p.tail), "eval": common.evaluate(model, val)})
            runs[name].append(r)
            bar.update(1)
    bar.close()
    final = {name: [r["final_loss"] for r in rs] for name, rs in runs.items()}
    evals = {name: [r["eval"]["top1"] for r in rs] for name, rs in runs.items()}
    v = verdict(final, p.min_effect)
    plot(ctx, p, runs, final, evals, v)
    rows = [[name, common.pm(final[name]), common.pm(evals[name]),
             common.pm([r["eval"]["loss"] for r in runs[name]]),
             sum(r["diverged_at"] is not None for r in runs[name])] for name, _, _ in CONFIGS]
    summary = common.table(["config", "final train loss", "eval top-1 %", "eval loss", "diverged"], rows)
    meas = {"model": p.model, "groups": p.groups, "seeds": list(range(p.seed, p.seed + p.seeds)),
            "configs": {name: {"method": m, "norm_options": o} for name, m, o in CONFIGS},
            "final_train_loss": final, "eval_top1": evals,
            "per_seed": {name: [{"seed": r["seed"], "final_loss": r["final_loss"], "eval": r["eval"],
                                 "diverged_at": r["diverged_at"], "losses": r["losses"]} for r in rs]
                         for name, rs in runs.items()}}
    return ctx.finish(meas, v, summary)
