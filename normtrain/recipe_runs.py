"""Recipe runs started by a command: one ordinary run folder each, reused once finished.

`normtrain sweep` (a grid of runs) and the scenarios at ``--scale paper`` (the
paper's own training runs) both start training runs of a recipe and read their
results back; this module, below both commands, does it for them:

- `RunSpec`: one run, the recipe argument and the ``--set`` pairs that make it
  (``run.out`` among them), and the recipe they load to;
- `finished`: the saved results of a run folder that already finished with the
  same recipe (completed or diverged), so a rerun of the command skips it; an
  interrupted or failed run is started again and resumes from its checkpoint;
- three ways to run a list of them, each run a plain ``normtrain`` run (its
  recipe.yaml, metrics.jsonl, results.json, checkpoints, TensorBoard files):
  `run_inprocess` (one after another in this process, the engine called
  directly), `run_subprocesses` (one ``python -m normtrain`` per GPU at a time,
  pinned with CUDA_VISIBLE_DEVICES: many one-GPU runs) and `run_launched` (one
  after another, each through the training command's own launcher with
  ``--nproc-per-node`` / ``--nnodes`` / ``--rdzv-*``: every run on all the GPUs
  of one or more nodes, exactly as ``normtrain --recipe ... --nproc-per-node N``);
- `LaunchOptions` / `add_launch_args`: the torchrun-style options, one
  definition for the training command and the scenarios;
- `load_result`, `read_metrics`: a run folder's results.json and metrics.jsonl.

Imports neither torch nor the engine until a run starts in this process.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import config
from .errors import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_OK, UsageError


@dataclass
class RunSpec:
    """One recipe run: ``normtrain --recipe <recipe_arg> --set k=v ...`` (`overrides` include run.out)."""
    recipe_arg: str
    overrides: list = field(default_factory=list)
    recipe: Any = None   # the loaded config.Recipe (load it with `load`)

    @property
    def out(self) -> Path:
        return Path(self.recipe.run.out)

    @property
    def name(self) -> str:
        return self.out.name

    def load(self) -> "RunSpec":
        self.recipe = config.load(self.recipe_arg, self.overrides)
        return self


def value_text(v: Any) -> str:
    """A value as YAML flow text (round-trips through `config.parse_set`)."""
    if isinstance(v, str):
        return v if config.parse_set(f"k={v}")[1] == v else json.dumps(v)
    text = yaml.safe_dump(v, default_flow_style=True).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.replace("\n...", "").strip()


def set_args(overrides) -> list[str]:
    """``--set key=value`` arguments for (key, value) pairs."""
    out = []
    for k, v in overrides:
        out += ["--set", f"{k}={value_text(v)}"]
    return out


# -- reading a run folder ---------------------------------------------------------------------

#: Recipe keys that only change what a run prints: a finished run is reused whatever they say.
DISPLAY_KEYS = ("progress", "interval_s", "eval_lines")


def finished(spec) -> dict | None:
    """The saved results of `spec`'s folder if its run finished (completed or diverged) with the same recipe."""
    out = Path(spec.out)
    res_path, rec_path = out / "results.json", out / "recipe.yaml"
    if not (res_path.is_file() and rec_path.is_file()):
        return None
    try:
        res = json.loads(res_path.read_text())
        saved, wanted = yaml.safe_load(rec_path.read_text()), yaml.safe_load(config.dump(spec.recipe))
        for d in (saved, wanted):
            for k in DISPLAY_KEYS:
                d.get("log", {}).pop(k, None)
        same = saved == wanted
    except (OSError, ValueError, AttributeError, TypeError, RecursionError, yaml.YAMLError):
        return None
    return res if same and isinstance(res, dict) and res.get("status") in ("completed", "diverged") else None


def load_result(out) -> dict | None:
    """A run folder's results.json, or None if it has none or it cannot be read as one."""
    p = Path(out) / "results.json"
    try:
        res = json.loads(p.read_text()) if p.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or not isinstance(res.get("final", {}), dict) \
            or not isinstance(res.get("timings", {}), dict):
        return None
    return res


