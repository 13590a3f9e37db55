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
A folder whose files cannot be read as a run (malformed JSON, wrong types,
unreadable files) is one ``unreadable: why`` row; the others are listed as usual.
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

from .errors import EXIT_OK, UsageError, readable

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
        lines = path.read_text(errors="replace").splitlines()
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


class Unreadable(Exception):
    """A folder that looks like a run but whose files cannot be read as one (the message says why)."""


def _typed(value, types, what: str):
    """`value` if it is None or of `types` (bool never counts as a number), else Unreadable naming `what`."""
    if value is None or (isinstance(value, types) and not isinstance(value, bool)):
        return value
    raise Unreadable(f"{what} is {type(value).__name__} {str(value)[:40]!r}")


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise Unreadable(f"{path.name}: {e.strerror or e}") from None
    except ValueError as e:
        raise Unreadable(f"{path.name} is not JSON ({str(e)[:60]})") from None


def _mapping(d, what: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise Unreadable(f"{what} is not a mapping")
    return d


def status_of(res: dict) -> str:
    """results.json's status, or 'stopped early' for a completed run that train.max_steps cut short."""
    stopped = res.get("stopped_early")
    if stopped is None and res.get("status") == "completed" and res.get("total_steps"):
        stopped = res["steps"] < res["total_steps"]  # results.json written before stopped_early existed
    return "stopped early" if res.get("status") == "completed" and stopped else res["status"]


def read_run(folder: Path, root: Path) -> dict | None:
    """One row for the run in `folder`, None if it holds none; Unreadable if it holds one that cannot be read."""
    res_path = folder / "results.json"
    row = {"run": str(folder.relative_to(root)) or "."}
    running = lock_held(folder)
    num = (int, float)
    if res_path.exists():
        if not res_path.is_file():
            raise Unreadable("results.json is not a file")
        res = _json(res_path)
        if not isinstance(res, dict) or "status" not in res or "steps" not in res:
            if isinstance(res, dict) and ("verdict" in res or "scenario" in res):
                return None  # a scenario's results
            raise Unreadable("results.json has no status and steps")
        _typed(res["status"], str, "status")
        _typed(res["steps"], int, "steps")
        _typed(res.get("total_steps"), int, "total_steps")
        final = _mapping(res.get("final"), "final")
        row.update(updated=res_path.stat().st_mtime, status="running" if running else status_of(res),
                   name=_typed(res.get("recipe"), str, "recipe"), model=_typed(res.get("model"), str, "model"),
                   norm=_typed(res.get("norm"), str, "norm"), steps=res["steps"], total_steps=res.get("total_steps"),
                   final_top1=_typed(final.get("eval/top1"), num, "final eval/top1"),
                   best_top1=_typed(res.get("best_eval_top1"), num, "best_eval_top1"),
                   test_top1=_typed(final.get("test/top1"), num, "final test/top1"),
                   eval_split=_typed(res.get("eval_split"), str, "eval_split"),
                   images_per_s=_typed(_mapping(res.get("timings"), "timings").get("images_per_s"), num,
                                       "timings.images_per_s"),
                   diverged_at_step=_typed(res.get("diverged_at_step"), int, "diverged_at_step"))
        if row["status"] is None:
            raise Unreadable("results.json has no status")
        return row
    rec_path, metrics = folder / "recipe.yaml", folder / "metrics.jsonl"
    if not (rec_path.is_file() and metrics.is_file()):
        return None
    try:
        rec = _mapping(yaml.safe_load(rec_path.read_text()), "recipe.yaml")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        rec = {}
    try:
        text = metrics.read_text(errors="replace")
    except OSError as e:
        raise Unreadable(f"metrics.jsonl: {e.strerror or e}") from None
    evals = []
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and isinstance(r.get("eval/top1"), num) and not isinstance(r["eval/top1"], bool):
            evals.append(r["eval/top1"])
    last = _last_row(metrics)
    held_out = bool(_mapping(rec.get("data"), "recipe data").get("val_split"))
    row.update(updated=metrics.stat().st_mtime, status="running" if running else "unfinished",
               name=_typed(_mapping(rec.get("run"), "recipe run").get("name"), str, "run.name"),
               model=_typed(_mapping(rec.get("model"), "recipe model").get("name"), str, "model.name"),
               norm=_typed(_mapping(rec.get("norm"), "recipe norm").get("name"), str, "norm.name"),
               steps=_typed(last.get("step") if isinstance(last, dict) else None, int, "step"), total_steps=None,
               final_top1=evals[-1] if evals else None, best_top1=max(evals) if evals else None, test_top1=None,
               eval_split="val" if held_out else "test", images_per_s=None, diverged_at_step=None)
    return row


def _unreadable(folder: Path, root: Path, why: str) -> dict:
    try:
        updated = folder.stat().st_mtime
    except OSError:
        updated = 0.0
    row = dict.fromkeys(COLUMNS)
    row.update(run=str(folder.relative_to(root)) or ".", updated=updated, status="unreadable", name=why)
    return row


def find_runs(root: Path) -> list[dict]:
    """Every run under `root`; a folder that cannot be read as a run is one ``unreadable`` row saying why."""
    rows = []
    for here, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP)
        try:
            row = read_run(Path(here), root)
        except Unreadable as e:
            row = _unreadable(Path(here), root, str(e))
        except (OSError, ValueError, RecursionError) as e:
            row = _unreadable(Path(here), root, f"{type(e).__name__}: {str(e)[:80]}")
        if row is not None:
            rows.append(row)
    return sorted(rows, key=lambda r: r["updated"])


def _cell(key: str, v) -> str:
    if v is None:
        return "-"
    if key == "run":
        return readable(v)
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
        if r["status"] == "unreadable":
            cells.append([_cell("run", r["run"]), _cell("updated", r["updated"]), f"unreadable: {r['name']}"]
                         + [""] * (len(heads) - 3))
            continue
        steps = "-" if r["steps"] is None else f"{r['steps']}/{_cell('', r['total_steps'])}"
        mark = " (val)" if r.get("eval_split") == "val" else ""
        cells.append([_cell("run", r["run"]), _cell("updated", r["updated"]), r["status"], _cell("", r["name"]),
                      _cell("", r["model"]), _cell("", r["norm"]), steps, _cell("final_top1", r["final_top1"]) + mark,
                      _cell("best_top1", r["best_top1"]) + mark, _cell("images_per_s", r["images_per_s"]),
                      _cell("", r["diverged_at_step"])])
    right = {"steps", "final top-1", "best top-1", "img/s", "diverged"}
    # An unreadable row's reason spans the columns after its status: it does not widen them.
    widths = [max(len(c[i]) for c in cells + [heads] if not (i >= 2 and c[2].startswith("unreadable: ")))
              for i in range(len(heads))]
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
                            time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(r[k])) if k == "updated" else
                            readable(r[k]) if k == "run" else r[k])
                        for k in COLUMNS})
        return EXIT_OK
    if not rows:
        print(f"no training runs under {root}", file=sys.stderr)
        return EXIT_OK
    print(table(rows))
    return EXIT_OK
