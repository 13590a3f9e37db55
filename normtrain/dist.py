"""Everything normtrain does with torch.distributed lives here.

- `launch(...)` starts N local workers through torch's elastic launcher (what
  `torchrun` does), passing the multi-node options through;
- `setup()` turns the current process into a worker: one process = one rank,
  NCCL on GPU, gloo on CPU. Its rank and rendezvous come from torchrun's variables
  (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or, for a task started
  by Slurm's ``srun``, from Slurm's (`slurm_env`); with neither it is a world of one;
- small collectives the engine needs (`all_sum`, `any_true`, `barrier`) and DDP wrapping.
Rank 0 alone prints, logs and writes (`Dist.main`).
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import UsageError

#: Set by `launch` in its workers: their exit code is then read from results.json
#: by the launcher rather than from each worker (so a diverged run is not "restarted").
LAUNCHED_ENV = "NORMTRAIN_LAUNCHED"


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def torchrun_env(environ=os.environ) -> bool:
    """True when started by torchrun (or by our own launcher)."""
    return "RANK" in environ and "WORLD_SIZE" in environ


def in_worker_env() -> bool:
    """True when this process is one rank of several: started by torchrun, or a task of an srun step."""
    return torchrun_env() or slurm_env() is not None


# -- Slurm --------------------------------------------------------------------------------

def expand_nodelist(spec: str) -> list[str]:
    """Host names of a Slurm node list ('node[01-04,07],gpu-a'): `scontrol show hostnames` where
    it exists, else the same expansion here (comma lists, ranges with their zero padding, several
    bracket groups per name)."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", spec], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    hosts = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", spec):
        parts = re.split(r"\[([^\]]*)\]", item)  # text, group, text, group, ..., text
        choices = []
        for i, part in enumerate(parts):
            if i % 2 == 0:
                choices.append([part])
                continue
            values = []
            for r in part.split(","):
                lo, _, hi = r.partition("-")
                values += [str(v).zfill(len(lo)) for v in range(int(lo), int(hi or lo) + 1)]
            choices.append(values)
        hosts += ["".join(c) for c in itertools.product(*choices)]
    return hosts


def tasks_per_node(spec: str) -> list[int]:
    """Slurm's '2(x3),1' -> [2, 2, 2, 1]."""
    out = []
    for m in re.finditer(r"(\d+)(?:\(x(\d+)\))?", spec):
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def slurm_env(environ=os.environ) -> dict | None:
    """torchrun's variables for a task of an ``srun`` step of several tasks, from Slurm's; None otherwise.

    RANK = SLURM_PROCID, WORLD_SIZE = SLURM_STEP_NUM_TASKS (set by srun only: a batch script
    that runs normtrain without srun is one process), LOCAL_RANK = SLURM_LOCALID,
    LOCAL_WORLD_SIZE from SLURM_STEP_TASKS_PER_NODE; MASTER_ADDR = the first host of the
    step's node list (where srun puts task 0); MASTER_PORT = 10000 + SLURM_JOB_ID mod 20000
    (below the ephemeral range; the same on every task of the job). MASTER_ADDR and
    MASTER_PORT already in the environment win. torchrun's own variables win over all this.
    """
    if torchrun_env(environ) or "SLURM_PROCID" not in environ or "SLURM_STEP_NUM_TASKS" not in environ:
        return None
    world = int(environ["SLURM_STEP_NUM_TASKS"])
    if world <= 1:
        return None
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or ""
    addr = environ.get("MASTER_ADDR") or (expand_nodelist(nodes) or ["localhost"])[0]
    port = environ.get("MASTER_PORT") or str(10000 + int(environ.get("SLURM_JOB_ID", "0") or 0) % 20000)
    per_node = tasks_per_node(environ.get("SLURM_STEP_TASKS_PER_NODE", ""))
    node = int(environ.get("SLURM_NODEID", "0"))
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": str(world), "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
            "LOCAL_WORLD_SIZE": str(per_node[node] if node < len(per_node) else 1),
            "MASTER_ADDR": addr, "MASTER_PORT": port}


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pick_device(pref: str) -> str:
    """'cpu' or 'cuda' from a run.device preference."""
    if pref == "cuda":
        if not visible_gpus():
            raise UsageError("run.device=cuda but no GPU is visible (use run.device=cpu or auto)")
        return "cuda"
    if pref == "cpu":
        return "cpu"
    return "cuda" if visible_gpus() else "cpu"


