"""What every scenario shares: base parameters, the run context, the verdict schema and its statistics.

A scenario is one module in this package with

- a module docstring whose first line is its one-line summary (``normtrain list
  scenarios``) and whose body cites the paper claim it checks;
- ``Params``: a dataclass (subclass of `Params` here) with a docstring under
  each field; ``--set key=value`` overrides them with type checking
  (`normtrain.config.apply_overrides`);
- ``USES_DATA``: whether ``--data`` means something to it;
- ``run(ctx, p) -> dict``: does the work and returns ``ctx.finish(...)``;
- a pure ``verdict(...)`` function on plain numbers, unit-tested on constructed
  inputs in every state it can reach;
- optionally ``TIMED = True`` when its headline numbers are timings (they change
  from run to run; the rerun test of docs/scenarios then compares states only).

The verdict (DESIGN §5) is given in parts (`part`, `verdict_of`): the paper's own
sentence judged exactly as the paper states it (``source: "paper"``), and each
control or mechanism this project adds (``source: "added"``). Each part, and the
whole, is in one of four states: ``reproduced``, ``not reproduced``,
``inconclusive`` (this size cannot decide it; the part says which size would) and
``n/a`` (cannot be judged here, e.g. a GPU claim on a CPU). The whole is n/a when
its paper parts are; otherwise not reproduced if any judged part is not, else
inconclusive if any is, else reproduced. The headline says in words which parts held.
Rules (`difference`, `plateaued`, `decay_acts`): a gap across seeds is *shown* only at
>= 2 standard errors and >= a stated minimum effect, else the part is inconclusive with
the seeds that would decide it; an arm that cannot act at this size (weight decay with
lr * wd * steps < 1%) is flagged, not compared; a claim about final accuracy is judged
only on runs whose training loss has plateaued.

Outputs (all under ``ctx.out``, created on the first write so that bad input
leaves nothing behind): ``results.json`` with ``scenario``, ``params``,
``measurements`` (including the raw per-run / per-seed numbers behind the
verdict) and ``verdict`` (``claim``, ``state``, ``parts``, ``headline``: one
short line with the key numbers, used in the plots' titles and the README table;
``criterion`` and ``measured`` joined from the parts; ``reproduced`` = state is
reproduced), ``runtime_s`` (wall) and ``cpu_s`` (CPU time, which does not depend
on what else runs on the machine), PNG plots (`plotting`, `figure`,
`Context.savefig`: at least 1200 px wide, the verdict in the title), and
TensorBoard scalars under ``tb/``. Non-finite numbers are written to JSON as ``null``.
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
import typing
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
        # Sizes every scenario shares, by name: far above any sensible setting, low enough that a typo
        # (depth=100000000) is refused at once; what fits in memory is `check_memory`'s to say.
        for name, (lo, hi) in SIZES.items():
            value = getattr(self, name, None)
            values = value if isinstance(value, list) else [value]
            for v in values:  # integers only: a float of the same name is a factor (wn-small-net's width)
                if isinstance(v, int) and not isinstance(v, bool) and not lo <= v <= hi:
                    raise ValueError(f"{name}: {v} is out of range (must be >= {lo} and <= {hi})")
        if hasattr(self, "seed") and not 0 <= self.seed < 2 ** 31:
            raise ValueError(f"seed: {self.seed} is out of range (must be >= 0 and < 2^31)")

    #: The network this scenario builds when it has no ``model`` parameter (for `networks`).
    MODEL: typing.ClassVar[str] = ""

    def networks(self) -> list[tuple]:
        """(model, norm, model options, batch) of the networks the scenario trains, for `check_memory`.

        Read from the parameters by name (model or MODEL; norm, methods; the builder's options such as
        widths, depth, width; batch_size); a scenario whose networks differ says so by overriding it."""
        model = getattr(self, "model", "") or self.MODEL
        if not model or not isinstance(model, str):
            return []
        # One method stands for all: the network's shape, not the method, decides its memory.
        methods = getattr(self, "methods", None) or [getattr(self, "norm", None) or "bn"]
        method = "bn" if "bn" in methods else methods[0]
        options = {k: getattr(self, k) for k in ("widths", "depth", "width")
                   if isinstance(getattr(self, k, None), (int, list)) and not isinstance(getattr(self, k), bool)}
        batch = max(getattr(self, "batch_size", 1), getattr(self, "probe_size", 1))
        return [(model, method, options, batch)]


#: Bounds of the size parameters that scenarios share (by name; a list is checked element by element).
SIZES = {"batch_size": (1, 1 << 16), "probe_size": (1, 1 << 16), "steps": (1, 10_000_000), "seeds": (1, 1000),
         "depth": (1, 1000), "width": (1, 1 << 16), "widths": (1, 1 << 16), "image_size": (0, 8192),
         "num_classes": (1, 1_000_000), "record_every": (1, 10_000_000), "log_every": (1, 10_000_000),
         "probe_every": (1, 10_000_000), "warmup": (0, 1_000_000), "random_draws": (1, 100_000),
         "groups": (1, 1 << 16), "ghost_groups": (1, 1 << 16)}


def check_memory(ctx: "Context", p: Params) -> None:
    """UsageError (exit 2) when one of the scenario's networks (`Params.networks`) clearly cannot train
    in the memory available on ctx.device: the training check's lower bound (normtrain/memory.py), on
    the input shape of the scenario's data (its kind read from the --data name, as `synthetic_like`)."""
    from .. import config, memory, models, norms
    nets = p.networks()
    if not nets:
        return
    like = config.DataConfig(source=ctx.data or "digits")
    shaped = config.DataConfig(source="synthetic", image_size=getattr(p, "image_size", 0) or 0)
    config.synthetic_like(shaped, like)
    in_shape = tuple(shaped.synthetic_shape)
    free = memory.available(ctx.device)
    for model, norm, options, batch in nets:
        if model not in models.NETWORKS or norm not in norms.METHODS:
            continue  # the scenario's own checks name it
        try:
            opts = {k: v for k, v in options.items() if k in models.signature(model).parameters}
            with torch.device("meta"):
                bundle = norms.get(norm, groups=getattr(p, "groups", 32))
                net = models.build(model, bundle, shaped.synthetic_classes, in_shape, init="default", **opts)
                acts = memory.activation_bytes(net, torch.empty((batch,) + in_shape))
        except Exception:  # noqa: BLE001 - not buildable or traceable so: the scenario's own run decides
            continue
        need = acts + 2 * sum(q.numel() * 4 for q in net.parameters())
        if free is not None and need > free:
            raise UsageError(f"scenario {ctx.name}: model {model} with norm {norm} at batch {batch} needs at least "
                             f"{memory.gib(need)} but {memory.gib(free)} is available on {ctx.device.type}; "
                             "lower batch_size or the network's size")


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


