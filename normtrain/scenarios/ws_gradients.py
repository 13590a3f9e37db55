"""WS gradient-norm reduction: eq. 8/9 term shares vs sigma^2 ||grad_W L||^2 (WS paper Fig. 4 right).

Qiao et al. 2019 §2.2-2.3. Per output channel c with I = fan-in, raw weights W,
centred weights W_dot = W - mean (eq. 5), standardized W_hat = W_dot / sigma
(eq. 6, sigma the biased std, eps = 0 "for convenience"), the backward pass is
eq. 8 (grad_{W_dot} = (grad_{W_hat} - <W_hat, grad_{W_hat}> W_hat / I) / sigma)
then eq. 9 (grad_W = grad_{W_dot} - 1 <1, grad_{W_dot}> / I). Since
||W_hat||^2 = I and <1, W_hat> = 0, eq. 11-15 give exactly

    ||grad_{W_hat} L||^2 = (1/I) <W_hat, grad_{W_hat} L>^2      (eq. 8's reduction)
                         + (1/I) <1, grad_{W_hat} L>^2          (eq. 9's reduction)
                         + sigma^2 ||grad_W L||^2               (what is left)

and the paper's Fig. 4 (right) shows "the average percentages" of the three
terms during GN+WS training of ResNet-50 on ImageNet (gradients and weights of
the first iteration of each epoch): "(1/I) <W_hat, grad_{W_hat} L>^2 is small
compared with other two components (< 0.02)".

What runs: ``ws-gn`` (GN+WS, ``groups`` groups) on ``resnet56`` and the
built-in digits (or ``--data``), with the WS layers' eps set to ``ws_eps`` (0,
the paper's convention, makes the decomposition exact; the residual
|sum - total| / total is reported as a check). Every ``record_every`` steps,
for every WS layer and output channel: the three terms divided by
||grad_{W_hat} L||^2 (grad_{W_hat} is the gradient w.r.t. the standardized
weight the conv applies, captured with retain_grad); averaged over channels,
then over layers.

The random-direction baseline: for a gradient with a random direction (isotropic
in R^I) E[(1/I) <W_hat, g>^2 / ||g||^2] = ||W_hat||^2 / I^2 = 1/I, and the same
1/I for eq. 9's term (||1||^2 = I too). So "< 0.02" holds for any random
gradient once I > 50 (ResNet-56's 3x3 convs have I = 144..576): it cannot fail.
What does distinguish a real gradient is the *comparison* of the two
reductions, equal for a random direction. Every recorded step also measures
both shares for ``random_draws`` Gaussian directions of each layer's shape
(the measured baseline, next to the analytic 1/I).

Verdict (at every recorded step): the eq. 8 share is below ``small`` (the
paper's 0.02) and below the sigma^2 ||grad_W L||^2 share, and the eq. 9 share is
at least ``ratio`` x the eq. 8 share (a random direction gives a ratio of about
1, so the verdict is false if the gradients' eq. 8 and eq. 9 terms are what
chance gives); with ws_eps = 0 the three terms must also sum to the total.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import models, norms
from ..norms.ws import WSConv2d, WSLinear
from . import common

USES_DATA = True

CLAIM = ("During GN+WS training the gradient-norm reduction of eq. 8, (1/I)<W_hat, grad_W_hat L>^2, is small "
         "(< 0.02 of ||grad_W_hat L||^2) compared with eq. 9's (1/I)<1, grad_W_hat L>^2 and with "
         "sigma^2 ||grad_W L||^2 (Qiao et al. 2019 §2.3, Fig. 4 right); a random gradient direction would make "
         "the two reductions equal (about 1/I each).")


@dataclass
class Params(common.Params):
    model: str = "resnet56"
    """Network (its convs become WS convs)."""
    norm: str = "ws-gn"
    """WS method: ws-gn (the paper's GN+WS), ws-bn or ws."""
    groups: int = 8
    """GroupNorm groups (must divide every width: resnet56 has 16/32/64 channels)."""
    ws_eps: float = 0.0
    """eps of the WS layers (0 as in the paper's derivation: the three terms then sum exactly to the total)."""
    steps: int = 100
    """Training steps."""
    record_every: int = 10
    """Measure every this many steps (the paper: first iteration of each epoch)."""
    lr: float = 0.01
    """SGD learning rate (momentum 0.9); at 0.05 the default run's loss spikes (~46 at step 10) before it recovers."""
    batch_size: int = 32
    """Mini-batch size."""
    small: float = 0.02
    """The paper's bound on the eq. 8 share."""
    ratio: float = 2.0
    """The eq. 9 share must be >= ratio x the eq. 8 share (random directions: about 1)."""
    random_draws: int = 8
    """Random Gaussian gradient directions per layer and recorded step for the chance baseline."""
    image_size: int = 0
    """With --data: resize to this size (0 = natural size)."""
    threads: int = 1
    """CPU threads (small layers: 1 is fastest)."""

    def check(self) -> None:
        super().check()
        common.known(self.model)
        if self.norm not in ("ws", "ws-gn", "ws-bn"):
            raise ValueError("norm: must be ws, ws-gn or ws-bn")
        for k in ("groups", "steps", "record_every", "lr", "batch_size", "small", "ratio", "random_draws"):
            common.positive(k, getattr(self, k))
        common.positive("ws_eps", self.ws_eps, allow_zero=True)
        common.positive("image_size", self.image_size, allow_zero=True)


def terms(w_hat: torch.Tensor, g_hat: torch.Tensor, w_raw: torch.Tensor, g_raw: torch.Tensor) -> dict:
    """Per-output-channel eq. 8 / eq. 9 terms (as fractions of ||grad_{W_hat} L||^2) and the identity residual."""
    w_hat, g_hat = w_hat.detach().double().flatten(1), g_hat.detach().double().flatten(1)
    w_raw, g_raw = w_raw.detach().double().flatten(1), g_raw.detach().double().flatten(1)
    n = w_hat.shape[1]
    total = g_hat.pow(2).sum(1)
    eq8 = (w_hat * g_hat).sum(1).pow(2) / n
    eq9 = g_hat.sum(1).pow(2) / n
    sigma2 = w_raw.var(1, unbiased=False)
    rest = sigma2 * g_raw.pow(2).sum(1)
    keep = total > 0
    t = total[keep]
    return {"eq8": (eq8[keep] / t).mean().item(), "eq9": (eq9[keep] / t).mean().item(),
            "rest": (rest[keep] / t).mean().item(),
            "residual": ((eq8 + eq9 + rest - total)[keep].abs() / t).max().item() if keep.any() else 0.0,
            "channels": int(keep.sum())}


def random_shares(w_hat: torch.Tensor, draws: int, generator: torch.Generator) -> dict:
    """Eq. 8 and eq. 9 shares for `draws` Gaussian gradient directions (the chance baseline), and 1/I."""
    w = w_hat.detach().double().flatten(1)
    n = w.shape[1]
    g = torch.randn((draws,) + tuple(w.shape), generator=generator, dtype=torch.float64).to(w.device)
    total = g.pow(2).sum(-1)
    eq8 = (w * g).sum(-1).pow(2) / n / total
    eq9 = g.sum(-1).pow(2) / n / total
    return {"eq8": eq8.mean().item(), "eq9": eq9.mean().item(), "chance": 1.0 / n}


def ws_layers(model) -> list:
    return [m for m in model.modules() if isinstance(m, (WSConv2d, WSLinear))]


def capture(layers, ws_eps: float) -> dict:
    """Make each WS layer keep its standardized weight (with .grad retained) at each forward; returns the store."""
    store = {}
    for m in layers:
        m.eps = float(ws_eps)
        orig = m.effective_weight

        def wrapped(orig=orig, m=m):
            w = orig()
            if torch.is_grad_enabled() and w.requires_grad:
                w.retain_grad()
                store[m] = w
            return w
        m.effective_weight = wrapped
    return store


def measure(layers, store, draws: int = 0, generator: torch.Generator | None = None) -> dict:
    """Mean shares over layers (and, with draws > 0, the random-direction baseline) for one backward pass."""
    per = []
    for m in layers:
        if m in store and store[m].grad is not None and m.weight.grad is not None:
            r = terms(store[m], store[m].grad, m.weight, m.weight.grad)
            if draws:
                rnd = random_shares(store[m], draws, generator)
                r.update({"random_eq8": rnd["eq8"], "random_eq9": rnd["eq9"], "chance": rnd["chance"]})
            per.append(r)
    if not per:
        return {}
    k = len(per)
    out = {"eq8": sum(r["eq8"] for r in per) / k, "eq9": sum(r["eq9"] for r in per) / k,
           "rest": sum(r["rest"] for r in per) / k, "residual": max(r["residual"] for r in per),
           "layers": k, "per_layer": per}
    if draws:
        for key in ("random_eq8", "random_eq9", "chance"):
            out[key] = sum(r[key] for r in per) / k
    return out


def verdict(records: list[dict], small: float = 0.02, exact: bool = True, ratio: float = 2.0) -> dict:
    """records: `measure` outputs (eq8/eq9/rest shares, residual, random baseline) at the recorded steps."""
    criterion = (f"at every recorded step the mean eq. 8 share is < {small:g} and below the sigma^2||grad_W L||^2 "
                 f"share, and the eq. 9 share is >= {ratio:g} x the eq. 8 share (a random gradient direction gives "
                 f"about 1 x: both are 1/I on average)" + (" and the three terms sum to the total (residual < 1e-4)"
                                                           if exact else ""))
    recs = [r for r in records if r]
    if not recs:
        return common.verdict(CLAIM, criterion, "nothing recorded", False, "nothing recorded")
    ok = all(r["eq8"] < small and r["eq8"] < r["rest"] and r["eq9"] >= ratio * r["eq8"] for r in recs)
    resid = max(r["residual"] for r in recs)
    if exact:
        ok = ok and resid < 1e-4
    mean = {k: sum(r[k] for r in recs) / len(recs) for k in ("eq8", "eq9", "rest")}
    min_ratio = min(r["eq9"] / r["eq8"] if r["eq8"] > 0 else float("inf") for r in recs)
    base = ""
    if all("random_eq8" in r for r in recs):
        rnd = {k: sum(r[k] for r in recs) / len(recs) for k in ("random_eq8", "random_eq9", "chance")}
        base = (f"; random directions: eq. 8 {rnd['random_eq8']:.3g}, eq. 9 {rnd['random_eq9']:.3g} "
                f"(1/I {rnd['chance']:.3g}): the measured eq. 8 share is {mean['eq8'] / rnd['random_eq8']:.3g}x "
                f"chance, eq. 9 {mean['eq9'] / rnd['random_eq9']:.3g}x")
    measured = (f"over {len(recs)} recorded steps, mean shares of ||grad_W_hat L||^2: eq. 8 {mean['eq8']:.3g} "
                f"(max {max(r['eq8'] for r in recs):.3g}), eq. 9 {mean['eq9']:.3g} (eq. 9 / eq. 8 >= "
                f"{min_ratio:.3g}), sigma^2||grad_W L||^2 {mean['rest']:.3g}{base}; decomposition residual "
                f"{resid:.1e}.")
    headline = f"eq. 8 share {mean['eq8']:.3g} (< {small:g}), eq. 9 / eq. 8 >= {min_ratio:.3g}x (random: ~1x)"
    return common.verdict(CLAIM, criterion, measured, ok, headline)


def plot(ctx, recs: list[dict], v: dict, p: Params) -> None:
    labels = {"eq8": ("(1/I)<W_hat, grad>^2  (eq. 8)", "tab:blue"),
              "eq9": ("(1/I)<1, grad>^2  (eq. 9)", "tab:orange"),
              "rest": ("sigma^2 ||grad_W L||^2", "tab:green")}
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, 2, panel=(6.5, 4.8))
        ax = axes[0][0]
        steps = [r["step"] for r in recs]
        for k, (lab, c) in labels.items():
            ax.plot(steps, [max(r[k], 1e-12) for r in recs], "-o", ms=4, color=c, label=lab)
        if "random_eq8" in recs[0]:
            ax.plot(steps, [r["random_eq8"] for r in recs], "--", color="tab:blue", label="eq. 8, random direction")
            ax.plot(steps, [r["random_eq9"] for r in recs], ":", color="tab:orange", lw=2.5,
                    label="eq. 9, random direction")
        ax.axhline(p.small, color="k", lw=1, ls="-.", label=f"paper's bound {p.small:g}")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("share of ||grad_W_hat L||^2 (mean over channels, layers)")
        ax.set_title(f"{p.norm} {p.model}: gradient-norm terms")
        ax.legend(fontsize=9)
        ax = axes[0][1]
        last = recs[-1]["per_layer"]
        xs = range(1, len(last) + 1)
        for k, (lab, c) in labels.items():
            ax.plot(xs, [max(r[k], 1e-12) for r in last], color=c, label=lab)
        if "chance" in last[0]:
            ax.plot(xs, [r["chance"] for r in last], "--", color="gray", label="1/I (random direction)")
        ax.set_yscale("log")
        ax.set_xlabel("WS layer (forward order)")
        ax.set_ylabel("share of ||grad_W_hat L||^2")
        ax.set_title(f"per layer at step {recs[-1]['step']}")
        ax.legend(fontsize=9)
        ctx.savefig(fig, "ws_gradients.png", v)


