"""How many CPUs this process may really use: its affinity mask and its cgroup's CPU quota.

``os.cpu_count()`` counts the machine's CPUs; in a container, under Slurm or taskset, a process
may use fewer: the CPUs its affinity mask allows (``os.sched_getaffinity``), and no more CPU time
than its cgroup's quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``;
``docker run --cpus 8`` sets it). Loader threads and workers beyond that only oversubscribe.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def affinity() -> int:
    """CPUs in this process's affinity mask (all of them where the platform has no mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _own_cgroup(controller: str | None, proc: Path) -> str:
    """This process's cgroup path for `controller` (None: the v2 unified hierarchy), from /proc/self/cgroup."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and ((controller is None and parts[0] == "0") or
                                (controller is not None and controller in parts[1].split(","))):
            return parts[2] or "/"
    return "/"


def quota(root: Path = CGROUP, proc: Path = Path("/proc/self/cgroup")) -> float | None:
    """The cgroup CPU quota in CPUs (e.g. 8.0 for ``--cpus 8``), or None when unlimited or unknown."""
    candidates = []
    own = _own_cgroup(None, proc).lstrip("/")
    candidates += [(root / own / "cpu.max", None), (root / "cpu.max", None)]           # v2
    own1 = _own_cgroup("cpu", proc).lstrip("/")
    for base in (root / "cpu,cpuacct", root / "cpu"):                                   # v1
        candidates += [(base / own1 / "cpu.cfs_quota_us", base / own1 / "cpu.cfs_period_us"),
                       (base / "cpu.cfs_quota_us", base / "cpu.cfs_period_us")]
    for first, period_file in candidates:
        try:
            text = first.read_text().split()
            if period_file is None:   # v2: "<quota|max> <period>"
                if text[0] == "max":
                    return None
                return int(text[0]) / int(text[1])
            q = int(text[0])
            if q <= 0:                # v1: -1 = no quota
                return None
            return q / int(period_file.read_text().split()[0])
        except (OSError, ValueError, IndexError, ZeroDivisionError):
            continue
    return None


def available() -> int:
    """CPUs this process can use at once: its affinity, capped by its cgroup quota (rounded up), >= 1."""
    n = affinity()
    q = quota()
    if q is not None:
        n = min(n, max(1, math.ceil(q)))
    return max(1, n)