#: Verdict states (DESIGN §5). A part or a whole verdict is in exactly one of them.
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NA = "reproduced", "not reproduced", "inconclusive", "n/a"
STATES = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NA)
#: Where a part's claim comes from: the paper's own sentence, or a control / mechanism this project adds.
SOURCES = ("paper", "added")


def part(name: str, claim: str, source: str, state: str, measured: str, criterion: str,
         paper_value=None) -> dict:
    """One judged statement of a verdict.

    `source` is "paper" for the paper's own claim, judged exactly as the paper states it, and
    "added" for a control or mechanism this project adds. `state` is one of `STATES` (a bool
    is read as reproduced / not reproduced). `paper_value`: the number the paper reports for
    this part, with where it comes from (e.g. ``{"value": 0.25, "where": "Fig. 1"}``), or None.
    """
    if isinstance(state, bool):
        state = REPRODUCED if state else NOT_REPRODUCED
    if state not in STATES:
        raise ValueError(f"part {name!r}: state {state!r} is not one of {STATES}")
    if source not in SOURCES:
        raise ValueError(f"part {name!r}: source {source!r} is not one of {SOURCES}")
    return {"name": name, "claim": claim, "source": source, "state": state, "measured": measured,
            "criterion": criterion, "paper_value": paper_value}


def overall_state(parts: list[dict]) -> str:
    """The state of a whole verdict from its parts.

    n/a when every paper part is n/a (the claim cannot be judged here, e.g. a GPU claim on a
    CPU) or there is no part; otherwise, over the parts that are not n/a: not reproduced if
    any is, else inconclusive if any is, else reproduced.
    """
    paper = [q for q in parts if q["source"] == "paper"]
    if not parts or (paper and all(q["state"] == NA for q in paper)):
        return NA
    judged = [q["state"] for q in parts if q["state"] != NA]
    if not judged:
        return NA
    if NOT_REPRODUCED in judged:
        return NOT_REPRODUCED
    if INCONCLUSIVE in judged:
        return INCONCLUSIVE
    return REPRODUCED


