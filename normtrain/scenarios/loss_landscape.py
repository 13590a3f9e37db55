"""Loss landscape along the gradient (Santurkar et al.): GhostNorm's is less smooth than BN's.

Dimitriou & Arandjelović 2020 §3.1: "Each time the network parameters are to be
updated, we walk towards the gradient direction and compute the loss at
multiple points ... at each step of updating the network parameters, we
compute the loss at a range of learning rates, and store both the minimum and
maximum loss. For MNIST, we compute the loss at 8 learning rates in [0.1, 0.2,
..., 0.8]" and "we observe that the smoothness of the loss landscape
deteriorates when GhostNorm is employed. In fact for MNIST ... the loss
landscape of GhostNorm bears closer resemblance to our baseline which did not
use any normalization technique." Santurkar et al. 2018 add "gradient
predictiveness", ||grad L(theta) - grad L(theta - eta g)||, and the effective
beta-smoothness max_eta ||grad L(theta) - grad L(theta - eta g)|| / ||eta g||.

What runs: the paper's SimpleNet shape (``mlp`` 512-300) on the built-in digits
(or ``--data``) with ``bn``, ``ghost`` (G_M = ``ghost_groups``) and ``none``,
plain SGD at ``lr``. Every ``probe_every`` steps, on the step's own batch and in
training mode: g = grad L(theta); for each eta in ``probe_lrs`` the loss and
gradient at theta - eta g. The weights and every buffer (running mean/var,
batch counters) are restored after the probes, so training is exactly what it
would be without them (the tests check this bit for bit); the update then uses g.

Verdict, in parts, from means over the probed steps of one run: the paper's
``less-smooth`` (GhostNorm's loss range, max - min over eta, >= ``min_ratio`` x
BN's; between 1 and ``min_ratio`` inconclusive) and ``like-baseline``
(GhostNorm's loss range closer, in ratio, to ``none``'s than to BN's); our
``gradient-predictiveness`` (GhostNorm's maximum gradient distance >=
``min_ratio`` x BN's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import models, norms
from . import common

USES_DATA = True

CLAIM = ("GhostNorm makes the loss landscape less smooth than BatchNorm: along the gradient direction the loss "
         "varies more, and on MNIST it resembles the landscape of the network without normalization "
         "(Dimitriou & Arandjelović 2020 §3.1, Fig. 4); our addition: the gradient is less predictive.")
RESEMBLANCE = ("On MNIST, GhostNorm's loss landscape bears closer resemblance to the baseline without normalization "
               "than to BatchNorm's (§3.1, Fig. 4).")


@dataclass
class Params(common.Params):
    methods: list[str] = field(default_factory=lambda: ["bn", "ghost", "none"])
    """Methods to compare (the verdict needs bn and ghost)."""
    model: str = "mlp"
    """Network (the paper's MNIST SimpleNet is the mlp with widths 512, 300)."""
    widths: list[int] = field(default_factory=lambda: [512, 300])
    """Hidden widths of the mlp (ignored for other models)."""
    ghost_groups: int = 16
    """G_M of ghost (batch_size / ghost_groups samples per chunk; the paper's smallest chunk is 4)."""
    batch_size: int = 128
    """Mini-batch size (the paper uses 512 on MNIST)."""
    lr: float = 0.1
    """Training learning rate (plain SGD unless momentum > 0)."""
    momentum: float = 0.0
    """SGD momentum."""
    steps: int = 100
    """Training steps per method."""
    probe_every: int = 1
    """Probe the landscape every this many steps (0 = never: plain training)."""
    probe_lrs: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    """Step sizes eta along -g (the paper's MNIST grid)."""
    min_ratio: float = 1.25
    """Minimum effect: GhostNorm's mean over the probed steps must be >= this x BN's to count as larger (one run)."""
    image_size: int = 0
    """With --data: resize to this size (0 = natural size)."""
    threads: int = 1
    """CPU threads (small layers: 1 is fastest)."""

    def check(self) -> None:
        super().check()
        common.known(self.model, self.methods)
        for k in ("batch_size", "lr", "steps", "ghost_groups"):
            common.positive(k, getattr(self, k))
        if self.min_ratio < 1:
            raise ValueError("min_ratio: must be >= 1")
        common.positive("probe_every", self.probe_every, allow_zero=True)
        common.positive("image_size", self.image_size, allow_zero=True)
        if not self.probe_lrs or any(e <= 0 for e in self.probe_lrs):
            raise ValueError("probe_lrs: needs positive step sizes")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum: must be in [0, 1)")
        if self.batch_size % self.ghost_groups or self.batch_size // self.ghost_groups < 2:
            raise ValueError(f"ghost_groups: batch_size {self.batch_size} must split into {self.ghost_groups} "
                             f"chunks of >= 2 samples")


def build(p: Params, method: str, in_shape, num_classes, device):
    torch.manual_seed(p.seed)
    opts = {"widths": list(p.widths)} if p.model == "mlp" else {}
    bundle = norms.get(method, ghost_groups=p.ghost_groups)
    return models.build(p.model, bundle, num_classes, in_shape, **opts).to(device)


def probe(model, params, x, y, g, etas) -> dict:
    """Loss and gradient distance at theta - eta g for each eta; weights and buffers are restored after."""
    snap = common.buffers_snapshot(model)
    orig = [q.detach().clone() for q in params]
    gnorm = torch.sqrt(sum((gi.double() ** 2).sum() for gi in g)).item()
    losses, dists = [], []
    try:
        for eta in etas:
            with torch.no_grad():
                for q, o, gi in zip(params, orig, g):
                    q.copy_(o - eta * gi)
            loss = F.cross_entropy(model(x).float(), y)
            g2 = torch.autograd.grad(loss, params, allow_unused=True)
            d = sum(((a if a is not None else torch.zeros_like(b)) - b).double().pow(2).sum() for a, b in zip(g2, g))
            losses.append(float(loss.detach()))
            dists.append(float(torch.sqrt(d)))
    finally:
        with torch.no_grad():
            for q, o in zip(params, orig):
                q.copy_(o)
        common.buffers_restore(model, snap)
    finite = [v for v in losses if math.isfinite(v)]
    betas = [d / (e * gnorm) for d, e in zip(dists, etas) if gnorm > 0 and math.isfinite(d)]
    return {"loss_min": min(finite) if finite else float("nan"), "loss_max": max(losses),
            "grad_dist_min": min(dists), "grad_dist_max": max(dists),
            "beta_eff": max(betas) if betas else float("nan"), "grad_norm": gnorm}


def train_method(ctx, p: Params, method: str, batches, in_shape, num_classes):
    """Train one method with probes; returns (record dict, model)."""
    model = build(p, method, in_shape, num_classes, ctx.device)
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=p.lr, momentum=p.momentum)
    rec = {"method": method, "steps": [], "loss": [], "probes": [], "diverged_at": None}
    for step in ctx.progress(range(p.steps), desc=f"loss-landscape {method}"):
        x, y = batches[step % len(batches)]
        loss = F.cross_entropy(model(x).float(), y)  # the real training forward (updates running stats once)
        value = float(loss.detach())
        if not math.isfinite(value):
            rec["diverged_at"] = step
            break
        g = torch.autograd.grad(loss, params)
        rec["steps"].append(step)
        rec["loss"].append(value)
        ctx.scalar(f"{method}/train_loss", value, step)
        if p.probe_every and step % p.probe_every == 0:
            pr = probe(model, params, x, y, g, p.probe_lrs)
            pr["step"] = step
            rec["probes"].append(pr)
            ctx.scalars(method, {"loss_range": pr["loss_max"] - pr["loss_min"],
                                 "grad_predictiveness_max": pr["grad_dist_max"], "beta_eff": pr["beta_eff"]}, step)
        for q, gi in zip(params, g):
            q.grad = gi
        opt.step()
        opt.zero_grad(set_to_none=True)
    return rec, model