def read_metrics(out) -> list[dict]:
    """The rows of a run folder's metrics.jsonl (training windows, evaluations), in order; [] if none."""
    path = Path(out) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash
    return rows


# -- running ----------------------------------------------------------------------------------------

class RunInterrupted(Exception):
    """A run was stopped by SIGTERM/SIGINT (its checkpoint saved): the command stops too; rerun it to resume."""


def run_inprocess(specs, label: str = "sweep") -> list[str]:
    """Run one after another in this process; a run that stops on bad input (e.g. a batch larger than the data)
    is skipped and named in the returned list.

    Each run handles SIGTERM/SIGINT itself (finishes its step, saves); then `RunInterrupted` is raised instead
    of starting the next run.
    """
    from .engine import train
    failures = []
    for i, s in enumerate(specs):
        print(f"[{label} {i + 1}/{len(specs)}] {s.out.name}", flush=True)
        try:
            res = train(s.recipe)
        except UsageError as e:
            print(f"normtrain {label}: run {s.out.name} skipped: {e}", file=sys.stderr, flush=True)
            failures.append(s.out.name)
            continue
        if res["status"] == "interrupted":
            raise RunInterrupted(s.out.name)
    return failures


def command(spec, launch: "LaunchOptions | None" = None) -> list[str]:
    """The training command line of one run (`python -m normtrain --recipe R --set ...` [+ launcher options])."""
    cmd = [sys.executable, "-m", "normtrain", "--recipe", spec.recipe_arg, *set_args(spec.overrides)]
    return cmd + (launch.flags(spec.out.name) if launch is not None else [])


def run_subprocesses(specs, gpus: int, label: str = "sweep") -> list[str]:
    """One run per GPU at a time, each a `python -m normtrain` subprocess pinned with CUDA_VISIBLE_DEVICES."""
    queue = list(enumerate(specs))
    running: dict[int, tuple[subprocess.Popen, Any]] = {}
    failures = []
    while queue or running:
        free = [g for g in range(gpus) if g not in running]
        while free and queue:
            g = free.pop(0)
            i, s = queue.pop(0)
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(g))
            print(f"[{label} {i + 1}/{len(specs)}] {s.out.name} on GPU {g}", flush=True)
            running[g] = (subprocess.Popen(command(s), env=env), s)
        time.sleep(0.5)
        for g, (proc, s) in list(running.items()):
            rc = proc.poll()
            if rc is not None:
                del running[g]
                if rc not in (EXIT_OK, EXIT_DIVERGED):  # diverged is a result
                    failures.append(f"{s.out.name} (exit {rc})")
    return failures


