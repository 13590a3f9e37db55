"""G&G §4.2/§5: TReLU-WN on a deep ResNet diverges suddenly after a long stable stretch; where output norms grow.

Gitman & Ginsburg 2017 §4.2 (ResNet-50 on ImageNet): "Training proceeded
further using weight normalization with translated ReLU but tended to diverge
suddenly after training for as much as 50 epochs." §1: "WN algorithms only
partially normalize activations and thus the norm of the output increases from
layer to layer. This instability grows after gradient updates, sometimes causing
networks to diverge in the middle of training." §5: "since the weights change
together, each gradient update increases correlations between different
neurons, thus violating the orthogonality assumption. Moreover, if each layer
increases the norm of its output even by a small fraction, the error will be
exponentially magnified throughout the network. This might explain the sudden
divergence of TReLU WN algorithms in the middle of the training."

What runs (CPU size): ``model`` (default ``resnet20``, 9 residual blocks) with
``trelu-wn`` (residual join ``trelu_join``, default ``weighted`` as the
``resnet50-imagenet`` recipe runs it), and the same network with ``control``
(default ``bn``) from the same seed, each for ``steps`` SGD steps (momentum 0.9,
constant lr ``lr``: the paper's 0.1, which its poly-2 schedule keeps above 0.03
for the first 50 epochs) at batch ``batch_size`` on the built-in digits (or
``--data``). Every ``record_every`` steps, on that step's batch: the mean
per-sample L2 norm of the first conv's output (after its norm layer when one
follows it, so BN is measured normalized) and of every residual block's output
(`measures.BlockNorms`), and the row coherence max_{i!=j} |w_i.w_j| /
(|w_i| |w_j|) of every conv's effective weight (`measures.row_coherence`,
footnote 2). Divergence: the training loss is non-finite or above ``blowup`` x
its initial value; the run stops there.

Reported: the step of divergence, if any; when and where the growth starts (the
first record at which some block's output norm reached ``growth`` x its value at
step 0, and the shallowest such block); the depth ratio r = ||last block|| /
||first layer|| over training; the mean row coherence over training.

Verdict: (1, paper §4.2) TReLU-WN diverges suddenly after a long stable
stretch: diverged at a step >= ``min_stable`` x ``steps``, with the loss at the
record before still below its initial value; not reproduced if it diverged
earlier; inconclusive if it did not diverge (this size cannot reach the paper's
50 epochs of ImageNet); (2, paper §1) the output norm increases from layer to
layer and this grows with training: r > 1 at the last record before any
divergence and r grew by >= ``norm_growth`` x since step 0; (3, paper §5) the
mean row coherence of the convs rose by >= ``coherence_rise``; (4, added) the
``control`` keeps r within that factor and does not diverge (the growth is
WN's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import models, norms
from . import common
from .measures import BlockNorms, row_coherence

USES_DATA = True

CLAIM = ("TReLU-WN on a deep residual network trains for a long stable stretch, then diverges suddenly; the norm "
         "of the output increases from layer to layer and grows with the updates, as rows of the weights grow "
         "correlated (Gitman & Ginsburg 2017 §1, §4.2, §5).")

#: The paper's own experiment, for `--scale paper` (data only; wired by the scale machinery).
PAPER = {
    "where": "Gitman & Ginsburg 2017 §4.2, §5 (footnote 4: 4 GPUs, 120 epochs, batch 256)",
    "dataset": "imagenet",
    "gpus": 4,
    # 120 epochs of ImageNet's 1,281,167 images at batch 256: 5,004 steps an epoch.
    "params": {"model": "resnet50", "batch_size": 256, "steps": 600480, "lr": 0.1, "trelu_join": "weighted",
               "control": "bn", "record_every": 500},
    "recipes": ["resnet50-imagenet"],
    "paper_values": {
        "sudden divergence": {"value": 50, "unit": "epochs of stable training before diverging (\"as much as\")",
                              "where": "§4.2"}},
}


@dataclass
class Params(common.Params):
    model: str = "resnet20"
    """Residual network (resnet20, resnet56, resnet50 ...)."""
    trelu_join: str = "weighted"
    """trelu-wn's residual join: 'weighted' (Xiang & Li, as the resnet50-imagenet recipe) or 'add'."""
    control: str = "bn"
    """Control method trained from the same seed ('' for none)."""
    steps: int = 400
    """SGD steps per run."""
    batch_size: int = 32
    """Mini-batch size."""
    lr: float = 0.1
    """Constant SGD learning rate (momentum 0.9)."""
    record_every: int = 10
    """Record output norms and row coherence every this many steps."""
    blowup: float = 10.0
    """Divergence: a loss above blowup x the initial loss (or non-finite)."""
    min_stable: float = 0.5
    """A divergence is 'after a long stable stretch' at step >= min_stable x steps."""
    growth: float = 2.0
    """'Growth starts' where a block's output norm first reaches growth x its value at step 0."""
    norm_growth: float = 2.0
    """Part 2: r = ||last block|| / ||first layer|| must grow by at least this factor."""
    coherence_rise: float = 0.05
    """Part 3: the mean row coherence must rise by at least this."""
    image_size: int = 0
    """With --data: resize to this size (0 = natural size)."""
    threads: int = 1
    """CPU threads (small layers: 1 is fastest)."""

    def check(self) -> None:
        super().check()
        common.known(self.model, ["trelu-wn"] + ([self.control] if self.control else []))
        for k in ("steps", "batch_size", "lr", "record_every", "blowup", "growth", "norm_growth"):
            common.positive(k, getattr(self, k))
        common.positive("coherence_rise", self.coherence_rise, allow_zero=True)
        common.positive("image_size", self.image_size, allow_zero=True)
        if self.trelu_join not in ("add", "weighted"):
            raise ValueError("trelu_join: must be 'add' or 'weighted'")
        if not 0 <= self.min_stable < 1:
            raise ValueError("min_stable: must be in [0, 1)")


