"""SIGTERM during start-up: remembered, not fatal.

`remember_signals()` runs before anything heavy is imported. A SIGTERM that
arrives while torch, the data or the model are still loading is recorded here,
and the engine's stop flag starts from it: the run takes one step, saves and
exits 4 like any interrupted run, instead of dying with -15 or a traceback from
inside an import. Commands that do not train (`list`, `scenario`, ...) call
`raise_on_signals()` once their imports are done: SIGTERM then ends them like
Ctrl-C (exit 4).
"""
import signal

#: Set by a SIGTERM received before the engine took over signal handling.
received = False


def _remember(signum, frame):
    global received
    received = True


def _raise(signum, frame):
    raise KeyboardInterrupt


def remember_signals() -> None:
    try:
        signal.signal(signal.SIGTERM, _remember)
    except ValueError:  # not the main thread
        pass


def raise_on_signals() -> None:
    try:
        signal.signal(signal.SIGTERM, _raise)
    except ValueError:
        pass


def take() -> bool:
    """Whether a SIGTERM arrived during start-up; clears it (the engine now handles signals)."""
    global received
    got, received = received, False
    return got
