"""The run folder: one writer, resume only what was run, nothing lost or mixed.

What it guarantees (README, "What normtrain guarantees"):

- **One writer.** The process that writes a run holds an exclusive `flock` on
  ``<out>/.normtrain.lock`` for the run's life; the OS releases it when that
  process dies, so a killed run never leaves a stale lock. A second command on
  the same folder stops with one line naming the holder (PID and host).
- **Writable first.** Before data and model setup the folder is created and a
  probe file is written and fsynced: a full disk, a read-only mount, a file in
  the way or missing permissions is an `EnvError` naming the path (exit 5).
- **Resume only what was run.** `decide` compares the checkpoint's recipe with
  the new one. Keys that change the experiment (model, norm, data, batch,
  seed, schedule, optimizer settings, the number of processes...) refuse with a
  one-line diff unless ``run.resume_changed`` allows them (``allow`` or a comma
  list of keys); keys in `FREE` (logging, evaluation and checkpoint cadence,
  ``train.max_steps``, speed-only switches) may change freely.
- **Finished runs stay finished.** A completed (or diverged) run rerun with the
  same recipe reports its result and changes nothing.
- **No silent restart.** A folder that holds a run (results.json or any
  checkpoint) but no usable ``last.pt`` refuses, saying how to continue from
  ``best.pt`` or start fresh; a corrupt checkpoint is named (exit 2). The one
  exception: a folder holding only the results.json of an attempt that failed
  (status ``failed``: a full disk, an unwritable folder) before its first
  checkpoint starts fresh, as nothing of it can be continued or lost. (The engine
  writes ``last.pt`` before the first ``best.pt``, so a ``best.pt`` always had one.)
- Temporary files of interrupted saves are removed at the next start, and on
  resume ``metrics.jsonl`` loses the lines past the checkpoint's step.

Only the writing process (rank 0) calls into this module; the engine
broadcasts its decision to the other ranks.
"""
from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoint, config, outputs, signals
from .errors import EXIT_WORKER, EnvError, UsageError, readable

LOCK_NAME = ".normtrain.lock"
#: Set by the launcher for its workers when it holds the lock itself.
LOCK_ENV = "NORMTRAIN_RUN_LOCK"

#: Recipe keys that may change between a run and its resume (they do not change the math).
#: A key ending in ".*" frees a whole section.
FREE = (
    "description", "per_norm",
    "run.name", "run.out", "run.resume", "run.resume_changed", "run.device", "run.collective_timeout",
    "train.max_steps", "train.eval_every_steps", "train.eval_every_epochs", "train.final_eval",
    "train.checkpoint_every_steps",
    "train.compile", "train.cudnn_benchmark", "train.tf32", "train.channels_last", "train.static_graph",
    "data.workers", "data.eval_batch_size", "data.paper_micro_batch",
    "log.*",
)


def is_free(key: str) -> bool:
    return key in FREE or any(f.endswith(".*") and key.startswith(f[:-1]) for f in FREE)


@dataclass
class Decision:
    """What rank 0 found in the run folder; broadcast to every rank (state excluded)."""
    kind: str                       # "fresh" | "resume" | "done"
    path: str | None = None         # checkpoint to resume from
    step: int = 0
    changes: list = field(default_factory=list)   # (key, old, new) accepted through run.resume_changed
    results: dict | None = None     # the finished run's results.json ("done")