def verdict_of(claim: str, parts: list[dict], headline: str) -> dict:
    """The verdict dict of a scenario from its judged parts (see `part`).

    ``state`` is `overall_state(parts)`; ``headline`` one short line saying in words which parts
    held, with the key numbers (plot titles, the README table); ``criterion`` and ``measured``
    join the parts' own. ``reproduced`` (state == reproduced) is kept for readers of the old schema.
    """
    state = overall_state(parts)
    return {"claim": claim, "state": state, "headline": headline, "parts": parts,
            "criterion": " ".join(f"[{q['name']}] {q['criterion']}" for q in parts),
            "measured": " ".join(f"[{q['name']}] {q['measured']}" for q in parts),
            "reproduced": state == REPRODUCED}


def not_judged(claim: str, why: str, criterion: str = "-") -> dict:
    """The verdict of a run that cannot judge the claim at all (e.g. a control left out by --set): n/a, saying why."""
    return verdict_of(claim, [part("claim", claim, "paper", NA, why, criterion)], f"not judged: {why}")


def state_label(v: dict) -> str:
    """'REPRODUCED', 'NOT REPRODUCED', 'INCONCLUSIVE' or 'N/A' for a verdict dict (old or new schema)."""
    state = v.get("state") or (REPRODUCED if v.get("reproduced") else NOT_REPRODUCED)
    return state.upper()


# -- statistics over seeds ----------------------------------------------------------------

def mean_std(xs) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); nan for no finite value."""
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def pm(xs, digits: int = 3) -> str:
    """'mean ± std' of a list of numbers."""
    m, sd = mean_std(xs)
    return f"{m:.{digits}g} ± {sd:.2g}"


def difference(a, b, min_effect: float) -> dict:
    """Is mean(a) - mean(b) shown, over per-seed values a and b? (DESIGN §5, the rule every scenario uses.)

    A gap is *shown* only when |gap| >= 2 standard errors of the difference AND |gap| >= `min_effect`
    (the smallest difference that means something for the quantity: e.g. max(5 test images, 0.5
    points) for an accuracy). The two are *shown equal* when the whole 2-SE interval of the gap lies
    inside (-min_effect, min_effect). With fewer than two finite values on a side the standard
    error is unknown and nothing is shown.

    Returns {'gap', 'se', 'min_effect', 'n': (na, nb), 'shown', 'equal', 'detectable': the smallest
    |gap| this many seeds could show (max(min_effect, 2 se)), 'seeds_to_decide': seeds per arm at which
    2 se would fall below the observed |gap| (None when the gap is under min_effect or already shown)}.
    """
    fa = [float(x) for x in a if x is not None and math.isfinite(float(x))]
    fb = [float(x) for x in b if x is not None and math.isfinite(float(x))]
    ma, sa = mean_std(fa)
    mb, sb = mean_std(fb)
    gap = ma - mb
    se = math.sqrt(sa ** 2 / len(fa) + sb ** 2 / len(fb)) if len(fa) > 1 and len(fb) > 1 else float("nan")
    ok = math.isfinite(gap) and math.isfinite(se)
    shown = bool(ok and abs(gap) >= 2 * se and abs(gap) >= min_effect)
    equal = bool(ok and abs(gap) + 2 * se < min_effect)
    need = None
    if ok and not shown and abs(gap) >= min_effect and gap != 0:
        need = math.ceil(4 * (sa ** 2 + sb ** 2) / gap ** 2 - 1e-9)
    return {"gap": gap, "se": se, "min_effect": min_effect, "n": (len(fa), len(fb)), "shown": shown,
            "equal": equal, "detectable": max(min_effect, 2 * se) if math.isfinite(se) else float("nan"),
            "seeds_to_decide": need}


def accuracy_min_effect(given: float, test_images: int, images: int = 5, points: float = 0.5) -> float:
    """The smallest top-1 gap (points) that counts for `difference`: `given`, or else the larger of
    `images` images and `points` points on a split of `test_images` images (DESIGN §5: 5 and 0.5)."""
    return given or max(100.0 * images / test_images if test_images else 0.0, points)


def seed_mean_curve(runs: list[dict], key: str = "losses") -> list[float]:
    """The per-step mean of each run's `key` curve over the seeds that did not diverge ([] when all did)."""
    full = [r[key] for r in runs if r["diverged_at"] is None]
    return [sum(c[i] for c in full) / len(full) for i in range(len(full[0]))] if full else []