@dataclass
class LaunchOptions:
    """torchrun's options of the training command (`normtrain --help`, "distributed")."""
    nproc_per_node: str = "auto"
    nnodes: str = "1"
    node_rank: int = 0
    rdzv_endpoint: str = ""
    rdzv_id: str = ""
    max_restarts: int = 0

    def flags(self, run_name: str = "") -> list[str]:
        """The command-line flags; each run of a sequence gets its own rendezvous id (`rdzv_id`-`run_name`), so
        the nodes of one run never meet those of the previous one."""
        out = ["--nproc-per-node", str(self.nproc_per_node)]
        if self.nnodes != "1":
            out += ["--nnodes", self.nnodes, "--node-rank", str(self.node_rank)]
        if self.rdzv_endpoint:
            out += ["--rdzv-endpoint", self.rdzv_endpoint]
        if self.rdzv_id or (self.nnodes != "1" and run_name):
            out += ["--rdzv-id", "-".join(x for x in (self.rdzv_id or "normtrain", run_name) if x)]
        if self.max_restarts:
            out += ["--max-restarts", str(self.max_restarts)]
        return out

    @property
    def multi_node(self) -> bool:
        return self.nnodes != "1"

    def nodes(self) -> int:
        """The number of nodes (the maximum of an elastic MIN:MAX)."""
        return int(self.nnodes.split(":")[-1])

    def check(self) -> None:
        """UsageError for a malformed value (the launcher checks the rest when it starts)."""
        if self.nproc_per_node != "auto":
            try:
                ok = int(self.nproc_per_node) >= 1
            except ValueError:
                ok = False
            if not ok:
                raise UsageError(f"--nproc-per-node: expected a positive integer or 'auto', got "
                                 f"'{self.nproc_per_node}'")
        try:
            parts = [int(x) for x in self.nnodes.split(":")]
            ok = 1 <= len(parts) <= 2 and all(p >= 1 for p in parts) and parts == sorted(parts)
        except ValueError:
            ok = False
        if not ok:
            raise UsageError(f"--nnodes: expected N or MIN:MAX (positive integers), got '{self.nnodes}'")
        if self.node_rank < 0 or self.node_rank >= self.nodes():
            raise UsageError(f"--node-rank {self.node_rank} is not in 0..{self.nodes() - 1}")
        if self.multi_node and not self.rdzv_endpoint:
            raise UsageError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the rendezvous every node reaches)")


def add_launch_args(p: argparse.ArgumentParser, nproc_default: str = "1") -> None:
    """The distributed options (torchrun's), as the training command and the scenarios take them."""
    g = p.add_argument_group("distributed (torchrun options)")
    g.add_argument("--nproc-per-node", default=nproc_default, metavar="N|auto",
                   help=f"processes on this node: N or auto (= visible GPUs) (default: {nproc_default})")
    g.add_argument("--nnodes", default="1", metavar="N|MIN:MAX", help="number of nodes, or MIN:MAX for elastic")
    g.add_argument("--node-rank", type=int, default=0, metavar="K", help="rank of this node")
    g.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT", help="host:port of the rendezvous (multi-node)")
    g.add_argument("--max-restarts", type=int, default=0, metavar="N", help="worker group restarts on failure")
    g.add_argument("--rdzv-id", default="", metavar="ID", help="job id shared by all nodes (multi-node)")


def launch_options(args) -> LaunchOptions:
    """`LaunchOptions` from parsed `add_launch_args` arguments, checked."""
    o = LaunchOptions(str(args.nproc_per_node), str(args.nnodes), args.node_rank, args.rdzv_endpoint, args.rdzv_id,
                      args.max_restarts)
    o.check()
    return o


def run_launched(specs, launch: LaunchOptions, label: str = "scenario") -> list[str]:
    """Run one after another, each as ``python -m normtrain --recipe ... <launch flags>``: the training
    command's own launcher (DDP over `launch.nproc_per_node` processes per node, torchrun's rendezvous across
    nodes), so each run is exactly what that training command would have made.

    Returns the runs that failed, as 'name (exit N)' (diverged is a result, not a failure). SIGTERM/SIGINT
    here is passed on to the running run (it finishes its step and saves); then `RunInterrupted` is raised.
    A run that exits 4 (interrupted by a signal it received itself) raises it too.
    """
    failures = []
    for i, s in enumerate(specs):
        print(f"[{label} {i + 1}/{len(specs)}] {s.out.name}: {' '.join(command(s, launch)[3:])}", flush=True)
        proc = subprocess.Popen(command(s, launch))
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # SIGTERM (normtrain.signals) or Ctrl-C: let the run save, then stop
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            while True:
                try:
                    proc.wait()
                    break
                except KeyboardInterrupt:
                    continue
            raise RunInterrupted(s.out.name) from None
        if rc == EXIT_INTERRUPTED:
            raise RunInterrupted(s.out.name)
        if rc not in (EXIT_OK, EXIT_DIVERGED):
            failures.append(f"{s.out.name} (exit {rc})")
    return failures
