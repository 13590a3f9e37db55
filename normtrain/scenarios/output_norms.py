"""WN's last-block output norm drifts against its first layer's during training; BN's does not (G&G Fig. 4).

Gitman & Ginsburg 2017 §5 and Fig. 4 ("Norm of the output for the first and
last layers of ResNet-50 with WN training"): "weight normalization fails to fix
the output norm throughout network layers since weight matrices start to
violate orthogonality assumptions during training"; "WN does not ensure
complete normalization of the network".

What runs: the training engine itself (``normtrain.engine.train``) with
``log.track_norms`` on, which logs every ``log_every`` steps into each run's
metrics.jsonl the mean per-sample L2 norm of the network's *first layer*
output (the first conv, after its norm layer when one follows it, so BN is
measured normalized), of its *last residual block* (the input of the final
pooling; the last hidden layer in a network without blocks) and of the
classifier (an extra series: logits grow under cross-entropy whatever the
method). Default: the ``digits-mlp`` recipe trained as a ResNet-20 (``model``)
on the built-in digits, ``wn`` against the ``bn`` control; ``recipe``,
``model``, ``--data`` and ``recipe_set`` (e.g. ``recipe=resnet50-imagenet
model=resnet50 recipe_set=[train.epochs=1]``) scale it up to the paper's
ResNet-50 run. Each method's run
directory is <out>/runs/<method> (rewritten on every invocation).

Verdict, in parts: the paper's ``wn-drift``: the ratio r = ||last block
output|| / ||first layer output|| changes over training by more than
``threshold`` with WN, |r_end / r_start - 1| > threshold (r_start at the first
logged step); our control ``bn-control``: with BN it stays inside that band.
Other methods are reported.
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
         "the last block's output norm drifts relative to the first layer's (Gitman & Ginsburg 2017 Fig. 4), "
         "while batch normalization keeps it.")
POINTS = {"first": "norms/first_layer_output", "last": "norms/last_hidden_output", "classifier": "norms/last_layer_output"}


@dataclass
class Params(common.Params):
    recipe: str = "digits-mlp"
    """Recipe to train (name or .yaml path)."""
    methods: list[str] = field(default_factory=lambda: ["wn", "bn"])
    """Methods to train; the verdict needs wn and its bn control, the others are reported."""
    model: str = "resnet20"
    """Network replacing the recipe's (its model.options are dropped); '' keeps the recipe's network."""
    recipe_set: list[str] = field(default_factory=list)
    """Extra recipe overrides 'key=value' (e.g. [train.epochs=2, data.batch_size=32])."""
    log_every: int = 2
    """Log the norms every this many optimizer steps."""
    threshold: float = 0.5
    """Band: WN drifts if |r_end / r_start - 1| > threshold (0.5 = 50%); BN must stay within it."""
    threads: int = 1
    """CPU threads."""

    def check(self) -> None:
        super().check()
        if not self.methods:
            raise ValueError("methods: must not be empty")
        common.known(self.model or None, self.methods)
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
                     ("log.every_steps", p.log_every), ("log.progress", p.progress),
                     ("data.val_split", 0)]  # train on the whole training split, as the paper (recipe_set may differ)
        if ctx.data:
            overrides.append(("data.source", ctx.data))
        if p.model:
            overrides += [("model.name", p.model), ("model.options", {})]
        r = config.load(p.recipe, overrides + extra)
        validate(r)
        out[m] = r
    return out


def read_norms(run_dir: Path) -> dict:
    """Steps and the three tracked norms from a run's metrics.jsonl (rows that have all three)."""
    out = {"steps": [], **{k: [] for k in POINTS}}
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            vals = {k: row.get(key) for k, key in POINTS.items()}
            if all(v is not None for v in vals.values()):
                out["steps"].append(row["step"])
                for k, v in vals.items():
                    out[k].append(v)
    return out


def drift(first: list[float], last: list[float]) -> dict:
    """Ratios r = last/first at the start and end, and the relative changes."""
    pairs = [(a, b) for a, b in zip(first, last) if math.isfinite(a) and math.isfinite(b) and a > 0]
    if len(pairs) < 2:
        return {"r_start": None, "r_end": None, "ratio_change": None, "first_change": None, "last_change": None}
    (a0, b0), (a1, b1) = pairs[0], pairs[-1]
    r0, r1 = b0 / a0, b1 / a1
    return {"r_start": r0, "r_end": r1, "ratio_change": r1 / r0 - 1, "first_change": a1 / a0 - 1,
            "last_change": b1 / b0 - 1}


