"""NormProp ResNet needs a residual modification (our reading: (x + f)/sqrt(2)), fails at large rates (G&G §4.2).

Gitman & Ginsburg 2017 §4.2: "Training with normalization propagation required a
modification of the original algorithm to work with residual connections to
ensure that output of each layer stays normal under the normal distribution
assumption. And even with that modification network either converged to a poor
local minimum or diverged after a few iterations if the initial learning rate
was large." The paper does not say what the modification is. normtrain's
reading, this project's and not the paper's (DESIGN §3), is the block output
(shortcut + branch)/sqrt(2), switched by ``norm.residual_scale``.

What runs: a NormProp ``model`` (default ``resnet20``, option-B projection
shortcuts built through the bundle, so they are normalized too) with and
without the modification, and the same network with ``bn`` as the control,
(and each network of ``beside``, default ``resnet56``, with and without it,
reported beside the verdict),
each trained for ``steps`` SGD steps (momentum 0.9) at every learning rate of
``lrs`` from the same seed, on the same batches of the built-in digits (or
``--data``). Per run: the loss curve; *diverged* if a loss is non-finite or above
``blowup`` x the first one; otherwise the final loss (mean of the last
``tail`` of the steps) is *trained* if <= ``trained_below`` x ln(classes)
(chance level), else *not trained*; a trained NormProp run is a *poor minimum*
when its final loss exceeds ``poor`` x BN's at the same rate.

Diagnostic (not in the verdict): on a probe batch (white noise N(0, 1) in the
data's shape, NormProp's normal-input assumption, or ``probe=data``) at
initialisation, for gamma_init in ``gamma_inits`` (1/1.21, Arpit et al.'s, and
1, the value the equation is derived for) with and without the modification,
per residual block in forward order: the channel variance and squared mean of
the block output (statistics over N, H, W, averaged over channels, the SPP
convention of `normtrain.models.signal`), the variance and skewness of the join
output, and the gain of the NormProp-ReLU after the join (block output variance
/ join variance). The results state where the growth comes from.

Verdict, in parts, on ``model``. The paper's ``needs-modification``: at the
paper-equivalent rate (its 0.1 for 256 images scaled linearly to ``batch_size``:
0.0125 at 32, the nearest grid rate) NormProp without the modification does
not train and with it trains; the paper's ``large-rate``: with it, at the
largest rate above that at which BN trains, it diverges, does not train or ends
at a poor minimum. Ours: ``bn-control``, BN trains at the paper-equivalent rate
and at >= half of the rates; ``variance``, with the modification the
block-output variance at init (gamma 1/1.21, the probe) grows less per block
than without.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import models, norms
from . import common

USES_DATA = True

CLAIM = ("NormProp needed a modification to train a ResNet, and even with it the network converged to a poor minimum "
         "or diverged when the initial learning rate was large (Gitman & Ginsburg 2017 §4.2). The paper does not say "
         "what the modification is; ours (this project's reading) is the join (x + f(x))/sqrt(2).")

CONFIGS = (("with", "normprop", True), ("without", "normprop", False), ("bn", "bn", None))
LABELS = {"with": "NormProp, (x + f(x))/sqrt(2)", "without": "NormProp, x + f(x)", "bn": "BN (control)"}
COLORS = {"with": "tab:blue", "without": "tab:red", "bn": "tab:gray"}


@dataclass
class Params(common.Params):
    model: str = "resnet20"
    """Residual network judged (any model whose blocks have a `join`: resnet20, resnet56, resnet18, preact-resnet50...)."""
    beside: list[str] = field(default_factory=lambda: ["resnet56"])
    """Deeper networks run with and without the modification at the same rates and reported beside the verdict."""
    lrs: list[float] = field(default_factory=lambda: [0.0125, 0.04, 0.125, 0.4])
    """Initial learning rates of the sweep (constant; SGD, momentum 0.9): the paper-equivalent rate and ~3x steps up."""
    paper_lr: float = 0.1
    """The paper's initial rate (ResNet-50, 256 images per step); scaled linearly to batch_size, the nearest grid rate is where the need for the modification is judged."""
    steps: int = 150
    """Training steps per (configuration, rate)."""
    batch_size: int = 32
    """Training mini-batch size."""
    blowup: float = 1000.0
    """Diverged: a loss non-finite or above blowup x the first loss."""
    trained_below: float = 0.5
    """Trained: final loss <= trained_below x ln(classes) (chance level)."""
    poor: float = 3.0
    """Poor minimum: a trained NormProp run's final loss > poor x BN's at the same rate."""
    tail: float = 0.1
    """Final loss = mean over this last fraction of the steps."""
    gamma_inits: list[float] = field(default_factory=lambda: [1 / 1.21, 1.0])
    """NormProp gamma initial values probed (the training runs use the first)."""
    probe: str = "noise"
    """Probe input: 'noise' (white noise N(0, 1) in the data's shape: the normal-input assumption) or 'data' (a fixed batch of the evaluation data)."""
    probe_size: int = 128
    """Probe batch size."""
    image_size: int = 0
    """With --data: resize to this size (0 = natural size)."""
    threads: int = 1
    """CPU threads (small layers: 1 is fastest)."""

    def check(self) -> None:
        super().check()
        common.known(self.model)
        for m in self.beside:
            common.known(m)
        common.positive("paper_lr", self.paper_lr)
        if not self.lrs or not self.gamma_inits:
            raise ValueError("lrs and gamma_inits must not be empty")
        for lr in self.lrs:
            common.positive("lrs", lr)
        for g in self.gamma_inits:
            common.positive("gamma_inits", g)
        for k in ("steps", "batch_size", "probe_size", "blowup", "trained_below", "poor"):
            common.positive(k, getattr(self, k))
        if not 0 < self.tail <= 1:
            raise ValueError("tail: must be in (0, 1]")
        common.positive("image_size", self.image_size, allow_zero=True)
        if self.probe not in ("data", "noise"):
            raise ValueError("probe: must be 'data' or 'noise'")