def setup(device_pref: str = "auto") -> Dist:
    """Join the process group if torchrun variables are present; pick this rank's device."""
    kind = pick_device(device_pref)
    slurm = slurm_env()
    if slurm is not None:
        os.environ.update(slurm)  # from here on the same as under torchrun
    if not torchrun_env() or int(os.environ["WORLD_SIZE"]) == 1:
        device = torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device("cpu")
        return Dist(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if kind == "cuda":
        # srun --gpus-per-task=1 leaves each task one visible GPU, whatever its local rank.
        index = local_rank % visible_gpus()
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        # A restarted elastic attempt reuses the agent's store: prefix keys by attempt so
        # the new attempt never reads the previous one's (stale) rendezvous entries.
        use_agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                              is_master=(rank == 0 and not use_agent_store), timeout=timedelta(minutes=10),
                              wait_for_workers=False)
        store = dist.PrefixStore(f"normtrain/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", store=store, rank=rank, world_size=world,
                                timeout=timedelta(minutes=30))
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def teardown(clean: bool = True) -> None:
    """Leave the process group. `clean`: every rank got here normally, so leave together
    (a rank tearing gloo down while a peer still talks to it can abort); after an error
    no barrier (the peers may never arrive)."""
    if dist.is_initialized():
        try:
            if clean:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def wrap(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """DDP-wrap for a multi-process run; DDP broadcasts rank 0's weights at construction."""
    if not d.active:
        return model
    ids = [d.device.index] if d.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place when distributed); returns it."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_true(flags: torch.Tensor) -> torch.Tensor:
    """Element-wise OR of a small float/bool flag vector over ranks (one collective)."""
    if dist.is_initialized():
        flags = flags.float()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags > 0


def gather_objects(obj, d: Dist) -> list:
    """Every rank's `obj`, in rank order, on every rank (a collective: call it on all ranks)."""
    if not d.active:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def resolve_nproc(value: str, device_pref: str) -> int:
    """`--nproc-per-node N|auto` -> N, checked against the visible GPUs."""
    gpus = visible_gpus()
    on_gpu = device_pref == "cuda" or (device_pref == "auto" and gpus > 0)
    if value == "auto":
        return max(gpus, 1) if on_gpu else 1
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--nproc-per-node: expected a positive integer or 'auto', got '{value}'") from None
    if n < 1:
        raise UsageError(f"--nproc-per-node: expected a positive integer or 'auto', got '{value}'")
    if on_gpu and n > gpus:
        raise UsageError(f"--nproc-per-node {n} is more than the {gpus} visible GPU(s)")
    if not on_gpu and n > 1 and device_pref != "cpu":
        raise UsageError(f"--nproc-per-node {n} but no GPU is visible; for CPU processes (gloo) add --set run.device=cpu")
    return n


def launch(argv: list[str], nproc: int, nnodes: str = "1", node_rank: int = 0, rdzv_endpoint: str = "",
           max_restarts: int = 0, run_id: str = "") -> None:
    """Run `python -m normtrain <argv>` as `nproc` workers per node through the elastic launcher.

    Raises torch's ChildFailedError if a worker fails after `max_restarts` restarts.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if ":" in nnodes:
        min_nodes, max_nodes = (int(v) for v in nnodes.split(":"))
    else:
        min_nodes = max_nodes = int(nnodes)
    standalone = max_nodes == 1 and not rdzv_endpoint
    config = LaunchConfig(
        min_nodes=min_nodes, max_nodes=max_nodes, nproc_per_node=nproc,
        run_id=run_id or (uuid.uuid4().hex if standalone else "normtrain"),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0" if standalone else rdzv_endpoint,
        rdzv_configs={"rank": node_rank} if not standalone else {},
        max_restarts=max_restarts, monitor_interval=0.5,
    )
    os.environ[LAUNCHED_ENV] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    elastic_launch(config, entrypoint=sys.executable)("-m", "normtrain", *argv)


def broadcast_module(module: torch.nn.Module, d: Dist) -> None:
    """Copy rank 0's parameters and buffers to every rank (after a rank-local initialisation)."""
    if not d.active:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)
