"""A scenario at the paper's own size: what the paper ran, what it needs, how long it takes.

Each scenario module states its paper's experiment as data, ``PAPER = Paper(...)``:
where in the paper it is (``where``), the dataset (``dataset``, a key of
`DATASETS`, or None for generated inputs), the GPUs the authors used (``gpus``),
the scenario parameters that make its experiment the paper's (``params``: the
values ``--scale paper`` applies to ``Params``; a ``--set`` still wins), the
recipes its runs use and the numbers the paper reports (``values``: part name ->
`Value`, written beside ours as each verdict part's ``paper_value``).

Two kinds of scenario (`kind`):

- *analysis*: the experiment runs in one process, as at CPU size, with the paper's
  (larger) parameters, on one GPU;
- *training*: the experiment is a set of full training runs of the paper's recipes.
  The module defines ``paper_runs(p) -> list[Run]`` (each run: its folder name, the
  verdict's arm it belongs to, its seed, its recipe and ``--set`` pairs) and
  ``paper_judge(ctx, p, runs)``, which reads the finished runs' results.json and
  metrics.jsonl and judges them with the same ``verdict`` function as at CPU size.
  `normtrain.scenarios.paper_runs` starts the runs (the training command's launcher,
  any number of GPUs and nodes) and reuses finished ones.

`plan` does the arithmetic of a training plan without torch: per run the batch per
process on a given number of processes (`normtrain.batching`, as the launcher
checks it), steps per epoch and in total (as the engine counts them: ``(training
samples // (micro-batch x processes)) // accumulation steps`` per epoch, times the
epochs, rounded up), the images trained on, and GPU-hours where a step time
measured on a GPU is known (`timing_rows`: ``normtrain doctor``'s doctor.json or a
``tools/bench.py --json`` file; a row of the run's network and method at its image
size and about its micro-batch; nothing that fits, "unknown", with the bench
command that measures it).
`check_dataset` refuses a missing dataset or one in the wrong layout before
anything starts, naming what is needed. Everything here runs without torch, so
``--scale paper --dry-run`` prints the plan on any machine.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import batching
from ..errors import UsageError

SCALES = ("cpu", "paper")
ANALYSIS, TRAINING = "analysis", "training"


@dataclass(frozen=True)
class Value:
    """A number (or a few, by arm) the paper reports, with its unit and where it is printed."""
    value: Any
    unit: str
    where: str

    def as_dict(self) -> dict:
        return {"value": self.value, "unit": self.unit, "where": self.where}

    def text(self) -> str:
        v = self.value
        if isinstance(v, dict):
            v = ", ".join(f"{k} {x}" for k, x in v.items())
        return f"{v} {self.unit} ({self.where})"


@dataclass(frozen=True)
class Paper:
    """The paper's own experiment behind a scenario (see the module docstring)."""
    where: str
    dataset: str | None
    gpus: int
    params: dict = field(default_factory=dict)
    recipes: tuple = ()
    values: dict = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Run:
    """One full training run of a training scenario's paper-scale plan."""
    name: str           # its folder: <scenario out>/runs/<name>
    arm: str            # the verdict's arm it belongs to
    seed: int
    recipe: str         # recipe name (normtrain list recipes) or .yaml path
    sets: tuple = ()    # (key, value) recipe overrides, as --set would give them

    def overrides(self) -> list:
        return [*self.sets, ("run.seed", self.seed)]


def kind(module) -> str:
    return TRAINING if hasattr(module, "paper_runs") else ANALYSIS


# -- datasets --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dataset:
    """A dataset a paper-scale run reads, in the layout researchers have and normtrain's readers take."""
    title: str
    layout: str             # what --data must point at
    train: int              # training images
    test: int               # test (ImageNet: validation) images
    classes: int
    problem: Callable       # path -> None, or what is wrong with it


