"""The `normtrain` command.

    normtrain [--recipe R] [--norm N] [--data D] [--out O] [--set key=value ...]   train
    normtrain list [all|recipes|norms|models|scenarios|data|keys]
    normtrain runs [DIR] [--csv]
    normtrain eval RUN_OR_CHECKPOINT [--split val|test] [--ema] [--data D]
    normtrain scenario NAME [--data D] [--set key=value ...] [--out O]
    normtrain sweep --recipe R --norm a,b --set key=v1,v2 --seeds K
    normtrain doctor [--data PATH]      will it work here, and how fast (doctor.json)

Exit codes: 0 completed, 2 bad input (nothing written), 3 diverged (recorded in
results.json), 4 interrupted by SIGTERM/SIGINT (checkpoint saved; rerun the same
command to resume), 5 environment (disk full, unwritable folder, unreadable data
mid-run), 6 a worker died or stopped answering (README "What normtrain guarantees").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import batching, config, preflight
from .preflight import validate
from .errors import (EXIT_DIVERGED, EXIT_ENV, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, EXIT_WORKER, EnvError,
                     UsageError, WorkerError)

DEFAULT_RECIPE = "digits-mlp"
STATUS_EXIT = {"completed": EXIT_OK, "diverged": EXIT_DIVERGED, "interrupted": EXIT_INTERRUPTED, "failed": EXIT_ENV}

EPILOG = """\
examples:
  normtrain                                          # default recipe: MLP on the built-in digits
  normtrain --recipe cifar10-nv --norm wn --data /data/cifar10
  normtrain --recipe resnet50-imagenet --norm trelu-wn --data /data/imagenet --nproc-per-node 8
  normtrain --recipe cifar10-nv --set optim.lr=0.02 --set train.epochs=2 --out runs/x
  normtrain list norms
  normtrain scenario linear50-wn
  normtrain runs runs/ --csv > runs.csv
  normtrain eval runs/cifar10-nv-bn --split test