def summarize(rec: dict) -> dict:
    pr = [q for q in rec["probes"] if math.isfinite(q["loss_max"]) and math.isfinite(q["grad_dist_max"])]
    if not pr:
        return {"loss_range": float("nan"), "grad_dist_max": float("nan"), "beta_eff": float("nan"), "probes": 0}
    n = len(pr)
    return {"loss_range": sum(q["loss_max"] - q["loss_min"] for q in pr) / n,
            "grad_dist_max": sum(q["grad_dist_max"] for q in pr) / n,
            "grad_dist_range": sum(q["grad_dist_max"] - q["grad_dist_min"] for q in pr) / n,
            "beta_eff": sum(q["beta_eff"] for q in pr if math.isfinite(q["beta_eff"])) / n,
            "probes": n, "non_finite_probes": len(rec["probes"]) - n}


def ratio_state(r: float, min_ratio: float) -> str:
    """'a larger than b' from r = a / b at one seed: reproduced at >= min_ratio, not reproduced at <= 1,
    inconclusive between (a gap under the minimum effect)."""
    if not math.isfinite(r):
        return common.INCONCLUSIVE
    return common.REPRODUCED if r >= min_ratio else common.NOT_REPRODUCED if r <= 1 else common.INCONCLUSIVE


def verdict(bn: dict, ghost: dict, none: dict | None = None, min_ratio: float = 1.25) -> dict:
    """bn, ghost (and the `none` baseline): `summarize` outputs. Ratios of means over the probed steps of one run;
    a ratio between 1 and `min_ratio` is under the minimum effect (inconclusive)."""
    if not bn or not ghost:
        return common.not_judged(CLAIM, "methods must include both bn and ghost")
    vals = [bn["loss_range"], ghost["loss_range"], bn["grad_dist_max"], ghost["grad_dist_max"]]
    if not all(math.isfinite(v) for v in vals):
        return common.not_judged(CLAIM, "no finite probes")
    r1 = ghost["loss_range"] / bn["loss_range"] if bn["loss_range"] > 0 else float("inf")
    r2 = ghost["grad_dist_max"] / bn["grad_dist_max"] if bn["grad_dist_max"] > 0 else float("inf")
    effect = f"(a ratio in (1, {min_ratio:g}) is under the minimum effect: inconclusive)"
    parts = [
        common.part("less-smooth", "Along the gradient direction the loss of a GhostNorm network varies more than a "
                    "BatchNorm network's: GhostNorm makes the loss landscape less smooth (Dimitriou & Arandjelović "
                    "2020 §3.1, Fig. 4).", "paper", ratio_state(r1, min_ratio),
                    f"mean loss range over the probed steps: ghost {ghost['loss_range']:.4g} vs bn "
                    f"{bn['loss_range']:.4g} ({r1:.3g}x)",
                    f"GhostNorm's mean loss range (max - min over eta) >= {min_ratio:g} x BN's {effect}"),
    ]
    if none is None:
        parts.append(common.part("like-baseline", RESEMBLANCE, "paper", common.NA, "none was not run",
                                 "needs the none baseline"))
    elif not math.isfinite(none.get("loss_range", float("nan"))) or none["loss_range"] <= 0:
        parts.append(common.part("like-baseline", RESEMBLANCE, "paper", common.INCONCLUSIVE,
                                 "the none baseline has no finite probes (diverged)", "needs a finite baseline"))
    else:
        d_none = abs(math.log(ghost["loss_range"] / none["loss_range"]))
        d_bn = abs(math.log(r1))
        parts.append(common.part("like-baseline", RESEMBLANCE, "paper", d_none < d_bn,
                                 f"loss range: ghost {ghost['loss_range']:.4g}, none {none['loss_range']:.4g}, bn "
                                 f"{bn['loss_range']:.4g}: ghost is {math.exp(d_none):.3g}x from none, "
                                 f"{math.exp(d_bn):.3g}x from bn",
                                 "GhostNorm's mean loss range is closer (in ratio) to none's than to BN's"))
    parts.append(common.part("gradient-predictiveness", "The gradient is less predictive with GhostNorm: "
                             "||g(theta) - g(theta - eta g)|| is larger (Santurkar et al. 2018's measure; the paper "
                             "plots the loss only).", "added", ratio_state(r2, min_ratio),
                             f"mean max gradient distance: ghost {ghost['grad_dist_max']:.4g} vs bn "
                             f"{bn['grad_dist_max']:.4g} ({r2:.3g}x); effective beta: ghost {ghost['beta_eff']:.4g} vs "
                             f"bn {bn['beta_eff']:.4g}",
                             f"GhostNorm's mean maximum gradient distance >= {min_ratio:g} x BN's {effect}"))
    base = ""
    if none and math.isfinite(none.get("loss_range", float("nan"))) and none["loss_range"] > 0:
        base = f", none's {none['loss_range'] / bn['loss_range']:.3g}x"
    headline = f"GhostNorm's loss range {r1:.3g}x BN's{base}; its gradient distance {r2:.3g}x"
    return common.verdict_of(CLAIM, parts, headline)