# -- training with records --------------------------------------------------------------------------

def train(ctx, model, batches, p: Params, tag: str) -> dict:
    """`p.steps` SGD steps on the iterator `batches`, with records every `p.record_every`; stops at divergence."""
    probe = BlockNorms(model)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=0.9)
    model.train()
    losses, records, div = [], [], None
    bar = ctx.progress(total=p.steps, desc=tag)
    for step in range(p.steps):
        x, y = next(batches)
        record = step % p.record_every == 0 or step == p.steps - 1
        probe.active = record
        loss = F.cross_entropy(model(x).float(), y)
        probe.active = False
        losses.append(float(loss.detach()))
        if record:
            with torch.no_grad():
                coh = [row_coherence(common.effective_weight(m)) for _, m in convs]
            rec = {"step": step, "loss": losses[-1], "norms": [probe.values.get(n, float("nan")) for n in probe.names],
                   "coherence": coh, "mean_coherence": sum(coh) / len(coh)}
            records.append(rec)
            n = rec["norms"]
            ctx.scalars(tag, {"loss": losses[-1], "first_layer_norm": n[0], "last_block_norm": n[-1],
                              "depth_ratio": n[-1] / n[0] if n[0] else None,
                              "mean_row_coherence": rec["mean_coherence"]}, step)
        if common.diverged_at(losses, p.blowup) is not None:
            div = step
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
    bar.close()
    probe.remove()
    return {"losses": losses, "diverged_at": div, "records": records, "names": probe.names,
            "conv_names": [n for n, _ in convs]}


def growth_start(records: list[dict], names: list[str], growth: float) -> dict | None:
    """The first record at which some output norm reached `growth` x its step-0 value, and the shallowest such layer."""
    base = records[0]["norms"]
    for rec in records[1:]:
        for i, (v, b) in enumerate(zip(rec["norms"], base)):
            if b > 0 and (not math.isfinite(v) or v >= growth * b):
                return {"step": rec["step"], "layer": names[i], "depth_index": i, "factor": v / b}
    return None


def depth_ratio(rec: dict) -> float:
    n = rec["norms"]
    return n[-1] / n[0] if n[0] > 0 and math.isfinite(n[-1]) else float("inf")


def summarize(r: dict, p: Params) -> dict:
    """Numbers the verdict reads from one run: divergence, stretch, depth ratio and coherence at start/end."""
    recs = [q for q in r["records"] if math.isfinite(q["loss"]) and (r["diverged_at"] is None or
                                                                       q["step"] < r["diverged_at"])]
    if not recs:
        recs = r["records"][:1]
    first, last = recs[0], recs[-1]
    return {"diverged_at": r["diverged_at"], "steps": p.steps, "initial_loss": r["losses"][0],
            "loss_before": last["loss"], "last_step": last["step"],
            "ratio_start": depth_ratio(first), "ratio_end": depth_ratio(last),
            "coherence_start": first["mean_coherence"], "coherence_end": last["mean_coherence"],
            "growth_start": growth_start(recs, r["names"], p.growth)}


# -- verdict -----------------------------------------------------------------------------------------------

