"""What every scenario shares: base parameters, the run context and its outputs.

A scenario is one module in this package with

- a module docstring whose first line is its one-line summary (``normtrain list
  scenarios``) and whose body cites the paper claim it checks;
- ``Params``: a dataclass (subclass of `Params` here) with a docstring under
  each field; ``--set key=value`` overrides them with type checking
  (`normtrain.config.apply_overrides`);
- ``USES_DATA``: whether ``--data`` means something to it;
- ``run(ctx, p) -> dict``: does the work and returns ``ctx.finish(...)``;
- a pure ``verdict(...)`` function on plain numbers, unit-tested on constructed inputs.

Outputs (all under ``ctx.out``, created on the first write so that bad input
leaves nothing behind): ``results.json`` with ``scenario``, ``params``,
``measurements`` and ``verdict`` (``claim``, ``criterion``, ``measured``,
``reproduced``), PNG plots, and TensorBoard scalars under ``tb/``.
Non-finite numbers are written to JSON as ``null``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from ..checkpoint import atomic_write_text
from ..errors import UsageError


@dataclass
class Params:
    device: str = "auto"
    """'auto' (GPU if present), 'cpu' or 'cuda'."""
    seed: int = 0
    """Seed for weights, data order and noise inputs."""
    threads: int = 0
    """CPU threads for torch while the scenario runs (0 = torch's default). Small networks run faster on 1."""
    progress: bool = True
    """tqdm progress bars on stderr (hidden when stderr is not a terminal)."""

    def check(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: '{self.device}' is not one of: auto, cpu, cuda")
        if self.threads < 0:
            raise ValueError("threads: must be >= 0")


def known(model: str | None = None, methods=()) -> None:
    """UsageError (listing the choices) for an unknown network or method name."""
    from .. import models, norms
    if model is not None:
        models.NETWORKS.require(model)
    for m in methods:
        norms.METHODS.require(m)


def positive(name: str, value, allow_zero: bool = False) -> None:
    """ValueError unless value > 0 (or >= 0)."""
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: {value} must be {'>= 0' if allow_zero else '> 0'}")


def clean(obj):
    """JSON-safe copy: non-finite floats -> None, tuples -> lists, tensors -> lists."""
    if isinstance(obj, torch.Tensor):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def fmt(v, digits: int = 3) -> str:
    """Compact number for tables: 3 significant digits, 'nan'/'inf' kept, None as '-'."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def table(headers: list[str], rows: list[list]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(claim: str, criterion: str, measured: str, reproduced: bool) -> dict:
    return {"claim": claim, "criterion": criterion, "measured": measured, "reproduced": bool(reproduced)}


@contextlib.contextmanager
def torch_threads(n: int):
    """Set torch's CPU thread count for the block (n = 0: leave it)."""
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Context:
    """One scenario run: where outputs go, the device, progress bars, plots, TensorBoard."""

    def __init__(self, name: str, params: Params, out: str | Path, data: str | None = None):
        self.name = name
        self.params = params
        self.out = Path(out)
        self.data = data
        self.figures: list[str] = []
        self._tb = None
        self._prepared = False
        self.t0 = time.perf_counter()
        if params.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("device=cuda but no GPU is visible")
        self.device = torch.device("cuda" if params.device == "cuda" or
                                   (params.device == "auto" and torch.cuda.is_available()) else "cpu")

    # -- files ------------------------------------------------------------------
    def _prepare(self) -> None:
        if self._prepared:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        # A previous run of a scenario in this directory: its TensorBoard files would mix with ours.
        old = self.out / "results.json"
        if old.is_file() and (self.out / "tb").is_dir():
            try:
                if "scenario" in json.loads(old.read_text()):
                    shutil.rmtree(self.out / "tb")
            except (OSError, ValueError):
                pass
        self._prepared = True

    def path(self, name: str) -> Path:
        self._prepare()
        return self.out / name

    def savefig(self, fig, name: str, dpi: int = 80) -> Path:
        """Save a matplotlib figure as <out>/<name> (PNG) and close it."""
        import matplotlib.pyplot as plt
        p = self.path(name)
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        self.figures.append(name)
        return p

    # -- TensorBoard -----------------------------------------------------------------
    def scalar(self, tag: str, value, step: int) -> None:
        if value is None:
            return
        value = float(value)
        if not math.isfinite(value):
            return
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.path("tb")))
        self._tb.add_scalar(tag, value, step)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        for k, v in values.items():
            self.scalar(f"{prefix}/{k}", v, step)

    # -- progress ---------------------------------------------------------------------
    def progress(self, iterable: Iterable | None = None, total: int | None = None, desc: str = ""):
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                    disable=None if self.params.progress else True)

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    # -- the end ----------------------------------------------------------------------------
    def finish(self, measurements: dict, verdict: dict, summary: str = "") -> dict:
        """Write results.json, close TensorBoard, print `summary` (a table) and the verdict."""
        res = {
            "scenario": self.name,
            "params": dataclasses.asdict(self.params),
            "data": self.data,
            "device": str(self.device),
            "measurements": clean(measurements),
            "verdict": verdict,
            "plots": list(self.figures),
            "runtime_s": round(time.perf_counter() - self.t0, 2),
        }
        atomic_write_text(self.path("results.json"), json.dumps(res, indent=1) + "\n")
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if summary:
            print(summary)
        mark = "REPRODUCED" if verdict["reproduced"] else "NOT REPRODUCED"
        print(f"\nclaim:     {verdict['claim']}\ncriterion: {verdict['criterion']}\n"
              f"measured:  {verdict['measured']}\nverdict:   {mark}  ({res['runtime_s']:.1f}s, {self.out})",
              flush=True)
        return res


