"""The training loop: a flat loop split into a few functions (torchtitan/nanoGPT style).

    train(recipe) -> results dict
      setup_data     loaders for this process, batch arithmetic, class count checks
      setup_model    network through the normalization bundle, AMP/channels_last/compile, DDP
      setup_optim    SGD with optional no-decay group, grad scaler
      restore        resume from <out>/checkpoints/last.pt (or a given file)
      loop           forward/backward with accumulation, lr from schedule.lr_at, divergence
                     and signal checks agreed across ranks, logging, evaluation, checkpoints

Statuses: completed, diverged (non-finite loss; the last good checkpoint is kept),
interrupted (SIGTERM/SIGINT: the current step finishes, `last` is saved).
"""
from __future__ import annotations

import contextlib
import math
import platform
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint, config, data, dist, models, norms
from .errors import UsageError
from .logger import RunLogger
from .schedule import lr_at
from .version import __version__


# -- setup --------------------------------------------------------------------------

@dataclass
class Run:
    """Everything the loop needs, and its position."""
    recipe: config.Recipe
    d: dist.Dist
    out: Path
    train_loader: data.Loader
    val_loader: data.Loader
    steps_per_epoch: int
    total_steps: int
    model: torch.nn.Module = None      # what we call (DDP and/or compiled)
    raw: torch.nn.Module = None        # the bare nn.Module (state_dict, hooks)
    optimizer: torch.optim.Optimizer = None
    scaler: torch.amp.GradScaler = None
    step: int = 0                      # optimizer steps done
    epoch: int = 0
    batch: int = 0                     # next micro-batch index within `epoch`
    best_top1: float = -1.0
    history: list = field(default_factory=list)  # evaluations, divergence, and the latest training scalars
    timings: dict = field(default_factory=lambda: {"train_s": 0.0, "eval_s": 0.0})
    images: int = 0                    # global training images processed in this process's lifetime
    step_times: list = field(default_factory=list)  # seconds per optimizer step (this process's lifetime)
    pending_init: bool = True          # a layer may still want its data-dependent init (checked once)