def _subdirs(path: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _has_image(folder: Path) -> bool:
    exts = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm")
    try:
        return any(e.name.lower().endswith(exts) for e in os.scandir(folder) if e.is_file())
    except OSError:
        return False


def _imagenet_problem(path: Path) -> str | None:
    """None if `path` looks like ImageNet-1k in class folders; else what is wrong. Lists folders only (the
    image backends check every file when they build their index)."""
    train, val = path / "train", path / "val"
    if not train.is_dir():
        return f"{path} has no train/ folder"
    classes = _subdirs(train)
    if len(classes) != 1000:
        return f"{train} has {len(classes)} class folders, ImageNet-1k has 1000"
    if not val.is_dir():
        return f"{path} has no val/ folder (the 50,000 validation images the papers report on)"
    vclasses = _subdirs(val)
    if not vclasses and _has_image(val):
        return (f"{val} holds the validation images in one flat folder: sort them into class folders with "
                f"tools/sort_imagenet_val.py")
    if vclasses != classes:
        missing = sorted(set(classes) - set(vclasses))
        return (f"{val} has {len(vclasses)} class folders that differ from train/'s"
                + (f" (missing e.g. {missing[0]})" if missing else ""))
    if not (_has_image(train / classes[0]) and _has_image(val / classes[0])):
        return f"no image in {train / classes[0]} or {val / classes[0]}"
    return None


def _light(module: str):
    from .. import static
    return static.light(module)  # the readers' own `find`, without importing torch


def _cifar_problem(name: str, other: str) -> Callable:
    def problem(path: Path) -> str | None:
        cifar = _light("normtrain.data.cifar")
        if cifar.find(path, name) is not None:
            return None
        if cifar.find(path, other) is not None:
            return f"{path} holds {other.upper().replace('CIFAR', 'CIFAR-')}, not {DATASETS[name].title}"
        return f"{path} has no {DATASETS[name].title} python batches"
    return problem


def _mnist_problem(path: Path) -> str | None:
    return None if _light("normtrain.data.mnist").find(path) is not None else f"{path} has no MNIST idx files"


DATASETS = {
    "imagenet": Dataset("ImageNet-1k (ILSVRC2012)",
                        "an ImageNet folder: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, the 1000 classes in both "
                        "(sort the flat validation folder with tools/sort_imagenet_val.py)",
                        1_281_167, 50_000, 1000, _imagenet_problem),
    "cifar10": Dataset("CIFAR-10", "the CIFAR-10 python version: data_batch_1..5 and test_batch (in PATH or "
                       "PATH/cifar-10-batches-py), or cifar-10-python.tar.gz", 50_000, 10_000, 10,
                       _cifar_problem("cifar10", "cifar100")),
    "cifar100": Dataset("CIFAR-100", "the CIFAR-100 python version: train and test (in PATH or "
                        "PATH/cifar-100-python), or cifar-100-python.tar.gz", 50_000, 10_000, 100,
                        _cifar_problem("cifar100", "cifar10")),
    "mnist": Dataset("MNIST", "the MNIST idx files: train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                     "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (or .gz; in PATH, PATH/raw or "
                     "PATH/MNIST/raw)", 60_000, 10_000, 10, _mnist_problem),
}

#: `--data synthetic` at paper scale: random tensors shaped like the paper's data, to try the machinery.
SYNTHETIC = "synthetic"


def needs(paper: Paper) -> str:
    """'ImageNet-1k (ILSVRC2012): <layout>' for the README and the messages; '' for generated inputs."""
    if paper.dataset is None:
        return ""
    d = DATASETS[paper.dataset]
    return f"{d.title}: {d.layout}"


def check_dataset(name: str, paper: Paper, data: str | None) -> None:
    """UsageError (one line, naming what is needed) unless `data` is the paper's dataset in its layout.

    Generated-input scenarios take no dataset; ``synthetic`` is accepted for every dataset (a stand-in
    for trying the machinery, recorded as such)."""
    if paper.dataset is None:
        return
    where = f"scenario {name} --scale paper"
    if not data:
        raise UsageError(f"{where} needs {needs(paper)}; give it with --data PATH (datasets are never downloaded)")
    if data == SYNTHETIC:
        return
    path = Path(data).expanduser()
    if not path.exists():
        raise UsageError(f"{where}: --data {data} does not exist; it needs {needs(paper)}")
    problem = DATASETS[paper.dataset].problem(path)
    if problem:
        raise UsageError(f"{where}: {problem}; it needs {needs(paper)}")


# -- GPUs ---------------------------------------------------------------------------------------------

def visible_gpus() -> int:
    """GPUs this process would see, without importing torch: CUDA_VISIBLE_DEVICES if set, else nvidia-smi -L."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def world_size(nproc_per_node: str, nodes: int, paper_gpus: int, gpus_here: int | None = None) -> tuple[int, str]:
    """(processes, how they were counted) for a plan: --nproc-per-node N x nodes; 'auto' = the GPUs here, or,
    with none here, the paper's count."""
    if nproc_per_node != "auto":
        n = int(nproc_per_node)
        return n * nodes, f"{n} per node x {nodes} node(s)"
    found = visible_gpus() if gpus_here is None else gpus_here
    if found:
        return found * nodes, f"the {found} GPU(s) found here x {nodes} node(s)"
    return paper_gpus, (f"no GPU found here: planned for the paper's {paper_gpus} (give --nproc-per-node N "
                        f"[--nnodes M] for another count)")


# -- measured step times -------------------------------------------------------------------------------

def timing_rows(paths) -> list[dict]:
    """Training-step measurements made on a GPU, from doctor.json files (the ``step`` item) and
    tools/bench.py --json files: rows with model, method, micro, size, images_per_s and 'source'."""
    rows = []
    for p in paths:
        try:
            d = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"--timing {p}: cannot read it as JSON ({e})") from None
        if not isinstance(d, dict):
            raise UsageError(f"--timing {p}: not a doctor.json or tools/bench.py --json file")
        if "items" in d:  # doctor.json
            device = str(d.get("device", ""))
            found = [r for item in d["items"] if isinstance(item, dict) for r in item.get("rows", []) or []]
        else:
            device = str((d.get("args") or {}).get("device") or (d.get("machine") or {}).get("device", ""))
            found = d.get("rows", [])
        if "rows" not in d and "items" not in d:
            raise UsageError(f"--timing {p}: not a doctor.json or tools/bench.py --json file (no rows)")
        gpu = (d.get("machine") or {}).get("gpu") or (d.get("machine") or {}).get("gpus") or ""
        for r in found:
            if not isinstance(r, dict) or not r.get("images_per_s") or "error" in r:
                continue
            if not device.startswith("cuda"):
                continue  # a CPU step time says nothing about GPU-hours
            rows.append({**r, "source": f"{Path(p).name}" + (f", {gpu}" if isinstance(gpu, str) and gpu else "")})
    return rows


def default_timing_files() -> list[Path]:
    """./doctor.json when present (the doctor's default output)."""
    p = Path("doctor.json")
    return [p] if p.is_file() else []


def rate_for(rows: list[dict], model: str, method: str, size: int, micro: int) -> tuple[float, str] | None:
    """(images/s per GPU, where from) for a run: a row of its network and method at its image size whose
    per-GPU micro-batch is within a factor 2 of the run's (the nearest); None if nothing was measured that fits
    (another method's rate, or a 64-image step's for a 1-image micro-batch, would be a guess)."""
    cands = [r for r in rows if r.get("model") == model and r.get("method") == method
             and r.get("loop", "bare") == "bare" and (not size or int(r.get("size", size)) == size)
             and 0.5 <= int(r.get("micro", micro)) / max(micro, 1) <= 2.0]
    if not cands:
        return None
    best = min(cands, key=lambda r: (abs(math.log(max(int(r.get("micro", micro)), 1) / max(micro, 1))),
                                     -r["images_per_s"]))
    return float(best["images_per_s"]), f"{model} {method}: {best['images_per_s']:.0f} img/s/GPU at " \
                                        f"{best.get('micro')} per GPU ({best['source']})"


def bench_command(plans: list) -> str:
    """The tools/bench.py command that measures the step times a plan lacks (per network and image size)."""
    need: dict = {}
    for p in plans:
        if p.error or p.rate is not None:
            continue
        rec = p.recipe
        size = rec.data.image_size or (rec.data.synthetic_shape[-1] if rec.data.synthetic_shape else 0)
        key = (rec.model.name, size)
        methods, batches = need.setdefault(key, ([], []))
        for lst, v in ((methods, rec.norm.name),
                       (batches, f"{p.batch.micro}x{p.batch.accum}" if p.batch.accum > 1 else str(p.batch.micro))):
            if v not in lst:
                lst.append(v)
    return "; ".join(f"python tools/bench.py --device cuda --models {m} --methods {','.join(ms)} --batches "
                     f"{','.join(bs)}" + (f" --size {sz}" if sz else "") + " --json bench.json"
                     for (m, sz), (ms, bs) in need.items())


# -- the plan of a training scenario -----------------------------------------------------------------

@dataclass
class RunPlan:
    run: Run
    recipe: Any = None          # the loaded config.Recipe
    batch: Any = None           # batching.BatchPlan on `world` processes (None: it does not split)
    error: str = ""
    train_samples: int = 0
    steps_per_epoch: int = 0
    steps: int = 0
    images: int = 0
    rate: tuple | None = None   # (images/s per GPU, source)

    @property
    def gpu_hours(self) -> float | None:
        return self.images / self.rate[0] / 3600 if self.rate and self.images else None


def train_samples(recipe, dataset: str | None) -> int:
    """Training samples of a run: the paper's dataset less data.val_split; synthetic_samples for synthetic data."""
    if "synthetic" in (recipe.data.source, recipe.data.backend):
        return recipe.data.synthetic_samples
    n = DATASETS[dataset].train if dataset else 0
    return max(n - recipe.data.val_split, 0)


def load_run(run: Run, data: str | None, extra: list = ()):
    """The recipe of a run (its --set pairs, then --data, then `extra`): config.load, no torch."""
    from .. import config
    overrides = list(run.overrides())
    if data:
        overrides.append(("data.source", data))
    return config.load(run.recipe, overrides + list(extra))


def plan(runs: list[Run], world: int, dataset: str | None, data: str | None = None, extra: list = (),
         timing: list[dict] = ()) -> list[RunPlan]:
    """Per run: the batch split on `world` processes, steps per epoch and in total (as the engine counts them),
    images trained on and the measured rate where known. A run whose batch does not split on `world` processes
    gets `error` (the launcher's own message) and no steps."""
    out = []
    for r in runs:
        rp = RunPlan(r, load_run(r, data, extra))
        rec = rp.recipe
        try:
            rp.batch = batching.for_recipe(rec, world)
        except UsageError as e:
            rp.error = str(e)
            out.append(rp)
            continue
        rp.train_samples = train_samples(rec, dataset)
        rp.steps_per_epoch = (rp.train_samples // (rp.batch.micro * world)) // rp.batch.accum
        if rp.steps_per_epoch == 0:
            rp.error = f"{rp.train_samples} training samples are fewer than one global batch of {rec.data.batch_size}"
        else:
            rp.steps = max(1, math.ceil(rec.train.epochs * rp.steps_per_epoch))
            if rec.train.max_steps:
                rp.steps = min(rp.steps, rec.train.max_steps)
            rp.images = rp.steps * rp.batch.global_batch
            size = rec.data.image_size or (rec.data.synthetic_shape[-1] if rec.data.synthetic_shape else 0)
            rp.rate = rate_for(list(timing), rec.model.name, rec.norm.name, size, rp.batch.micro)
        out.append(rp)
    return out


# -- printing --------------------------------------------------------------------------------------

def _int(n: int) -> str:
    return f"{n:,}"


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 10 else f"{h:.2g}"


def total_gpu_hours(plans: list[RunPlan]) -> float | None:
    """Sum over the runs, or None if any run's rate is unknown."""
    hs = [p.gpu_hours for p in plans if not p.error]
    return sum(hs) if hs and all(h is not None for h in hs) else None


UNKNOWN_RATE = ("unknown: no step time measured on a GPU for these networks; run `normtrain doctor` (doctor.json) "
                "or `python tools/bench.py --device cuda --json FILE` on the GPU machine and pass it with --timing")


def run_table(plans: list[RunPlan], world: int) -> str:
    rows = [["run", "arm", "recipe", "norm", "epochs", "steps/epoch", "steps", "global batch",
             f"per process on {world}", "GPU-h"]]
    for p in plans:
        rec = p.recipe
        if p.error:
            rows.append([p.run.name, p.run.arm, p.run.recipe, rec.norm.name, f"{rec.train.epochs:g}", "-", "-",
                         str(rec.data.batch_size), "does not split: see below", "-"])
            continue
        b = p.batch
        split = f"{b.micro} x {b.accum} accum" + (f", {b.ghost_groups} chunk(s) of {rec.norm.ghost_batch}"
                                                   if rec.norm.ghost_batch else "")
        rows.append([p.run.name, p.run.arm, p.run.recipe, rec.norm.name, f"{rec.train.epochs:g}",
                     _int(p.steps_per_epoch), _int(p.steps), str(b.global_batch), split,
                     _hours(p.gpu_hours) if p.gpu_hours is not None else "unknown"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line for line in lines)


def describe(name: str, module, paper: Paper, params, cpu_params, *, scale: str, data: str | None,
             world: int, world_note: str, plans: list[RunPlan] | None, timing_sources: list[str],
             command: str) -> str:
    """The plan `--dry-run` prints: what runs, where, how much, with the paper's numbers."""
    lines = [f"scenario {name} --scale {scale}: " + (f"the paper's experiment ({paper.where})" if scale == "paper"
                                                     else "the CPU size (the default)")]
    k = kind(module) if scale == "paper" else ANALYSIS
    if k == TRAINING:
        lines.append("kind:      training runs, each an ordinary normtrain run folder under <out>/runs/ (resumable; "
                     "a finished one is reused), started one after another through the training launcher")
    else:
        lines.append("kind:      one process" + (" on one GPU (the paper's size fits one)" if scale == "paper" else
                                                  ", as `normtrain scenario NAME` runs it"))
    if scale == "paper":
        if paper.dataset:
            given = f"--data {data}" if data else "not given (the run refuses without --data)"
            lines.append(f"dataset:   {needs(paper)}; {given}")
        else:
            lines.append("dataset:   none: generated inputs")
        lines.append(f"GPUs:      the paper used {paper.gpus}" + (f"; planned on {world} process(es): {world_note}"
                                                                  if k == TRAINING else ""))
    changed = [(f.name, getattr(cpu_params, f.name), getattr(params, f.name)) for f in dataclasses.fields(params)
               if getattr(cpu_params, f.name) != getattr(params, f.name) and f.name not in ("progress",)]
    if scale == "paper":
        lines.append("params:    " + (", ".join(f"{k}={v!r} (cpu {c!r})" for k, c, v in changed) or "as at cpu scale"))
    else:
        lines.append("params:    " + ", ".join(f"{f.name}={getattr(params, f.name)!r}"
                                               for f in dataclasses.fields(params) if f.name != "progress"))
    if k == TRAINING and plans is not None:
        lines.append(f"runs ({len(plans)}):")
        lines.append(run_table(plans, world))
        for p in plans:
            if p.error:
                lines.append(f"  {p.run.name}: {p.error}")
        ok = [p for p in plans if not p.error]
        total = total_gpu_hours(plans)
        lines.append(f"total:     {_int(sum(p.steps for p in ok))} optimizer steps, {sum(p.images for p in ok):,} "
                     f"training images")
        if total is not None:
            lines.append(f"GPU-hours: {_hours(total)} for the training steps ({_hours(total / max(world, 1))} h wall on "
                         f"{world} GPUs at linear scaling; evaluation and start-up not counted); rates: "
                         + "; ".join(dict.fromkeys(p.rate[1] for p in ok)))
        else:
            missing = sorted({f"{p.recipe.model.name} {p.recipe.norm.name} at {p.batch.micro}/GPU" for p in ok
                              if p.rate is None})
            read = f" (read {', '.join(timing_sources)}: nothing for {', '.join(missing)})" if timing_sources else ""
            lines.append(f"GPU-hours: {UNKNOWN_RATE}{read}")
            lines.append(f"measure:   {bench_command(plans)}")
    elif scale == "paper":
        lines.append("GPU-hours: not estimated: one process on one GPU (no per-step figure is measured for it)")
    if scale == "paper" and paper.values:
        lines.append("paper's values:")
        lines += [f"  {k}: {v.text()}" for k, v in paper.values.items()]
    if paper.note and scale == "paper":
        lines.append(f"note:      {paper.note}")
    lines.append(f"command:   {command}")
    return "\n".join(lines)


def paper_command(name: str, paper: Paper, module) -> str:
    """The command line that runs scenario `name` at the paper's size (README, plans)."""
    data = {"imagenet": "/data/imagenet", "cifar10": "/data/cifar10", "cifar100": "/data/cifar100",
            "mnist": "/data/mnist"}.get(paper.dataset or "", "")
    cmd = f"normtrain scenario {name} --scale paper" + (f" --data {data}" if data else "")
    if kind(module) == TRAINING:
        cmd += " --nproc-per-node auto"
    return cmd
