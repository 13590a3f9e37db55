"""DyT's observation: trained LayerNorm maps input to output like a scaled tanh in deeper layers (DyT Fig. 2).

Zhu, Chen, He, LeCun & Liu 2025 ("Transformers without Normalization", CVPR) §3 and
Fig. 2: for a trained ViT-B they plot, over a mini-batch, each element's input to an LN
layer against its output *before the affine transformation*: "In the earlier LN
layers ... the input-output relationship is mostly linear", while "in the deeper LN
layers" the points form "S-shaped curves" that "highly resemble that of a tanh
function", which is what DyT(x) = gamma tanh(alpha x) + beta then replaces LN with.
(Their explanation: each token's map is linear, x_hat = (x - mu_t) / sigma_t, but tokens
holding extreme values have a large sigma_t and are squashed, so the cloud bends.)

What runs: ``model`` (default ``vit-tiny-digits``: 6 pre-norm blocks of width 64, 2x2
patches of the 8x8 digits) with ``ln`` (torch.nn.LayerNorm per token), trained for
``steps`` AdamW steps (one-cycle: 10% warm-up, cosine decay), per seed. For each LN layer
in forward order (ln_1, ln_2 of every block, the final norm) the inputs x of
``probe_images`` evaluation images (every token and feature) are recorded and its
pre-affine output y = (x - mean) / sqrt(var + eps) computed. Two curves are fitted to the
(x, y) cloud by least squares, each with two parameters: a tanh through the origin,
y = a tanh(b x), and the control, a line y = k x + c; their R^2 (share of the output's
variance explained) is reported per depth, before training (same seed) and after.

Verdict (the statistics rule of `common.difference`, seeds as the replicates; a gap
counts at >= 2 standard errors and at least ``min_gap`` of R^2):
- paper, deep layers tanh-like: in the deepest third of the LN layers the tanh fit's
  R^2 exceeds the line's by at least ``min_gap``;
- paper, earlier layers mostly linear: in the earliest third the two are shown equal
  (the gap's whole 2-SE interval is under ``min_gap``);
- added, the shape is learned: in the deepest third the tanh advantage after training
  exceeds the one at initialisation by at least ``min_gap`` (the paper's figure is of a
  trained network; an S-shape present at initialisation comes from the input).
At the CPU size the built-in digits, standardised per pixel, hold values up to |x| ~ 16
(border pixels that are almost always 0): tokens carrying them are squashed from the
first layer on. ``--scale paper`` (`PAPER`): ViT-B/16 on ImageNet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import models, norms
from ..errors import UsageError
from . import common

USES_DATA = True

CLAIM = ("In a trained ViT, LayerNorm's input-output map (outputs before the affine) is mostly linear in the earlier "
         "LN layers and S-shaped, like a scaled tanh, in the deeper ones (Zhu et al. 2025, §3, Fig. 2).")

#: The paper-scale experiment, as data (the `--scale paper` machinery reads it).
PAPER = {
    "where": "Zhu, Chen, He, LeCun & Liu 2025, 'Transformers without Normalization', CVPR: §3, Fig. 2 (ViT panel)",
    "dataset": "imagenet",
    "gpus": 64,   # the authors' README command for ViT-B: 8 nodes x 8 GPUs x 64 images = batch 4096
    "params": {"model": "vit-b16", "image_size": 224, "probe_images": 64, "seeds": 1},
    "recipes": ["deit-b-imagenet"],
    "paper_values": {
        "fig2": {"value": "earlier LN layers mostly linear, deeper ones S-shaped", "unit": "a plot; no number given",
                 "where": "Fig. 2, ViT-B trained on ImageNet-1K"},
        "vit_b_top1_ln": {"value": 82.3, "unit": "top-1 %", "where": "Table 1 (github.com/jiachenzhu/DyT README)"},
        "vit_b_top1_dyt": {"value": 82.5, "unit": "top-1 %", "where": "Table 1 (github.com/jiachenzhu/DyT README)"},
    },
    "note": "the authors' ViT-B is timm's vit_base_patch16_224 with global average pooling (their main.py), trained "
            "with lr 4e-3 at batch 4096, drop path 0.1 and EMA; ours is torchvision's, with the class token",
}


@dataclass
class Params(common.Params):
    model: str = "vit-tiny-digits"
    """A transformer with token norms (vit-tiny-digits, vit-s16, vit-b16), trained with ln."""
    steps: int = 300
    """AdamW steps per seed (one-cycle: 10% warm-up, cosine decay to 0)."""
    batch_size: int = 64
    """Training mini-batch."""
    lr: float = 3e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 0.05
    """AdamW weight decay (DeiT's 0.05)."""
    seeds: int = 3
    """Seeds (seed, seed + 1, ...): initial weights and data order; the replicates of the verdict."""
    probe_images: int = 32
    """Evaluation images whose tokens are recorded at every LN layer (the paper's mini-batch)."""
    min_gap: float = 0.02
    """Smallest R^2 advantage of the tanh fit over the line that counts as an S-shape (2% of the output variance)."""
    image_size: int = 0
    """With --data: resize to this size (0 = natural size; a ViT needs sides divisible by its patch)."""
    threads: int = 1
    """CPU threads (a small network: 1 is fastest)."""

    def check(self) -> None:
        super().check()
        common.known(self.model)
        for k in ("steps", "batch_size", "lr", "probe_images", "min_gap"):
            common.positive(k, getattr(self, k))
        common.positive("weight_decay", self.weight_decay, allow_zero=True)
        common.positive("image_size", self.image_size, allow_zero=True)
        if self.seeds < 2:
            raise ValueError("seeds: the verdict needs at least 2 seeds (a standard error)")


# -- the measurement --------------------------------------------------------------------------------

def r2(y: torch.Tensor, fit: torch.Tensor) -> float:
    """Share of y's variance that `fit` explains: 1 - SS_res / SS_tot."""
    return float(1.0 - (y - fit).pow(2).sum() / (y - y.mean()).pow(2).sum())


def fit_line(x: torch.Tensor, y: torch.Tensor) -> dict:
    """Least-squares y = k x + c."""
    k = float(((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).pow(2).sum())
    c = float(y.mean()) - k * float(x.mean())
    return {"k": k, "c": c, "r2": r2(y, k * x + c)}


def fit_tanh(x: torch.Tensor, y: torch.Tensor) -> dict:
    """Least-squares y = a tanh(b x): a in closed form for each b, b by a log grid then golden-section search.

    b is searched over [1e-3, 1e2] / std(x); as b -> 0 the curve is the line k x through the origin."""
    scale = float(x.std()) or 1.0

    def score(log_b: float) -> tuple[float, float]:
        t = torch.tanh(math.exp(log_b) / scale * x)
        a = float((t * y).sum() / t.pow(2).sum().clamp_min(1e-30))
        return r2(y, a * t), a

    grid = [math.log(1e-3) + i * (math.log(1e2) - math.log(1e-3)) / 40 for i in range(41)]
    best = max(range(len(grid)), key=lambda i: score(grid[i])[0])
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    for _ in range(30):  # golden-section search for the maximum of R^2 on [lo, hi]
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        if score(m1)[0] >= score(m2)[0]:
            hi = m2
        else:
            lo = m1
    log_b = (lo + hi) / 2
    value, a = score(log_b)
    return {"a": a, "b": math.exp(log_b) / scale, "r2": value}


def ln_layers(model: nn.Module) -> list[tuple[str, nn.LayerNorm]]:
    """The LayerNorm modules of `model` in registration (= forward) order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]


@torch.no_grad()
def record(model: nn.Module, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, pre-affine output) of every LN layer for `images`, flattened, in float64 (eval mode)."""
    layers = ln_layers(model)
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=n: seen.__setitem__(name, inp[0].detach()))
             for n, m in layers]
    try:
        model.eval()
        model(images)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for n, m in layers:
        x = seen[n].double()
        y = F.layer_norm(x, m.normalized_shape, None, None, m.eps)
        out.append((x.flatten(), y.flatten()))
    return out


