"""Errors that normtrain reports to the user as one line with a fixed exit code."""

# Exit codes, documented in the README and `normtrain --help`.
EXIT_OK = 0
EXIT_USAGE = 2        # bad input: nothing was written
EXIT_DIVERGED = 3     # the loss or the weights became non-finite; recorded in results.json
EXIT_INTERRUPTED = 4  # SIGTERM/SIGINT: the last checkpoint was saved, resume with the same command
EXIT_ENV = 5          # environment: disk full, unwritable folder, unreadable data met mid-run (checkpoints kept)
EXIT_WORKER = 6       # a worker process died or stopped answering (checkpoints kept; rerun to resume)


class UsageError(Exception):
    """Bad input from the user (flag, recipe key, data path...). Printed as one line, exit 2."""


class EnvError(Exception):
    """The environment failed us (I/O error, full disk, permissions, data unreadable mid-run).
    Printed as one line naming the path and the cause, exit 5; the last checkpoint is intact."""


class WorkerError(Exception):
    """A rank died or stopped answering. Printed as one line naming the rank, exit 6."""


def readable(path) -> str:
    """A file name as printable text: the bytes of a non-UTF-8 name shown as \\xNN escapes."""
    import os
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")
