"""`python -m normtrain` and the `normtrain` console script."""
import os
import sys

from .signals import die_with_parent, ignore_signals, remember_signals, take_launcher


def run() -> int:
    remember_signals()  # first: a signal during the imports below is an interruption (normtrain.signals)
    launcher = take_launcher()
    if launcher is not None:
        # A worker of normtrain's launcher, which holds the run folder's lock: it must not outlive it.
        die_with_parent(launcher)
    elif "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent(os.getppid())  # torchrun's agent; re-armed with SIGTERM once the run can save
    from .cli import main
    code = main()
    ignore_signals()  # the exit code is decided: a late SIGTERM/SIGINT changes nothing
    return code


if __name__ == "__main__":
    sys.exit(run())