def verdict(wn: dict | None, bn: dict | None, others: dict | None = None, threshold: float = 0.5) -> dict:
    """wn, bn, others[m]: `drift` outputs of r = ||last block output|| / ||first layer output||."""
    if not wn or wn.get("ratio_change") is None or not bn or bn.get("ratio_change") is None:
        return common.not_judged(CLAIM, "needs wn and bn runs with at least two logged norms each")

    def desc(m, d):
        return (f"{m}: r {d['r_start']:.3g} -> {d['r_end']:.3g} ({d['ratio_change']:+.0%}; first layer "
                f"{d['first_change']:+.0%}, last block {d['last_change']:+.0%})")
    rest = "; ".join(desc(m, d) for m, d in (others or {}).items() if d.get("ratio_change") is not None)
    band = f"|r_end / r_start - 1| {{}} {threshold:.0%} between the first and last logged step"
    parts = [
        common.part("wn-drift", "Weight normalization fails to keep the output norm fixed through the layers during "
                    "training: the last block's output norm drifts relative to the first layer's (Gitman & "
                    "Ginsburg 2017 §5, Fig. 4).", "paper", abs(wn["ratio_change"]) > threshold,
                    desc("WN", wn) + (f"; also {rest}" if rest else ""), "WN: " + band.format(">")),
        common.part("bn-control", "Batch normalization keeps it (our control).", "added",
                    abs(bn["ratio_change"]) <= threshold, desc("BN", bn), "BN: " + band.format("<=")),
    ]
    headline = f"WN's last/first norm ratio {wn['ratio_change']:+.0%}, BN's {bn['ratio_change']:+.0%}"
    return common.verdict_of(CLAIM, parts, headline)


def plot(ctx, p: Params, curves: dict, v: dict, model: str) -> None:
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 2, 2, panel=(6.5, 4.0))
        panels = [(axes[0][0], "first", "first layer output (after its norm)"),
                  (axes[0][1], "last", "last residual block output"),
                  (axes[1][1], "classifier", "classifier output (logits; extra series)")]
        for ax, key, title in panels:
            for m, c in curves.items():
                ax.plot(c["steps"], common.positive_or_nan(c[key]), label=m)
            ax.set_title(f"{model}: {title}")
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("mean per-sample L2 norm")
            common.log_if_wide(ax, [x for c in curves.values() for x in c[key]])
            ax.legend()
        ax = axes[1][0]
        for m, c in curves.items():
            r = [b / a if a else float("nan") for a, b in zip(c["first"], c["last"])]
            r0 = next((x for x in r if math.isfinite(x) and x > 0), float("nan"))
            ax.plot(c["steps"], common.positive_or_nan([x / r0 for x in r]), label=m)
        ax.axhspan(1 - p.threshold, 1 + p.threshold, color="gray", alpha=0.15, label=f"band ±{p.threshold:.0%}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_yscale("log")
        ax.set_title("r / r_start, r = ||last block|| / ||first layer||")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("ratio relative to the first logged step")
        ax.legend()
        ctx.savefig(fig, "output_norms.png", v)


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
        c = curves[m]
        for i, s in enumerate(c["steps"]):
            ctx.scalars(m, {"first_layer_output": c["first"][i], "last_block_output": c["last"][i],
                            "classifier_output": c["classifier"][i]}, s)
    drifts = {m: drift(c["first"], c["last"]) for m, c in curves.items()}
    classifier = {m: drift(c["first"], c["classifier"]) for m, c in curves.items()}
    v = verdict(drifts.get("wn"), drifts.get("bn"), {m: d for m, d in drifts.items() if m not in ("wn", "bn")},
                p.threshold)
    model = next(iter(recs.values())).model.name
    plot(ctx, p, curves, v, model)
    rows = [[m, results[m]["status"], results[m]["steps"], d["r_start"], d["r_end"], d["ratio_change"],
             d["first_change"], d["last_change"], classifier[m]["last_change"], results[m]["final"].get("eval/top1")]
            for m, d in drifts.items()]
    summary = common.table(["method", "status", "steps", "r_start", "r_end", "r change", "first change",
                            "last-block change", "classifier change", "eval top1"], rows)
    meas = {"recipe": p.recipe, "recipe_set": p.recipe_set, "model": model, "runs": results, "curves": curves,
            "drift": drifts, "classifier_drift": classifier,
            "points": {"first": "first conv/linear output, after its norm layer when one follows",
                       "last": "last residual block output (last hidden layer without blocks)",
                       "classifier": "output layer (logits)"}}
    return ctx.finish(meas, v, summary)