def paired_difference(a, b, min_effect: float) -> dict:
    """`difference` for paired values (a[i] and b[i] from the same seed: the same initial weights and data order):
    the per-seed differences a[i] - b[i] against 0, so that what the seeds share cancels. Same keys as `difference`."""
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None
             and math.isfinite(float(x)) and math.isfinite(float(y))]
    return difference([x - y for x, y in pairs], [0.0] * len(pairs), min_effect)


def shown_text(d: dict, digits: int = 2) -> str:
    """'gap ± se (shown | shown equal | not shown: detectable >= x[, n seeds decide it])' for a `difference` result."""
    if not math.isfinite(d["se"]):
        return f"{d['gap']:+.{digits}g} (one seed per arm: no standard error)"
    head = f"{d['gap']:+.{digits}g} ± {d['se']:.1g}"
    if d["shown"]:
        return f"{head} (shown)"
    if d["equal"]:
        return f"{head} (shown equal within ±{d['min_effect']:.{digits}g})"
    need = f", {d['seeds_to_decide']} seeds per arm decide it" if d["seeds_to_decide"] else ""
    return f"{head} (not shown: detectable >= {d['detectable']:.{digits}g}{need})"


def state_greater(d: dict) -> str:
    """State of the claim "a > b" from `difference(a, b, ...)`: reproduced when a gap > 0 is shown,
    not reproduced when a gap < 0 is shown or the two are shown equal, else inconclusive."""
    if d["shown"]:
        return REPRODUCED if d["gap"] > 0 else NOT_REPRODUCED
    return NOT_REPRODUCED if d["equal"] else INCONCLUSIVE


def state_not_less(d: dict) -> str:
    """State of the claim "a matches or beats b" from `difference(a, b, ...)`: reproduced when a gap > 0
    is shown or the two are shown equal, not reproduced when a gap < 0 is shown, else inconclusive."""
    if d["shown"]:
        return REPRODUCED if d["gap"] > 0 else NOT_REPRODUCED
    return REPRODUCED if d["equal"] else INCONCLUSIVE


def plateaued(losses, window: float = 0.1, rel: float = 0.05) -> bool:
    """Has a training-loss curve converged? The rule: the mean of its last `window` fraction of values is less
    than `rel` (relative) below the mean of the `window` fraction before it. Claims about final accuracy are judged
    only on runs for which this holds (else inconclusive). On a noisy per-step curve use `measures.settled`, which
    widens `rel` to the curve's own noise."""
    xs = [float(x) for x in losses if x is not None and math.isfinite(float(x))]
    k = max(1, int(len(xs) * window))
    if len(xs) < 2 * k or len(xs) < 4:
        return False
    last, before = sum(xs[-k:]) / k, sum(xs[-2 * k:-k]) / k
    return before - last < rel * abs(before)


def decay_acts(lr: float, weight_decay: float, steps: int, threshold: float = 0.01) -> bool:
    """Can weight decay act at this size? SGD's decay shrinks the weights by about lr*wd*steps over
    the run; below `threshold` (1%) an arm that differs only in weight decay is flagged, not compared."""
    return lr * weight_decay * steps >= threshold


# -- plots --------------------------------------------------------------------------------------

#: Every scenario plot: fonts readable at a glance on a 1200+ px wide figure.
PLOT_STYLE = {"font.size": 12, "axes.titlesize": 12.5, "axes.labelsize": 12, "xtick.labelsize": 11,
              "ytick.labelsize": 11, "legend.fontsize": 10, "figure.titlesize": 14, "lines.linewidth": 1.8,
              "axes.grid": True, "grid.alpha": 0.3, "legend.framealpha": 0.85}
#: Saved resolution; with `figure`'s minimum width of 13 in the PNGs are >= 1300 px wide.
PLOT_DPI = 100
MIN_FIG_WIDTH_IN = 13.0


