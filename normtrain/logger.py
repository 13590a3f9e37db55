"""What a run shows and leaves behind; rank 0 only (other ranks get a silent logger).

- progress on stderr (`log.progress`): on a terminal a tqdm bar (loss, lr, images/s,
  ETA), with every message (evaluations, resume, divergence, Python warnings)
  written through ``tqdm.write`` so the bar is never torn; off a terminal (CI logs, Slurm output
  files, ``docker run`` without -t) plain lines ``step 120/5600 (2.1%) epoch 0.43 |
  loss 1.2345 | lr 0.1 | 1234 img/s | ETA 1h02m`` at most every `log.interval_s`
  seconds, and never a carriage return;
- evaluation lines on stdout (`log.eval_lines`: all, interval, none);
- TensorBoard scalars under <out>/tb (`log.tensorboard`);
- metrics.jsonl: every logged scalar, one JSON object per line with ``step`` and
  ``epoch`` (= step / steps per epoch, the same for training and evaluation rows);
- results.json (written atomically) and a one-line summary at the end.
"""
from __future__ import annotations

import functools
import json
import math
import sys
import threading
import time
import warnings
from pathlib import Path

from .checkpoint import atomic_write_text, check_writer

EVAL_LINES = ("all", "interval", "none")


def duration(seconds: float) -> str:
    """Seconds as 45s, 12m05s or 3h02m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def rate(value: float | None) -> str:
    """A rate (images/s) for people: whole numbers from 100 up, three significant digits below
    ('0.183', '12.3'), so a slow CPU run does not read '0'; '-' for none."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


class RunLogger:
    def __init__(self, out: Path | None, total_steps: int, progress: bool, tensorboard: bool, initial_step: int = 0,
                 steps_per_epoch: int = 0, interval_s: float = 30.0, eval_lines: str = "interval", stream=None,
                 purge_step: int | None = None):
        self.out = out
        self.bar = None
        self.tb = None
        self.jsonl = None
        self.total = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.interval_s = interval_s
        self.eval_lines = eval_lines
        self.stream = stream if stream is not None else sys.stderr
        self.plain = False
        self.step = initial_step
        self._t0, self._step0 = time.perf_counter(), initial_step
        self._last_line = self._last_eval = -math.inf
        if out is None:
            return
        if progress:
            if self.stream.isatty():
                from tqdm import tqdm
                self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                                file=self.stream, smoothing=0.1, mininterval=0.1)
                # Warnings (e.g. a skipped corrupt image) go through the bar too.
                self._showwarning = warnings.showwarning
                warnings.showwarning = self._warn
            else:
                self.plain = True
        if tensorboard:
            _quiet_writer_threads()
            from torch.utils.tensorboard import SummaryWriter
            # On resume TensorBoard hides the earlier attempt's events past the checkpoint's step.
            self.tb = SummaryWriter(str(out / "tb"), purge_step=purge_step)
        self.jsonl = open(out / "metrics.jsonl", "a")

    def _warn(self, message, category, filename, lineno, file=None, line=None):
        self.bar.write(warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n"), file=self.stream)

    @property
    def main(self) -> bool:
        return self.out is not None

    def print(self, msg: str) -> None:
        """A message line on stdout (through tqdm when a bar is shown)."""
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)

    def eval_line(self, msg: str) -> None:
        """An evaluation's line, printed as `log.eval_lines` says (metrics.jsonl has every evaluation)."""
        now = time.perf_counter()
        if self.eval_lines == "all" or (self.eval_lines == "interval" and now - self._last_eval >= self.interval_s):
            self._last_eval = now
            self.print(msg)

    def epoch(self, step: int) -> float:
        """Training done at `step`, in epochs (fractional): the `epoch` of every metrics.jsonl row."""
        return round(step / self.steps_per_epoch, 4) if self.steps_per_epoch else 0.0

    def scalars(self, step: int, values: dict) -> None:
        """Record scalars (e.g. {'train/loss': 0.3}) at `step`."""
        if not self.main:
            return
        check_writer()
        clean = {k: (float(v) if v is not None else None) for k, v in values.items()}
        if self.tb is not None:
            for k, v in clean.items():
                if v is not None and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        self.jsonl.write(json.dumps({"step": step, "epoch": self.epoch(step), **clean}) + "\n")
        self.jsonl.flush()

    def eta(self) -> float | None:
        """Seconds left at the mean wall time per step of this process so far (evaluations included)."""
        done = self.step - self._step0
        if done <= 0:
            return None
        return (time.perf_counter() - self._t0) / done * max(self.total - self.step, 0)

    def advance(self, n: int, values: dict) -> None:
        """`n` more optimizer steps done; `values` are the window's train/loss, train/lr, train/images_per_s."""
        self.step += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix({"loss": f"{values['train/loss']:.4f}", "lr": f"{values['train/lr']:.3g}",
                                  "img/s": rate(values['train/images_per_s'])}, refresh=False)
            return
        now = time.perf_counter()
        if not self.plain or (now - self._last_line < self.interval_s and self.step < self.total):
            return
        self._last_line = now
        eta = self.eta()
        print(f"step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.1f}%) "
              f"epoch {self.epoch(self.step):.2f} | loss {values['train/loss']:.4f} | lr {values['train/lr']:.3g} | "
              f"{rate(values['train/images_per_s'])} img/s | ETA {'?' if eta is None else duration(eta)}",
              file=self.stream, flush=True)

    def results(self, results: dict) -> None:
        if self.main:
            atomic_write_text(self.out / "results.json", json.dumps(results, indent=2, default=str) + "\n")

    def hparams(self, params: dict, metrics: dict, step: int) -> None:
        """The run's settings and final metrics for TensorBoard's HParams tab (one row per run folder).

        `metrics` are also written as scalars at `step` under their own tags, which is where the
        HParams tab reads a metric's value from; `params` values are numbers, strings or booleans.
        """
        if self.tb is None:
            return
        from torch.utils.tensorboard.summary import hparams
        metrics = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        params = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}
        writer = self.tb._get_file_writer()
        for summary in hparams(params, metrics):
            writer.add_summary(summary)
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def close(self) -> None:
        """Close the bar, TensorBoard and metrics.jsonl. A write that fails here (a full disk) is not
        raised: it ends a run that has already been reported (or is failing for that very reason)."""
        if self.bar is not None:
            warnings.showwarning = self._showwarning
            self.bar.close()
        for f in (self.tb, self.jsonl):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


def _quiet_tb_thread(args, previous=threading.excepthook):
    """TensorBoard's writer thread re-raises a failed write (a full disk) to print its traceback;
    the same error reaches the run through the writer's next call (exit 5, one line)."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    previous(args)


def _quiet_writer_threads() -> None:
    if not getattr(threading.excepthook, "normtrain_quiet", False):
        hook = functools.partial(_quiet_tb_thread, previous=threading.excepthook)
        hook.normtrain_quiet = True
        threading.excepthook = hook
