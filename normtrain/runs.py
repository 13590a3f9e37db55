"""`normtrain runs [DIR] [--csv]`: every training run under a folder, one line each.

    normtrain runs                       # the runs under runs/
    normtrain runs /scratch/me --csv > runs.csv

A run is a folder with a results.json written by a training run (sweeps' runs
included, at any depth). Columns: the folder (relative to DIR), when it last
wrote, status (completed, diverged, interrupted; ``unfinished`` for a folder with
a recipe.yaml and metrics.jsonl but no results.json yet: still running, or killed
without a chance to write), run name, network, norm, steps done / planned, best
evaluation top-1 (%), images/s (results.json's timings.images_per_s) and the step
it diverged at. Sorted by time, newest last. Scenario results (results.json with a
verdict) are not runs and are left out. Reads files only: no torch.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import yaml

from .errors import EXIT_OK, UsageError

COLUMNS = ["run", "updated", "status", "name", "model", "norm", "steps", "total_steps", "best_top1", "images_per_s",
           "diverged_at_step"]
SKIP = {"checkpoints", "tb"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="normtrain runs", description=__doc__.split("\n\n")[2],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", nargs="?", default="runs", help="folder to search (default: runs)")
    p.add_argument("--csv", action="store_true", help="write CSV (all columns, full precision) to stdout")
    return p


def _last_row(path: Path) -> dict:
    """The last complete JSON line of a metrics.jsonl ({} if none)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


def read_run(folder: Path, root: Path) -> dict | None:
    """One row for the run in `folder`, or None if it holds none."""
    res_path = folder / "results.json"
    row = {"run": str(folder.relative_to(root)) or "."}
    if res_path.is_file():
        try:
            res = json.loads(res_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(res, dict) or "status" not in res or "steps" not in res:
            return None  # a scenario's results, or not ours
        row.update(updated=res_path.stat().st_mtime, status=res["status"], name=res.get("recipe"),
                   model=res.get("model"), norm=res.get("norm"), steps=res["steps"],
                   total_steps=res.get("total_steps"), best_top1=res.get("best_eval_top1"),
                   images_per_s=(res.get("timings") or {}).get("images_per_s"),
                   diverged_at_step=res.get("diverged_at_step"))
        return row
    rec_path, metrics = folder / "recipe.yaml", folder / "metrics.jsonl"
    if not (rec_path.is_file() and metrics.is_file()):
        return None
    try:
        rec = yaml.safe_load(rec_path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        rec = {}
    evals = []
    for line in metrics.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("eval/top1") is not None:
            evals.append(r["eval/top1"])
    row.update(updated=metrics.stat().st_mtime, status="unfinished", name=(rec.get("run") or {}).get("name"),
               model=(rec.get("model") or {}).get("name"), norm=(rec.get("norm") or {}).get("name"),
               steps=_last_row(metrics).get("step"), total_steps=None, best_top1=max(evals) if evals else None,
               images_per_s=None, diverged_at_step=None)
    return row


def find_runs(root: Path) -> list[dict]:
    rows = []
    for here, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP)
        row = read_run(Path(here), root)
        if row is not None:
            rows.append(row)
    return sorted(rows, key=lambda r: r["updated"])


def _cell(key: str, v) -> str:
    if v is None:
        return "-"
    if key == "updated":
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(v))
    if key == "best_top1":
        return f"{v:.2f}"
    if key == "images_per_s":
        return f"{v:.0f}"
    return str(v)


def table(rows: list[dict]) -> str:
    heads = ["run", "updated", "status", "name", "model", "norm", "steps", "best top-1", "img/s", "diverged"]
    cells = []
    for r in rows:
        steps = "-" if r["steps"] is None else f"{r['steps']}/{_cell('', r['total_steps'])}"
        cells.append([_cell("run", r["run"]), _cell("updated", r["updated"]), r["status"], _cell("", r["name"]),
                      _cell("", r["model"]), _cell("", r["norm"]), steps, _cell("best_top1", r["best_top1"]),
                      _cell("images_per_s", r["images_per_s"]), _cell("", r["diverged_at_step"])])
    right = {"steps", "best top-1", "img/s", "diverged"}
    widths = [max(len(c[i]) for c in cells + [heads]) for i in range(len(heads))]
    lines = []
    for c in [heads] + cells:
        lines.append("  ".join(v.rjust(w) if h in right else v.ljust(w) for v, w, h in zip(c, widths, heads)).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        raise UsageError(f"no such folder: {args.dir}")
    rows = find_runs(root)
    if args.csv:
        w = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else
                            time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(r[k])) if k == "updated" else r[k])
                        for k in COLUMNS})
        return EXIT_OK
    if not rows:
        print(f"no training runs under {root}", file=sys.stderr)
        return EXIT_OK
    print(table(rows))
    return EXIT_OK