def measure(model: nn.Module, images: torch.Tensor) -> list[dict]:
    """Per LN layer: the tanh and line fits and the input's spread."""
    rows = []
    for x, y in record(model, images):
        rows.append({"tanh": fit_tanh(x, y), "line": fit_line(x, y), "x_std": float(x.std()),
                     "x_absmax": float(x.abs().max())})
    return rows


# -- the verdict ---------------------------------------------------------------------------------------

def thirds(n: int) -> tuple[list[int], list[int]]:
    """Indices of the earliest and the deepest third of `n` layers (at least one each)."""
    k = max(1, n // 3)
    return list(range(k)), list(range(n - k, n))


def verdict(trained: dict, init: dict, min_gap: float = 0.02) -> dict:
    """trained/init: {"tanh": [per seed: [R^2 per LN layer]], "line": [...]} (the same seeds and layers)."""
    n = len(trained["tanh"][0]) if trained["tanh"] else 0
    if n == 0 or len(trained["tanh"]) < 2:
        p = common.part("deep-tanh", "deeper LN layers are tanh-like", "paper", common.INCONCLUSIVE,
                        "fewer than 2 seeds or no LN layer", "needs >= 2 seeds")
        return common.verdict_of(CLAIM, [p], "no result")
    early, deep = thirds(n)

    def mean_over(rows, idx):
        return [sum(r[i] for i in idx) / len(idx) for r in rows]

    deep_t, deep_l = mean_over(trained["tanh"], deep), mean_over(trained["line"], deep)
    early_t, early_l = mean_over(trained["tanh"], early), mean_over(trained["line"], early)
    gap_trained = [a - b for a, b in zip(deep_t, deep_l)]
    gap_init = [a - b for a, b in zip(mean_over(init["tanh"], deep), mean_over(init["line"], deep))]
    d_deep = common.difference(deep_t, deep_l, min_gap)
    d_early = common.difference(early_t, early_l, min_gap)
    d_learn = common.difference(gap_trained, gap_init, min_gap)

    def layers(idx):
        return f"LN layers {idx[0] + 1}-{idx[-1] + 1} of {n}" if len(idx) > 1 else f"LN layer {idx[0] + 1}"

    def said(d):
        se = "n/a" if not math.isfinite(d["se"]) else f"{d['se']:.2g}"
        return f"gap {d['gap']:+.3f} (s.e. {se}; {'shown' if d['shown'] else 'shown equal' if d['equal'] else 'not shown'})"

    parts = [
        common.part("deep-tanh", "in the deeper LN layers the map is S-shaped, like a scaled tanh", "paper",
                    common.state_greater(d_deep),
                    f"{layers(deep)}: tanh R^2 {common.pm(deep_t, 4)} vs line {common.pm(deep_l, 4)}, {said(d_deep)}",
                    f"tanh R^2 - line R^2 >= {min_gap} over the deepest third, at >= 2 s.e. over the seeds"),
        common.part("early-linear", "in the earlier LN layers the map is mostly linear", "paper",
                    common.REPRODUCED if d_early["equal"] else common.NOT_REPRODUCED if d_early["shown"]
                    else common.INCONCLUSIVE,
                    f"{layers(early)}: tanh R^2 {common.pm(early_t, 4)} vs line {common.pm(early_l, 4)}, "
                    f"{said(d_early)}",
                    f"tanh R^2 - line R^2 shown within +-{min_gap} over the earliest third (2-s.e. interval)"),
        common.part("learned", "the deep layers' S-shape comes from training", "added", common.state_greater(d_learn),
                    f"tanh advantage in {layers(deep)}: {common.pm(gap_trained, 3)} trained vs "
                    f"{common.pm(gap_init, 3)} at initialisation, {said(d_learn)}",
                    f"the deepest third's tanh advantage grows by >= {min_gap} with training, at >= 2 s.e."),
    ]
    headline = (f"tanh fit's R^2 over the line's: deepest third {d_deep['gap']:+.3f}, earliest {d_early['gap']:+.3f} "
                f"(S-shaped from {min_gap}); training adds {d_learn['gap']:+.3f} in the deepest")
    return common.verdict_of(CLAIM, parts, headline)


# -- plots ------------------------------------------------------------------------------------------------

def plot(ctx, p: Params, clouds: list, fits: list[dict], trained: dict, init: dict, v: dict) -> None:
    import numpy as np
    n = len(clouds)
    picks = sorted({0, n // 3, (2 * n) // 3, n - 1})
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, len(picks), panel=(4.2, 4.2))
        g = torch.Generator().manual_seed(0)
        for ax, i in zip(axes[0], picks):
            x, y = clouds[i]
            idx = torch.randperm(len(x), generator=g)[:6000]
            ax.plot(x[idx].numpy(), y[idx].numpy(), ".", ms=1.5, alpha=0.35, color="tab:blue")
            xs = torch.linspace(float(x.min()), float(x.max()), 200, dtype=torch.float64)
            t, ln = fits[i]["tanh"], fits[i]["line"]
            ax.plot(xs, t["a"] * torch.tanh(t["b"] * xs), color="tab:red", label=f"a tanh(bx): R^2 {t['r2']:.3f}")
            ax.plot(xs, ln["k"] * xs + ln["c"], "--", color="k", label=f"line: R^2 {ln['r2']:.3f}")
            ax.set_title(f"LN layer {i + 1} of {n}")
            ax.set_xlabel("LN input")
            ax.set_ylabel("output before the affine")
            ax.legend(loc="upper left")
        ctx.savefig(fig, "dyt_tanh_shape.png", v, "seed 0, trained (cf. the paper's Fig. 2)")
        fig, axes = common.figure(plt, 1, 2, panel=(6.5, 4.6))
        depth = np.arange(1, n + 1)
        for ax, data, title in ((axes[0][0], trained, "after training"), (axes[0][1], init, "at initialisation")):
            for key, color, label in (("tanh", "tab:red", "a tanh(bx)"), ("line", "k", "line kx + c (control)")):
                arr = np.array(data[key])
                ax.errorbar(depth, arr.mean(0), yerr=arr.std(0), color=color, marker="o", capsize=3, label=label)
            ax.set_title(f"R^2 of the fits per LN layer, {title} (mean ± std over seeds)")
            ax.set_xlabel("LN layer (forward order)")
            ax.set_ylabel("R^2")
            common.integer_x(ax)
            ax.legend()
        ctx.savefig(fig, "r2_per_depth.png", v)


# -- run ------------------------------------------------------------------------------------------------

def run(ctx, p: Params) -> dict:
    val = common.epoch_batches(common.loader(ctx, max(p.probe_images, 64), "val", p.image_size))
    images = torch.cat([x for x, _ in val])[:p.probe_images]
    trained = {"tanh": [], "line": []}
    init = {"tanh": [], "line": []}
    per_seed, first = [], None
    bar = ctx.progress(total=p.seeds, desc="dyt-tanh-shape")
    for s in range(p.seed, p.seed + p.seeds):
        ld = common.loader(ctx, p.batch_size, "train", p.image_size, seed=s)
        torch.manual_seed(s)
        model = models.build(p.model, norms.get("ln"), ld.num_classes, ld.in_shape, init="default").to(ctx.device)
        if not ln_layers(model):
            raise UsageError(f"model {p.model} has no LayerNorm token norm to record (use a vit-* network)")
        at_init = measure(model, images)
        opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.lr, total_steps=p.steps, pct_start=0.1)
        r = common.train_steps(model, opt, common.take(ld, p.steps), p.steps, scheduler=sched,
                               on_step=lambda i, x, s=s: ctx.scalar(f"seed{s}/train_loss", x, i))
        ev = common.evaluate(model, val)
        after = measure(model, images)
        if first is None:
            first = ([(x.cpu(), y.cpu()) for x, y in record(model, images)], after)
        for data, rows in ((trained, after), (init, at_init)):
            data["tanh"].append([q["tanh"]["r2"] for q in rows])
            data["line"].append([q["line"]["r2"] for q in rows])
        per_seed.append({"seed": s, "eval": ev, "final_loss": r["losses"][-1], "diverged_at": r["diverged_at"],
                         "trained": after, "init": at_init})
        bar.update(1)
    bar.close()
    v = verdict(trained, init, p.min_gap)
    plot(ctx, p, first[0], first[1], trained, init, v)
    names = [n for n, _ in ln_layers(model)]
    rows = []
    for i, name in enumerate(names):
        t = [r[i] for r in trained["tanh"]]
        ln = [r[i] for r in trained["line"]]
        rows.append([i + 1, name, common.pm(t, 4), common.pm(ln, 4), common.pm([a - b for a, b in zip(t, ln)], 3),
                     common.pm([a - b for a, b in zip((r[i] for r in init["tanh"]), (r[i] for r in init["line"]))], 3)])
    summary = common.table(["layer", "module", "tanh R^2", "line R^2", "tanh - line", "at init"], rows)
    summary += f"\neval top-1 after training: {common.pm([q['eval']['top1'] for q in per_seed])} %"
    meas = {"model": p.model, "ln_layers": names, "seeds": [q["seed"] for q in per_seed],
            "r2_trained": trained, "r2_init": init, "per_seed": per_seed, "paper": PAPER}
    return ctx.finish(meas, v, summary)