# -- training runs ---------------------------------------------------------------------------------

def status(losses: list[float], diverged: int | None, chance: float, trained_below: float, tail: float) -> dict:
    """'diverged' / 'trained' / 'not trained' and the final loss (mean of the last `tail` of the steps)."""
    if diverged is not None:
        return {"status": "diverged", "final_loss": None}
    k = max(1, int(round(tail * len(losses))))
    final = sum(losses[-k:]) / k
    return {"status": "trained" if final <= trained_below * chance else "not trained", "final_loss": final}


def train_config(ctx, p: Params, key: str, method: str, scale, lr: float, batches, in_shape, num_classes,
                 model_name: str | None = None) -> dict:
    model_name = model_name or p.model
    torch.manual_seed(p.seed)
    opts = {"gamma_init": p.gamma_inits[0], "residual_scale": bool(scale)} if method == "normprop" else {}
    model = models.build(model_name, norms.get(method, **opts), num_classes, in_shape).to(ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    tag = key if model_name == p.model else f"{model_name}/{key}"
    r = common.train_steps(model, opt, batches, p.steps, blowup=p.blowup,
                           on_step=lambda i, v: ctx.scalar(f"{tag}/lr_{lr:g}/train_loss", v, i))
    r.update(status(r["losses"], r["diverged_at"], math.log(num_classes), p.trained_below, p.tail))
    return {"config": key, "model": model_name, "lr": lr, **r}


def mark_poor(runs: list[dict], poor: float) -> None:
    """A trained NormProp run whose final loss exceeds poor x BN's (trained) at the same rate: 'poor minimum'."""
    bn = {r["lr"]: r for r in runs if r["config"] == "bn"}
    for r in runs:
        b = bn.get(r["lr"])
        r["poor_minimum"] = bool(r["config"] != "bn" and r["status"] == "trained" and b is not None
                                 and b["status"] == "trained" and r["final_loss"] > poor * b["final_loss"])


# -- verdict ---------------------------------------------------------------------------------------

NEEDS_CLAIM = ("Training a ResNet with normalization propagation required a modification of the original algorithm "
               "to work with residual connections (Gitman & Ginsburg 2017 §4.2); the modification is not specified: "
               "ours is the (x + f(x))/sqrt(2) join.")
LARGE_CLAIM = ("Even with that modification the network either converged to a poor local minimum or diverged after a "
               "few iterations if the initial learning rate was large (§4.2).")


def paper_rate(lrs: list[float], paper_lr: float) -> float:
    """The grid rate nearest (in log) to the paper-equivalent rate."""
    return min(lrs, key=lambda lr: abs(math.log(lr / paper_lr)))


def verdict(runs: list[dict], poor: float = 3.0, paper_lr: float = 0.0125, factors: dict | None = None,
            beside: dict | None = None) -> dict:
    """runs: {'config' (with / without / bn), 'lr', 'status', 'final_loss', 'poor_minimum'} per rate of the judged
    network; paper_lr: the paper's rate scaled to this batch; factors: per-block variance factor at init
    {'with', 'without'}; beside: {model: its runs} of deeper networks, reported in the headline."""
    by = {k: {r["lr"]: r for r in runs if r["config"] == k} for k in ("with", "without", "bn")}
    if not all(by.values()):
        return common.not_judged(CLAIM, "needs runs with, without and bn")
    lrs = sorted(by["bn"])
    at = paper_rate(lrs, paper_lr)

    def cell(r):
        if r is None:
            return "-"
        if r["status"] == "diverged":
            return f"diverged@{r['diverged_at']}"
        return f"{'poor ' if r.get('poor_minimum') else ''}{r['status']} {r['final_loss']:.3g}"

    def ok(key, lr):
        r = by[key].get(lr)
        return r is not None and r["status"] == "trained" and not r.get("poor_minimum")
    where = f"at lr {at:g}, the grid rate nearest the paper's 0.1 for 256 images scaled to this batch ({paper_lr:.3g})"
    needs = not ok("without", at) and ok("with", at)
    parts = [common.part(
        "needs-modification", NEEDS_CLAIM, "paper", needs,
        f"{where}: without the modification {cell(by['without'].get(at))}, with it {cell(by['with'].get(at))}",
        "at the paper-equivalent rate NormProp without the modification does not train (diverges, stays above "
        "the 'trained' loss, or ends at a poor minimum) and with it trains", {"value": 0.1, "where": "§4.2: lr 0.1, "
                                                                             "batch 256 (footnote 4)"})]
    large = [lr for lr in lrs if lr > at and ok("bn", lr)]
    top = max(large) if large else None
    if top is None:
        parts.append(common.part("large-rate", LARGE_CLAIM, "paper", common.INCONCLUSIVE,
                                 f"BN trains at no grid rate above {at:g}: a grid reaching larger rates decides it",
                                 "needs a rate above the paper-equivalent one at which BN trains"))
    else:
        r = by["with"].get(top)
        fails = r is not None and (r["status"] != "trained" or r.get("poor_minimum"))
        parts.append(common.part(
            "large-rate", LARGE_CLAIM, "paper", fails,
            f"at lr {top:g} (the largest rate at which BN trains) with the modification: {cell(r)}",
            f"with the modification, at the largest rate above the paper-equivalent one at which BN trains, NormProp "
            f"diverges, does not train, or ends above {poor:g} x BN's final loss (a poor minimum)"))
    bn_ok = [lr for lr in lrs if ok("bn", lr)]
    parts.append(common.part("bn-control", "BN trains the same network at these rates (our control).", "added",
                             ok("bn", at) and len(bn_ok) >= len(lrs) / 2,
                             f"BN trained at {len(bn_ok)}/{len(lrs)} rates ({', '.join(f'{lr:g}' for lr in bn_ok)})",
                             "BN trains at the paper-equivalent rate and at >= half of the rates"))
    if factors:
        fw, fo = factors.get("with", float("nan")), factors.get("without", float("nan"))
        closer = math.isfinite(fw) and math.isfinite(fo) and abs(math.log(fw)) < abs(math.log(fo))
        parts.append(common.part(
            "variance", "The (x + f(x))/sqrt(2) join (our reading of the modification) keeps the block outputs "
            "nearer unit variance at initialisation than x + f(x) (DESIGN §3).", "added", closer,
            f"block-output variance at init grows x{fw:.3g} per block with it, x{fo:.3g} without",
            "|log(per-block variance factor)| is smaller with the modification"))
    table = "; ".join(f"lr {lr:g}: with {cell(by['with'].get(lr))}, without {cell(by['without'].get(lr))}, "
                      f"bn {cell(by['bn'][lr])}" for lr in lrs)
    parts[0]["measured"] += f". All rates: {table}"
    n_with = sum(ok("with", lr) for lr in lrs)
    n_without = sum(ok("without", lr) for lr in lrs)
    headline = (f"at the paper-equivalent lr {at:g}: with the modification {cell(by['with'].get(at))}, without "
                f"{cell(by['without'].get(at))}; trains at {n_with}/{len(lrs)} rates with it, {n_without} without, "
                f"BN at {len(bn_ok)}")
    for model, rs in (beside or {}).items():
        w = [r for r in rs if r["config"] == "with"]
        wo = [r for r in rs if r["config"] == "without"]
        headline += (f"; {model}: with it trains at {sum(r['status'] == 'trained' for r in w)}/{len(w)} "
                     f"(diverged at {sum(r['status'] == 'diverged' for r in w)}), without at "
                     f"{sum(r['status'] == 'trained' for r in wo)}/{len(wo)}")
    return common.verdict_of(CLAIM, parts, headline)


# -- diagnostic probe ---------------------------------------------------------------------------------

def rectified_normal_skewness() -> float:
    """Skewness of relu(z), z ~ N(0, 1), analytically (a normal signal has 0)."""
    m1, m2, m3 = 1 / math.sqrt(2 * math.pi), 0.5, 2 / math.sqrt(2 * math.pi)
    var = m2 - m1 ** 2
    return (m3 - 3 * m1 * m2 + 2 * m1 ** 3) / var ** 1.5


def _channel_stats(t: torch.Tensor) -> dict:
    """Mean over channels of per-channel (over N and spatial) variance, squared mean and skewness."""
    t = t.detach().double()
    dims = (0,) + tuple(range(2, t.dim()))
    mean = t.mean(dims, keepdim=True)
    c = t - mean
    var = c.pow(2).mean(dims)
    skew = c.pow(3).mean(dims) / var.clamp_min(1e-300).pow(1.5)
    return {"var": var.mean().item(), "mean2": mean.flatten().pow(2).mean().item(), "skew": skew.mean().item()}


@torch.no_grad()
def probe_blocks(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """Per residual block: output variance / squared mean, join variance / skewness, act gain (out var / join var)."""
    blocks = models.residual_blocks(model)
    out, join = {}, {}
    hooks = []
    for name, b in blocks:
        hooks.append(b.register_forward_hook(lambda m, i, o, n=name: out.__setitem__(n, _channel_stats(o))))
        hooks.append(b.join.register_forward_hook(lambda m, i, o, n=name: join.__setitem__(n, _channel_stats(o))))
    try:
        model.train()
        model(x)
    finally:
        for h in hooks:
            h.remove()
    names = [n for n, _ in blocks]
    gain = [out[n]["var"] / join[n]["var"] if join[n]["var"] > 0 else float("nan") for n in names]
    return {"names": names, "var": [out[n]["var"] for n in names], "mean2": [out[n]["mean2"] for n in names],
            "join_var": [join[n]["var"] for n in names], "join_skew": [join[n]["skew"] for n in names],
            "act_gain": gain, "projection": [has_projection(b) for _, b in blocks]}


def has_projection(block: torch.nn.Module) -> bool:
    """Whether the block's shortcut is a (normalized) projection rather than the identity."""
    for attr in ("downsample", "shortcut"):
        m = getattr(block, attr, None)
        if isinstance(m, torch.nn.Module) and not isinstance(m, torch.nn.Identity):
            return True
    return False


def per_block_factor(var: list[float]) -> float:
    """Geometric mean of var[i+1] / var[i] (nan if not all finite and positive)."""
    if len(var) < 2 or not all(v is not None and math.isfinite(v) and v > 0 for v in var):
        return float("nan")
    return (var[-1] / var[0]) ** (1 / (len(var) - 1))


def explain(probes: dict) -> str:
    """Where the growth comes from, in words, with the measured numbers."""
    def mean(xs):
        xs = [x for x in xs if math.isfinite(x)]
        return sum(xs) / len(xs) if xs else float("nan")
    parts = []
    for key, pr in probes.items():
        ident = [i for i, proj in enumerate(pr["projection"]) if not proj]
        proj = [i for i, proj in enumerate(pr["projection"]) if proj]
        parts.append(f"{key}: variance x{per_block_factor(pr['var']):.3g} per block; identity-shortcut joins skewness "
                     f"{mean([pr['join_skew'][i] for i in ident]):.2f} and NormProp-ReLU gain "
                     f"{mean([pr['act_gain'][i] for i in ident]):.3f}, projection joins "
                     f"{mean([pr['join_skew'][i] for i in proj]):.2f} and {mean([pr['act_gain'][i] for i in proj]):.3f}")
    return ("Rectified shortcuts break the normal assumption. An identity shortcut carries the previous block's "
            f"NormProp-ReLU output c1 (relu(z) - c0), skewed ({rectified_normal_skewness():.3f} for a normal z; a "
            "normal signal has 0), and its sum with the branch stays skewed; a projection shortcut (a normalized "
            "conv) mixes it back towards a normal. NormProp's ReLU maps a zero-mean normal input of any variance to "
            "the same variance (gain 1), but not a skewed one: on the skewed joins its gain exceeds 1, so the "
            "variance keeps drifting even with the (x + f(x))/sqrt(2) join, and without the 1/sqrt(2) the join also "
            "adds the branch's variance at every block. Measured at init: " + "; ".join(parts) + ".")


# -- plots ------------------------------------------------------------------------------------------

def plot(ctx, p: Params, runs: list[dict], probes: dict, v: dict, chance: float) -> None:
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 2, 3, panel=(5.2, 4.3))
        ax = axes[0][0]
        for key, _, _ in CONFIGS:
            rs = sorted((r for r in runs if r["config"] == key), key=lambda r: r["lr"])
            xs = [r["lr"] for r in rs]
            ys = [r["final_loss"] if r["final_loss"] is not None else float("nan") for r in rs]
            ax.plot(xs, common.positive_or_nan(ys), "-o", color=COLORS[key], label=LABELS[key])
            div = [r["lr"] for r in rs if r["status"] == "diverged"]
            if div:
                ax.plot(div, [10 * chance] * len(div), "x", color=COLORS[key], ms=11, mew=2.5)
        ax.axhline(p.trained_below * chance, color="k", ls="--", lw=1, label="trained below")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title("final training loss per rate (x = diverged)")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("mean loss over the last steps")
        ax.legend(fontsize=9)
        bn_ok = sorted(r["lr"] for r in runs if r["config"] == "bn" and r["status"] == "trained")
        for ax, lr in ((axes[0][1], bn_ok[-1] if bn_ok else max(p.lrs)), (axes[0][2], min(p.lrs))):
            for key, _, _ in CONFIGS:
                r = next(r for r in runs if r["config"] == key and r["lr"] == lr)
                ax.plot(range(len(r["losses"])), common.positive_or_nan(r["losses"]), color=COLORS[key],
                        label=LABELS[key])
            ax.set_yscale("log")
            ax.set_title(f"training loss at lr {lr:g}")
            ax.set_xlabel("SGD step")
            ax.set_ylabel("cross-entropy")
            ax.legend(fontsize=9)
        styles = {}
        for i, g in enumerate(p.gamma_inits):
            for scale in (True, False):
                styles[f"gamma={g:.3g}, {'with' if scale else 'without'}"] = (
                    COLORS["with" if scale else "without"], ["-", "--", ":", "-."][i % 4])
        panels = ((axes[1][0], "var", "block output variance at init", True),
                  (axes[1][1], "join_skew", "skewness of the join output at init", False),
                  (axes[1][2], "act_gain", "NormProp-ReLU gain after the join", False))
        for ax, key, title, log in panels:
            for name, pr in probes.items():
                color, ls = styles[name]
                ys = common.positive_or_nan(pr[key]) if log else common.finite_or_nan(pr[key])
                ax.plot(range(1, len(ys) + 1), ys, ls, color=color, label=name)
            if log:
                ax.set_yscale("log")
                ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_title(f"{p.model}: {title}")
            ax.set_xlabel("residual block")
            ax.legend(fontsize=9)
        axes[1][0].set_ylabel("channel variance (1 = normal assumption)")
        axes[1][1].axhline(rectified_normal_skewness(), color="k", lw=0.8, ls="--")
        axes[1][1].set_ylabel("skewness (0 = normal; dashed: relu(z))")
        axes[1][2].axhline(1.0, color="k", lw=0.8, ls="--")
        axes[1][2].set_ylabel("var(act(join)) / var(join)")
        ctx.savefig(fig, "normprop_residual.png", v)


# -- run ------------------------------------------------------------------------------------------------

def run(ctx, p: Params) -> dict:
    ld = common.loader(ctx, p.batch_size, "train", p.image_size)
    batches = common.take(ld, p.steps)
    chance = math.log(ld.num_classes)
    g = torch.Generator().manual_seed(p.seed)
    if p.probe == "noise":
        x = torch.randn((p.probe_size,) + tuple(ld.in_shape), generator=g).to(ctx.device)
    else:
        x = next(iter(common.loader(ctx, p.probe_size, "val", p.image_size).epoch(0)))[0]
    probes = {}
    for gamma in p.gamma_inits:
        for scale in (True, False):
            torch.manual_seed(p.seed)
            bundle = norms.get("normprop", gamma_init=gamma, residual_scale=scale)
            model = models.build(p.model, bundle, ld.num_classes, ld.in_shape).to(ctx.device)
            probes[f"gamma={gamma:.3g}, {'with' if scale else 'without'}"] = probe_blocks(model, x)
    jobs = [(p.model, c) for c in CONFIGS] + [(m, c) for m in p.beside for c in CONFIGS if c[0] != "bn"]
    runs = []
    bar = ctx.progress(total=len(jobs) * len(p.lrs), desc="normprop-residual")
    for model_name, (key, method, scale) in jobs:
        for lr in p.lrs:
            runs.append(train_config(ctx, p, key, method, scale, lr, batches, ld.in_shape, ld.num_classes,
                                     model_name))
            bar.update(1)
    bar.close()
    mark_poor([r for r in runs if r["model"] == p.model], p.poor)
    judged = [r for r in runs if r["model"] == p.model]
    beside = {m: [r for r in runs if r["model"] == m] for m in p.beside}
    g0 = f"{p.gamma_inits[0]:.3g}"
    factors = {k: per_block_factor(probes[f"gamma={g0}, {k}"]["var"]) for k in ("with", "without")}
    paper_lr = p.paper_lr * p.batch_size / 256
    v = verdict(judged, p.poor, paper_lr, factors, beside)
    plot(ctx, p, judged, probes, v, chance)
    rows = [[r["model"], r["config"], r["lr"], r["status"] + (" (poor)" if r.get("poor_minimum") else ""),
             r["diverged_at"] if r["diverged_at"] is not None else "-", r["losses"][0], r["final_loss"]]
            for r in runs]
    summary = common.table(["model", "config", "lr", "status", "diverged@", "loss0", "final loss"], rows)
    summary += "\n\n" + common.table(
        ["probe at init", "var first", "var last", "x per block", "mean join skew", "mean act gain"],
        [[k, pr["var"][0], pr["var"][-1], per_block_factor(pr["var"]), sum(pr["join_skew"]) / len(pr["join_skew"]),
          sum(pr["act_gain"]) / len(pr["act_gain"])] for k, pr in probes.items()])
    meas = {"model": p.model, "beside": list(p.beside), "in_shape": list(ld.in_shape), "chance_loss": chance,
            "paper_equivalent_lr": paper_lr, "judged_at_lr": paper_rate(p.lrs, paper_lr),
            "status_definition": f"diverged: a loss non-finite or > {p.blowup:g} x the first; trained: final loss "
                                 f"(mean of the last {p.tail:.0%} of steps) <= {p.trained_below:g} x ln(classes); "
                                 f"poor minimum: trained NormProp > {p.poor:g} x BN's final loss at the same rate",
            "runs": runs, "probe": p.probe, "probes_at_init": probes, "variance_factor_per_block": factors,
            "rectified_normal_skewness": rectified_normal_skewness(), "explanation": explain(probes)}
    return ctx.finish(meas, v, summary)