# -- data -------------------------------------------------------------------------------

def data_config(source: str, batch_size: int, image_size: int = 0, **extra):
    """A `data:` section for normtrain.data.build (the same backends as training)."""
    from ..config import DataConfig
    cfg = DataConfig(source=source, batch_size=batch_size, image_size=image_size, workers=0, **extra)
    try:
        cfg.check()
    except ValueError as e:
        raise UsageError(f"data.{e}") from None
    return cfg


def loader(ctx: Context, batch_size: int, split: str = "train", image_size: int = 0, default: str = "digits"):
    """The training (or 'val') loader of `--data` (default: the built-in digits) on ctx.device."""
    from .. import data
    cfg = data_config(ctx.data or default, batch_size, image_size)
    return data.build(cfg, split, data.DataContext(0, 1, ctx.device, batch_size, ctx.params.seed, split == "train"))


def take(ld, n: int) -> list:
    """The first `n` batches of `ld`, continuing into further epochs if needed."""
    return list(itertools.islice(forever(ld), n))


def forever(ld) -> Iterator:
    """Batches of `ld`, epoch after epoch."""
    epoch = 0
    while True:
        empty = True
        for batch in ld.epoch(epoch):
            empty = False
            yield batch
        if empty:
            raise UsageError("the data yields no batch (fewer samples than one batch?)")
        epoch += 1


# -- model state ------------------------------------------------------------------------------

def buffers_snapshot(model: torch.nn.Module) -> dict:
    """A copy of every buffer (running statistics, counters)."""
    return {k: v.detach().clone() for k, v in model.named_buffers()}


@torch.no_grad()
def buffers_restore(model: torch.nn.Module, snap: dict) -> None:
    for k, v in model.named_buffers():
        v.copy_(snap[k])


def is_norm_layer(m: torch.nn.Module) -> bool:
    """Activation-normalization modules: BN-family (incl. GhostNorm), GroupNorm/LN/IN, LayerNorm."""
    from torch.nn.modules.batchnorm import _NormBase
    return isinstance(m, (_NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.LocalResponseNorm))


def has_weight_reparam(m: torch.nn.Module) -> bool:
    """Conv/linear layers whose effective weight is computed from a raw weight (WN, WS, NormProp, NF...)."""
    from ..norms.wn import ReparamConv2d, ReparamLinear
    if not isinstance(m, (ReparamConv2d, ReparamLinear)):
        return False
    base = ReparamConv2d if isinstance(m, ReparamConv2d) else ReparamLinear
    return type(m).effective_weight is not base.effective_weight


def effective_weight(m: torch.nn.Module) -> torch.Tensor:
    """The weight a conv/linear layer actually applies (reparametrised or plain)."""
    fn = getattr(m, "effective_weight", None)
    return fn() if callable(fn) else m.weight
