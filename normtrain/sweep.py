"""`normtrain sweep`: a grid of training runs and their comparison table.

    normtrain sweep --recipe R --norm bn,wn,trelu-wn --set optim.lr=0.01,0.1 --seeds 3 [--out DIR] [--data D]

The grid is every method of ``--norm`` x every combination of the
comma-separated values of each ``--set`` x seeds 0..K-1 (the seed of run k is
the recipe's ``run.seed`` + k). Values are read as YAML, like ``--set`` of a
training run; commas inside brackets, braces or quotes do not split, so
``--set "schedule.milestones=[30,60],[50,80]"`` is two values (two lists) and
``--set "model.options={widths: [64, 32]}"`` is one.

Each run goes to ``<out>/<norm>-<key=value...>-seed<k>`` (only the ``--set`` keys
with several values appear in the name) and is an ordinary ``normtrain`` run:
its recipe.yaml, metrics.jsonl, results.json, checkpoints and TensorBoard
files. Runs are executed one after another in this process, or, when several
GPUs are visible, one subprocess per GPU at a time (``CUDA_VISIBLE_DEVICES``).
A run whose directory already holds a finished result for the same recipe is
reused, so re-running a sweep only runs what is missing (an interrupted run is
resumed from its checkpoint).

At the end: ``<out>/summary.md`` and ``<out>/summary.csv`` (per configuration:
runs, final train and evaluation top-1 as mean ± std over seeds, diverged and
collapsed counts, images/s), ``<out>/runs.csv`` (one row per run: its seed,
status and every final number), ``<out>/curves.png`` (training loss and
evaluation top-1 of every run: one colour per configuration, one line style and
marker per seed, x where a run diverged) and ``<out>/summary.png`` (final
evaluation top-1 per configuration: mean with a ± std error bar and each seed's
value, on an axis zoomed to the data), both titled with the recipe and network,
the best configuration and the number of diverged and collapsed runs. A run is
*collapsed* when it finished at chance: final evaluation top-1 within
max(2 points, half of chance) of chance = 100 / classes (e.g. <= 15% with 10
classes); it is counted, not taken as a result that trained. All input is validated, and every recipe of the
grid loaded, before anything is written (exit 2 on bad input). A run that
diverges is a result (counted in 'diverged'); a run that fails is reported and
the sweep exits 1 after writing the summary of the others.
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import config, outputs
from .errors import EXIT_INTERRUPTED, EXIT_OK, EnvError, UsageError

DEFAULT_OUT = "runs/sweep"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="normtrain sweep", description=__doc__.split("\n\n")[2],
                epilog="Each --set may give several comma-separated values; the grid is their product.",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="digits-mlp", help="recipe name or .yaml path (default: digits-mlp)")
    p.add_argument("--norm", help="comma-separated methods (default: the recipe's)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="recipe key and one or more comma-separated values (repeatable)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per configuration (default 1)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"sweep directory (default: {DEFAULT_OUT})")
    p.add_argument("--data", help="dataset path or built-in name for every run (shorthand for --set data.source=)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit; nothing is written")
    return p


# -- the grid -------------------------------------------------------------------------------

split_values = config.split_values  # top-level comma split (shared with the scenarios' --set lists)


def parse_axis(item: str) -> tuple[str, list[Any]]:
    """'key=v1,v2' -> (key, [parsed v1, parsed v2]) with the same YAML reading as --set."""
    if "=" not in item:
        raise UsageError(f"--set '{item}': expected key=value[,value...], e.g. --set optim.lr=0.01,0.1")
    key, raw = item.split("=", 1)
    values = [config.parse_set(f"{key}={v.strip()}")[1] for v in split_values(raw)]
    return key.strip(), values


def value_text(v: Any) -> str:
    """A value as YAML flow text (round-trips through parse_set)."""
    if isinstance(v, str):
        return v if config.parse_set(f"k={v}")[1] == v else json.dumps(v)
    text = yaml.safe_dump(v, default_flow_style=True).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.replace("\n...", "").strip()


def slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_")
    return s or "x"


@dataclass
class RunSpec:
    norm: str
    values: list[tuple[str, Any]]       # the --set (key, value) pairs of this configuration
    seed_index: int
    recipe: config.Recipe = None
    out: Path = None
    config_label: str = ""               # configuration (all seeds): norm + varying values
    overrides: list = field(default_factory=list)


def build_grid(args) -> tuple[list[RunSpec], list[str]]:
    if args.seeds < 1:
        raise UsageError("--seeds must be >= 1")
    axes = [parse_axis(s) for s in args.sets]
    keys = [k for k, _ in axes]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise UsageError(f"--set {dup[0]} given more than once; give all its values in one --set")
    for k in keys:
        if k in ("norm.name", "run.out", "run.seed", "data.source"):
            raise UsageError(f"--set {k}: use --norm, --out, --seeds or --data in a sweep")
    base = config.load(args.recipe, [("data.source", args.data)] if args.data else [])
    norm_list = [n.strip() for n in (args.norm or base.norm.name).split(",")]
    if any(not n for n in norm_list):
        raise UsageError(f"--norm {args.norm!r}: empty method name")
    if len(set(norm_list)) != len(norm_list):
        raise UsageError(f"--norm {args.norm!r}: a method is listed twice")
    varying = [k for k, vals in axes if len(vals) > 1]
    out = Path(args.out)
    specs, names = [], set()
    from .preflight import check_names, validate
    for norm in norm_list:
        for combo in itertools.product(*[vals for _, vals in axes]) if axes else [()]:
            pairs = list(zip(keys, combo))
            label = "-".join([norm] + [f"{k}={value_text(v)}" for k, v in pairs if k in varying])
            for k in range(args.seeds):
                name = slug(f"{label}-seed{k}")
                if name in names:
                    raise UsageError(f"two runs of the grid map to the same directory {name}; "
                                     f"make the --set values distinct")
                names.add(name)
                overrides = [("norm.name", norm), *pairs, ("run.seed", base.run.seed + k),
                             ("run.out", str(out / name)), ("run.name", name)]
                if args.data:
                    overrides.insert(0, ("data.source", args.data))
                recipe = config.load(args.recipe, overrides)
                check_names(recipe)
                specs.append(RunSpec(norm, pairs, k, recipe, out / name, label, overrides))
    # Every recipe loaded and every name known before the checks that build networks (and import torch).
    for s in specs:
        validate(s.recipe)
    return specs, varying


# -- running ------------------------------------------------------------------------------------

def finished(spec: RunSpec) -> dict | None:
    """The saved results of this run if it finished (completed or diverged) with the same recipe."""
    res_path, rec_path = spec.out / "results.json", spec.out / "recipe.yaml"
    if not (res_path.is_file() and rec_path.is_file()):
        return None
    try:
        res = json.loads(res_path.read_text())
        saved, wanted = yaml.safe_load(rec_path.read_text()), yaml.safe_load(config.dump(spec.recipe))
        for d in (saved, wanted):
            for k in ("progress", "interval_s", "eval_lines"):  # display only
                d.get("log", {}).pop(k, None)
        same = saved == wanted
    except (OSError, ValueError, AttributeError, TypeError, RecursionError, yaml.YAMLError):
        return None
    return res if same and isinstance(res, dict) and res.get("status") in ("completed", "diverged") else None


class SweepInterrupted(Exception):
    """A run of the sweep was stopped by SIGTERM/SIGINT: the sweep stops too (rerun to resume it)."""


def run_inprocess(specs: list[RunSpec]) -> list[str]:
    """Run one after another; a run that stops on bad input (e.g. a batch larger than the data) is skipped.

    Each run handles SIGTERM/SIGINT itself (finishes its step, saves); the sweep then stops
    instead of starting the next run.
    """
    from .engine import train
    failures = []
    for i, s in enumerate(specs):
        print(f"[sweep {i + 1}/{len(specs)}] {s.out.name}", flush=True)
        try:
            res = train(s.recipe)
        except UsageError as e:
            print(f"normtrain sweep: run {s.out.name} skipped: {e}", file=sys.stderr, flush=True)
            failures.append(s.out.name)
            continue
        if res["status"] == "interrupted":
            raise SweepInterrupted(s.out.name)
    return failures


def run_subprocesses(specs: list[RunSpec], recipe_arg: str, gpus: int) -> list[str]:
    """One run per GPU at a time, each a `python -m normtrain` subprocess pinned with CUDA_VISIBLE_DEVICES."""
    queue = list(enumerate(specs))
    running: dict[int, tuple[subprocess.Popen, RunSpec]] = {}
    failures = []
    while queue or running:
        free = [g for g in range(gpus) if g not in running]
        while free and queue:
            g = free.pop(0)
            i, s = queue.pop(0)
            cmd = [sys.executable, "-m", "normtrain", "--recipe", recipe_arg]
            for k, v in s.overrides:
                cmd += ["--set", f"{k}={value_text(v)}"]
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(g))
            print(f"[sweep {i + 1}/{len(specs)}] {s.out.name} on GPU {g}", flush=True)
            running[g] = (subprocess.Popen(cmd, env=env), s)
        time.sleep(0.5)
        for g, (proc, s) in list(running.items()):
            rc = proc.poll()
            if rc is not None:
                del running[g]
                if rc not in (0, 3):  # 3 = diverged, a result
                    failures.append(f"{s.out.name} (exit {rc})")
    return failures


# -- summary ------------------------------------------------------------------------------------

def chance(res: dict) -> float | None:
    """Top-1 (%) of guessing: 100 / classes (None if results.json does not say how many)."""
    n = res.get("num_classes")
    return 100.0 / n if n else None


def collapsed(res: dict | None) -> bool:
    """A finished run whose final evaluation top-1 is at chance: within max(2 points, chance / 2) of 100 / classes."""
    if not res or res.get("status") != "completed":
        return False
    top1, c = (res.get("final") or {}).get("eval/top1"), chance(res)
    return top1 is not None and c is not None and top1 <= c + max(2.0, c / 2)


def mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def pm(m: float | None, s: float | None, digits: int = 2) -> str:
    return "-" if m is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def load_result(spec: RunSpec) -> dict | None:
    """The run's results.json, or None if it has none or it cannot be read as one."""
    p = spec.out / "results.json"
    try:
        res = json.loads(p.read_text()) if p.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or not isinstance(res.get("final", {}), dict) \
            or not isinstance(res.get("timings", {}), dict):
        return None
    return res