def run(ctx, p: Params) -> dict:
    ld = common.loader(ctx, p.batch_size, "train", p.image_size)
    torch.manual_seed(p.seed)
    model = models.build(p.model, norms.get(p.norm, groups=p.groups), ld.num_classes, ld.in_shape).to(ctx.device)
    model.train()
    layers = ws_layers(model)
    store = capture(layers, p.ws_eps)
    opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=0.9)
    it = common.forever(ld)
    gen = torch.Generator().manual_seed(p.seed + 1)
    recs, losses, diverged = [], [], None
    for step in ctx.progress(range(p.steps + 1), desc="ws-gradients"):
        x, y = next(it)
        store.clear()
        loss = F.cross_entropy(model(x).float(), y)
        value = float(loss.detach())
        losses.append(value)
        if not math.isfinite(value):
            diverged = step
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step % p.record_every == 0 or step == p.steps:
            r = measure(layers, store, p.random_draws, gen)
            if r:
                r["step"] = step
                r["loss"] = value
                recs.append(r)
                ctx.scalars("share", {k: r[k] for k in ("eq8", "eq9", "rest")}, step)
        ctx.scalar("train/loss", value, step)
        if step < p.steps:
            opt.step()
    v = verdict(recs, p.small, exact=p.ws_eps == 0, ratio=p.ratio)
    if recs:
        plot(ctx, recs, v, p)
    rows = [[r["step"], r["loss"], r["eq8"], r["eq9"], r["rest"], r["eq8"] + r["eq9"] + r["rest"], r["residual"],
             r.get("random_eq8"), r.get("random_eq9")] for r in recs]
    summary = common.table(["step", "loss", "eq8 share", "eq9 share", "sigma2|gW|2 share", "sum", "residual",
                            "random eq8", "random eq9"], rows)
    meas = {"model": p.model, "norm": p.norm, "ws_layers": len(layers), "records": recs, "losses": losses,
            "diverged_at": diverged}
    return ctx.finish(meas, v, summary)