def verdict(wn: dict, ctrl: dict | None, p: Params) -> dict:
    """wn, ctrl: `summarize` outputs for trelu-wn and the control (None: no control run)."""
    d = wn["diverged_at"]
    need = int(math.ceil(p.min_stable * wn["steps"]))
    if d is None:
        s1 = common.INCONCLUSIVE
        m1 = (f"no divergence in {wn['steps']} steps (final loss {wn['loss_before']:.3g}); the paper saw it after as "
              f"much as 50 epochs of ImageNet (~250k steps at batch 256): the paper scale (ResNet-50, ImageNet, "
              f"120 epochs) decides it")
    elif d >= need and wn["loss_before"] < wn["initial_loss"]:
        s1, m1 = common.REPRODUCED, (f"diverged at step {d} of {wn['steps']} after a stable stretch (loss "
                                     f"{wn['loss_before']:.3g} at step {wn['last_step']}, initial "
                                     f"{wn['initial_loss']:.3g})")
    else:
        s1, m1 = common.NOT_REPRODUCED, (f"diverged at step {d} of {wn['steps']}, "
                                         + (f"before {need} steps of stable training" if d < need else
                                            f"after the loss had grown to {wn['loss_before']:.3g} (initial "
                                            f"{wn['initial_loss']:.3g}): not sudden"))
    grow = wn["ratio_end"] / wn["ratio_start"] if wn["ratio_start"] > 0 else float("inf")
    s2 = wn["ratio_end"] > 1 and grow >= p.norm_growth
    gs = wn["growth_start"]
    where = (f"; growth (x{p.growth:g} of step 0) starts at step {gs['step']} in {gs['layer']}" if gs else
             f"; no layer's output norm reached x{p.growth:g} of its step-0 value")
    m2 = (f"r = ||last block|| / ||first layer|| {wn['ratio_start']:.3g} at step 0 -> {wn['ratio_end']:.3g} at step "
          f"{wn['last_step']} (x{grow:.3g})" + where)
    rise = wn["coherence_end"] - wn["coherence_start"]
    s3 = rise >= p.coherence_rise
    m3 = f"mean row coherence of the convs {wn['coherence_start']:.3f} -> {wn['coherence_end']:.3f} ({rise:+.3f})"
    parts = [
        common.part("sudden divergence", "TReLU-WN trains for a long stable stretch, then diverges suddenly",
                    "paper", s1, m1, f"diverged at a step >= {p.min_stable:g} x steps ({need}), the loss before it "
                    f"below the initial loss; inconclusive without a divergence",
                    paper_value=PAPER["paper_values"]["sudden divergence"]),
        common.part("norm grows with depth", "the norm of the output increases from layer to layer and this grows "
                    "after gradient updates", "paper", s2, m2,
                    f"r > 1 at the last record before any divergence and r grew by >= {p.norm_growth:g}x since step 0"),
        common.part("coherence rises", "gradient updates increase the correlations between neurons (row coherence)",
                    "paper", s3, m3, f"mean row coherence rose by >= {p.coherence_rise:g}")]
    if ctrl is not None:
        cg = ctrl["ratio_end"] / ctrl["ratio_start"] if ctrl["ratio_start"] > 0 else float("inf")
        ok = ctrl["diverged_at"] is None and cg < p.norm_growth
        parts.append(common.part(
            f"control: {p.control}", f"{p.control} keeps the depth ratio and does not diverge (the growth is WN's)",
            "added", ok, f"{p.control}: r {ctrl['ratio_start']:.3g} -> {ctrl['ratio_end']:.3g} (x{cg:.3g}), "
            f"{'diverged at step ' + str(ctrl['diverged_at']) if ctrl['diverged_at'] is not None else 'no divergence'}"
            f"; its mean row coherence {ctrl['coherence_start']:.3f} -> {ctrl['coherence_end']:.3f}",
            f"{p.control} does not diverge and its r grows by < {p.norm_growth:g}x"))
    headline = ((f"no divergence in {wn['steps']} steps (inconclusive)" if d is None else f"diverged at step {d}")
                + f"; r x{grow:.2g} ({'>=' if grow >= p.norm_growth else '<'} {p.norm_growth:g}x"
                + (f", but r = {wn['ratio_end']:.2g} <= 1 at the end)" if wn["ratio_end"] <= 1 else ")")
                + (f", growth starts at step {gs['step']} in {gs['layer']}" if gs else "")
                + f"; coherence {rise:+.2f}")
    return common.verdict_of(CLAIM, parts, headline)


# -- plot and run ---------------------------------------------------------------------------------------------