class RunDir:
    """Lock, probe and clean a run folder (rank 0 only)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.created = False
        self._fd = None

    # -- lock ---------------------------------------------------------------------------
    def acquire(self) -> None:
        """Create the folder if needed, take the writer lock, probe that it is writable, clean temp files."""
        if os.environ.get(LOCK_ENV) == str(self.out.resolve()):
            # Our launcher holds the lock for us: every write first checks that it still does.
            launcher = signals.launcher_pid()
            if launcher is not None:
                checkpoint.guard_writes(functools.partial(_launcher_holds_lock, launcher, self.out))
            self._probe()
        else:
            self._mkdir()
            path = self.out / LOCK_NAME
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise _env(path, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise UsageError(f"run folder {self.out} is in use by {holder}; wait for it, stop it, "
                                 "or choose another --out") from None
            except OSError as e:  # e.g. a file system without locks
                os.close(fd)
                raise _env(path, e) from None
            self._fd = fd
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            except OSError as e:
                self.release()
                raise _env(path, e) from None
            self._probe()
        checkpoint.remove_stale_temporaries(self.out / "checkpoints")
        checkpoint.remove_stale_temporaries(self.out)

    def _mkdir(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise EnvError(f"run folder {self.out} exists and is not a directory; choose another --out")
        if not self.out.exists():
            try:
                self.out.mkdir(parents=True)
                self.created = True
            except OSError as e:
                raise _env(self.out, e) from None

    def _probe(self) -> None:
        checkpoint.check_writer()
        probe = self.out / ".normtrain.probe"
        try:
            with open(probe, "wb") as f:
                f.write(b"x" * 4096)
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
        except OSError as e:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
            raise _env(self.out, e) from None

    def release(self, discard: bool = False) -> None:
        """Drop the lock; with `discard` also remove a folder this run created and never used."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if discard:
                (self.out / LOCK_NAME).unlink(missing_ok=True)
        if discard and self.created:
            try:
                self.out.rmdir()  # only if empty: a folder with anything of value stays
            except OSError:
                pass

    # -- resume decision ------------------------------------------------------------------
    def decide(self, recipe: config.Recipe, world: int) -> tuple[Decision, dict | None]:
        """(decision, loaded checkpoint or None) for `recipe` on `world` processes; UsageError to refuse."""
        mode = recipe.run.resume
        ck = self.out / "checkpoints"
        last = ck / "last.pt"
        held = self.holdings()
        if mode == "never":
            held += ["metrics.jsonl"] if (self.out / "metrics.jsonl").is_file() else []
            if held:
                raise UsageError(f"run.resume=never but {self.out} already holds a run ({', '.join(held)}); "
                                 "choose another --out or --resume auto")
            return Decision("fresh"), None
        if mode == "auto":
            if last.exists() and not last.is_file():
                raise UsageError(f"{last} is not a checkpoint file (a directory or special file is in its place): "
                                 "remove it, or choose another --out")
            if not last.is_file():
                results = self.results()
                if held == ["results.json"] and results is not None and results.get("status") == "failed":
                    # An attempt that failed (disk full, unwritable folder...) before its first checkpoint:
                    # nothing to continue from and nothing lost by starting again.
                    return Decision("fresh"), None
                if held:
                    best = ck / "best.pt"
                    if best.is_file():
                        how = f"continue from its best checkpoint with --resume {best}, or start fresh"
                    else:
                        how = "start fresh"
                    raise UsageError(f"{self.out} holds a run ({', '.join(held)}) but no checkpoints/last.pt to "
                                     f"continue from: {how} with another --out (or delete the folder)")
                return Decision("fresh"), None
            path = last
        else:
            path = Path(mode)
            if not path.is_file():
                raise UsageError(f"--resume: checkpoint file not found: {mode} (or use auto / never)")
        try:
            state = checkpoint.check_training(checkpoint.load(path), path)
        except checkpoint.CheckpointError as e:
            best = ck / "best.pt"
            hint = f"; continue from {best} with --resume {best}" if path == last and best.is_file() else ""
            raise checkpoint.CheckpointError(f"{e}{hint}, or start fresh with another --out") from None
        changes = check_recipe(state, recipe, world, path)
        results = self.results()
        if not changes and results and results.get("status") in ("completed", "diverged") \
                and results.get("steps") == state["step"] and _reached_end(state, recipe, results):
            return Decision("done", str(path), state["step"], results=results), None
        return Decision("resume", str(path), state["step"], changes=changes), state

    def holdings(self) -> list[str]:
        """What of a previous run this folder holds (checkpoint files, results.json)."""
        ck = self.out / "checkpoints"
        held = sorted(f"checkpoints/{p.name}" for p in ck.glob("*.pt") if p.is_file()) if ck.is_dir() else []
        if (self.out / "results.json").is_file():
            held.append("results.json")
        return held

    def results(self) -> dict | None:
        try:
            res = json.loads((self.out / "results.json").read_text())
        except (OSError, ValueError):
            return None
        return res if isinstance(res, dict) else None

    # -- outputs of an earlier attempt ------------------------------------------------------
    def reset_outputs(self, step: int) -> None:
        """Make metrics.jsonl and tb/ agree with a start at `step` (0: a fresh start in a used folder)."""
        checkpoint.check_writer()
        metrics = self.out / "metrics.jsonl"
        if step == 0:
            metrics.unlink(missing_ok=True)
            (self.out / "results.json").unlink(missing_ok=True)  # of a failed attempt (`decide`)
            shutil.rmtree(self.out / "tb", ignore_errors=True)
            return
        if metrics.is_file():
            keep = []
            for line in metrics.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        keep.append(line)
                except ValueError:
                    pass  # a line cut by a kill
            checkpoint.atomic_write_text(metrics, "".join(f"{line}\n" for line in keep))