@contextlib.contextmanager
def plotting():
    """matplotlib.pyplot (Agg backend) with `PLOT_STYLE` in effect for the block."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with matplotlib.rc_context(PLOT_STYLE):
        yield plt


def figure(plt, nrows: int = 1, ncols: int = 1, panel: tuple = (6.0, 4.6), **kw):
    """(fig, axes[nrows][ncols]) at least `MIN_FIG_WIDTH_IN` wide, constrained layout (no overlapping labels)."""
    width = max(MIN_FIG_WIDTH_IN, panel[0] * ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, panel[1] * nrows + 0.8), squeeze=False,
                             layout="constrained", **kw)
    return fig, axes


def truncated_cmap(plt, name: str, lo: float, hi: float):
    """The [lo, hi] part of colormap `name` (e.g. without its near-white end), for lines coloured by a value."""
    from matplotlib.colors import ListedColormap
    import numpy as np
    return ListedColormap(plt.get_cmap(name)(np.linspace(lo, hi, 256)))


def log_if_wide(ax, values, span: float = 20.0) -> None:
    """Log y axis when the positive values span more than `span`x, else linear (readable ticks for narrow ranges)."""
    vals = [v for v in finite_or_nan(values) if v > 0]
    if vals and max(vals) / min(vals) > span:
        ax.set_yscale("log")


def integer_x(ax) -> None:
    """Integer ticks on the x axis (steps, blocks)."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def finite_or_nan(values) -> list[float]:
    """Values for plotting: None and non-finite -> nan (a gap in the line)."""
    return [float(v) if v is not None and math.isfinite(float(v)) else float("nan") for v in values]


def positive_or_nan(values) -> list[float]:
    """For log axes: also non-positive -> nan."""
    return [v if v > 0 else float("nan") for v in finite_or_nan(values)]


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished children (e.g. `dist.spawn` workers).

    Unlike the wall time it does not grow when other jobs share the machine.
    """
    import resource
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


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

    def __init__(self, name: str, params: Params, out: str | Path, data: str | None = None, scale: str = "cpu",
                 paper=None):
        self.name = name
        self.params = params
        self.out = Path(out)
        self.data = data
        self.scale = scale      # 'cpu' or 'paper' (recorded in results.json)
        self.paper = paper      # the module's PAPER: its reported values go beside ours (paper_value)
        self.figures: list[str] = []
        self._tb = None
        self._prepared = False
        self.t0 = time.perf_counter()
        self.cpu0 = cpu_seconds()
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

    def savefig(self, fig, name: str, verdict: dict | None = None, what: str = "") -> Path:
        """Save a figure as <out>/<name> (PNG, `PLOT_DPI`) with the verdict in its title, and close it.

        Title: '<scenario>[: what] -- REPRODUCED | NOT REPRODUCED: <headline>', wrapped to the width.
        """
        import textwrap

        import matplotlib.pyplot as plt
        title = self.name + (f": {what}" if what else "")
        if verdict is not None:
            title += f"  |  {state_label(verdict)}: {verdict.get('headline', '')}"
        width_chars = int(fig.get_figwidth() * 8.5)
        fig.suptitle("\n".join(textwrap.wrap(title, width_chars)), fontweight="bold")
        p = self.path(name)
        fig.savefig(p, dpi=PLOT_DPI)
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
        add_paper_values(verdict, self.paper)
        res = {
            "scenario": self.name,
            "scale": self.scale,
            "params": dataclasses.asdict(self.params),
            "data": self.data,
            "device": str(self.device),
            "measurements": clean(measurements),
            "verdict": verdict,
            "plots": list(self.figures),
            "runtime_s": round(time.perf_counter() - self.t0, 2),
            "cpu_s": round(cpu_seconds() - self.cpu0, 2),
        }
        atomic_write_text(self.path("results.json"), json.dumps(res, indent=1) + "\n")
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if summary:
            print(summary)
        lines = [f"\nclaim:     {verdict['claim']}"]
        for q in verdict.get("parts", []):
            lines.append(f"  [{q['source']}] {q['name']}: {q['state'].upper()} - {q['measured']}"
                         f"  (criterion: {q['criterion']})")
            if q.get("paper_value"):
                lines.append(f"      paper | ours: {paper_text(q['paper_value'])} | {q['measured']}")
        lines.append(f"verdict:   {state_label(verdict)}: {verdict.get('headline', '')}"
                     f"  ({res['runtime_s']:.1f}s, {self.out})")
        print("\n".join(lines), flush=True)
        return res


def add_paper_values(verdict: dict, paper) -> None:
    """Give each part the paper's number for it (PAPER.values[part name]) where the scenario set none; the
    paper parts get the whole claim's value when the paper reports one under 'claim'."""
    if paper is None:
        return
    for q in verdict.get("parts", []):
        if q.get("paper_value") is None:
            v = paper.values.get(q["name"]) or (paper.values.get("claim") if q["source"] == "paper" else None)
            if v is not None:
                q["paper_value"] = v.as_dict()