def setup_data(recipe: config.Recipe, d: dist.Dist):
    cfg, accum = recipe.data, recipe.train.accum_steps
    if cfg.batch_size % (d.world * accum):
        raise UsageError(f"data.batch_size {cfg.batch_size} is not divisible by processes ({d.world}) "
                         f"x train.accum_steps ({accum})")
    micro = cfg.batch_size // (d.world * accum)
    eval_micro = max((cfg.eval_batch_size or cfg.batch_size) // d.world, 1)
    seed = recipe.run.seed
    train_loader = data.build(cfg, "train", data.DataContext(d.rank, d.world, d.device, micro, seed, True))
    val_loader = data.build(cfg, "val", data.DataContext(d.rank, d.world, d.device, eval_micro, seed, False))
    if cfg.num_classes and cfg.num_classes != train_loader.num_classes:
        raise UsageError(f"data.num_classes is {cfg.num_classes} but the data has {train_loader.num_classes} classes")
    steps_per_epoch = len(train_loader) // accum
    if steps_per_epoch == 0:
        raise UsageError(f"the training data ({train_loader.num_samples} samples) is smaller than one "
                         f"global batch (data.batch_size {cfg.batch_size})")
    return train_loader, val_loader, steps_per_epoch


def setup_model(recipe: config.Recipe, d: dist.Dist, num_classes: int, in_shape):
    torch.manual_seed(recipe.run.seed)
    bundle = norms.get(recipe.norm.name, **recipe.norm.options())
    raw = models.build(recipe.model.name, bundle, num_classes, in_shape, init=recipe.model.init,
                       dropout=recipe.model.dropout, **recipe.model.options)
    raw.to(d.device)
    if recipe.train.channels_last:
        raw.to(memory_format=torch.channels_last)
    return raw


def wrap_model(run: Run) -> None:
    model = dist.wrap(run.raw, run.d)
    if run.recipe.train.compile:
        model = torch.compile(model)
    run.model = model


def setup_optim(recipe: config.Recipe, raw: torch.nn.Module, device: torch.device):
    o = recipe.optim
    decay, no_decay = [], []
    for p in raw.parameters():
        if p.requires_grad:
            (no_decay if o.no_decay_norm_bias and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.train.amp == "fp16")
    return opt, scaler


# -- checkpoints -------------------------------------------------------------------

def ckpt_dir(run: Run) -> Path:
    return run.out / "checkpoints"


def finite_weights(raw: torch.nn.Module) -> bool:
    """True if every floating-point parameter and buffer is finite (same answer on every rank under DDP)."""
    tensors = [t for t in list(raw.parameters()) + list(raw.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


def save_checkpoint(run: Run, name: str = "last") -> None:
    """Rank 0 writes (atomically); every rank must call (loader states are gathered from all ranks).

    Callers check `finite_weights` first: a bad state is never saved.
    """
    states = dist.gather_objects(run.train_loader.state_dict(), run.d)
    # A loader with per-rank state (DALI's reader) gets every rank's back on resume.
    loader_state = states[0] if not run.d.active else ({"per_rank": states} if any(states) else {})
    if not run.d.main:
        return
    state = {
        "model": run.raw.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "step": run.step, "epoch": run.epoch, "batch": run.batch,
        "best_top1": run.best_top1, "history": run.history,
        "rng": checkpoint.rng_state(),
        "loader": loader_state,
        "recipe": run.recipe.to_dict(),
        "version": __version__,
    }
    checkpoint.save(ckpt_dir(run) / f"{name}.pt", state)


def resume_path(recipe: config.Recipe, out: Path) -> Path | None:
    mode = recipe.run.resume
    last = out / "checkpoints" / "last.pt"
    if mode == "auto":
        return last if last.is_file() else None
    if mode == "never":
        held = [p.name for p in (out / "checkpoints", out / "results.json", out / "metrics.jsonl") if p.exists()]
        if held:
            raise UsageError(f"run.resume=never but {out} already holds a run ({', '.join(held)}); "
                             "choose another --out or --resume auto")
        return None
    path = Path(mode)
    if not path.is_file():
        raise UsageError(f"--resume: checkpoint file not found: {mode} (or use auto / never)")
    return path


def restore(run: Run, path: Path) -> None:
    state = checkpoint.load(path)
    try:
        run.raw.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UsageError(f"checkpoint {path} does not fit this model/norm ({str(e).splitlines()[0]})") from None
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.step, run.epoch, run.batch = state["step"], state["epoch"], state["batch"]
    run.best_top1, run.history = state["best_top1"], state["history"]
    run.train_loader.load_state_dict(state.get("loader", {}))
    checkpoint.set_rng_state(state["rng"])


# -- evaluation ----------------------------------------------------------------------

def autocast(recipe: config.Recipe, device: torch.device):
    amp = recipe.train.amp
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(run: Run) -> dict:
    """Loss, top-1 and top-5 accuracy over the whole evaluation split (summed over ranks)."""
    t0 = time.perf_counter()
    run.model.eval()
    dev = run.d.device
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, top1, top5, count
    k = min(5, run.val_loader.num_classes)
    for x, y in run.val_loader.epoch(0):
        if run.recipe.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(run.recipe, dev):
            out = run.model(x)
        out = out.float()
        topk = out.topk(k, dim=1).indices
        hit = topk == y[:, None]
        sums += torch.stack([F.cross_entropy(out, y, reduction="sum").double(), hit[:, 0].sum().double(),
                             hit.any(1).sum().double(), torch.tensor(len(y), dtype=torch.float64, device=dev)])
    dist.all_sum(sums)
    loss, top1, top5, n = sums.tolist()
    run.model.train()
    run.timings["eval_s"] += time.perf_counter() - t0
    n = max(n, 1)
    return {"eval/loss": loss / n, "eval/top1": 100 * top1 / n, "eval/top5": 100 * top5 / n}


# -- output norm tracking (Gitman & Ginsburg Fig. 4) -------------------------------------

class NormTracker:
    """Mean per-sample L2 norm of three outputs, logged as ``norms/<point>`` (Gitman & Ginsburg Fig. 4):

    - ``first_layer_output``: the first conv/linear layer to run, after the activation norm that
      runs right after it (so BN-family methods are measured normalized);
    - ``last_hidden_output``: the last residual block's output (a module with a ``join``) or, in a
      network without residual blocks, the last conv/linear before the output layer, after its norm;
    - ``last_layer_output``: the output layer (the last conv/linear to run: the classifier).

    The modules are picked from the order in which they finish in the model's first forward, so
    no network needs to name them.
    """

    POINTS = ("first_layer_output", "last_hidden_output", "last_layer_output")

    def __init__(self, raw: torch.nn.Module):
        self.values = {}
        self.active = False
        self.targets: dict | None = None
        self._order: list = []
        self._first: dict = {}
        blocks = {id(b) for _, b in models.residual_blocks(raw)}
        self._blocks = blocks
        self._probes = [m.register_forward_hook(self._probe) for m in raw.modules()
                        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) or _is_norm(m) or id(m) in blocks]

    @staticmethod
    def _norm(output: torch.Tensor) -> torch.Tensor:
        return output.detach().float().flatten(1).norm(dim=1).mean()

    def _probe(self, module, inputs, output):
        if self.targets is not None:
            return
        if all(m is not module for m in self._order):
            self._order.append(module)
        if self.active:
            self._first[id(module)] = self._norm(output)

    def _choose(self) -> None:
        order = self._order
        layers = [m for m in order if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]

        def normed(layer):  # the norm that runs right after `layer`, if any
            i = next(k for k, m in enumerate(order) if m is layer)
            return order[i + 1] if i + 1 < len(order) and _is_norm(order[i + 1]) else layer
        blocks = [m for m in order if id(m) in self._blocks]
        hidden = blocks[-1] if blocks else normed(layers[-2] if len(layers) > 1 else layers[-1])
        self.targets = dict(zip(self.POINTS, (normed(layers[0]), hidden, layers[-1])))
        for tag, m in self.targets.items():
            if id(m) in self._first:
                self.values[f"norms/{tag}"] = self._first[id(m)]
            m.register_forward_hook(self._hook(tag))
        for h in self._probes:
            h.remove()
        self._probes, self._first = [], {}

    def _hook(self, tag):
        def hook(module, inputs, output):
            if self.active:
                self.values[f"norms/{tag}"] = self._norm(output)
        return hook

    def pop(self) -> dict:
        if self.targets is None and self._order:
            self._choose()
        out = {k: v.item() for k, v in self.values.items()}
        self.values.clear()
        return out


def _is_norm(m: torch.nn.Module) -> bool:
    """Activation-normalization layers: BN-family (incl. GhostNorm), GroupNorm/LN/IN, LayerNorm."""
    from torch.nn.modules.batchnorm import _NormBase
    return isinstance(m, (_NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm))


# -- the loop --------------------------------------------------------------------------

class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, saves and exits."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread)
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train_step(run: Run, it, tracker: NormTracker | None, log_now: bool):
    """One optimizer step's forward/backward over `accum_steps` micro-batches (the step itself is the caller's).

    Returns (mean loss, correct predictions, samples seen, gradient norm or None).
    """
    r, dev = run.recipe, run.d.device
    accum = r.train.accum_steps
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    n = 0
    for i in range(accum):
        x, y = next(it)
        if r.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if run.pending_init and norms.data_init(run.raw, x):
            # Data-dependent init ran on this rank's first batch: rank 0's result is the one kept.
            dist.broadcast_module(run.raw, run.d)
        run.pending_init = False
        if tracker is not None:
            tracker.active = log_now and i == 0
        # Only the last micro-batch all-reduces gradients (DDP no_sync for the others).
        sync = run.model.no_sync() if (run.d.active and i < accum - 1 and hasattr(run.model, "no_sync")) \
            else contextlib.nullcontext()
        with sync:
            with autocast(r, dev):
                out = run.model(x)
                loss = F.cross_entropy(out.float(), y, label_smoothing=r.train.label_smoothing)
            run.scaler.scale(loss / accum).backward()
        loss_sum += loss.detach()
        correct += (out.detach().argmax(1) == y).sum()
        n += len(y)
    grad_norm = None
    if r.train.grad_clip > 0 or log_now:
        run.scaler.unscale_(run.optimizer)
        params = [p for p in run.raw.parameters() if p.grad is not None]
        max_norm = r.train.grad_clip if r.train.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return loss_sum / accum, correct, n, grad_norm


def loop(run: Run, log: RunLogger, stop: StopFlag) -> str:
    r, d = run.recipe, run.d
    accum = r.train.accum_steps
    tracker = NormTracker(run.raw) if r.log.track_norms else None
    end_step = run.total_steps if not r.train.max_steps else min(run.total_steps, r.train.max_steps)
    window = {"loss": torch.zeros((), device=d.device), "correct": 0, "n": 0, "steps": 0, "t": time.perf_counter()}
    status = "completed"
    run.model.train()
    while run.step < end_step:
        it = iter(run.train_loader.epoch(run.epoch, start=run.batch))
        epoch_end = False
        while run.step < end_step:
            if run.batch + accum > run.steps_per_epoch * accum:
                epoch_end = True
                break
            t0 = time.perf_counter()
            lr = lr_at(run.step, run.total_steps, run.steps_per_epoch, r.schedule, r.optim.lr)
            for g in run.optimizer.param_groups:
                g["lr"] = lr
            log_now = (run.step + 1) % r.log.every_steps == 0 or run.step + 1 == end_step
            loss, correct, n, grad_norm = train_step(run, it, tracker, log_now)
            # One collective per step: did any rank see a non-finite loss, or get a signal?
            flags = dist.any_true(torch.stack([~torch.isfinite(loss),
                                               torch.tensor(stop.requested, device=d.device)])).tolist()
            if flags[0]:
                # Weights are still those of the last good step: nothing is stepped or saved.
                run.step += 1
                mark_diverged(run, log, "non-finite loss")
                run.step -= 1
                run.timings["train_s"] += time.perf_counter() - t0
                return "diverged"
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
            run.step += 1
            run.batch += accum
            run.images += n * d.world
            window["loss"] += loss
            window["correct"] += correct
            window["n"] += n
            window["steps"] += 1
            run.step_times.append(time.perf_counter() - t0)
            run.timings["train_s"] += run.step_times[-1]
            if log_now:
                stats = torch.stack([window["loss"], torch.as_tensor(window["correct"], device=d.device).float(),
                                     torch.tensor(float(window["n"]), device=d.device)])
                dist.all_sum(stats)
                loss_v, corr_v, n_v = stats.tolist()
                elapsed = time.perf_counter() - window["t"]
                values = {"train/loss": loss_v / (window["steps"] * d.world), "train/top1": 100 * corr_v / max(n_v, 1),
                          "train/lr": lr, "train/images_per_s": n_v / max(elapsed, 1e-9),
                          "train/grad_norm": float(grad_norm) if grad_norm is not None else None}
                if tracker is not None:
                    values.update(tracker.pop())
                log.scalars(run.step, values, epoch=run.epoch)
                log.advance(window["steps"], {"loss": f"{values['train/loss']:.4f}", "lr": f"{lr:.3g}",
                                              "img/s": f"{values['train/images_per_s']:.0f}"})
                # Keep one training entry at the end of the history (metrics.jsonl has them all),
                # so checkpoints of long runs do not grow with every logged step.
                if run.history and "train/loss" in run.history[-1]:
                    run.history.pop()
                run.history.append({"step": run.step, **values})
                window.update(loss=torch.zeros((), device=d.device), correct=0, n=0, steps=0, t=time.perf_counter())
            if r.train.eval_every_steps and run.step % r.train.eval_every_steps == 0:
                record_eval(run, log)
            if flags[1]:
                if not checked_save(run, log):
                    return "diverged"
                log.print(f"interrupted at step {run.step}: saved {ckpt_dir(run) / 'last.pt'}")
                return "interrupted"
            if r.train.checkpoint_every_steps and run.step % r.train.checkpoint_every_steps == 0:
                if not checked_save(run, log):
                    return "diverged"
        if epoch_end or run.batch >= run.steps_per_epoch * accum:
            run.epoch += 1
            run.batch = 0
            if not finite_weights(run.raw):
                return mark_diverged(run, log)
            if run.epoch % r.train.eval_every_epochs == 0 or run.step >= end_step:
                record_eval(run, log)
            save_checkpoint(run)
    if run.batch != 0 or not run.history or "eval/top1" not in run.history[-1]:
        # Stopped mid-epoch (max_steps or a fractional epoch count): evaluate and save the position.
        if not finite_weights(run.raw):
            return mark_diverged(run, log)
        record_eval(run, log)
        save_checkpoint(run)
    return status


def mark_diverged(run: Run, log: RunLogger, what: str = "non-finite weights") -> str:
    run.history.append({"step": run.step, "diverged": True})
    log.print(f"{what} at step {run.step}: run diverged")
    return "diverged"


def checked_save(run: Run, log: RunLogger) -> bool:
    """Save `last` unless the weights went non-finite (then the run is marked diverged)."""
    if not finite_weights(run.raw):
        mark_diverged(run, log)
        return False
    save_checkpoint(run)
    return True


def record_eval(run: Run, log: RunLogger) -> dict:
    metrics = evaluate(run)
    log.scalars(run.step, metrics, epoch=run.epoch)
    run.history.append({"step": run.step, **metrics})
    if metrics["eval/top1"] > run.best_top1:
        run.best_top1 = metrics["eval/top1"]
        save_checkpoint(run, "best")
    log.print(f"step {run.step} epoch {run.epoch}: eval loss {metrics['eval/loss']:.4f} "
              f"top1 {metrics['eval/top1']:.2f}% top5 {metrics['eval/top5']:.2f}%")
    return metrics


# -- entry point ------------------------------------------------------------------------

def prepare(recipe: config.Recipe, d: dist.Dist) -> Run:
    """Everything before the loop, with no file written (bad input raises UsageError first)."""
    out = Path(recipe.run.out)
    train_loader, val_loader, spe = setup_data(recipe, d)
    total = max(1, math.ceil(recipe.train.epochs * spe))
    run = Run(recipe=recipe, d=d, out=out, train_loader=train_loader, val_loader=val_loader,
              steps_per_epoch=spe, total_steps=total)
    run.raw = setup_model(recipe, d, train_loader.num_classes, train_loader.in_shape)
    run.optimizer, run.scaler = setup_optim(recipe, run.raw, d.device)
    path = resume_path(recipe, out)
    if path is not None:
        restore(run, path)
    wrap_model(run)
    return run


def summary_line(res: dict) -> str:
    f = res.get("final", {})
    parts = [f"normtrain: {res['status']}", f"{res['recipe']} {res['model']} norm={res['norm']}",
             f"step {res['steps']}/{res['total_steps']}"]
    if res["status"] == "diverged":
        parts.append(f"diverged at step {res['diverged_at_step']}")
    if "eval/top1" in f:
        parts.append(f"eval top1 {f['eval/top1']:.2f}% top5 {f['eval/top5']:.2f}% (best {res['best_eval_top1']:.2f}%)")
    if f.get("train/loss") is not None:
        parts.append(f"train loss {f['train/loss']:.4f}")
    parts.append(f"{res['timings']['images_per_s']:.0f} img/s, {res['timings']['total_s']:.1f}s")
    parts.append(f"-> {res['out']}")
    return " | ".join(parts)


def train(recipe: config.Recipe) -> dict:
    """Train according to `recipe`; returns the results dict (also written to <out>/results.json)."""
    t_start = time.perf_counter()
    d = dist.setup(recipe.run.device)
    try:
        run = prepare(recipe, d)
        start_step = run.step
        log = RunLogger(None, 0, False, False)
        if d.main:
            run.out.mkdir(parents=True, exist_ok=True)
            checkpoint.atomic_write_text(run.out / "recipe.yaml", config.dump(recipe))
            log = RunLogger(run.out, run.total_steps if not recipe.train.max_steps
                            else min(run.total_steps, recipe.train.max_steps),
                            recipe.log.progress, recipe.log.tensorboard, initial_step=run.step)
            if start_step:
                log.print(f"resumed from step {start_step} (epoch {run.epoch}, batch {run.batch})")
        try:
            with StopFlag() as stop:
                status = loop(run, log, stop)
            res = results(run, status, time.perf_counter() - t_start, start_step)
            log.results(res)
        finally:
            log.close()
        if d.main:
            print(summary_line(res), flush=True)
    except BaseException:
        dist.teardown(clean=False)
        raise
    dist.teardown()
    return res


def results(run: Run, status: str, total_s: float, start_step: int) -> dict:
    r = run.recipe
    final = {}
    for h in run.history:
        final.update({k: v for k, v in h.items() if "/" in k and v is not None})
    diverged = [h["step"] for h in run.history if h.get("diverged")]
    return {
        "status": status,
        "recipe": r.run.name, "model": r.model.name, "norm": r.norm.name,
        "steps": run.step, "total_steps": run.total_steps, "steps_per_epoch": run.steps_per_epoch,
        "epoch": run.epoch, "resumed_from_step": start_step,
        "diverged_at_step": diverged[-1] if diverged else None,
        "final": final, "best_eval_top1": run.best_top1 if run.best_top1 >= 0 else None,
        "timings": {"total_s": total_s, "train_s": run.timings["train_s"], "eval_s": run.timings["eval_s"],
                    "images_per_s": run.images / max(run.timings["train_s"], 1e-9),
                    "step_s_median": statistics.median(run.step_times) if run.step_times else None},
        "world_size": run.d.world, "device": str(run.d.device),
        "versions": {"normtrain": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "out": str(run.out),
    }
