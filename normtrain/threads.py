"""CPU threads per process: the CPUs this process may use, shared among the processes of this node.

PyTorch sizes its intra-op thread pool from the machine's cores; in a container limited by a
CPU quota (``docker run --cpus 4``, Kubernetes limits, Slurm's cgroups) or pinned to a few
cores, and with several training processes per node, that is more threads than CPUs, and
they fight over them (a digits run measured 212 img/s with the default threads on a busy
machine and 3,752 with OMP_NUM_THREADS=1). normtrain therefore sets, once per process,

    threads = max(1, available() // processes on this node)

where `available()` is the smaller of the CPU affinity mask (``os.sched_getaffinity``) and
the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``, rounded
up), as torchrun's default of OMP_NUM_THREADS for multi-process runs does with the core
count. An explicit ``OMP_NUM_THREADS`` is left alone. Imports no torch.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def _cgroup_paths(proc_cgroup: str) -> dict:
    """{'v2': relative path, 'cpu': v1 cpu controller path} from /proc/self/cgroup's text."""
    out = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out["v2"] = path
        elif "cpu" in controllers.split(","):
            out["cpu"] = (controllers, path)
    return out


def cgroup_quota(root: Path = CGROUP, proc_cgroup: str | None = None) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 2.5), or None when there is none."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            proc_cgroup = ""
    paths = _cgroup_paths(proc_cgroup)
    candidates = []
    rel = paths.get("v2", "/").lstrip("/")
    candidates += [("v2", root / rel / "cpu.max"), ("v2", root / "cpu.max")]
    if "cpu" in paths:
        controllers, path = paths["cpu"]
        for folder in (root / controllers / path.lstrip("/"), root / "cpu" / path.lstrip("/"), root / controllers,
                       root / "cpu"):
            candidates.append(("v1", folder))
    for kind, where in candidates:
        try:
            if kind == "v2":
                quota, period = where.read_text().split()[:2]
                if quota == "max":
                    return None
                return int(quota) / int(period)
            quota = int((where / "cpu.cfs_quota_us").read_text())
            period = int((where / "cpu.cfs_period_us").read_text())
            return None if quota <= 0 else quota / period
        except (OSError, ValueError):
            continue
    return None


def affinity() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available(root: Path = CGROUP, proc_cgroup: str | None = None) -> int:
    """The CPUs this process may use: its affinity mask, capped by its cgroup quota (rounded up)."""
    cpus = affinity()
    quota = cgroup_quota(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota - 1e-9)))
    return max(1, cpus)


def per_process(local_processes: int, cpus: int | None = None) -> int:
    """Threads for each of `local_processes` processes sharing this node's available CPUs."""
    return max(1, (available() if cpus is None else cpus) // max(1, local_processes))


def apply(local_processes: int) -> int:
    """Set this process's torch threads to `per_process` unless OMP_NUM_THREADS says otherwise;
    returns the thread count in use."""
    import torch
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(per_process(local_processes))
    return torch.get_num_threads()