def summarize(specs: list[RunSpec]) -> list[dict]:
    rows, groups = [], {}
    for s in specs:
        groups.setdefault(s.config_label, []).append(s)
    for label, members in groups.items():
        res = [load_result(s) for s in members]
        done = [r for r in res if r]
        final = [r.get("final", {}) for r in done]
        tr = mean_std([f.get("train/top1") for f in final])
        te = mean_std([f.get("eval/top1") for f in final])
        ips = mean_std([r.get("timings", {}).get("images_per_s") for r in done])
        row = {"config": label, "norm": members[0].norm}
        row.update({k: v for k, v in members[0].values})
        row.update({"runs": len(done), "seeds": len(members),
                    "train_top1_mean": tr[0], "train_top1_std": tr[1],
                    "test_top1_mean": te[0], "test_top1_std": te[1],
                    "diverged": sum(1 for r in done if r.get("status") == "diverged"),
                    "collapsed": sum(1 for r in done if collapsed(r)),
                    "images_per_s": ips[0]})
        rows.append(row)
    return rows


RUN_COLUMNS = ["run", "config", "norm", "seed", "status", "collapsed", "steps", "total_steps", "train_top1",
               "eval_top1", "best_eval_top1", "eval_split", "test_top1", "eval_ema_top1", "images_per_s"]


