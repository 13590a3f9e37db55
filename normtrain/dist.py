"""Everything normtrain does with torch.distributed lives here.

- `launch(...)` starts N local workers through torch's elastic launcher (what
  `torchrun` does), passing the multi-node options through;
- `setup()` turns the current process into a worker: one process = one rank,
  NCCL on GPU, gloo on CPU. Its rank and rendezvous come from torchrun's variables
  (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or, for a task started
  by Slurm's ``srun``, from Slurm's (`slurm_env`); with neither it is a world of one;
- small collectives the engine needs (`all_sum`, `any_true`, `broadcast_object`,
  `average_buffers`) and DDP wrapping with the reference settings;
- `Supervisor`: heartbeats through the rendezvous store, so that a rank that is
  stopped, hung or dead is named within ``run.collective_timeout`` instead of
  hanging the job, and workers stop when their launcher dies;
- `run_local(fn, n, backend)` / `spawn(fn, n)` run a function in n fresh local
  processes joined in one group and return their results (checks and experiments
  inside one command: the doctor's all-reduce, a scenario's unsynced BN).
Rank 0 alone prints, logs and writes (`Dist.main`).
"""
from __future__ import annotations

import inspect
import itertools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from . import threads
from .errors import EXIT_WORKER, UsageError

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


def setup(device_pref: str = "auto", timeout_s: float = 1800.0) -> Dist:
    """Join the process group if torchrun's (or srun's, `slurm_env`) variables are present; pick this rank's device.

    `timeout_s` bounds every collective (run.collective_timeout)."""
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
        # Every start-up wait is bounded by run.collective_timeout: a worker whose store host is
        # gone (its launcher was killed) stops with an error instead of waiting for ever.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                              is_master=(rank == 0 and not use_agent_store), timeout=timedelta(seconds=timeout_s),
                              wait_for_workers=False)
        store = dist.PrefixStore(f"normtrain/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        # The heartbeat (Supervisor) names a stopped or dead rank after timeout_s; the collectives'
        # own timeout is the backstop for a rank that is alive but stuck, a little later.
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", store=store, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s + 60))
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


def wrap(model: torch.nn.Module, d: Dist, broadcast_buffers: bool = True, static_graph: bool = False) -> torch.nn.Module:
    """DDP-wrap for a multi-process run; DDP broadcasts rank 0's weights at construction.

    ``gradient_as_bucket_view``: gradients are views into the all-reduce buckets, which
    saves one gradient-sized buffer and the copy into the buckets (neither
    DeepLearningExamples' ResNet-50 nor timm's train.py sets it). DDP's docstring: with
    ``zero_grad(set_to_none=True)`` the views are dropped every step and the copies come
    back, unless ``batched_grad_copy`` (torch >= 2.14) batches them into one
    ``_foreach_copy_`` per bucket. So: ``batched_grad_copy`` where this torch has it, and
    otherwise the engine zeroes gradients in place (`zero_grad_set_to_none`).
    ``broadcast_buffers`` as timm's ``--no-ddp-bb`` switch; ``static_graph`` only where
    the engine knows it is valid (no accumulation, see config.TrainConfig.static_graph).
    """
    if not d.active:
        return model
    ids = [d.device.index] if d.device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel
    params = inspect.signature(ddp).parameters
    # torch >= 2.14 renames broadcast_buffers to forward_sync_buffers (the same meaning for what we
    # need: rank 0's buffers at construction, then per-forward syncing on or off).
    extra = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": broadcast_buffers}
    if "batched_grad_copy" in params:
        extra["batched_grad_copy"] = True
    return ddp(model, device_ids=ids, gradient_as_bucket_view=True, static_graph=static_graph, **extra)


def zero_grad_set_to_none(model: torch.nn.Module) -> bool:
    """``set_to_none`` for the optimizer's ``zero_grad`` with `model` (as `wrap` returned it): True, except
    under a DDP without ``batched_grad_copy``, whose bucket views only survive an in-place zeroing."""
    ddp = torch.nn.parallel.DistributedDataParallel
    return not isinstance(model, ddp) or bool(getattr(model, "batched_grad_copy", False))


def average_buffers(module: torch.nn.Module, d: Dist) -> None:
    """Average floating-point buffers (BN running statistics) over ranks, as timm's distribute_bn 'reduce'."""
    if not d.active:
        return
    with torch.no_grad():
        for b in module.buffers():
            if b.is_floating_point():
                dist.all_reduce(b, op=dist.ReduceOp.SUM)
                b.div_(d.world)


def broadcast_buffers(module: torch.nn.Module, d: Dist) -> None:
    """Copy rank 0's buffers (e.g. the EMA's running statistics) to every rank."""
    if not d.active:
        return
    with torch.no_grad():
        for b in module.buffers():
            dist.broadcast(b.data, src=0)


def broadcast_object(obj, d: Dist):
    """Rank 0's `obj` on every rank (a collective: call it on all ranks)."""
    if not d.active:
        return obj
    box = [obj if d.main else None]
    dist.broadcast_object_list(box, src=0, device=d.device if d.device.type == "cuda" else None)
    return box[0]


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


class _Flags:
    """An all-reduce in flight; `result()` waits for it (the only host-device sync)."""

    def __init__(self, flags: torch.Tensor, work):
        self.flags, self.work = flags, work

    def wait(self) -> torch.Tensor:
        """The reduced flags, once the collective is done (NCCL: the current stream waits for it,
        the host does not)."""
        if self.work is not None:
            self.work.wait()
            self.work = None
        return self.flags

    def result(self) -> list[bool]:
        return [v > 0 for v in self.wait().tolist()]


def any_true_async(flags: torch.Tensor) -> _Flags:
    """Start the element-wise OR of a float flag vector over ranks without waiting for it."""
    work = dist.all_reduce(flags, op=dist.ReduceOp.MAX, async_op=True) if dist.is_initialized() else None
    return _Flags(flags, work)


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
    if device_pref == "cuda" and not gpus:
        raise UsageError("run.device=cuda but no GPU is visible (use run.device=cpu or auto)")
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
    # Without a GPU, run.device auto means CPU processes (gloo), as run.device=cpu does.
    return n


def launch(argv: list[str], nproc: int, nnodes: str = "1", node_rank: int = 0, rdzv_endpoint: str = "",
           max_restarts: int = 0, run_id: str = "", join_timeout: float = 600.0) -> None:
    """Run `python -m normtrain <argv>` as `nproc` workers per node through the elastic launcher.

    `nnodes` is "N" or "MIN:MAX" (checked by `preflight.nnodes`); `join_timeout` bounds the wait
    for the other nodes at the rendezvous (run.collective_timeout). The workers die with this
    process (signals.die_with_parent). Raises torch's ChildFailedError if a worker fails after
    `max_restarts` restarts.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from .signals import LAUNCHER_PID_ENV
    from .preflight import nnodes as parse_nnodes

    min_nodes, max_nodes = parse_nnodes(nnodes)
    standalone = max_nodes == 1 and not rdzv_endpoint
    config = LaunchConfig(
        min_nodes=min_nodes, max_nodes=max_nodes, nproc_per_node=nproc,
        run_id=run_id or (uuid.uuid4().hex if standalone else "normtrain"),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0" if standalone else rdzv_endpoint,
        rdzv_configs={"rank": node_rank, "join_timeout": int(join_timeout)} if not standalone else {},
        max_restarts=max_restarts, monitor_interval=0.5,
    )
    os.environ[LAUNCHED_ENV] = "1"
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    # Each worker's share of the CPUs this launcher may use (affinity, cgroup quota; normtrain/threads.py).
    os.environ.setdefault("OMP_NUM_THREADS", str(threads.per_process(nproc)))
    # The agent's own log lines ("failed (exitcode: 2) local_rank: 0 ...", "Sending process ... SIGTERM")
    # repeat what the workers and the launcher already say in one line each.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # The agent installs handlers that raise torch's SignalException and never removes them:
    # after the workers are done a late signal must not raise from wherever this process is.
    kept = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "normtrain", *argv)
    finally:
        for s, handler in kept.items():
            if handler is not None:
                signal.signal(s, handler)


def broadcast_module(module: torch.nn.Module, d: Dist) -> None:
    """Copy rank 0's parameters and buffers to every rank (after a rank-local initialisation)."""
    if not d.active:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


# -- supervision -------------------------------------------------------------------------

class Supervisor:
    """Heartbeats of every rank through the rendezvous store, watched from a daemon thread.

    - Every rank bumps a counter ``hb/<rank>`` each ``interval`` seconds. Rank 0
      watches all others and rank 1 watches rank 0; a counter that has not moved
      for ``timeout`` seconds (local clock, so clock skew between nodes does not
      matter) means a rank that is stopped (SIGSTOP), hung in the kernel or dead:
      the watcher prints one line naming it and exits the process with
      EXIT_WORKER, so the launcher tears the job down instead of waiting in a
      collective. The main thread's long waits (first DALI batch, checkpoint
      save) do not stop the heartbeat, which runs in its own thread.
    - After naming a rank the watcher ends the run at once instead of leaving it to the
      launcher's grace period (torch elastic waits 30 s for workers that ignore SIGTERM):
      it kills the named rank if it is a local sibling (a stopped process cannot save
      anyway) and sets ``failed`` in the store, on which every other rank exits too.
    - A worker whose parent is gone: under normtrain's launcher, which held the run
      folder's lock, it stops without writing (the folder may be another run's now;
      on Linux the kernel already killed it, `signals.die_with_parent`). Under torchrun
      (rank 0 holds the lock itself) it sends itself SIGTERM: it finishes its step,
      saves and exits like an interrupted run.

    The heartbeat store is a separate client connection with a short timeout; if
    the store itself stops answering (its host is stopped) that is reported too.
    """

    def __init__(self, d: Dist, timeout: float, interval: float | None = None):
        self.d, self.timeout = d, float(timeout)
        self.interval = interval or max(0.5, min(5.0, self.timeout / 6))
        self.ppid = os.getppid()
        self.owns_nothing = False  # under normtrain's launcher, which holds the run folder's lock
        self._stop = threading.Event()
        self._thread = None
        self.store = None

    def start(self) -> "Supervisor":
        from .signals import die_with_parent, launcher_pid
        self.owns_nothing = launcher_pid() is not None
        if not self.owns_nothing and "TORCHELASTIC_RUN_ID" in os.environ:
            die_with_parent(self.ppid, signal.SIGTERM)  # torchrun's agent gone: save and stop
        if self.d.active and "MASTER_ADDR" in os.environ:
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                  timeout=timedelta(seconds=max(self.timeout, 10.0)), wait_for_workers=False)
            self.store = dist.PrefixStore(f"normtrain-hb/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
            self.store.set(f"who/{self.d.rank}", f"pid {os.getpid()} on {socket.gethostname()}")
        if self.store is not None or os.environ.get(LAUNCHED_ENV) or "TORCHELASTIC_RUN_ID" in os.environ:
            self._thread = threading.Thread(target=self._run, name="normtrain-supervisor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def watched(self) -> list[int]:
        if not self.d.active:
            return []
        if self.d.rank == 0:
            return list(range(1, self.d.world))
        return [0] if self.d.rank == 1 else []

    def _run(self) -> None:
        beat, seen = 0, {}
        parent_gone = False
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            if not parent_gone and os.getppid() != self.ppid:
                parent_gone = True
                if self.owns_nothing:  # the launcher held the lock: the folder may be another run's now
                    print(f"normtrain: error: rank {self.d.rank}: the launcher (pid {self.ppid}) is gone; "
                          "stopping without writing", file=sys.stderr, flush=True)
                    os._exit(EXIT_WORKER)
                print(f"normtrain: rank {self.d.rank}: the launcher (pid {self.ppid}) is gone; saving and stopping",
                      file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
            if self.store is None or parent_gone:
                continue  # the launcher hosted the store: let the ranks finish their step and save
            try:
                beat += 1
                self.store.set(f"hb/{self.d.rank}", str(beat))
                if self.store.check(["failed"]):
                    os._exit(EXIT_WORKER)  # another rank named a dead or stuck rank and said so
                for r in self.watched():
                    value = self.store.get(f"hb/{r}") if self.store.check([f"hb/{r}"]) else b""
                    last = seen.get(r)
                    if last is None or last[0] != value:
                        seen[r] = (value, now)
                    elif now - last[1] > self.timeout:
                        self._fail(f"rank {r} ({self._who(r)}) has not answered for {now - last[1]:.0f} s "
                                   f"(stopped, hung or dead; run.collective_timeout = {self.timeout:g} s)", r)
            except Exception as e:  # noqa: BLE001 - the store's host stopped answering
                if self._stop.is_set() or os.getppid() != self.ppid:
                    continue  # stopping, or the launcher (the store's host) is gone: handled above
                self._fail(f"the rendezvous store at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
                           f"stopped answering ({type(e).__name__}); its host (rank 0 or the launcher) is stopped or dead")

    def _who(self, r: int) -> str:
        try:
            return self.store.get(f"who/{r}").decode()
        except Exception:  # noqa: BLE001
            return "unknown pid"

    def _fail(self, what: str, rank: int | None = None) -> None:
        print(f"normtrain: error: {what}; stopping the run. The last checkpoint is kept: rerun the same command "
              "to resume.", file=sys.stderr, flush=True)
        if rank is not None:
            self._end(rank)
        os._exit(EXIT_WORKER)

    def _end(self, rank: int) -> None:
        """Kill the named rank if it is a sibling process on this host, and tell every rank to stop."""
        try:
            m = re.fullmatch(r"pid (\d+) on (.*)", self._who(rank))
            if m and m.group(2) == socket.gethostname():
                pid = int(m.group(1))
                # Only a sibling: the same launcher started it (no stale or reused pid is hit).
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()
                if int(stat[1]) == os.getppid():
                    os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass
        try:
            self.store.set("failed", str(rank))
        except Exception:  # noqa: BLE001 - the store's host may be what failed
            pass


def collective_failure(e: BaseException) -> bool:
    """Whether `e` is a collective that failed because another rank is gone or timed out."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(k in text for k in ("gloo", "NCCL", "c10d", "Connection closed by peer"))


def describe_failures(failures: dict) -> tuple[str, list[int]]:
    """One line naming each failed rank and how it ended, and the exit codes (from torch's ChildFailedError)."""
    parts, codes = [], []
    for rank, f in sorted(failures.items()):
        if f.exitcode < 0:
            parts.append(f"rank {rank} (pid {f.pid}) was killed by signal {f.signal_name()}")
        else:
            parts.append(f"rank {rank} (pid {f.pid}) exited with code {f.exitcode}")
        codes.append(f.exitcode)
    return "; ".join(parts), codes


def local_world_size() -> int:
    """Processes on this node: torchrun's LOCAL_WORLD_SIZE (our launcher sets it too), else 1."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)


# -- a local process group inside one command (normtrain doctor, scenarios) -----------------

def _local_worker(fn, rank: int, world: int, port: int, backend: str, payload: bytes, queue) -> None:
    """Body of one `run_local` process: join the group, run fn, report, leave."""
    import pickle
    import traceback
    ok = False
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        else:
            torch.set_num_threads(1)  # n processes share the machine's cores
            device = torch.device("cpu")
        store = dist.PrefixStore("normtrain/local", dist.TCPStore("127.0.0.1", port, is_master=False,
                                                                  timeout=timedelta(minutes=5)))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timedelta(minutes=10))
        result = fn(Dist(rank=rank, world=world, local_rank=rank, device=device), *pickle.loads(payload))
        # Plain pickle bytes: tensors travel by value, not as shared memory that dies with this process.
        queue.put((rank, True, pickle.dumps(result)))
        ok = True
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        queue.put((rank, False, traceback.format_exc()))
    finally:
        teardown(clean=ok)


def run_local(fn, nprocs: int, backend: str, *args, timeout_s: float = 600.0) -> list:
    """Run ``fn(d, *args)`` in `nprocs` new local processes joined in one process group (NCCL: one GPU
    each; gloo: CPU) and return their results in rank order.

    For checks and experiments inside one command (`normtrain doctor`'s all-reduce, a scenario's
    unsynced-BN run), not for training (that is `launch`). `d` is each process's `Dist`, so
    ``wrap(model, d)`` gives real DDP. The calling process holds the rendezvous store on a port the
    OS picks (no clash with other runs) and takes no part in the group. `fn` must be a module-level
    function and its arguments and result picklable. A rank that raises, dies or outlives
    `timeout_s` raises RuntimeError naming it (with its traceback), after the others are stopped.
    """
    import multiprocessing as mp
    import pickle
    import queue as queue_mod

    if nprocs < 1:
        raise ValueError("run_local: nprocs must be >= 1")
    ctx = mp.get_context("spawn")
    store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, timeout=timedelta(minutes=5), wait_for_workers=False)
    results = ctx.Queue()
    payload = pickle.dumps(tuple(args))
    procs = [ctx.Process(target=_local_worker, args=(fn, r, nprocs, store.port, backend, payload, results),
                         daemon=True) for r in range(nprocs)]
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
                    raise RuntimeError(f"rank {dead[0]} exited with code {procs[dead[0]].exitcode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rank(s) {sorted(set(range(nprocs)) - set(out))} gave no answer "
                                       f"within {timeout_s:g} s") from None
                continue
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{value}")
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


def spawn(fn, nprocs: int, args: tuple = (), timeout_s: float = 600.0) -> list:
    """`run_local` on CPU processes with gloo."""
    return run_local(fn, nprocs, "gloo", *args, timeout_s=timeout_s)


def all_reduce_bandwidth(d: Dist, sizes_bytes: list, iters: int = 20, warmup: int = 5) -> list:
    """Time a float32 SUM all-reduce of each size across the group (call on every rank).

    Returns, per size, whether one all-reduce of (rank + 1) gave n(n+1)/2, the mean seconds
    per call (the slowest rank's: the collective ends when its last rank does), the algorithm
    bandwidth S/t and the bus bandwidth as nccl-tests define it for all-reduce
    (doc/PERFORMANCE.md): busbw = algbw * 2(n-1)/n, the rate each link must carry,
    comparable across world sizes and with the hardware's peak.
    """
    import time
    out = []
    n = d.world
    for size in sizes_bytes:
        x = torch.full((max(1, size // 4),), float(d.rank + 1), dtype=torch.float32, device=d.device)
        dist.all_reduce(x)
        correct = bool((x == n * (n + 1) / 2).all().item())
        x.zero_()  # timed on zeros: the sums stay finite however many calls
        for _ in range(warmup):
            dist.all_reduce(x)
        if d.device.type == "cuda":
            torch.cuda.synchronize(d.device)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(x)
        if d.device.type == "cuda":
            torch.cuda.synchronize(d.device)
        t = torch.tensor([(time.perf_counter() - t0) / iters], dtype=torch.float64, device=d.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        seconds = t.item()
        algbw = 4 * x.numel() / seconds
        out.append({"bytes": 4 * x.numel(), "seconds": seconds, "algbw_gbps": algbw / 1e9,
                    "busbw_gbps": algbw * 2 * (n - 1) / n / 1e9, "correct": correct})
    return out