def plot(ctx, p: Params, recs: dict, v: dict) -> None:
    colors = {"bn": "tab:blue", "ghost": "tab:orange", "none": "tab:green"}
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, 3, panel=(5.0, 4.6))
        for m, rec in recs.items():
            c = colors.get(m)
            label = f"{m} (G_M={p.ghost_groups})" if m == "ghost" else m
            axes[0][2].plot(rec["steps"], common.positive_or_nan(rec["loss"]), color=c, label=label)
            pr = rec["probes"]
            if not pr:
                continue
            s = [q["step"] for q in pr]
            axes[0][0].fill_between(s, [q["loss_min"] for q in pr], [q["loss_max"] for q in pr], alpha=0.35,
                                    color=c, label=label, lw=0)
            axes[0][1].fill_between(s, [q["grad_dist_min"] for q in pr], [q["grad_dist_max"] for q in pr],
                                    alpha=0.35, color=c, label=label, lw=0)
        axes[0][0].set_title(f"loss at theta - eta g, eta in [{min(p.probe_lrs):g}, {max(p.probe_lrs):g}]")
        axes[0][0].set_ylabel("cross-entropy (band: min to max over eta)")
        axes[0][1].set_title("gradient predictiveness")
        axes[0][1].set_ylabel("||g(theta) - g(theta - eta g)||, min to max")
        axes[0][2].set_title(f"{p.model} training loss (lr {p.lr:g})")
        axes[0][2].set_ylabel("cross-entropy")
        for ax in axes[0]:
            ax.set_xlabel("training step")
            ax.set_yscale("log")
            ax.legend()
        ctx.savefig(fig, "loss_landscape.png", v)


def run(ctx, p: Params) -> dict:
    ld = common.loader(ctx, p.batch_size, "train", p.image_size)
    batches = common.take(ld, p.steps)
    recs = {m: train_method(ctx, p, m, batches, ld.in_shape, ld.num_classes)[0] for m in p.methods}
    sums = {m: summarize(r) for m, r in recs.items()}
    v = verdict(sums.get("bn"), sums.get("ghost"), sums.get("none"), p.min_ratio)
    plot(ctx, p, recs, v)
    rows = [[m, s["probes"], recs[m]["loss"][-1] if recs[m]["loss"] else None, s["loss_range"], s["grad_dist_max"],
             s.get("grad_dist_range"), s["beta_eff"], recs[m]["diverged_at"] if recs[m]["diverged_at"] is not None
             else "-"] for m, s in sums.items()]
    summary = common.table(["method", "probes", "loss_end", "mean loss range", "mean max |dg|", "mean |dg| range",
                            "beta_eff", "diverged@"], rows)
    meas = {"summary": sums, "per_method": recs,
            "ghost_chunk": p.batch_size // p.ghost_groups}
    return ctx.finish(meas, v, summary)
