"""Training-step and data-loader throughput measurements (the logic of tools/bench.py and `normtrain doctor`).

A benchmark is a list of `Config`s (network, method, micro-batch x accumulation, AMP
dtype, memory layout, eager or compiled, bare loop or the engine's own loop), timed
in interleaved rounds: every round runs each config once (warm-up steps, then timed
steps, each ended by a device sync), so a slow drift of the machine spreads over
all configs instead of favouring the ones timed first. A config's figure is the
median over rounds of its per-round median step time.

- bare loop: forward, cross-entropy, backward (loss / accum per micro-batch), SGD
  step, on fixed synthetic tensors already on the device;
- engine loop: `engine.train` on the synthetic backend with the same network,
  batch, accumulation, AMP, layout and compile flag, i.e. everything the engine adds
  per step (its flag collective, lr assignment, device-side sums, its syncs);
  its own per-step timer (median) is the figure.
- compiled configs: `torch._dynamo.reset()` before every compile, because all
  networks share their `forward` code and dynamo stops compiling a code object
  after `recompile_limit` (8) guard failures, i.e. the 9th compiled method would
  silently run eager. Each row records how many frames dynamo compiled, so a
  silent fallback shows as 0.
- `layouts="auto"`: every config in the base layout, plus the other layout for the
  networks whose forward calls group_norm (CUDA's group norm kernels are NCHW-only,
  so for the GN family NCHW may beat channels_last; detected on the built network,
  not from method names).

Ratios are taken within one run: ``vs_torchvision`` against torchvision's network of
the same name trained eager with the same batch, dtype, layout and loop;
``step_vs_bn`` / ``mem_vs_bn`` against `bn` with the same batch, dtype, compile flag
and loop in the base layout; ``engine_vs_bare`` of an engine row against its bare twin.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

TORCHVISION = "torchvision"


@dataclass(frozen=True)
class Config:
    model: str
    method: str                 # a norms name, or TORCHVISION for torchvision's network of the same name
    micro: int                  # images per micro-batch (per GPU)
    accum: int = 1              # micro-batches per optimizer step
    size: int = 224
    classes: int = 1000
    amp: str = "bf16"           # off | bf16 | fp16 (fp16 with a grad scaler, as the engine)
    channels_last: bool = True
    compile: bool = False
    loop: str = "bare"          # bare | engine
    norm_options: tuple = ()    # ((key, value), ...): the recipe's per-norm options (trelu-wn's weighted join)

    @property
    def batch_label(self) -> str:
        return f"{self.micro}" if self.accum == 1 else f"{self.micro}x{self.accum}"

    @property
    def images_per_step(self) -> int:
        return self.micro * self.accum


def parse_batches(spec: str) -> list[tuple[int, int]]:
    """'32,256,1x64' -> [(32, 1), (256, 1), (1, 64)]: images per micro-batch x accumulation steps."""
    out = []
    for part in spec.split(","):
        micro, _, accum = part.strip().partition("x")
        try:
            m, a = int(micro), int(accum or 1)
        except ValueError:
            raise ValueError(f"batch '{part}': expected N or NxK (N images per micro-batch, "
                             "K accumulation steps)") from None
        if m < 1 or a < 1:
            raise ValueError(f"batch '{part}': N and K must be positive")
        out.append((m, a))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_fast_defaults(device: torch.device) -> dict:
    """cuDNN autotuning and TF32 matmuls on CUDA, as DLE's ResNet-50 runs (and the engine on CUDA)."""
    if device.type != "cuda":
        return {}
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return {"cudnn.benchmark": True, "tf32": True}


def torchvision_builder(model: str):
    """torchvision's network of the same layout (`resnext50-32x4d` -> resnext50_32x4d), or None."""
    try:
        import torchvision
    except Exception:  # noqa: BLE001 - torchvision is optional for the benchmark
        return None
    return getattr(torchvision.models, model.replace("-", "_"), None)


