"""Output norms of the first and last layers during WN training drift apart (Gitman & Ginsburg Fig. 4).

Gitman & Ginsburg 2017 §5 and Fig. 4 ("Norm of the output for the first and
last layers of ResNet-50 with WN training"): "weight normalization fails to fix
the output norm throughout network layers since weight matrices start to
violate orthogonality assumptions during training"; "WN does not ensure
complete normalization of the network".

What runs: the training engine itself (``normtrain.engine.train``) with
``log.track_norms`` on, which logs the mean per-sample L2 norm of the outputs of
the network's first and last conv/linear layers every ``log_every`` steps into
each run's metrics.jsonl. Default: the ``digits-mlp`` recipe (MLP 64-512-300-10
on the built-in digits) with ``wn``, and ``bn`` as a control; ``recipe``,
``--data`` and ``recipe_set`` (recipe overrides, e.g. ``[model.name=resnet50,
train.epochs=1]``) scale it up to the paper's ResNet-50 run. Each method's run
directory is <out>/runs/<method> (rewritten on every invocation).

Criterion: with WN the ratio r = ||last-layer output|| / ||first-layer output||
changes over training by more than ``threshold`` (default 50%):
|r_end / r_start - 1| > threshold, r_start at the first logged step. The same
numbers are reported for the other methods for contrast.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from . import common

USES_DATA = True

CLAIM = ("With weight normalization the output norms are not kept fixed through the network during training: "
         "the last layer's output norm drifts relative to the first layer's (Gitman & Ginsburg 2017 Fig. 4).")


@dataclass
class Params(common.Params):
    recipe: str = "digits-mlp"
    """Recipe to train (name or .yaml path)."""
    methods: list[str] = field(default_factory=lambda: ["wn", "bn"])
    """Methods to train; the verdict is about wn, the others are controls."""
    recipe_set: list[str] = field(default_factory=list)
    """Extra recipe overrides 'key=value' (e.g. [train.epochs=2, data.batch_size=32])."""
    log_every: int = 2
    """Log the norms every this many optimizer steps."""
    threshold: float = 0.5
    """Drift criterion: |r_end / r_start - 1| > threshold (0.5 = 50%)."""
    threads: int = 1
    """CPU threads."""

    def check(self) -> None:
        super().check()
        if not self.methods:
            raise ValueError("methods: must not be empty")
        common.known(methods=self.methods)
        common.positive("log_every", self.log_every)
        common.positive("threshold", self.threshold)


def recipes(ctx, p: Params) -> dict:
    """The recipe of each method, validated before anything is written."""
    from ..preflight import validate
    extra = [config.parse_set(s) for s in p.recipe_set]
    out = {}
    for m in p.methods:
        overrides = [("norm.name", m), ("run.out", str(ctx.out / "runs" / m)), ("run.seed", p.seed),
                     ("run.device", p.device), ("run.resume", "auto"), ("log.track_norms", True),
                     ("log.every_steps", p.log_every), ("log.progress", p.progress)]
        if ctx.data:
            overrides.append(("data.source", ctx.data))
        r = config.load(p.recipe, overrides + extra)
        validate(r)
        out[m] = r
    return out


def read_norms(run_dir: Path) -> dict:
    steps, first, last = [], [], []
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            a, b = row.get("norms/first_layer_output"), row.get("norms/last_layer_output")
            if a is not None and b is not None:
                steps.append(row["step"])
                first.append(a)
                last.append(b)
    return {"steps": steps, "first": first, "last": last}


def drift(first: list[float], last: list[float]) -> dict:
    """Ratios r = last/first at the start and end, and the relative changes."""
    pairs = [(a, b) for a, b in zip(first, last) if math.isfinite(a) and math.isfinite(b) and a > 0]
    if len(pairs) < 2:
        return {"r_start": None, "r_end": None, "ratio_change": None, "first_change": None, "last_change": None}
    (a0, b0), (a1, b1) = pairs[0], pairs[-1]
    r0, r1 = b0 / a0, b1 / a1
    return {"r_start": r0, "r_end": r1, "ratio_change": r1 / r0 - 1, "first_change": a1 / a0 - 1,
            "last_change": b1 / b0 - 1}


def verdict(wn: dict | None, others: dict, threshold: float = 0.5) -> dict:
    """wn, others[m]: `drift` outputs."""
    criterion = (f"with WN, the ratio r = ||last-layer output|| / ||first-layer output|| changes by more than "
                 f"{threshold:.0%} between the first and last logged step")
    if not wn or wn.get("ratio_change") is None:
        return common.verdict(CLAIM, criterion, "no WN run with at least two logged norms", False)
    ctrl = "; ".join(f"{m}: r {d['r_start']:.3g} -> {d['r_end']:.3g} ({d['ratio_change']:+.0%})"
                     for m, d in others.items() if d.get("ratio_change") is not None)
    measured = (f"WN: r {wn['r_start']:.3g} -> {wn['r_end']:.3g} ({wn['ratio_change']:+.0%}; first-layer norm "
                f"{wn['first_change']:+.0%}, last-layer norm {wn['last_change']:+.0%})" + (f"; {ctrl}" if ctrl else "")
                + ".")
    return common.verdict(CLAIM, criterion, measured, abs(wn["ratio_change"]) > threshold)


def plot(ctx, curves: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for m, c in curves.items():
        axes[0].plot(c["steps"], c["first"], label=m)
        axes[1].plot(c["steps"], c["last"], label=m)
        axes[2].plot(c["steps"], [b / a if a else float("nan") for a, b in zip(c["first"], c["last"])], label=m)
    for ax, t in zip(axes, ("first layer: mean ||output||", "last layer: mean ||output||", "ratio last / first")):
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    ctx.savefig(fig, "output_norms.png")


def run(ctx, p: Params) -> dict:
    recs = recipes(ctx, p)
    from ..engine import train
    curves, results = {}, {}
    for m, r in recs.items():
        run_dir = Path(r.run.out)
        if (run_dir / "recipe.yaml").is_file():
            shutil.rmtree(run_dir)  # our own previous run of this scenario: start fresh
        res = train(r)
        results[m] = {"status": res["status"], "steps": res["steps"], "diverged_at_step": res["diverged_at_step"],
                      "final": res["final"]}
        curves[m] = read_norms(run_dir)
        for s, a, b in zip(curves[m]["steps"], curves[m]["first"], curves[m]["last"]):
            ctx.scalars(m, {"first_layer_output": a, "last_layer_output": b, "ratio": b / a if a else None}, s)
    plot(ctx, curves)
    drifts = {m: drift(c["first"], c["last"]) for m, c in curves.items()}
    v = verdict(drifts.get("wn"), {m: d for m, d in drifts.items() if m != "wn"}, p.threshold)
    rows = [[m, results[m]["status"], results[m]["steps"], d["r_start"], d["r_end"], d["ratio_change"],
             d["first_change"], d["last_change"], results[m]["final"].get("eval/top1")] for m, d in drifts.items()]
    summary = common.table(["method", "status", "steps", "r_start", "r_end", "r change", "first change",
                            "last change", "eval top1"], rows)
    meas = {"recipe": p.recipe, "model": next(iter(recs.values())).model.name, "runs": results, "curves": curves,
            "drift": drifts}
    return ctx.finish(meas, v, summary)