def _reached_end(state: dict, recipe: config.Recipe, results: dict) -> bool:
    """The checkpoint's step is the end of training under the new recipe's max_steps."""
    total = results.get("total_steps") or state.get("total_steps") or 0
    end = min(total, recipe.train.max_steps) if recipe.train.max_steps else total
    return state["step"] >= end


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "options" and key not in ("per_norm",):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def recipe_diff(saved: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, old, new) for every experiment key that differs (keys missing on one side take the default)."""
    defaults = flatten(config.Recipe().to_dict())
    old, cur = flatten(saved), flatten(new)
    diff = []
    for key in sorted(set(old) | set(cur)):
        if is_free(key):
            continue
        a, b = old.get(key, defaults.get(key)), cur.get(key, defaults.get(key))
        if a != b:
            diff.append((key, a, b))
    return diff


def check_recipe(state: dict, recipe: config.Recipe, world: int, path: Path) -> list:
    """The changes a resume accepts (run.resume_changed), or UsageError with a one-line diff."""
    diff = recipe_diff(state.get("recipe") or {}, recipe.to_dict())
    saved_world = state.get("world", 1)
    if saved_world != world:
        diff.append(("processes", saved_world, world))
    if not diff:
        return []
    allow = recipe.run.resume_changed
    allowed = {k.strip() for k in allow.split(",")} if allow not in ("refuse", "allow") else set()
    refused = [c for c in diff if allow != "allow" and c[0] not in allowed]
    if refused:
        text = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in refused)
        keys = ",".join(k for k, _, _ in refused)
        raise UsageError(f"checkpoint {path} was written by a different experiment: {text}; rerun with the "
                         f"original values, choose another --out, or continue with the new values using "
                         f"--resume-changed {keys} (or --resume-changed allow)")
    return diff


def _launcher_holds_lock(launcher: int, out: Path) -> None:
    """Exit at once, writing nothing, if the launcher that holds `out`'s lock for this worker is gone.

    A worker is normally killed with its launcher (signals.die_with_parent); this is the check
    where that is not available, or not yet armed: once the launcher is gone its lock is free,
    and another run may already own the folder."""
    if os.getppid() != launcher:
        print(f"normtrain: error: the launcher (pid {launcher}) that held the lock of {out} is gone; "
              "stopping without writing", file=sys.stderr, flush=True)
        os._exit(EXIT_WORKER)


def _env(path: Path, e: OSError) -> EnvError:
    return EnvError(f"cannot write to {readable(path)}: {outputs.cause(e)}")
