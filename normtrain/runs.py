"""`normtrain runs [DIR] [--csv]`: every training run under a folder, one line each.

    normtrain runs                       # the runs under runs/
    normtrain runs /scratch/me --csv > runs.csv

A run is a folder with a results.json written by a training run (sweeps' runs
included, at any depth). Columns: the folder (relative to DIR), when it last
wrote, status (completed; ``stopped early`` when train.max_steps ended it before
its schedule's end; diverged, interrupted, failed; ``running`` while a process holds
the folder's lock; ``unfinished`` for a folder with a recipe.yaml and metrics.jsonl
but no results.json and no live writer: killed without a chance to write), run
name, network, norm, steps done / planned, the final and the best evaluation
top-1 (%; on the held-out validation split when the recipe has data.val_split; the
CSV adds the test split's final top-1), images/s (results.json's
timings.images_per_s) and the step it diverged at. Sorted by time, newest last.
Scenario results (results.json with a verdict) are not runs and are left out.
Reads files only: no torch.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import sys
import time
from pathlib import Path

import yaml

from .errors import EXIT_OK, UsageError

COLUMNS = ["run", "updated", "status", "name", "model", "norm", "steps", "total_steps", "final_top1", "best_top1",
           "test_top1", "eval_split", "images_per_s", "diverged_at_step"]
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


LOCK_NAME = ".normtrain.lock"  # rundir.LOCK_NAME (not imported: rundir imports torch through checkpoint)


def lock_held(folder: Path) -> bool:
    """Whether a process holds the run folder's writer lock (a run in progress).

    Read from /proc/locks (the flock the writer holds, matched by device and inode) without
    touching the lock, so a run starting at this moment is never refused because of us;
    elsewhere, the PID the holder wrote into the lock file, when it is on this host and alive.
    """
    path = folder / LOCK_NAME
    try:
        st = path.stat()
    except OSError:
        return False
    try:
        locks = Path("/proc/locks").read_text()
    except OSError:
        locks = None
    if locks is not None:
        me = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        return any(len(f) > 5 and f[1] == "FLOCK" and f[5] == me for f in (line.split() for line in locks.splitlines()))
    try:
        pid, host = path.read_text().split()[1::2][:2]
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
        return True
    except PermissionError:
        return True
    except (OSError, ValueError):
        return False


def status_of(res: dict) -> str:
    """results.json's status, or 'stopped early' for a completed run that train.max_steps cut short."""
    stopped = res.get("stopped_early")
    if stopped is None and res.get("status") == "completed" and res.get("total_steps"):
        stopped = res["steps"] < res["total_steps"]  # results.json written before stopped_early existed
    return "stopped early" if res.get("status") == "completed" and stopped else res["status"]


def read_run(folder: Path, root: Path) -> dict | None:
    """One row for the run in `folder`, or None if it holds none."""
    res_path = folder / "results.json"
    row = {"run": str(folder.relative_to(root)) or "."}
    running = lock_held(folder)
    if res_path.is_file():
        try:
            res = json.loads(res_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(res, dict) or "status" not in res or "steps" not in res:
            return None  # a scenario's results, or not ours
        final = res.get("final") or {}
        row.update(updated=res_path.stat().st_mtime, status="running" if running else status_of(res),
                   name=res.get("recipe"), model=res.get("model"), norm=res.get("norm"), steps=res["steps"],
                   total_steps=res.get("total_steps"), final_top1=final.get("eval/top1"),
                   best_top1=res.get("best_eval_top1"), test_top1=final.get("test/top1"),
                   eval_split=res.get("eval_split"), images_per_s=(res.get("timings") or {}).get("images_per_s"),
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
    held_out = bool((rec.get("data") or {}).get("val_split"))
    row.update(updated=metrics.stat().st_mtime, status="running" if running else "unfinished",
               name=(rec.get("run") or {}).get("name"), model=(rec.get("model") or {}).get("name"),
               norm=(rec.get("norm") or {}).get("name"), steps=_last_row(metrics).get("step"), total_steps=None,
               final_top1=evals[-1] if evals else None, best_top1=max(evals) if evals else None, test_top1=None,
               eval_split="val" if held_out else "test", images_per_s=None, diverged_at_step=None)
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
    if key in ("best_top1", "final_top1", "test_top1"):
        return f"{v:.2f}"
    if key == "images_per_s":
        return f"{v:.0f}" if v >= 100 else f"{v:.3g}"
    return str(v)


def table(rows: list[dict]) -> str:
    heads = ["run", "updated", "status", "name", "model", "norm", "steps", "final top-1", "best top-1", "img/s",
             "diverged"]
    cells = []
    for r in rows:
        steps = "-" if r["steps"] is None else f"{r['steps']}/{_cell('', r['total_steps'])}"
        mark = " (val)" if r.get("eval_split") == "val" else ""
        cells.append([_cell("run", r["run"]), _cell("updated", r["updated"]), r["status"], _cell("", r["name"]),
                      _cell("", r["model"]), _cell("", r["norm"]), steps, _cell("final_top1", r["final_top1"]) + mark,
                      _cell("best_top1", r["best_top1"]) + mark, _cell("images_per_s", r["images_per_s"]),
                      _cell("", r["diverged_at_step"])])
    right = {"steps", "final top-1", "best top-1", "img/s", "diverged"}
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
