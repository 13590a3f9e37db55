#!/usr/bin/env python3
"""Start-up time and peak memory of the commands that must not import torch (issue 13 point 1).

Each command runs `--repeat` times as `python -m normtrain ARGS` in a fresh process;
the wall time is measured around the process, its CPU time (user + system) and peak
resident memory taken from `os.wait4` (the child's own rusage). On a shared machine
the CPU time is the steadier figure. Prints a markdown table (median and max wall
time, max RSS) and, with --json, writes the raw figures.

    python tools/bench_startup.py --repeat 10 --json startup.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = [
    ["--help"],
    ["list"],
    ["list", "keys"],
    ["scenario", "linear50-wn", "--help"],
    ["sweep", "--help"],
    ["runs", "--help"],
    ["--norm", "nope"],
    ["--set", "optim.lr=abc"],
    ["scenario", "linear50-wn", "--set", "steps=x"],
]
BASELINE = ["-c", "pass"]


def measure(args: list[str], repeat: int) -> dict:
    walls, cpus, rss = [], [], []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(repeat):
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
        walls.append(time.perf_counter() - t0)
        cpus.append(usage.ru_utime + usage.ru_stime)
        rss.append(usage.ru_maxrss / 1024)  # KiB -> MiB (Linux)
        p.returncode = os.waitstatus_to_exitcode(status)
    return {"args": args, "rc": p.returncode, "wall_s_median": statistics.median(walls), "wall_s_max": max(walls),
            "cpu_s_median": statistics.median(cpus), "max_rss_mib": max(rss)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    rows = [measure(BASELINE, args.repeat) | {"command": "python -c pass (interpreter alone)"}]
    for c in COMMANDS:
        rows.append(measure(["-m", "normtrain", *c], args.repeat) | {"command": "normtrain " + " ".join(c)})
    print("| command | exit | wall s (median) | wall s (max) | CPU s (median) | max RSS MiB |\n"
          "|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| `{r['command']}` | {r['rc']} | {r['wall_s_median']:.3f} | {r['wall_s_max']:.3f} | "
              f"{r['cpu_s_median']:.3f} | {r['max_rss_mib']:.1f} |")
    if args.json:
        meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                "load_avg_at_start": os.getloadavg(), "repeat": args.repeat}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