def plot(ctx, p: Params, runs: dict, v: dict) -> None:
    import numpy as np
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 2, 2, panel=(6.5, 4.0))
        wn = runs["trelu-wn"]
        recs = wn["records"]
        colors = dict(zip(runs, ("tab:blue", "tab:orange", "tab:green")))
        ax = axes[0][0]
        cmap = common.truncated_cmap(plt, "viridis", 0.0, 0.9)
        depth = np.arange(len(wn["names"]))
        shown = recs[:: max(1, len(recs) // 8)]
        if shown[-1] is not recs[-1]:
            shown.append(recs[-1])
        for rec in shown:
            ax.plot(depth, common.positive_or_nan(rec["norms"]), "-o", ms=3,
                    color=cmap(rec["step"] / max(1, recs[-1]["step"])), label=f"step {rec['step']}")
        ax.set_xticks(depth, [n.replace("layer", "L") for n in wn["names"]], rotation=60, fontsize=8)
        ax.set_xlabel("layer (first conv, then residual blocks in order)")
        ax.set_ylabel("mean per-sample L2 norm")
        common.log_if_wide(ax, [x for r in recs for x in r["norms"]])
        ax.set_title("trelu-wn: output norm by depth, over training")
        ax.legend(fontsize=8, ncol=2)
        ax = axes[0][1]
        for tag, r in runs.items():
            ax.plot([q["step"] for q in r["records"]], common.positive_or_nan([depth_ratio(q) for q in r["records"]]),
                    color=colors[tag], label=tag)
        ax.set_xlabel("SGD step")
        ax.set_ylabel("||last block|| / ||first layer||")
        ax.set_title("depth ratio r")
        common.log_if_wide(ax, [depth_ratio(q) for r in runs.values() for q in r["records"]])
        ax.legend()
        ax = axes[1][0]
        for tag, r in runs.items():
            ax.plot(range(len(r["losses"])), common.positive_or_nan(r["losses"]), color=colors[tag], label=tag, lw=1)
            if r["diverged_at"] is not None:
                ax.axvline(r["diverged_at"], color="tab:red", ls=":", label=f"{tag} diverged")
        ax.set_yscale("log")
        ax.set_xlabel("SGD step")
        ax.set_ylabel("training loss")
        ax.set_title(f"training loss (constant lr {p.lr:g})")
        ax.legend()
        ax = axes[1][1]
        for tag, r in runs.items():
            steps = [q["step"] for q in r["records"]]
            ax.plot(steps, [q["mean_coherence"] for q in r["records"]], color=colors[tag], label=f"{tag}: mean over convs")
            ax.plot(steps, [max(q["coherence"]) for q in r["records"]], "--", color=colors[tag],
                    label=f"{tag}: max over convs")
        ax.set_xlabel("SGD step")
        ax.set_ylabel("row coherence max |cos(w_i, w_j)|")
        ax.set_title("row coherence of the convs' effective weights")
        ax.legend()
        ctx.savefig(fig, "trelu_wn_instability.png", v, f"{p.model}")


def run(ctx, p: Params) -> dict:
    ld = common.loader(ctx, p.batch_size, "train", p.image_size)
    runs = {}
    for tag, method, opts in [("trelu-wn", "trelu-wn", {"trelu_join": p.trelu_join})] + (
            [(p.control, p.control, {})] if p.control else []):
        torch.manual_seed(p.seed)
        model = models.build(p.model, norms.get(method, **opts), ld.num_classes, ld.in_shape).to(ctx.device)
        runs[tag] = train(ctx, model, common.forever(ld), p, tag)  # the same batches in the same order
    sums = {tag: summarize(r, p) for tag, r in runs.items()}
    v = verdict(sums["trelu-wn"], sums.get(p.control) if p.control else None, p)
    plot(ctx, p, runs, v)
    rows = [[tag, s["diverged_at"] if s["diverged_at"] is not None else "-", s["last_step"], s["ratio_start"],
             s["ratio_end"], s["coherence_start"], s["coherence_end"],
             f"step {s['growth_start']['step']}, {s['growth_start']['layer']}" if s["growth_start"] else "-"]
            for tag, s in sums.items()]
    summary = common.table(["method", "diverged at", "last record", "r start", "r end", "coherence start",
                            "coherence end", "growth starts"], rows)
    meas = {"model": p.model, "trelu_join": p.trelu_join, "lr": p.lr, "steps": p.steps, "summary": sums,
            "layers": runs["trelu-wn"]["names"],
            "runs": {tag: {"losses": r["losses"], "diverged_at": r["diverged_at"], "records": r["records"],
                           "conv_names": r["conv_names"]} for tag, r in runs.items()}}
    return ctx.finish(meas, v, summary)
