"""What a run shows and leaves behind; rank 0 only (other ranks get a silent logger).

- a tqdm progress bar (loss, lr, images/s, ETA) when `log.progress` is on;
- TensorBoard scalars under <out>/tb (`log.tensorboard`);
- metrics.jsonl: every logged scalar, one JSON object per line, for plots and sweeps;
- results.json (written atomically) and a one-line summary at the end.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .checkpoint import atomic_write_text


class RunLogger:
    def __init__(self, out: Path | None, total_steps: int, progress: bool, tensorboard: bool, initial_step: int = 0,
                 purge_step: int | None = None):
        self.out = out
        self.bar = None
        self.tb = None
        self.jsonl = None
        if out is None:
            return
        if progress:
            from tqdm import tqdm
            # Off a terminal (CI logs, `docker run` without -t) redraw rarely instead of flooding the log.
            self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                            file=sys.stderr, smoothing=0.1, mininterval=0.1 if sys.stderr.isatty() else 30.0)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            # On resume TensorBoard hides the earlier attempt's events past the checkpoint's step.
            self.tb = SummaryWriter(str(out / "tb"), purge_step=purge_step)
        self.jsonl = open(out / "metrics.jsonl", "a")

    @property
    def main(self) -> bool:
        return self.out is not None

    def print(self, msg: str) -> None:
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def scalars(self, step: int, values: dict, **extra) -> None:
        """Record scalars (e.g. {'train/loss': 0.3}) at `step`."""
        if not self.main:
            return
        clean = {k: (float(v) if v is not None else None) for k, v in values.items()}
        if self.tb is not None:
            for k, v in clean.items():
                if v is not None and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        self.jsonl.write(json.dumps({"step": step, **extra, **clean}) + "\n")
        self.jsonl.flush()

    def advance(self, n: int, postfix: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def results(self, results: dict) -> None:
        if self.main:
            atomic_write_text(self.out / "results.json", json.dumps(results, indent=2, default=str) + "\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