def write_runs_csv(out: Path, specs: list[RunSpec], keys: list[str]) -> None:
    """runs.csv: one row per run of the grid (its seed and final numbers; empty where it has no results)."""
    buf = io.StringIO()
    cols = RUN_COLUMNS[:3] + keys + RUN_COLUMNS[3:]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for s in specs:
        res = load_result(s) or {}
        f = res.get("final") or {}
        row = {"run": s.out.name, "config": s.config_label, "norm": s.norm, "seed": s.recipe.run.seed,
               "status": res.get("status", "missing"), "collapsed": collapsed(res), "steps": res.get("steps"),
               "total_steps": res.get("total_steps"), "train_top1": f.get("train/top1"),
               "eval_top1": f.get("eval/top1"), "best_eval_top1": res.get("best_eval_top1"),
               "eval_split": res.get("eval_split"), "test_top1": f.get("test/top1"),
               "eval_ema_top1": f.get("eval_ema/top1"), "images_per_s": (res.get("timings") or {}).get("images_per_s"),
               **{k: value_text(v) for k, v in s.values}}
        w.writerow({c: "" if row.get(c) is None else row[c] for c in cols})
    (out / "runs.csv").write_text(buf.getvalue())


def write_summary(out: Path, rows: list[dict], keys: list[str], title: str) -> None:
    cols = ["config", "norm", *keys, "runs", "seeds", "train_top1_mean", "train_top1_std", "test_top1_mean",
            "test_top1_std", "diverged", "collapsed", "images_per_s"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else (value_text(r[c]) if c in keys else r[c])) for c in cols})
    (out / "summary.csv").write_text(buf.getvalue())
    head = ["norm", *keys, "runs", "train top-1 (%)", "eval top-1 (%)", "diverged", "collapsed", "images/s"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["norm"], *[value_text(r.get(k)) for k in keys], f"{r['runs']}/{r['seeds']}",
                 pm(r["train_top1_mean"], r["train_top1_std"]), pm(r["test_top1_mean"], r["test_top1_std"]),
                 str(r["diverged"]), str(r["collapsed"]),
                 "-" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "mean ± std over seeds of the final logged training top-1 and the final evaluation top-1 "
              "(on the held-out validation split when the recipe has data.val_split); 'runs' = runs with a "
              "results.json / runs in the grid; 'collapsed' = finished at chance (final top-1 within max(2 points, "
              "chance/2) of 100/classes). Every run's numbers: runs.csv."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def read_curves(path: Path) -> tuple[list, list, list, list]:
    ls, lv, es, ev = [], [], [], []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("train/loss") is not None:
                ls.append(row["step"])
                lv.append(row["train/loss"])
            if row.get("eval/top1") is not None:
                es.append(row["step"])
                ev.append(row["eval/top1"])
    return ls, lv, es, ev


STYLE = {"font.size": 13, "axes.titlesize": 14, "axes.labelsize": 13, "legend.fontsize": 11,
         "xtick.labelsize": 12, "ytick.labelsize": 12, "figure.titlesize": 15}
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def headline(rows: list[dict], title: str) -> str:
    """The sweep's verdict in one line: the best configuration by mean test top-1, and divergences."""
    scored = [r for r in rows if r["test_top1_mean"] is not None]
    runs = sum(r["runs"] for r in rows)
    diverged = sum(r["diverged"] for r in rows)
    parts = [title]
    if scored:
        best = max(scored, key=lambda r: r["test_top1_mean"])
        parts.append(f"best eval top-1: {best['config']} {pm(best['test_top1_mean'], best['test_top1_std'], 1)}%")
    parts.append(f"{diverged}/{runs} runs diverged")
    collapsed_runs = sum(r.get("collapsed", 0) for r in rows)
    if collapsed_runs:
        parts.append(f"{collapsed_runs}/{runs} collapsed (at chance)")
    return "\n".join([parts[0], "; ".join(parts[1:])])


def _colours(labels: list[str]):
    import matplotlib.pyplot as plt
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}


