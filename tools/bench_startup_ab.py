"""A/B start-up of the light commands in two source trees, interleaved (noise hits both alike).

    python tools/bench_startup_ab.py BASE_TREE NEW_TREE [REPEATS]

Each command runs as `python -m normtrain ARGS` with the tree as working directory (so the
tree's `normtrain` is the one imported), alternating between the trees, REPEATS times
(default 15); prints the median CPU time (user + system, from `os.wait4`) and the largest
peak RSS of each. `tools/bench_startup.py` measures one tree in more detail.
"""
from __future__ import annotations

import os
import statistics
import sys

COMMANDS = [["--help"], ["list"], ["list", "keys"], ["--norm", "nope"], ["--set", "optim.lr=abc"]]


def run(tree: str, args: list[str]) -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of one `python -m normtrain ARGS` in `tree`."""
    pid = os.fork()
    if pid == 0:  # the child: quiet, in the tree, the command
        os.chdir(tree)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.execv(sys.executable, [sys.executable, "-m", "normtrain", *args])
    _, _, usage = os.wait4(pid, 0)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main(argv: list[str]) -> int:
    trees, repeats = argv[:2], int(argv[2]) if len(argv) > 2 else 15
    print(f"{'command':22s} " + "  ".join(f"{t:>28s}" for t in trees))
    for args in COMMANDS:
        got = {t: [] for t in trees}
        for _ in range(repeats):
            for t in trees:
                got[t].append(run(t, args))
        cells = [f"{statistics.median(c for c, _ in got[t]):.3f} s {max(m for _, m in got[t]):6.1f} MiB"
                 for t in trees]
        print(f"{' '.join(args):22s} " + "  ".join(f"{c:>28s}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