def paper_text(v: dict) -> str:
    """A part's paper_value as 'value unit (where)'."""
    val = v.get("value")
    if isinstance(val, dict):
        val = ", ".join(f"{k} {x}" for k, x in val.items())
    return f"{val} {v.get('unit', '')} ({v.get('where', '')})".replace("  ", " ")


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


def loader(ctx: Context, batch_size: int, split: str = "train", image_size: int = 0, default: str = "digits",
           seed: int | None = None, **extra):
    """The training (or 'val') loader of `--data` (default: the built-in digits) on ctx.device.

    `seed` (default: the scenario's) fixes the training order, so runs of different seeds see different orders.
    `extra`: further `data:` keys (e.g. ``normalize``, ``synthetic_classes``).
    """
    from .. import data
    cfg = data_config(ctx.data or default, batch_size, image_size, **extra)
    seed = ctx.params.seed if seed is None else seed
    return data.build(cfg, split, data.DataContext(0, 1, ctx.device, batch_size, seed, split == "train"))


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
    """Activation-normalization modules: BN-family (incl. GhostNorm), GroupNorm/LN/IN, LayerNorm, RMSNorm, DyT."""
    from torch.nn.modules.batchnorm import _NormBase

    from ..norms.layout import is_token_family_norm
    return (isinstance(m, (_NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.LocalResponseNorm))
            or is_token_family_norm(m))


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


# -- training and evaluation ------------------------------------------------------------------

def diverged_at(losses: list[float], blowup: float = 0.0) -> int | None:
    """Index of the first loss that is non-finite (or, with blowup > 0, above blowup x losses[0]), else None."""
    bound = blowup * abs(losses[0]) if losses and blowup > 0 else float("inf")
    for i, v in enumerate(losses):
        if not math.isfinite(v) or v > bound:
            return i
    return None


def train_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, batches, steps: int, blowup: float = 0.0,
                on_step=None, scheduler=None) -> dict:
    """`steps` optimizer steps of cross-entropy training on `batches` (a list, cycled, or an iterator).

    Each step's loss is measured before its update. The run stops at the first loss that
    `diverged_at` flags (non-finite, or above blowup x the first loss) without applying that
    update; the step is recorded. ``on_step(step, loss)`` is called for every measured loss;
    a learning-rate `scheduler` steps after every update.
    Returns {'losses', 'diverged_at', 'steps_done'} (steps_done = updates applied).
    """
    import torch.nn.functional as F
    it = itertools.cycle(batches) if isinstance(batches, (list, tuple)) else iter(batches)
    model.train()
    losses: list[float] = []
    div = None
    for step in range(steps):
        x, y = next(it)
        loss = F.cross_entropy(model(x).float(), y)
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
        if diverged_at(losses, blowup) is not None:
            div = step
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return {"losses": losses, "diverged_at": div, "steps_done": len(losses) - (div is not None)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches) -> dict:
    """Mean cross-entropy and top-1 accuracy (%) over `batches` in eval mode (the model is left in eval mode)."""
    import torch.nn.functional as F
    model.eval()
    loss = correct = n = 0.0
    for x, y in batches:
        out = model(x).float()
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += float((out.argmax(1) == y).sum())
        n += len(y)
    n = max(n, 1)
    return {"loss": loss / n, "top1": 100.0 * correct / n}


def epoch_batches(ld, epoch: int = 0) -> list:
    """All batches of one epoch of `ld` (evaluation splits: the whole split)."""
    return list(ld.epoch(epoch))