def _seed_style(k: int) -> dict:
    return {"linestyle": LINESTYLES[k % len(LINESTYLES)], "marker": MARKERS[k % len(MARKERS)]}


def _legend(fig, colours: dict, seeds: int, diverged: bool) -> None:
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=c, lw=3, label=lab) for lab, c in colours.items()]
    handles += [Line2D([], [], color="0.35", lw=1.5, ms=6, label=f"seed {k}", **_seed_style(k)) for k in range(seeds)]
    if diverged:
        handles.append(Line2D([], [], color="0.35", lw=0, marker="x", ms=11, mew=2.5, label="diverged"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.80, 0.5), frameon=False)


def plot_curves(out: Path, specs: list[RunSpec], title: str = "sweep") -> None:
    """curves.png: training loss and evaluation top-1 against the step for every run
    (one colour per configuration, one line style and marker per seed, x where a run diverged)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(dict.fromkeys(s.config_label for s in specs))
    colours = _colours(labels)
    seeds = max(s.seed_index for s in specs) + 1
    curves = {id(s): read_curves(s.out / "metrics.jsonl") for s in specs}
    # A diverging run's loss reaches 1e30: draw everything above 100x the median first loss at that
    # ceiling, so the runs that train stay readable.
    firsts = [c[1][0] for c in curves.values() if c[1] and c[1][0] is not None and math.isfinite(c[1][0])]
    ceiling = 100 * statistics.median(firsts) if firsts else math.inf
    any_diverged = clipped = False
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(17, 6.5))
        for s in specs:
            c, style = colours[s.config_label], _seed_style(s.seed_index)
            ls, lv, es, ev = curves[id(s)]
            lv = [v if v is not None and math.isfinite(v) and v > 0 else float("nan") for v in lv]
            clipped |= any(v > ceiling for v in lv)
            lv = [min(v, ceiling) for v in lv]
            every = max(1, len(ls) // 12)  # markers sparse enough to tell the seeds apart
            axes[0].plot(ls, lv, color=c, alpha=0.9, lw=1.6, markevery=every, ms=5, **style)
            axes[1].plot(es, ev, color=c, alpha=0.9, lw=1.6, ms=5, **style)
            res = load_result(s) or {}
            if res.get("status") == "diverged":
                any_diverged = True
                finite = [(x, y) for x, y in zip(ls, lv) if math.isfinite(y)]
                if finite:
                    axes[0].plot(*finite[-1], marker="x", color=c, ms=12, mew=2.5, ls="none")
        axes[0].set_yscale("log")
        axes[0].set_title("training loss (mean over each logging window)"
                          + (f"\nlosses above {ceiling:.3g} drawn at that line" if clipped else ""))
        if clipped:
            axes[0].axhline(ceiling, color="0.5", lw=1, ls=":")
        axes[0].set_ylabel("cross-entropy loss (log scale)")
        axes[1].set_title("evaluation top-1")
        axes[1].set_ylabel("top-1 accuracy (%)")
        for ax in axes:
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
        _legend(fig, colours, seeds, any_diverged)
        fig.suptitle(title)
        fig.tight_layout(rect=(0, 0, 0.80, 1))
        fig.savefig(out / "curves.png", dpi=100)
        plt.close(fig)


def zoom(values: list[float]) -> tuple[float, float]:
    """x-limits around `values` with a margin of 15% of their span (at least 0.5 point), inside [0, 100]."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return 0.0, 100.0
    lo, hi = min(values), max(values)
    pad = max(0.15 * (hi - lo), 0.5)
    return max(0.0, lo - pad), min(100.0, hi + pad)


