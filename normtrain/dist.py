"""Everything normtrain does with torch.distributed lives here.

- `launch(...)` starts N local workers through torch's elastic launcher (what
  `torchrun` does), passing the multi-node options through;
- `setup()` turns the current process into a worker: one process = one rank,
  NCCL on GPU, gloo on CPU; without torchrun variables it is a world of one;
- small collectives the engine needs (`all_sum`, `any_true`, `barrier`) and DDP wrapping;
- `spawn(fn, n)` runs a function in n fresh local CPU processes joined in one gloo group
  and returns their results (experiments inside one command, e.g. a scenario).
Rank 0 alone prints, logs and writes (`Dist.main`).
"""
from __future__ import annotations

import os
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


def in_worker_env() -> bool:
    """True when started by torchrun (or by our own launcher)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


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
    if not in_worker_env() or int(os.environ["WORLD_SIZE"]) == 1:
        device = torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device("cpu")
        return Dist(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
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


# -- a local process group inside one command ----------------------------------------

def _spawned(fn, rank: int, world: int, port: int, payload: bytes, queue) -> None:
    """Body of one `spawn` process: join the gloo group, run fn, report, leave."""
    import pickle
    import traceback
    torch.set_num_threads(1)  # n processes share the machine's cores
    ok = False
    try:
        store = dist.PrefixStore("normtrain/spawn", dist.TCPStore("127.0.0.1", port, is_master=False,
                                                                  timeout=timedelta(minutes=5)))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(minutes=10))
        result = fn(Dist(rank=rank, world=world, local_rank=rank, device=torch.device("cpu")), *pickle.loads(payload))
        # Plain pickle bytes: tensors travel by value, not as shared memory that dies with this process.
        queue.put((rank, True, pickle.dumps(result)))
        ok = True
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        queue.put((rank, False, traceback.format_exc()))
    finally:
        teardown(clean=ok)


def spawn(fn, nprocs: int, args: tuple = (), timeout_s: float = 600.0) -> list:
    """Run ``fn(d, *args)`` in `nprocs` new local CPU processes in one gloo group; their results in rank order.

    `d` is each process's `Dist` (rank, world, device cpu), so `wrap(model, d)` gives real DDP.
    The calling process holds the rendezvous store on a port the OS picks (no clash with other
    runs) and takes no part in the group. `fn` must be a module-level function and its arguments
    and result picklable. A rank that raises, dies or outlives `timeout_s` raises RuntimeError here
    (with that rank's traceback), after the other processes are stopped.
    """
    import multiprocessing as mp
    import pickle
    import queue as queue_mod
    import time

    if nprocs < 1:
        raise ValueError("spawn: nprocs must be >= 1")
    ctx = mp.get_context("spawn")
    store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, timeout=timedelta(minutes=5), wait_for_workers=False)
    results: queue_mod.Queue = ctx.Queue()
    payload = pickle.dumps(tuple(args))
    procs = [ctx.Process(target=_spawned, args=(fn, r, nprocs, store.port, payload, results), daemon=True)
             for r in range(nprocs)]
    for p in procs:
        p.start()
    out: dict = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < nprocs:
            try:
                rank, ok, value = results.get(timeout=0.5)
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs) if r not in out and p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"spawn: rank {dead[0]} exited with code {procs[dead[0]].exitcode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"spawn: ranks {sorted(set(range(nprocs)) - set(out))} did not finish "
                                       f"within {timeout_s:g}s") from None
                continue
            if not ok:
                raise RuntimeError(f"spawn: rank {rank} failed:\n{value}")
            out[rank] = pickle.loads(value)
        for p in procs:
            p.join(timeout=60)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
        del store
    return [out[r] for r in range(nprocs)]