def recipe_norm_options(recipe: str | None, method: str) -> tuple:
    """The norm.* options `recipe` gives `method` that differ from the defaults (its per_norm block:
    resnet50-imagenet gives trelu-wn the weighted join), as ((key, value), ...); () without a recipe."""
    if not recipe or method == TORCHVISION:
        return ()
    import dataclasses

    from . import config
    norm = config.load(recipe, [("norm.name", method)]).norm
    default = config.load(None, [("norm.name", method)]).norm
    return tuple((f.name, getattr(norm, f.name)) for f in dataclasses.fields(norm)
                 if f.name != "name" and getattr(norm, f.name) != getattr(default, f.name))


def build_network(cfg: Config, ghost_groups: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    if cfg.method == TORCHVISION:
        make = torchvision_builder(cfg.model)
        if make is None:
            raise ValueError(f"torchvision has no '{cfg.model}'")
        return make(num_classes=cfg.classes)
    from . import models, norms
    options = {**dict(cfg.norm_options), "ghost_groups": ghost_groups}
    return models.build(cfg.model, norms.get(cfg.method, **options), cfg.classes, (3, cfg.size, cfg.size))


def allocated(device: torch.device) -> int:
    """Bytes the caching allocator holds for tensors on `device` now (0 off CUDA)."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def peak_gib(device: torch.device, base: int) -> float | None:
    """The peak since the last reset, less `base` (what was allocated before the config was built)."""
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30


def uses_group_norm(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether a forward pass of `model` calls group_norm (seen through a TorchFunctionMode)."""
    from torch.overrides import TorchFunctionMode

    class _Seen(TorchFunctionMode):
        found = False

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") == "group_norm":
                _Seen.found = True
            return func(*args, **(kwargs or {}))

    was_training = model.training
    model.eval()  # no running-statistics update from this probe
    with torch.no_grad(), _Seen():
        model(x)
    model.train(was_training)
    return _Seen.found


def autocast(amp: str, device: torch.device):
    if amp == "off":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class BareRunner:
    """One config's network, optimizer and fixed synthetic batches, timed step by step."""

    def __init__(self, cfg: Config, device: torch.device, ghost_groups: int = 4, compile_backend: str = "inductor"):
        self.cfg, self.device, self.backend = cfg, device, compile_backend
        self.raw = build_network(cfg, ghost_groups).to(device).train()
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.raw.to(memory_format=fmt)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(cfg.micro * cfg.accum, 3, cfg.size, cfg.size, generator=g)
        y = torch.randint(0, cfg.classes, (cfg.micro * cfg.accum,), generator=g)
        self.xs = [c.to(device).contiguous(memory_format=fmt) for c in x.split(cfg.micro)]
        self.ys = [c.to(device) for c in y.split(cfg.micro)]
        self.opt = torch.optim.SGD(self.raw.parameters(), lr=0.01, momentum=0.9)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        self.model = self.raw
        self.compiled_frames = None

    def prepare(self) -> None:
        """Compiled configs: a fresh dynamo state and a fresh compile of this network (see module doc)."""
        if self.cfg.compile:
            torch._dynamo.reset()
            self.model = torch.compile(self.raw, backend=self.backend)

    def step(self) -> None:
        """One optimizer step over `accum` micro-batches (the loss of each divided by accum), with the
        reparametrised weights computed once per step as the engine does (`norms.micro_batches`)."""
        from . import norms
        cfg = self.cfg
        for i in norms.micro_batches(self.raw, cfg.accum):
            x, y = self.xs[i], self.ys[i]
            with autocast(cfg.amp, self.device):
                loss = F.cross_entropy(self.model(x).float(), y)
            self.scaler.scale(loss / cfg.accum).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)

    def step_on(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step on the batch (x, y) (a loader's), in this config's layout and precision."""
        cfg = self.cfg
        if cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(cfg.amp, self.device):
            loss = F.cross_entropy(self.model(x).float(), y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)

    def time(self, warmup: int, steps: int, base: int = 0) -> dict:
        from torch._dynamo.utils import counters
        frames_before = counters["frames"]["ok"]
        for _ in range(warmup):
            self.step()
        if self.cfg.compile:
            self.compiled_frames = counters["frames"]["ok"] - frames_before
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.step()
            sync(self.device)
            times.append(time.perf_counter() - t0)
        return {"step_s": statistics.median(times), "peak_mem_gib": peak_gib(self.device, base)}


class EngineRunner:
    """The same config through `engine.train` (synthetic backend, one process)."""

    def __init__(self, cfg: Config, device: torch.device, ghost_groups: int = 4):
        self.cfg, self.device, self.ghost_groups = cfg, device, ghost_groups
        self.compiled_frames = None

    def prepare(self) -> None:
        if self.cfg.compile:
            torch._dynamo.reset()

    def time(self, warmup: int, steps: int, base: int = 0) -> dict:
        from . import config, engine
        from torch._dynamo.utils import counters
        cfg, n = self.cfg, warmup + steps
        out = Path(tempfile.mkdtemp(prefix="normtrain-bench-"))
        recipe = config.load(None, [
            ("model.name", cfg.model), ("norm.name", cfg.method), ("norm.ghost_groups", self.ghost_groups),
            *((f"norm.{k}", v) for k, v in cfg.norm_options),
            ("data.source", "synthetic"), ("data.synthetic_shape", [3, cfg.size, cfg.size]),
            ("data.synthetic_classes", cfg.classes), ("data.batch_size", cfg.images_per_step),
            ("data.synthetic_samples", cfg.images_per_step * n), ("data.eval_batch_size", cfg.micro),
            ("train.accum_steps", cfg.accum), ("train.amp", cfg.amp), ("train.channels_last", cfg.channels_last),
            ("train.compile", cfg.compile), ("train.epochs", 1.0), ("optim.lr", 0.01), ("optim.momentum", 0.9),
            ("log.progress", False), ("log.tensorboard", False), ("log.every_steps", max(n, 1)),
            ("log.eval_lines", "none"),
            ("run.device", self.device.type), ("run.out", str(out)), ("run.resume", "never")])
        frames_before = counters["frames"]["ok"]
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            # Its own lines (the summary, the final evaluation of an untrained network) are not the
            # benchmark's output: they would read like results.
            with contextlib.redirect_stdout(io.StringIO()):
                res = engine.train(recipe)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if cfg.compile:
            self.compiled_frames = counters["frames"]["ok"] - frames_before
        # Mean step time after the engine's warm-up steps (its images/s): on CUDA the engine's per-step
        # timer does not synchronise, so single steps measure launch time; their sum over the timed
        # steps is bounded by the GPU (the launch queue fills), as the bare loop's synchronised steps are.
        t = res["timings"]
        step = cfg.images_per_step / t["images_per_s"] if t.get("images_per_s") else t["step_s_median"]
        return {"step_s": step, "peak_mem_gib": peak_gib(self.device, base)}


def plan(models: list[str], methods: list[str], batches: list[tuple[int, int]], amps: list[str], layouts: str,
         compiles: list[bool], loops: list[str], size: int, classes: int, device: torch.device,
         ghost_groups: int = 4, recipe: str | None = None) -> list[Config]:
    """Every config to time; `layouts`: cl, nchw, both, or auto (cl, plus nchw where group_norm runs);
    each method with the norm options `recipe` gives it (`recipe_norm_options`)."""
    configs, group_norm = [], {}
    options = {m: recipe_norm_options(recipe, m) for m in methods}
    for model in models:
        names = ([TORCHVISION] if torchvision_builder(model) is not None else []) + list(methods)
        for micro, accum in batches:
            for method in names:
                base = Config(model, method, micro, accum, size, classes, amps[0], layouts != "nchw",
                              norm_options=options.get(method, ()))
                variants = [base.channels_last] if layouts in ("cl", "nchw") else [True, False]
                if layouts == "auto":
                    if (model, method) not in group_norm:
                        group_norm[model, method] = _calls_group_norm(base, device, ghost_groups)
                    variants = [True, False] if group_norm[model, method] else [True]
                for amp in amps:
                    for cl in variants:
                        for comp in compiles:
                            for loop in loops:
                                if loop == "engine" and method == TORCHVISION:
                                    continue
                                configs.append(dataclasses.replace(base, amp=amp, channels_last=cl, compile=comp,
                                                                   loop=loop))
    return configs


def _calls_group_norm(cfg: Config, device: torch.device, ghost_groups: int) -> bool:
    try:
        net = build_network(cfg, ghost_groups).to(device)
        return uses_group_norm(net, torch.randn(2, 3, cfg.size, cfg.size, device=device))
    except Exception:  # noqa: BLE001 - the config will fail, and be reported, when it is timed
        return False


def run(configs: list[Config], device: torch.device, warmup: int, steps: int, repeats: int = 1,
        ghost_groups: int = 4, compile_backend: str = "inductor", on_row=None) -> list[dict]:
    """Time every config in `repeats` interleaved rounds; one row per config (see the module doc).

    Each config's network, optimizer state and inputs are built for its turn and freed after it, and
    its peak memory is counted above what was allocated before it was built: one config's memory
    never appears in another's figure (keeping them all alive squeezed ``mem_vs_bn`` toward 1).
    """
    errors, rounds, frames = {}, {c: [] for c in configs}, {}
    for r in range(repeats):
        for cfg in configs:
            if cfg in errors:
                continue
            runner = None
            try:
                base = allocated(device)
                runner = (EngineRunner(cfg, device, ghost_groups) if cfg.loop == "engine"
                          else BareRunner(cfg, device, ghost_groups, compile_backend))
                runner.prepare()
                rounds[cfg].append(runner.time(warmup, steps, base))
                frames[cfg] = runner.compiled_frames
            except Exception as e:  # noqa: BLE001 - a config that cannot run is a result
                errors[cfg] = f"{type(e).__name__}: {e}".splitlines()[0]
            finally:
                del runner
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    rows = []
    for cfg in configs:
        row = {**dataclasses.asdict(cfg), "batch": cfg.batch_label}
        if cfg in errors:
            row["error"] = errors[cfg]
        else:
            times = [t["step_s"] for t in rounds[cfg]]
            step = statistics.median(times)
            peaks = [t["peak_mem_gib"] for t in rounds[cfg] if t["peak_mem_gib"] is not None]
            row.update(step_s=step, images_per_s=cfg.images_per_step / step, round_step_s=times,
                       spread=(max(times) - min(times)) / step, peak_mem_gib=max(peaks) if peaks else None)
            if cfg.compile:
                row["compiled_frames"] = frames.get(cfg)
        rows.append(row)
        if on_row:
            on_row(row)
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict]) -> None:
    ok = [r for r in rows if "error" not in r]
    fields = ("model", "batch", "amp", "channels_last", "compile", "loop", "method")
    key = lambda r, **kw: tuple({**r, **kw}[k] for k in fields)
    by = {key(r): r for r in ok}
    base_cl = {(r["model"], r["batch"], r["amp"], r["compile"], r["loop"]): r["channels_last"]
               for r in ok if r["method"] == "bn"}
    for r in ok:
        tv = by.get(key(r, method=TORCHVISION, compile=False, loop="bare"))
        if tv is not None:
            r["vs_torchvision"] = r["images_per_s"] / tv["images_per_s"]
        cl = base_cl.get((r["model"], r["batch"], r["amp"], r["compile"], r["loop"]))
        bn = by.get(key(r, method="bn", channels_last=cl)) if cl is not None else None
        if bn is not None:
            r["step_vs_bn"] = r["step_s"] / bn["step_s"]
            if r.get("peak_mem_gib") and bn.get("peak_mem_gib"):
                r["mem_vs_bn"] = r["peak_mem_gib"] / bn["peak_mem_gib"]
        if r["loop"] == "engine":
            bare = by.get(key(r, loop="bare"))
            if bare is not None:
                r["engine_vs_bare"] = r["step_s"] / bare["step_s"]


def markdown(rows: list[dict]) -> str:
    out = ["| model | method | batch | amp | layout | compile | loop | images/s | vs torchvision | step vs bn "
           "| peak GiB | mem vs bn | engine/bare | spread |",
           "|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        head = (f"| {r['model']} | {r['method']} | {r['batch']} | {r['amp']} | "
                f"{'cl' if r['channels_last'] else 'nchw'} | {'on' if r['compile'] else 'off'} | {r['loop']} |")
        if "error" in r:
            out.append(f"{head} error: {r['error'][:70]} | | | | | | | |")
            continue
        f = lambda k, fmt: (fmt % r[k]) if r.get(k) is not None else "–"
        comp = " (eager: dynamo compiled nothing)" if r["compile"] and r.get("compiled_frames") == 0 else ""
        ips = f"{r['images_per_s']:.0f}" if r["images_per_s"] >= 100 else f"{r['images_per_s']:.3g}"
        out.append(f"{head} {ips}{comp} | {f('vs_torchvision', '%.2fx')} | {f('step_vs_bn', '%.2fx')} | "
                   f"{f('peak_mem_gib', '%.1f')} | {f('mem_vs_bn', '%.2fx')} | {f('engine_vs_bare', '%.3fx')} | "
                   f"{100 * r['spread']:.1f}% |")
    return "\n".join(out)


# -- data loaders ---------------------------------------------------------------------

def make_jpeg_folder(root: Path, images: int, classes: int = 8, seed: int = 0, sides=(330, 500)) -> Path:
    """An ImageNet-style folder of ImageNet-like JPEGs: smooth random colour fields plus noise,
    `sides` pixels (ImageNet's typical 330-500 px), quality 90; val gets 1/8 as many."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    per = max(images // classes, 1)
    lo, hi = sides
    for split, n in (("train", per), ("val", max(per // 8, 1))):
        for c in range(classes):
            d = Path(root) / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                h, w = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
                small = rng.integers(0, 256, (int(rng.integers(6, 20)), int(rng.integers(6, 20)), 3), dtype=np.uint8)
                img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
                img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"img_{j:05d}.JPEG", quality=90)
    return Path(root)


def loader_images_per_s(data_cfg, device: torch.device, batch: int, batches: int, warmup: int, step=None,
                        channels_last: bool = False) -> dict:
    """Images/s of one process's training loader for `data_cfg` (batches end on `device`, as in
    training), over `batches` timed batches after `warmup`, crossing epochs if the data is small.
    With `step` (a function of a batch (x, y): a training step), each batch is also trained on, so the
    figure is the training rate with this loader feeding it (GPU decoding shares the GPU with it)."""
    from . import data
    t0 = time.perf_counter()
    loader = data.build(data_cfg, "train", data.DataContext(0, 1, device, batch, 0, True))
    loader.use_channels_last(channels_last)
    build_s = time.perf_counter() - t0

    def forever():
        e = 0
        while True:
            yield from loader.epoch(e)
            e += 1

    it = forever()
    x = None
    for _ in range(warmup):
        x, y = next(it)
        if step is not None:
            step(x, y)
    sync(device)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, y = next(it)
        if step is not None:
            step(x, y)
        n += len(y)
    sync(device)
    dt = time.perf_counter() - t0
    return {"images_per_s": n / dt, "seconds": dt, "images": n, "build_s": build_s,
            "output": [list(x.shape), str(x.dtype), str(x.device)]}


def machine(device: torch.device) -> dict:
    from . import threads
    info = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "cpus_available": threads.available()}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info