def plot_summary(out: Path, specs: list[RunSpec], rows: list[dict], title: str = "sweep") -> None:
    """summary.png: final test top-1 per configuration, mean ± std over seeds (bar and error bar),
    each seed's value as its marker, and how many of its runs diverged."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [r["config"] for r in rows]
    colours = _colours(labels)
    seeds = max(s.seed_index for s in specs) + 1
    values = []  # every number drawn, for the axis range
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(15, max(4.0, 0.75 * len(rows) + 2.2)))
        ys = range(len(rows))[::-1]  # first configuration on top
        for y, r in zip(ys, rows):
            c = colours[r["config"]]
            if r["test_top1_mean"] is not None:
                # Mean as a diamond with a +-std error bar: a bar from 0 would hide sub-point gaps on a zoomed axis.
                ax.errorbar(r["test_top1_mean"], y, xerr=r["test_top1_std"], fmt="D", color=c, ms=11, mec="0.15",
                            elinewidth=2.5, capsize=7, ecolor="0.2", zorder=3)
                values += [r["test_top1_mean"] - r["test_top1_std"], r["test_top1_mean"] + r["test_top1_std"]]
            for s in specs:
                res = load_result(s) if s.config_label == r["config"] else None
                top1 = ((res or {}).get("final") or {}).get("eval/top1")
                if top1 is not None:
                    values.append(top1)
                    ax.plot(top1, y + 0.18 * (s.seed_index - (seeds - 1) / 2) - 0.25, color=c, ls="none", ms=8,
                            marker=_seed_style(s.seed_index)["marker"], mec="0.15",
                            mfc="none" if collapsed(res) else c)
            note = pm(r["test_top1_mean"], r["test_top1_std"], 2) + "%" if r["test_top1_mean"] is not None \
                else "no evaluation"
            if r["diverged"]:
                note += f", {r['diverged']}/{r['runs']} diverged"
            if r["collapsed"]:
                note += f", {r['collapsed']}/{r['runs']} collapsed"
            ax.annotate(note, (1.0, y), xycoords=("axes fraction", "data"), xytext=(8, 0),
                        textcoords="offset points", va="center")
        ax.set_yticks(list(ys), labels)
        ax.set_ylim(-0.8, len(rows) - 0.4)
        ax.set_xlabel("final evaluation top-1 (%): diamond = mean over seeds, error bar = ± std, markers = seeds "
                      "(hollow: collapsed at chance); axis zoomed to the data")
        ax.set_xlim(*zoom(values))
        from matplotlib.lines import Line2D
        ax.legend(handles=[Line2D([], [], color="0.5", mec="0.15", ls="none", ms=8, label=f"seed {k}",
                                  marker=_seed_style(k)["marker"]) for k in range(seeds)],
                  loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(seeds, 8), frameon=False)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(out / "summary.png", dpi=100)
        plt.close(fig)


def sweep_title(recipe: str, specs: list[RunSpec], configs: int, seeds: int) -> str:
    """'sweep: R (network N[, data D]), K runs (C configurations x S seeds)': the network and data the runs
    really used, so an overridden model.name or --data shows."""
    models = ", ".join(dict.fromkeys(s.recipe.model.name for s in specs))
    sources = list(dict.fromkeys(s.recipe.data.source for s in specs))
    data = f", data {sources[0]}" if len(sources) == 1 else ""
    return f"sweep: {recipe} (network {models}{data}), {len(specs)} runs ({configs} configurations x {seeds} seeds)"


# -- entry point ----------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    specs, varying = build_grid(args)  # every recipe loaded and validated: bad input stops here
    if args.dry_run:
        for s in specs:
            print(s.out)
        return EXIT_OK
    outputs.check_dir(args.out)  # a file in the way, below a file, read-only: exit 5 before any run
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EnvError(f"--out {args.out}: {outputs.cause(e)}") from None
    todo = []
    for s in specs:
        if finished(s) is not None:
            print(f"[sweep] reusing finished run {s.out.name}", flush=True)
        else:
            todo.append(s)
    gpus = 0
    try:
        import torch
        if specs[0].recipe.run.device in ("auto", "cuda") and torch.cuda.is_available():
            gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch CUDA: run in-process
        gpus = 0
    t0 = time.perf_counter()
    interrupted = ""
    if gpus > 1 and len(todo) > 1:
        failures = run_subprocesses(todo, args.recipe, gpus)
    else:
        try:
            failures = run_inprocess(todo)
        except SweepInterrupted as e:
            # Summarise what exists so far; rerunning the sweep reuses finished runs and resumes this one.
            failures, interrupted = [], str(e)
    keys = [k for k, _ in specs[0].values]
    rows = summarize(specs)
    title = sweep_title(args.recipe, specs, len(rows), args.seeds)
    try:
        write_summary(out, rows, keys, title)
        write_runs_csv(out, specs, keys)
        plot_title = headline(rows, title)
        plot_curves(out, specs, plot_title)
        plot_summary(out, specs, rows, plot_title)
    except OSError as e:
        raise EnvError(f"cannot write the sweep's summary in {out}: {outputs.cause(e)}; its runs are kept: "
                       "rerun the same command to write it") from None
    print((out / "summary.md").read_text())
    print(f"normtrain sweep: {len(specs)} runs ({len(todo)} run now, {time.perf_counter() - t0:.1f}s) -> "
          f"{out / 'summary.md'}, {out / 'summary.csv'}, {out / 'runs.csv'}, {out / 'curves.png'}, "
          f"{out / 'summary.png'}", flush=True)
    if interrupted:
        print(f"normtrain sweep: interrupted during {interrupted}; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if failures:
        print(f"normtrain sweep: {len(failures)} run(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return EXIT_OK
