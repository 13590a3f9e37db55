"""Signals at the edges of a process's life: start-up, a dead launcher, and exit.

- `remember_signals()` runs before anything heavy is imported. A SIGTERM or SIGINT
  (Ctrl-C) that arrives while torch, the data or the model are still loading is
  recorded here, and the engine's stop flag starts from it: the run takes one step,
  saves and exits 4 like any interrupted run, instead of dying with -15 or a
  `KeyboardInterrupt` traceback from inside an import. Commands that do not train
  (`list`, `scenario`, ...) call `raise_on_signals()` once their imports are done:
  SIGTERM and SIGINT then end them like Ctrl-C (exit 4).
- `die_with_parent()`: a worker started by a launcher dies with it (Linux
  ``PR_SET_PDEATHSIG``), so that no worker outlives the launcher that holds its run
  folder's lock; where the platform has no such call, the heartbeat thread and the
  write guard (`rundir`) stop it instead.
- `ignore_signals()`: once the exit code is decided (results.json is written), a late
  SIGTERM/SIGINT changes nothing; they are ignored for the rest of the process (Python
  restores the default handlers while it shuts down, but keeps "ignore").
"""
from __future__ import annotations

import os
import signal
import sys

#: Set by a SIGTERM/SIGINT received before the engine took over signal handling.
received = False

#: Set by normtrain's launcher (dist.launch) in its workers: the launcher's pid.
LAUNCHER_PID_ENV = "NORMTRAIN_LAUNCHER_PID"

#: The signals a user or a scheduler sends to stop a run.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _remember(signum, frame):
    global received
    received = True


def _raise(signum, frame):
    raise KeyboardInterrupt


def _install(handler) -> None:
    for sig in STOP_SIGNALS:
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass


def remember_signals() -> None:
    _install(_remember)


def raise_on_signals() -> None:
    _install(_raise)


def ignore_signals() -> None:
    _install(signal.SIG_IGN)


_launcher: int | None = None


def take_launcher() -> int | None:
    """The pid of normtrain's launcher if this process is one of its workers (LAUNCHER_PID_ENV), taken out
    of the environment so that no process this one starts believes it is a worker too."""
    global _launcher
    value = os.environ.pop(LAUNCHER_PID_ENV, "")
    if value.isdigit():
        _launcher = int(value)
    return _launcher


def launcher_pid() -> int | None:
    """The launcher's pid recorded by `take_launcher` (or still in the environment), None if not a worker."""
    value = os.environ.get(LAUNCHER_PID_ENV, "")
    return _launcher if _launcher is not None else (int(value) if value.isdigit() else None)


def take() -> bool:
    """Whether a SIGTERM/SIGINT arrived during start-up; clears it (the engine now handles signals)."""
    global received
    got, received = received, False
    return got


#: prctl(2) option: the signal this process gets when the thread that created it exits.
PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int | None, sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send `sig` to this process when its parent dies (Linux); returns whether it is armed.

    If the parent already changed (it died before this call: the process was re-parented),
    exit at once with code 6. Elsewhere nothing is armed and the caller relies on its
    heartbeat (dist.Supervisor) and write guard instead.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if expected_parent is not None and os.getppid() != expected_parent:
        print(f"normtrain: error: the launcher (pid {expected_parent}) is gone; stopping without writing",
              file=sys.stderr, flush=True)
        os._exit(6)  # EXIT_WORKER; errors.py is not imported here to keep this module tiny
    return armed