exit codes: 0 completed (or already complete), 2 bad input (nothing written), 3 diverged (see results.json),
            4 interrupted by SIGTERM/SIGINT, also while starting (last checkpoint saved; rerun to resume),
            5 environment: disk full, unwritable folder or results.json, unreadable data met mid-run
              (checkpoints kept), 6 a worker died or stopped answering (checkpoints kept; rerun to resume)
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line and exit 2."""

    def error(self, message):
        raise UsageError(message)


def _add_recipe_args(p: argparse.ArgumentParser, recipe_default=None) -> None:
    p.add_argument("--recipe", default=recipe_default,
                   help=f"recipe name (normtrain list recipes) or a .yaml path (default: {DEFAULT_RECIPE})")
    p.add_argument("--norm", help="normalization method (normtrain list norms); shorthand for --set norm.name=")
    p.add_argument("--data", help="dataset path or built-in name; shorthand for --set data.source=")
    p.add_argument("--out", help="run directory; shorthand for --set run.out=")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set optim.lr=0.02 (repeatable; normtrain list keys)")


def train_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="normtrain", description="Train a network with any normalization method of the papers.\n\n"
                "other commands:\n"
                "  normtrain list [all|recipes|norms|models|scenarios|data|keys]   (default all: every table but keys)\n"
                "  normtrain scenario NAME [--data D] [--set k=v ...] [--out O]   (normtrain scenario NAME --help)\n"
                "  normtrain sweep --recipe R --norm a,b --set k=v1,v2 --seeds N  (normtrain sweep --help)\n"
                "  normtrain runs [DIR] [--csv]                                    the runs under DIR (default runs/)\n"
                "  normtrain eval RUN_OR_CHECKPOINT [--split val|test] [--ema]     evaluate a saved run again (eval.json)\n"
                "  normtrain doctor [--data PATH]                                  check this machine: versions, GPUs, NCCL, speed, DALI",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_recipe_args(p)
    p.add_argument("--resume", help="auto (default: continue <out>/checkpoints/last.pt), never, or a checkpoint path")
    p.add_argument("--resume-changed", metavar="refuse|allow|KEYS",
                   help="what a resume may change in the experiment: refuse (default: stop with a diff), allow, "
                        "or a comma list of keys; shorthand for --set run.resume_changed=")
    g = p.add_argument_group("distributed (torchrun options)")
    g.add_argument("--nproc-per-node", default="1", metavar="N|auto", help="processes on this node: N or auto (= visible GPUs)")
    g.add_argument("--nnodes", default="1", metavar="N|MIN:MAX", help="number of nodes, or MIN:MAX for elastic")
    g.add_argument("--node-rank", type=int, default=0, metavar="K", help="rank of this node")
    g.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT", help="host:port of the rendezvous (multi-node)")
    g.add_argument("--max-restarts", type=int, default=0, metavar="N", help="worker group restarts on failure")
    g.add_argument("--rdzv-id", default="", metavar="ID", help="job id shared by all nodes (multi-node)")
    return p


def recipe_from_args(args, extra: list[tuple[str, object]] = ()) -> config.Recipe:
    overrides = [config.parse_set(s) for s in args.sets]
    for key, value in (("norm.name", args.norm), ("data.source", args.data), ("run.out", args.out),
                       ("run.resume", getattr(args, "resume", None)),
                       ("run.resume_changed", getattr(args, "resume_changed", None))):
        if value is not None:
            overrides.append((key, value))
    overrides += list(extra)
    return config.load(DEFAULT_RECIPE if args.recipe is None else args.recipe, overrides)


def cmd_train(argv: list[str]) -> int:
    args = train_parser().parse_args(argv)
    recipe = recipe_from_args(args)
    _, max_nodes = preflight.nnodes(args.nnodes)
    if not 0 <= args.node_rank < max_nodes:
        raise UsageError(f"--node-rank {args.node_rank}: expected 0 <= K < {max_nodes} (the number of nodes)")
    if args.max_restarts < 0:
        raise UsageError(f"--max-restarts {args.max_restarts}: expected 0 or more")
    validate(recipe)
    from . import dist  # torch: only once the input is known to be good
    nproc = dist.resolve_nproc(args.nproc_per_node, recipe.run.device)
    multi_node = args.nnodes.strip() != "1"
    slurm = dist.slurm_env()
    if slurm is not None and int(slurm["LOCAL_WORLD_SIZE"]) > 1 and (nproc > 1 or multi_node):
        raise UsageError(f"this is task {slurm['RANK']} of {slurm['WORLD_SIZE']} of an srun step, and each task is "
                         f"already one worker: drop --nproc-per-node/--nnodes, or start one task per node "
                         f"(srun --ntasks-per-node=1) to have normtrain start the workers")
    if (nproc > 1 or multi_node) and not dist.torchrun_env():
        batching.for_recipe(recipe, nproc * max_nodes)  # bad split: one line, before launch
        from . import signals
        if signals.take():  # SIGTERM while starting: no worker was started
            return EXIT_INTERRUPTED
        return _launch(argv, args, nproc, recipe)
    from .engine import train
    res = train(recipe)
    if os.environ.get(dist.LAUNCHED_ENV):
        return EXIT_OK  # the launcher reads the status from results.json
    return STATUS_EXIT[res["status"]]


def _launch(argv, args, nproc, recipe) -> int:
    # Workers get the same command line minus the launcher's own flags.
    drop = {"--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--max-restarts", "--rdzv-id"}
    worker_argv, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        if a.split("=", 1)[0] in drop:
            continue
        worker_argv.append(a)
    from . import dist
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    try:
        from torch.distributed.elastic.rendezvous.api import RendezvousError
        rendezvous_errors = (RendezvousError,)
    except ImportError:  # pragma: no cover - older layouts
        rendezvous_errors = ()

    from .rundir import LOCK_ENV, RunDir
    # One writer per run folder: this launcher holds the lock for its workers (on node 0; the
    # other nodes' rank-0 is on node 0 too, and a per-node folder is never written by them).
    folder = RunDir(Path(recipe.run.out)) if args.node_rank == 0 else None
    if folder is not None:
        folder.acquire()
        os.environ[LOCK_ENV] = str(folder.out.resolve())
    results = Path(recipe.run.out) / "results.json"
    started = time.time()
    try:
        dist.launch(worker_argv, nproc, args.nnodes, args.node_rank, args.rdzv_endpoint, args.max_restarts,
                    args.rdzv_id, join_timeout=recipe.run.collective_timeout)
    except SignalException as e:
        # The agent forwarded SIGTERM/SIGINT to the workers, which finished their step and saved;
        # or it came once they had finished: then their result stands.
        status = _status(results, started)
        if status is not None and status != "interrupted":
            return STATUS_EXIT.get(status, EXIT_OK)
        print(f"normtrain: interrupted by signal {e.sigval}; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except rendezvous_errors as e:
        raise WorkerError(f"the workers could not meet at the rendezvous ({args.rdzv_endpoint or 'local'}): "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    except ChildFailedError as e:
        what, codes = dist.describe_failures(e.failures)
        for code in (EXIT_USAGE, EXIT_ENV, EXIT_WORKER, EXIT_INTERRUPTED):
            if code in codes:
                break
        else:
            code = EXIT_WORKER  # killed by a signal or an unexpected error
        if code == EXIT_USAGE and folder is not None:
            folder.release(discard=True)  # bad input: the workers wrote nothing; leave nothing either
        if code != EXIT_USAGE:  # a usage error was printed by rank 0 as its one line
            print(f"normtrain: error: {what}; see the messages above. The last checkpoint is kept: rerun the "
                  f"same command to resume.", file=sys.stderr)
        return code
    finally:
        if folder is not None:
            folder.release()
    status = _status(results, 0)  # this launch's, or an already complete run's
    return STATUS_EXIT.get(status, EXIT_WORKER) if status is not None else EXIT_OK


def _status(results: Path, since: float) -> str | None:
    """The status in results.json if it was written at or after `since` (seconds since the epoch)."""
    try:
        if results.stat().st_mtime + 1 < since:
            return None
        status = json.loads(results.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None


LISTS = ("recipes", "norms", "models", "scenarios", "data")


def cmd_list(argv: list[str]) -> int:
    p = _Parser(prog="normtrain list",
                description="List what a run can be made of. 'all' (the default) prints every table but keys.",
                epilog="  recipes    the papers' training set-ups (--recipe)\n"
                       "  norms      normalization methods (--norm)\n"
                       "  models     networks (model.name)\n"
                       "  scenarios  the papers' experiments (normtrain scenario NAME)\n"
                       "  data       data backends (data.backend)\n"
                       "  keys       every recipe key with its type, default and meaning (--set KEY=VALUE)",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", default="all", choices=["all", *LISTS, "keys"])
    args = p.parse_args(argv)
    if args.what == "keys":
        print(_columns([(k, t, repr(d), doc) for k, t, d, doc in config.field_docs()]))
        return EXIT_OK
    from . import data, models, norms, scenarios
    registries = {"norms": norms.METHODS, "models": models.NETWORKS, "scenarios": scenarios.SCENARIOS,
                  "data": data.BACKENDS}
    for what in (LISTS if args.what == "all" else [args.what]):
        if what == "recipes":
            rows = [(n, _recipe_summary(n)) for n in config.recipe_names()]
        else:
            reg = registries[what]
            rows = [(n, reg.summary(n) + (f" [{reg.package_of(n)}]" if reg.package_of(n) else ""))
                    for n in reg.names()]
        print(f"{what}:")
        print(_columns(rows, indent="  "))
    return EXIT_OK


def _columns(rows, indent: str = "") -> str:
    """Rows of cells as aligned columns (every column but the last padded to its widest cell)."""
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(len(rows[0]) - 1)] if rows else []
    return "\n".join(indent + "  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]).rstrip() for r in rows)


def _recipe_summary(name: str) -> str:
    try:
        return config.load(name).description.strip().splitlines()[0]
    except (UsageError, IndexError):
        return ""


def cmd_scenario(argv: list[str]) -> int:
    from . import scenarios
    return scenarios.main(argv)


def cmd_sweep(argv: list[str]) -> int:
    from . import sweep
    return sweep.main(argv)


def cmd_doctor(argv: list[str]) -> int:
    from . import doctor
    return doctor.main(argv)


def cmd_runs(argv: list[str]) -> int:
    from . import runs
    return runs.main(argv)


def cmd_eval(argv: list[str]) -> int:
    from . import evaluation
    return evaluation.main(argv)


COMMANDS = {"list": cmd_list, "scenario": cmd_scenario, "sweep": cmd_sweep, "runs": cmd_runs, "doctor": cmd_doctor,
            "eval": cmd_eval}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from . import signals
    try:
        if argv and argv[0] in COMMANDS:
            if argv[0] != "sweep":  # sweep trains through the engine, which handles signals itself
                if signals.take():
                    return EXIT_INTERRUPTED
                signals.raise_on_signals()
            return COMMANDS[argv[0]](argv[1:])
        if argv and argv[0] == "train":
            argv = argv[1:]
        return cmd_train(argv)
    except (UsageError, EnvError, WorkerError) as e:
        code = EXIT_USAGE if isinstance(e, UsageError) else EXIT_ENV if isinstance(e, EnvError) else EXIT_WORKER
        rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
        # Bad input is the same on every rank: rank 0 alone says it. What the environment did to
        # one rank is said by that rank.
        if not getattr(e, "echo", False) and (rank == "0" or code != EXIT_USAGE):
            where = f"rank {rank}: " if code != EXIT_USAGE and world != "1" else ""
            print(f"normtrain: error: {where}{e}", file=sys.stderr, flush=True)
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `normtrain list keys | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
