"""`python -m normtrain` and the `normtrain` console script."""
import sys

from .signals import remember_signals


def run() -> int:
    remember_signals()  # first: a signal during the imports below is an interruption (normtrain.signals)
    from .cli import main
    return main()


if __name__ == "__main__":
    sys.exit(run())
