"""The training loop: a flat loop split into a few functions (torchtitan/nanoGPT style).

    train(recipe) -> results dict
      open_run       rank 0 locks the run folder and decides fresh / resume / already done
                     (rundir.RunDir); every rank gets the same decision
      setup_data     loaders for this process, batch arithmetic (batching.plan), class count checks
      setup_model    network through the normalization bundle, AMP/channels_last/compile, DDP
      setup_optim    the optimizer (normtrain/optim.py) with optional no-decay group, grad scaler;
                     the EMA copy of the weights (normtrain/ema.py), batch mixing (data/mix.py)
      restore        resume from the decided checkpoint (state sent by rank 0 where needed)
      loop           forward/backward with accumulation, lr from schedule.lr_at, divergence
                     and signal checks agreed across ranks (read one step late: no host-device
                     sync on the step's path), logging, evaluation, checkpoints

Statuses: completed, diverged (non-finite loss or weights; the last good checkpoint
is kept), interrupted (SIGTERM/SIGINT: the current step finishes, `last` is saved).
On CUDA the defaults are the fast path (bf16 autocast, channels_last where the
method's kernels support it, cudnn.benchmark, TF32): see `runtime`.
"""
from __future__ import annotations

import contextlib
import math
import platform
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import batching, checkpoint, clip, config, data, dist, ema, memory, models, norms, optim, threads
from .errors import EnvError, UsageError, WorkerError
from .logger import RunLogger, duration, rate
from .rundir import Decision, RunDir
from .schedule import lr_at
from .version import __version__


#: Optimizer steps at the start of each invocation left out of images/s (see `throughput`).
WARMUP_STEPS = 5
#: train.compile auto on CUDA: compiled when the per-process micro-batch has at most this many images
#: (a step of a few images is bound by kernel launches, whatever the method)...
COMPILE_MICRO_BATCH = 8
#: ... or when the method's eager forward dispatches more than this many times bn's operators on the
#: same network (counted on fake CUDA tensors, normtrain/fakecuda.py; the audit's target, docs/PERFORMANCE.md).
COMPILE_OPS_RATIO = 2.5


# -- setup --------------------------------------------------------------------------

@dataclass
class Run:
    """Everything the loop needs, and its position."""
    recipe: config.Recipe
    d: dist.Dist
    out: Path
    plan: batching.BatchPlan
    train_loader: data.Loader
    val_loader: data.Loader
    steps_per_epoch: int
    total_steps: int
    test_loader: data.Loader | None = None  # the test split beside a held-out validation split (data.val_split)
    amp: str = "off"                   # resolved train.amp: off | bf16 | fp16
    channels_last: bool = False        # resolved train.channels_last
    compile: bool = False              # resolved train.compile
    compile_why: str = ""              # why (auto's reason, or "train.compile")
    set_to_none: bool = True           # optimizer.zero_grad(set_to_none=...) (dist.zero_grad_set_to_none)
    model: torch.nn.Module = None      # what we call (DDP and/or compiled)
    raw: torch.nn.Module = None        # the bare nn.Module (state_dict, hooks)
    optimizer: torch.optim.Optimizer = None
    scaler: torch.amp.GradScaler = None
    ema: torch.nn.Module = None        # AveragedModel of raw (train.ema_decay), or None
    mix: object = None                 # MixUp/CutMix of the training batches (data.mixup, data.cutmix), or None
    step: int = 0                      # optimizer steps done
    epoch: int = 0
    batch: int = 0                     # next micro-batch index within `epoch`
    best_top1: float = -1.0
    history: list = field(default_factory=list)  # evaluations, divergence, and the latest training scalars
    timings: dict = field(default_factory=lambda: {"train_s": 0.0, "eval_s": 0.0})
    step_times: list = field(default_factory=list)  # seconds per optimizer step (this process's lifetime)
    pending_init: bool = True          # a layer may still want its data-dependent init (checked once)
    saved_last: bool = False           # this invocation wrote (or resumed from) checkpoints/last.pt
    changes: list = field(default_factory=list)  # recipe changes accepted at resume (run.resume_changed)


def runtime(recipe: config.Recipe, device: torch.device, bundle, compile: bool | None = None) -> tuple[str, bool]:
    """Resolve the 'auto' speed settings for `device` and set the CUDA backend switches.

    CUDA defaults follow DeepLearningExamples' ResNet-50 and timm: bf16 autocast (keeps
    every method's definition: BN/GN statistics stay fp32 inside their kernels, the
    weight reparametrisations run on the fp32 parameters), channels_last unless the
    method's kernels are NCHW-only (`Normalizer.channels_last_ok`; compiled models
    get it anyway), ``cudnn.benchmark`` and TF32 matmuls. Each is a recipe key.
    `compile`: whether the model will be compiled (`resolve_compile`; default: the recipe's
    train.compile, auto counting as off).
    """
    t = recipe.train
    cuda = device.type == "cuda"
    amp = ("bf16" if cuda else "off") if t.amp == "auto" else t.amp
    compiled = bool(t.compile) if compile is None else compile
    channels_last = (cuda and (bundle.channels_last_ok or compiled)) if t.channels_last is None else t.channels_last
    if cuda:
        torch.backends.cudnn.benchmark = t.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = t.tf32
        torch.backends.cudnn.allow_tf32 = t.tf32
    return amp, channels_last


def compile_auto(micro: int, ops_ratio: float | None) -> tuple[bool, str]:
    """train.compile auto on CUDA for a per-process micro-batch of `micro` images and a method whose eager
    forward runs `ops_ratio` times bn's operators (None: not known): (compile, why)."""
    if micro <= COMPILE_MICRO_BATCH:
        return True, f"{micro} image(s) per micro-batch: eager steps this small are bound by kernel launches"
    if ops_ratio is not None and ops_ratio > COMPILE_OPS_RATIO:
        return True, (f"its eager forward runs {ops_ratio:.1f}x bn's operators (more than {COMPILE_OPS_RATIO}x: "
                      "bound by kernel launches)")
    what = "not counted" if ops_ratio is None else f"{ops_ratio:.1f}x bn's"
    return False, f"{micro} images per micro-batch, eager forward operators {what}"


def forward_ops_ratio(recipe: config.Recipe, bundle, num_classes: int, in_shape, micro: int,
                      amp: str) -> float | None:
    """The method's eager forward operators over bn's on the same network, batch and autocast, counted on
    fake CUDA tensors (nothing runs; normtrain/fakecuda.py); None if the trace fails."""
    from . import fakecuda

    def forward_ops(b) -> int:
        def build():
            return models.build(recipe.model.name, b, num_classes, in_shape, init="default",
                                drop_path=recipe.model.drop_path, dropout=recipe.model.dropout, **recipe.model.options)
        return fakecuda.trace_step(build, in_shape, micro, num_classes, amp, b.channels_last_ok,
                                   backward=False).ops["forward"]
    try:
        bn = norms.get("bn", **{**recipe.norm.options(), "ghost_groups": bundle.options.ghost_groups})
        return forward_ops(bundle) / forward_ops(bn)
    except Exception:  # noqa: BLE001 - an operator without a fake kernel: decide without the count
        return None


def resolve_compile(recipe: config.Recipe, device: torch.device, bundle, num_classes: int, in_shape, micro: int,
                    amp: str) -> tuple[bool, str]:
    """train.compile: true/false as set; auto (None) by `compile_auto` on CUDA, off elsewhere."""
    if recipe.train.compile is not None:
        return recipe.train.compile, "train.compile"
    if device.type != "cuda":
        return False, "auto: off on CPU"
    if micro <= COMPILE_MICRO_BATCH:
        return compile_auto(micro, None)
    return compile_auto(micro, forward_ops_ratio(recipe, bundle, num_classes, in_shape, micro, amp))


def setup_data(recipe: config.Recipe, d: dist.Dist, plan: batching.BatchPlan):
    cfg = recipe.data
    eval_micro = max((cfg.eval_batch_size or cfg.batch_size) // d.world, 1)
    seed = recipe.run.seed
    train_loader = data.build(cfg, "train", data.DataContext(d.rank, d.world, d.device, plan.micro, seed, True))
    val_loader = data.build(cfg, "val", data.DataContext(d.rank, d.world, d.device, eval_micro, seed, False))
    test_loader = None
    if cfg.val_split and recipe.train.final_eval and data.has_test_split(cfg):
        test_loader = data.build(cfg, "test", data.DataContext(d.rank, d.world, d.device, eval_micro, seed, False))
    if cfg.num_classes and cfg.num_classes != train_loader.num_classes:
        raise UsageError(f"data.num_classes is {cfg.num_classes} but the data has {train_loader.num_classes} classes")
    steps_per_epoch = len(train_loader) // plan.accum
    if steps_per_epoch == 0:
        raise UsageError(f"the training data ({train_loader.num_samples} samples) is smaller than one "
                         f"global batch (data.batch_size {cfg.batch_size})")
    return train_loader, val_loader, steps_per_epoch, test_loader


def bundle_for(recipe: config.Recipe, plan: batching.BatchPlan):
    """The method's bundle, with GhostNorm's chunk count from the batch plan (norm.ghost_batch)."""
    options = recipe.norm.options()
    options["ghost_groups"] = plan.ghost_groups
    return norms.get(recipe.norm.name, **options)


def setup_model(recipe: config.Recipe, d: dist.Dist, num_classes: int, in_shape, bundle=None, channels_last=None):
    """The network, the same on every rank (seeded by run.seed); then each rank gets its own RNG stream."""
    torch.manual_seed(recipe.run.seed)
    bundle = bundle if bundle is not None else norms.get(recipe.norm.name, **recipe.norm.options())
    raw = models.build(recipe.model.name, bundle, num_classes, in_shape, init=recipe.model.init,
                       drop_path=recipe.model.drop_path, **recipe.model.builder_options())
    raw.to(d.device)
    if recipe.train.channels_last if channels_last is None else channels_last:
        raw.to(memory_format=torch.channels_last)
    seed_rank(recipe.run.seed, d.rank)
    return raw


def seed_rank(seed: int, rank: int) -> None:
    """Distinct RNG streams per rank (dropout masks, stochastic layers), reproducible from (seed, rank)."""
    import random

    import numpy as np
    s = int(np.random.SeedSequence([seed, rank, 0x6E74]).generate_state(1)[0])
    torch.manual_seed(s)  # seeds every CUDA device too
    np.random.seed(s)
    random.seed(s)


def check_forward(recipe: config.Recipe, bundle, num_classes: int, in_shape, micro: int,
                  device: torch.device | None = None, amp: str = "off") -> None:
    """Run the network once on the meta device (no memory, no compute): shapes it cannot take are
    bad input, reported before anything is written (e.g. images too small for its convolutions);
    and a step that clearly cannot fit in `device`'s memory (`memory.check`) is refused."""
    try:
        with torch.device("meta"):
            net = models.build(recipe.model.name, bundle, num_classes, in_shape, init="default",
                               drop_path=recipe.model.drop_path, **recipe.model.builder_options())
            net.train()
            # The forward on the real micro-batch (a batch-statistics method cannot train on 1 sample),
            # counting every layer's output as it goes.
            acts = memory.activation_bytes(net, torch.empty((micro,) + tuple(in_shape)),
                                           2 if amp in ("bf16", "fp16") else None)
    except UsageError:
        raise
    except (RuntimeError, ValueError) as e:
        if "more than 1 value per channel" in str(e):
            raise UsageError(f"norm {recipe.norm.name} normalizes over the batch and cannot train on a per-process "
                             f"micro-batch of {micro} sample (data.batch_size / processes / train.accum_steps): "
                             "use a larger batch, fewer accumulation steps, or a batch-independent method "
                             "(gn, ws-gn, ln, frn, ...)") from None
        if "meta" in str(e).lower():  # an op without a meta kernel: nothing learned, the real run decides
            return
        raise UsageError(f"model {recipe.model.name} with norm {recipe.norm.name} cannot run on "
                         f"{micro} x {tuple(in_shape)} inputs: {str(e).splitlines()[0]}") from None
    except NotImplementedError:
        return
    if device is not None:
        params = sum(p.numel() * 4 for p in net.parameters())  # float32 master weights
        memory.check(recipe, device, in_shape, micro, memory.Estimate(acts, memory.weight_copies(recipe) * params))


def wrap_model(run: Run) -> None:
    t = run.recipe.train
    static = (run.plan.accum == 1 and not run.compile) if t.static_graph is None else t.static_graph
    model = dist.wrap(run.raw, run.d, broadcast_buffers=t.broadcast_buffers, static_graph=static)
    run.set_to_none = dist.zero_grad_set_to_none(model)
    if run.compile:
        model = torch.compile(model)
    run.model = model


def setup_optim(recipe: config.Recipe, raw: torch.nn.Module, device: torch.device, amp: str = "off"):
    opt = optim.build(raw, recipe.optim, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    return opt, scaler


def apply_optim_settings(recipe: config.Recipe, optimizer: torch.optim.Optimizer) -> None:
    """Put the recipe's optimizer settings into a restored optimizer (a resume that accepted changed
    optimizer settings must really use them, not the checkpoint's)."""
    optim.apply_settings(optimizer, recipe.optim)


# -- checkpoints -------------------------------------------------------------------

def ckpt_dir(run: Run) -> Path:
    return run.out / "checkpoints"


def finite_weights(run: Run) -> bool:
    """True if every floating-point parameter and buffer is finite on every rank.

    A collective: per-GPU BN buffers differ between ranks, so one rank's answer alone
    could stop it while the others wait for it in the next collective.
    """
    tensors = [t for t in list(run.raw.parameters()) + list(run.raw.buffers()) if t.is_floating_point()]
    local = torch.stack([torch.isfinite(t).all() for t in tensors]).all() if tensors \
        else torch.ones((), dtype=torch.bool, device=run.d.device)
    return not bool(dist.any_true((~local).reshape(1))[0])


def sync_ema_buffers(run: Run) -> None:
    """One set of EMA buffers on every rank before it is evaluated or saved: averaged over ranks
    (train.broadcast_buffers false, as the raw network's), else rank 0's, as DDP gives the raw network.
    Each rank's own copy follows its own batch statistics in between; what is evaluated and saved
    depends on rank 0's (or the average) alone, so resume stays exact."""
    if run.ema is None or not run.d.active:
        return
    if run.recipe.train.broadcast_buffers:
        dist.broadcast_buffers(run.ema.module, run.d)
    else:
        dist.average_buffers(run.ema.module, run.d)


def save_checkpoint(run: Run, name: str = "last") -> None:
    """Rank 0 writes (atomically); every rank must call (loader and RNG states are gathered from all ranks).

    Callers check `finite_weights` first: a bad state is never saved.
    """
    if run.d.active and not run.recipe.train.broadcast_buffers:
        dist.average_buffers(run.raw, run.d)  # one set of running statistics for the file (and evaluation)
    sync_ema_buffers(run)
    states = dist.gather_objects({"loader": run.train_loader.state_dict(), "rng": checkpoint.rng_state()}, run.d)
    run.saved_last = run.saved_last or name == "last"  # on every rank: record_eval branches on it
    if not run.d.main:
        return
    loaders = [s["loader"] for s in states]
    # A loader with per-rank state (DALI's reader) gets every rank's back on resume.
    loader_state = loaders[0] if not run.d.active else ({"per_rank": loaders} if any(loaders) else {})
    state = {
        "model": run.raw.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "step": run.step, "epoch": run.epoch, "batch": run.batch, "total_steps": run.total_steps,
        "best_top1": run.best_top1, "history": run.history,
        "rng": states[0]["rng"], "rng_per_rank": [s["rng"] for s in states],
        "loader": loader_state,
        "recipe": run.recipe.to_dict(), "world": run.d.world,
        "version": __version__,
    }
    if run.ema is not None:
        state["ema"] = run.ema.state_dict()  # tensors only: the averaged network and n_averaged
    checkpoint.save(ckpt_dir(run) / f"{name}.pt", state)


def share_state(decision: Decision, state: dict | None, d: dist.Dist) -> dict:
    """The checkpoint on every rank: read from the same file where a rank sees it (shared storage),
    sent by rank 0 otherwise (per-node run folders), so that no rank starts from another step."""
    if not d.active:
        return state
    if not d.main:
        state = None
        path = Path(decision.path)
        if path.is_file():
            try:
                mine = checkpoint.check_training(checkpoint.load(path), path)
                if mine["step"] == decision.step:
                    state = mine
            except UsageError:
                state = None
    missing = [r for r, ok in enumerate(dist.gather_objects(state is not None, d)) if not ok]
    if missing:
        if d.rank in missing:
            print(f"normtrain: rank {d.rank} cannot read {decision.path}: receiving the checkpoint from rank 0",
                  file=sys.stderr, flush=True)
        state = dist.broadcast_object(state if d.main else None, d)
    return state


def restore(run: Run, state: dict, path: str) -> None:
    try:
        run.raw.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UsageError(f"checkpoint {path} does not fit this model/norm ({str(e).splitlines()[0]})") from None
    try:
        run.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise UsageError(f"checkpoint {path}: its optimizer state does not fit this recipe's parameter groups "
                         f"({e}); optim.no_decay_norm_bias must be the same") from None
    apply_optim_settings(run.recipe, run.optimizer)
    if state["scaler"]:  # empty when saved without a grad scaler (train.amp off or bf16, now fp16)
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None:
        if state.get("ema") is not None:
            run.ema.load_state_dict(state["ema"])
        elif run.d.main:  # train.ema_decay turned on at resume (run.resume_changed)
            print(f"normtrain: checkpoint {path} holds no EMA: the average starts from the weights of step "
                  f"{state['step']}", file=sys.stderr, flush=True)
    run.step, run.epoch, run.batch = state["step"], state["epoch"], state["batch"]
    run.best_top1, run.history = state["best_top1"], state["history"]
    same_world = state.get("world", 1) == run.d.world
    run.train_loader.load_state_dict(state.get("loader", {}) if same_world else {})
    per_rank = state.get("rng_per_rank")
    if per_rank and same_world:
        checkpoint.set_rng_state(per_rank[run.d.rank])
    elif not run.d.active:
        checkpoint.set_rng_state(state["rng"])
    # else: another process count (accepted by run.resume_changed): each rank keeps its fresh stream.


# -- evaluation ----------------------------------------------------------------------

def autocast(amp: str, device: torch.device):
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, loader: data.Loader, d: dist.Dist, amp: str = "off",
                   channels_last: bool = False, prefix: str = "eval") -> dict:
    """Loss, top-1 and top-5 accuracy of `model` over the whole split `loader` reads (summed over ranks),
    as ``{prefix}/loss``, ``{prefix}/top1``, ``{prefix}/top5``. Used by training and `normtrain eval`.

    The sums stay on the device until the end: one host-device sync per evaluation, not per batch.
    """
    was_training = model.training
    model.eval()
    dev = d.device
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, top1, top5, count
    k = min(5, loader.num_classes)
    for x, y in loader.epoch(0):
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(amp, dev):
            out = model(x)
        out = out.float()
        hit = out.topk(k, dim=1).indices == y[:, None]
        sums[0] += F.cross_entropy(out, y, reduction="sum").double()
        sums[1] += hit[:, 0].sum()
        sums[2] += hit.any(1).sum()
        sums[3] += len(y)  # a Python number: no host-to-device copy
    dist.all_sum(sums)
    loss, top1, top5, n = sums.tolist()
    model.train(was_training)
    n = max(n, 1)
    return {f"{prefix}/loss": loss / n, f"{prefix}/top1": 100 * top1 / n, f"{prefix}/top5": 100 * top5 / n}


def evaluate(run: Run, loader: data.Loader | None = None, prefix: str = "eval") -> dict:
    """The raw weights and, with train.ema_decay, the EMA (``{prefix}_ema/*``) on `loader` (default: the
    evaluation split)."""
    t0 = time.perf_counter()
    if run.d.active and not run.recipe.train.broadcast_buffers:
        dist.average_buffers(run.raw, run.d)
    sync_ema_buffers(run)
    loader = loader or run.val_loader
    metrics = evaluate_model(run.model, loader, run.d, run.amp, run.channels_last, prefix)
    if run.ema is not None:
        metrics.update(evaluate_model(run.ema.module, loader, run.d, run.amp, run.channels_last, f"{prefix}_ema"))
    run.model.train()
    run.timings["eval_s"] += time.perf_counter() - t0
    return metrics


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
    """Activation-normalization layers: BN-family (incl. GhostNorm), GroupNorm/LN/IN, LayerNorm, RMSNorm, DyT."""
    from torch.nn.modules.batchnorm import _NormBase
    return isinstance(m, (_NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)) or norms.layout.is_token_family_norm(m)


# -- the loop --------------------------------------------------------------------------

class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, saves and exits."""

    def __init__(self):
        from . import signals
        self.requested = signals.take()  # a SIGTERM during start-up (normtrain.signals)
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
    accum = run.plan.accum
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    n = 0
    # Reparametrised weights (WN, WS, NF...) are computed once for the step, not per micro-batch.
    for i in norms.micro_batches(run.raw, accum):
        x, y = next(it)
        if run.mix is not None:
            x, y = run.mix(x, y)  # y: class probabilities from here on
        if run.channels_last and x.dim() == 4:
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
            with autocast(run.amp, dev):
                out = run.model(x)
                loss = F.cross_entropy(out.float(), y, label_smoothing=r.train.label_smoothing)
            run.scaler.scale(loss / accum).backward()
        loss_sum += loss.detach()
        correct += (out.detach().argmax(1) == (y.argmax(1) if y.dim() > 1 else y)).sum()
        n += len(y)
    grad_norm = None
    if r.train.grad_clip > 0 or log_now:
        run.scaler.unscale_(run.optimizer)
        params = [p for p in run.raw.parameters() if p.grad is not None]
        by_norm = r.train.grad_clip > 0 and r.train.grad_clip_mode == "norm"
        grad_norm = torch.nn.utils.clip_grad_norm_(params, r.train.grad_clip if by_norm else float("inf"))
        if r.train.grad_clip > 0 and r.train.grad_clip_mode == "agc":  # logged norm: before clipping, as above
            clip.adaptive_clip_(clip.agc_parameters(run.raw), r.train.grad_clip)
    return loss_sum / accum, correct, n, grad_norm


class StepFlags:
    """Each step's stop conditions (non-finite loss, a signal), agreed over ranks without stalling the GPU.

    `post` launches an asynchronous MAX all-reduce of the step's flags (built on the
    device: no host-to-device copy); `read` gives them. The loop reads a step's flags
    after the next step's forward and backward are queued, or at a step that syncs
    anyway (logging, evaluation, checkpoints), so the host never waits for an idle GPU.
    On CUDA, `post` also queues the copy of the reduced flags into a pinned host buffer
    (``non_blocking``) and records an event after it; `read` waits on that event
    (``event.synchronize()``) and reads the buffer: the host waits for the GPU to reach
    the end of the posted step's optimizer step, and not, as a ``.tolist()`` of the
    device tensor would, for everything queued since (the next step's forward and
    backward). Elsewhere `read` waits for the collective and reads the flags directly.
    A non-finite loss is therefore seen one step late, when the optimizer has already
    applied its gradients: the weights in memory are then bad, but checkpoints are
    written only from weights that `finite_weights` passes, so `last.pt` stays the last
    good state.
    """

    def __init__(self, device: torch.device, event=None, host=None):
        self.device = device
        self.pending = None
        if event is None and device.type == "cuda":
            event = torch.cuda.Event()
            host = torch.zeros(2, pin_memory=True)
        self.event, self.host = event, host  # (tests pass a stand-in event and buffer on the CPU)

    def post(self, step: int, loss: torch.Tensor, signal_requested: bool) -> None:
        flags = torch.stack([(~torch.isfinite(loss)).float(),
                             torch.full((), float(signal_requested), device=self.device)])
        handle = dist.any_true_async(flags)
        if self.event is not None:
            self.host.copy_(handle.wait(), non_blocking=True)  # NCCL: a stream wait, the host goes on
            self.event.record()
            handle = None
        self.pending = (step, handle)

    def read(self) -> tuple[int, bool, bool] | None:
        """(step, loss was non-finite, a rank was signalled) of the posted step, or None."""
        if self.pending is None:
            return None
        step, handle = self.pending
        self.pending = None
        if handle is None:
            self.event.synchronize()
            bad, sig = [v > 0 for v in self.host.tolist()]
        else:
            bad, sig = handle.result()
        return step, bad, sig


def loop(run: Run, log: RunLogger, stop: StopFlag) -> str:
    r, d = run.recipe, run.d
    accum = run.plan.accum
    tracker = NormTracker(run.raw) if r.log.track_norms else None
    end_step = run.total_steps if not r.train.max_steps else min(run.total_steps, r.train.max_steps)
    window = {"loss": torch.zeros((), device=d.device), "correct": 0, "n": 0, "steps": 0, "time": 0.0}
    flags = StepFlags(d.device)
    signalled = False

    def settle() -> bool:
        """Read the posted flags; False when the run diverged (then `mark_diverged` has recorded it)."""
        nonlocal signalled
        got = flags.read()
        if got is None:
            return True
        step, bad, sig = got
        signalled = signalled or sig
        if bad:
            # The loss of `step` was not finite: the steps done with finite losses are step - 1.
            run.step = step
            mark_diverged(run, log, "non-finite loss")
            run.step = step - 1
            return False
        return True

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
            # The previous step's flags, now that this step's work is queued.
            if not settle():
                run.timings["train_s"] += time.perf_counter() - t0
                return "diverged"
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.optimizer.zero_grad(set_to_none=run.set_to_none)
            if run.ema is not None:
                run.ema.update_parameters(run.raw)
            run.step += 1
            run.batch += accum
            flags.post(run.step, loss, stop.requested)
            window["loss"] += loss
            window["correct"] += correct
            window["n"] += n
            window["steps"] += 1
            run.step_times.append(time.perf_counter() - t0)
            run.timings["train_s"] += run.step_times[-1]
            window["time"] += run.step_times[-1]
            eval_now = bool(r.train.eval_every_steps and run.step % r.train.eval_every_steps == 0)
            save_now = bool(r.train.checkpoint_every_steps and run.step % r.train.checkpoint_every_steps == 0)
            if log_now or eval_now or save_now or run.step >= end_step:
                # A step that syncs anyway: settle its own flags first.
                if not settle():
                    return "diverged"
            if log_now:
                stats = torch.stack([window["loss"], torch.as_tensor(window["correct"], device=d.device).float(),
                                     torch.tensor(float(window["n"]), device=d.device)])
                dist.all_sum(stats)
                loss_v, corr_v, n_v = stats.tolist()
                # Images over the window's step time (evaluation and checkpoints excluded), as in results.json.
                values = {"train/loss": loss_v / (window["steps"] * d.world), "train/top1": 100 * corr_v / max(n_v, 1),
                          "train/lr": lr, "train/images_per_s": n_v / max(window["time"], 1e-9),
                          "train/grad_norm": float(grad_norm) if grad_norm is not None else None}
                if tracker is not None:
                    values.update(tracker.pop())
                log.scalars(run.step, values)
                log.advance(window["steps"], values)
                # Keep one training entry at the end of the history (metrics.jsonl has them all),
                # so checkpoints of long runs do not grow with every logged step.
                if run.history and "train/loss" in run.history[-1]:
                    run.history.pop()
                run.history.append({"step": run.step, **values})
                window.update(loss=torch.zeros((), device=d.device), correct=0, n=0, steps=0, time=0.0)
            if eval_now and last_eval_step(run) != run.step:
                record_eval(run, log)
            if signalled:
                if not settle() or not checked_save(run, log):
                    return "diverged"
                log.print(f"interrupted at step {run.step}: saved {ckpt_dir(run) / 'last.pt'}")
                return "interrupted"
            if save_now and not checked_save(run, log):
                return "diverged"
        if not settle():
            return "diverged"
        if epoch_end or run.batch >= run.steps_per_epoch * accum:
            run.epoch += 1
            run.batch = 0
            if not finite_weights(run):
                return mark_diverged(run, log)
            periodic = r.train.eval_every_epochs and run.epoch % r.train.eval_every_epochs == 0
            if (periodic or (run.step >= end_step and r.train.final_eval)) and last_eval_step(run) != run.step:
                record_eval(run, log)  # not twice at one step (eval_every_steps landing on the epoch end)
            save_checkpoint(run)
            if signalled:
                log.print(f"interrupted at step {run.step}: saved {ckpt_dir(run) / 'last.pt'}")
                return "interrupted"
    if not settle():
        return "diverged"
    evaluated = last_eval_step(run) == run.step
    tested = run.test_loader is None or last_eval_step(run, "test/top1") == run.step
    if run.batch != 0 or (r.train.final_eval and not evaluated) or not tested:
        # Stopped mid-epoch (max_steps or a fractional epoch count), or not yet evaluated or tested at the
        # end: evaluate and test (once per step, also when this reruns a finished run whose results.json
        # is gone: the checkpoint's history says what was done) and save the position.
        if not finite_weights(run):
            return mark_diverged(run, log)
        if r.train.final_eval and not evaluated:
            record_eval(run, log)
        if not tested:
            record_test(run, log)
        save_checkpoint(run)
    return "completed"  # a signal that arrives during the last step finds the run complete


def mark_diverged(run: Run, log: RunLogger, what: str = "non-finite weights") -> str:
    run.history.append({"step": run.step, "diverged": True})
    log.print(f"{what} at step {run.step}: run diverged")
    return "diverged"


def checked_save(run: Run, log: RunLogger, name: str = "last") -> bool:
    """Save `name` unless the weights went non-finite on any rank (then the run is marked diverged)."""
    if not finite_weights(run):
        mark_diverged(run, log)
        return False
    save_checkpoint(run, name)
    return True


def last_eval_step(run: Run, key: str = "eval/top1") -> int:
    """The step of the latest evaluation (`key`: eval/top1, test/top1) in the run's history (restored on
    resume), -1 if none."""
    return max((h["step"] for h in run.history if key in h), default=-1)


def record_eval(run: Run, log: RunLogger) -> dict:
    metrics = evaluate(run)
    log.scalars(run.step, metrics)
    run.history.append({"step": run.step, **metrics})
    # The metrics are all-reduced, so every rank takes the same branch (finite_weights is a collective).
    if metrics["eval/top1"] > run.best_top1 and finite_weights(run):
        run.best_top1 = metrics["eval/top1"]
        if not run.saved_last:
            # last.pt first: a folder never holds a best.pt without a last.pt to resume from
            # (e.g. a disk too small for the first last.pt: the same command then restarts cleanly).
            save_checkpoint(run)
        save_checkpoint(run, "best")
    split = " (validation split)" if run.recipe.data.val_split else ""
    log.eval_line(f"step {run.step} epoch {log.epoch(run.step):.2f}: eval {metric_text(metrics, 'eval')}{split}")
    return metrics


def record_test(run: Run, log: RunLogger) -> dict:
    """The final weights (and EMA) on the test split, beside a held-out validation split (data.val_split)."""
    metrics = evaluate(run, run.test_loader, "test")
    log.scalars(run.step, metrics)
    run.history.append({"step": run.step, **metrics})
    log.eval_line(f"step {run.step} epoch {log.epoch(run.step):.2f}: test {metric_text(metrics, 'test')}")
    return metrics


def metric_text(metrics: dict, prefix: str) -> str:
    """'loss 0.1234 top1 96.94% top5 99.72%' for {prefix}/*, then the EMA's top-1 if there is one."""
    text = (f"loss {metrics[f'{prefix}/loss']:.4f} top1 {metrics[f'{prefix}/top1']:.2f}% "
            f"top5 {metrics[f'{prefix}/top5']:.2f}%")
    if f"{prefix}_ema/top1" in metrics:
        text += f" | ema top1 {metrics[f'{prefix}_ema/top1']:.2f}%"
    return text


# -- entry point ------------------------------------------------------------------------

def open_run(recipe: config.Recipe, d: dist.Dist) -> tuple[Decision, dict | None, RunDir | None]:
    """Rank 0 locks the run folder and decides fresh / resume / done; every rank gets the same answer.

    A refusal is raised on every rank (rank 0's copy prints, the others' are echoes),
    so no rank goes on alone while another stops.
    """
    folder = decision = state = error = None
    if d.main:
        folder = RunDir(Path(recipe.run.out))
        try:
            folder.acquire()
            decision, state = folder.decide(recipe, d.world)
        except (UsageError, EnvError) as e:
            folder.release(discard=True)
            error = e
    shared = dist.broadcast_object((decision, None if error is None else (isinstance(error, EnvError), str(error))), d)
    if error is not None:
        raise error
    decision, refusal = shared
    if refusal is not None:
        echo = (EnvError if refusal[0] else UsageError)(refusal[1])
        echo.echo = True  # rank 0 reports it
        raise echo
    return decision, state, folder


def prepare(recipe: config.Recipe, d: dist.Dist, decision: Decision | None = None, state: dict | None = None) -> Run:
    """Everything before the loop, with no file written (bad input raises UsageError first)."""
    out = Path(recipe.run.out)
    decision = decision or Decision("fresh")
    plan = batching.for_recipe(recipe, d.world)
    train_loader, val_loader, spe, test_loader = setup_data(recipe, d, plan)
    total = max(1, math.ceil(recipe.train.epochs * spe))
    bundle = bundle_for(recipe, plan)
    classes, in_shape = train_loader.num_classes, train_loader.in_shape
    amp, _ = runtime(recipe, d.device, bundle)
    check_forward(recipe, bundle, classes, in_shape, plan.micro, d.device, amp)
    compiled, why = resolve_compile(recipe, d.device, bundle, classes, in_shape, plan.micro, amp)
    amp, channels_last = runtime(recipe, d.device, bundle, compiled)
    for loader in (train_loader, val_loader):
        loader.use_channels_last(channels_last)  # DALI then delivers NHWC memory: no copy per batch
    run = Run(recipe=recipe, d=d, out=out, plan=plan, train_loader=train_loader, val_loader=val_loader,
              test_loader=test_loader, steps_per_epoch=spe, total_steps=total, amp=amp, channels_last=channels_last,
              compile=compiled, compile_why=why)
    run.mix = data.mix.build(recipe.data, classes, in_shape)
    run.raw = setup_model(recipe, d, classes, in_shape, bundle, channels_last)
    run.optimizer, run.scaler = setup_optim(recipe, run.raw, d.device, amp)
    run.ema = ema.build(run.raw, recipe.train.ema_decay)
    if decision.kind == "resume":
        restore(run, share_state(decision, state, d), decision.path)
        run.changes = decision.changes
    wrap_model(run)
    return run


def summary_line(res: dict) -> str:
    f = res.get("final", {})
    steps = f"step {res['steps']}/{res['total_steps']}"
    if res.get("stopped_early"):
        steps += " (stopped early: train.max_steps)"
    parts = [f"normtrain: {res['status']}", f"{res['recipe']} {res['model']} norm={res['norm']}", steps]
    if res["status"] == "diverged":
        parts.append(f"diverged at step {res['diverged_at_step']}")
    split = "val" if res.get("eval_split") == "val" else "eval"
    if "eval/top1" in f:
        best = f" (best {res['best_eval_top1']:.2f}%)" if res.get("best_eval_top1") is not None else ""
        parts.append(f"{split} top1 {f['eval/top1']:.2f}% top5 {f['eval/top5']:.2f}%{best}")
    if "eval_ema/top1" in f:
        parts.append(f"ema {split} top1 {f['eval_ema/top1']:.2f}%")
    if "test/top1" in f:
        ema_test = f", ema {f['test_ema/top1']:.2f}%" if "test_ema/top1" in f else ""
        parts.append(f"test top1 {f['test/top1']:.2f}% top5 {f['test/top5']:.2f}%{ema_test}")
    if f.get("train/loss") is not None:
        parts.append(f"train loss {f['train/loss']:.4f}")
    t = res["timings"]
    parts.append(f"{rate(t.get('images_per_s'))} img/s, {duration(t['total_s'])}")
    parts.append(f"-> {res['out']}")
    return " | ".join(parts)


def train(recipe: config.Recipe) -> dict:
    """Train according to `recipe`; returns the results dict (also written to <out>/results.json)."""
    t_start = time.perf_counter()
    # Signals are caught from the start: one during start-up ends the run as interrupted
    # after its first step, never as a traceback with an undocumented exit code.
    with StopFlag() as stop:
        d = dist.setup(recipe.run.device, recipe.run.collective_timeout)
        threads.apply(dist.local_world_size())  # CPUs available / processes on the node, unless OMP_NUM_THREADS
        supervisor = dist.Supervisor(d, recipe.run.collective_timeout).start()
        folder = None
        try:
            decision, state, folder = open_run(recipe, d)
            if decision.kind == "done":
                res = decision.results
                if d.main:
                    print(f"normtrain: already complete, nothing changed (rerun with more train.epochs and "
                          f"--resume-changed train.epochs to extend it)\n{summary_line(res)}", flush=True)
            else:
                res = _train(recipe, d, decision, state, folder, stop, t_start)
        except BaseException as e:
            supervisor.stop()
            if folder is not None:
                folder.release()
            dist.teardown(clean=False)
            if d.active and dist.collective_failure(e):
                raise WorkerError(f"a collective failed, another rank is gone or stuck "
                                  f"({str(e).splitlines()[0][:300]}); the last checkpoint is kept: rerun to resume"
                                  ) from None
            raise
        supervisor.stop()
        if folder is not None:
            folder.release()
        dist.teardown()  # still under StopFlag: a signal right after completion changes nothing
    return res


def _train(recipe, d, decision, state, folder, stop, t_start) -> dict:
    try:
        run = prepare(recipe, d, decision, state)
    except BaseException:
        if folder is not None:
            folder.release(discard=True)  # bad input: leave no lock file (or empty folder) behind
        raise
    del state
    start_step = run.step
    end_step = run.total_steps if not recipe.train.max_steps else min(run.total_steps, recipe.train.max_steps)
    log = RunLogger(None, 0, False, False)
    try:
        if d.main:
            folder.reset_outputs(start_step)
            checkpoint.atomic_write_text(run.out / "recipe.yaml", config.dump(recipe))
            log = RunLogger(run.out, end_step, recipe.log.progress, recipe.log.tensorboard, initial_step=start_step,
                            purge_step=start_step or None, steps_per_epoch=run.steps_per_epoch,
                            interval_s=recipe.log.interval_s, eval_lines=recipe.log.eval_lines)
            if run.changes:
                log.print("resuming with changed settings (run.resume_changed): " + ", ".join(
                    f"{k} {a!r} -> {b!r}" for k, a, b in run.changes))
            if start_step:
                log.print(f"resumed from step {start_step} (epoch {log.epoch(start_step):.2f})")
            if run.compile and recipe.train.compile is None:
                log.print(f"train.compile auto: compiling the model ({run.compile_why}); the first steps take "
                          "minutes (--set train.compile=false for eager)")
            paper = recipe.data.paper_micro_batch
            if paper and paper != run.plan.micro:
                log.print(f"batch: {run.plan.micro} images per process per micro-batch; the paper used {paper} per "
                          f"GPU (data.paper_micro_batch): per-process batch statistics see {run.plan.micro} images")
            if "synthetic" in (recipe.data.source, recipe.data.backend):
                log.print(f"data: synthetic, {'x'.join(map(str, run.train_loader.in_shape))} samples, "
                          f"{run.train_loader.num_classes} classes (data.synthetic_shape, data.synthetic_classes)")
    except OSError as e:
        raise EnvError(f"cannot write the run's files in {run.out}: {e.strerror or e}") from None
    run.timings["setup_s"] = time.perf_counter() - t_start
    try:
        try:
            status = loop(run, log, stop)
        except UsageError as e:
            # Bad data met mid-run (an unreadable image...): nothing of the run is lost.
            raise EnvError(f"{e}; the last checkpoint is kept: fix the data and rerun the same command to resume"
                           ) from None
        except OSError as e:
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            raise EnvError(f"cannot write in {run.out}: {e.strerror or e}{where}; the previous checkpoints are "
                           "intact: free space or fix the folder and rerun to resume") from None
        res = results(run, status, time.perf_counter() - t_start, start_step)
        try:
            log.results(res)
            log.hparams(hparams(recipe), final_metrics(res), run.step)
        except OSError as e:
            raise EnvError(f"cannot write {run.out / 'results.json'}: {e.strerror or e}; the run ended ({status} at "
                           f"step {run.step}) and its checkpoints are kept: fix the folder and rerun the same "
                           "command to record it") from None
    except EnvError as e:
        res = results(run, "failed", time.perf_counter() - t_start, start_step)
        res["error"] = str(e)
        try:
            log.results(res)
        except OSError:
            pass  # the disk that failed us may not take results.json either
        raise
    finally:
        log.close()
    if d.main:
        print(summary_line(res), flush=True)
    return res


#: Recipe keys shown as hyper-parameters in TensorBoard's HParams tab (with the method, network and recipe).
HPARAMS = ("optim.name", "optim.lr", "optim.weight_decay", "optim.momentum", "optim.no_decay_norm_bias",
           "schedule.name", "schedule.warmup_epochs", "data.batch_size", "data.augment", "data.mixup", "data.cutmix",
           "data.randaugment", "data.trivialaugment", "data.random_erasing", "train.epochs", "train.label_smoothing",
           "train.ema_decay", "train.accum_steps", "train.amp", "model.init", "model.drop_path", "norm.residual",
           "run.seed")


def hparams(recipe: config.Recipe) -> dict:
    """The run's settings for TensorBoard's HParams tab: method, network, recipe and the keys of `HPARAMS`."""
    out = {"norm": recipe.norm.name, "model": recipe.model.name, "recipe": recipe.run.name}
    for key in HPARAMS:
        section, name = key.split(".")
        out[key] = getattr(getattr(recipe, section), name)
    return out


def final_metrics(res: dict) -> dict:
    """The metrics a run ends with, for the HParams tab: best top-1 (hparams/best_eval_top1), status, and the
    final eval/test/EMA loss and accuracies."""
    f = res.get("final", {})
    keep = {k: v for k, v in f.items() if k.split("/")[0] in ("eval", "eval_ema", "test", "test_ema")}
    return {**keep, "hparams/best_eval_top1": res.get("best_eval_top1"),
            "hparams/completed": float(res["status"] == "completed")}


def throughput(run: Run) -> dict:
    """images/s of this invocation: global images per step x timed steps / their summed step time.

    The first `WARMUP_STEPS` steps (at most half of them) are left out: allocator growth,
    cuDNN autotuning, torch.compile and the first batches of a loader run there. A step's
    time covers its data loading, forward, backward and optimizer step, not evaluations or
    checkpoints. None when no step was timed.
    """
    warm = min(WARMUP_STEPS, len(run.step_times) // 2)
    timed = run.step_times[warm:]
    return {"images_per_s": run.recipe.data.batch_size * len(timed) / sum(timed) if timed else None,
            "warmup_steps": warm, "timed_steps": len(timed),
            "step_s_median": statistics.median(timed) if timed else None}


def results(run: Run, status: str, total_s: float, start_step: int) -> dict:
    r = run.recipe
    final = {}
    for h in run.history:
        # The last value of each metric; throughput is in timings (one definition, warm-up excluded).
        final.update({k: v for k, v in h.items() if "/" in k and v is not None and k != "train/images_per_s"})
    diverged = [h["step"] for h in run.history if h.get("diverged")]
    return {
        "status": status,
        "recipe": r.run.name, "model": r.model.name, "norm": r.norm.name,
        "steps": run.step, "total_steps": run.total_steps, "steps_per_epoch": run.steps_per_epoch,
        "epoch": round(run.step / run.steps_per_epoch, 4), "resumed_from_step": start_step,
        "diverged_at_step": diverged[-1] if diverged else None,
        # Completed before the schedule's end: train.max_steps stopped it.
        "stopped_early": status == "completed" and run.step < run.total_steps,
        # Which split eval/* and best.pt are on: a validation split held out of the training data, or the test split.
        "eval_split": "val" if r.data.val_split else "test",
        "final": final, "best_eval_top1": run.best_top1 if run.best_top1 >= 0 else None,
        "timings": {"total_s": total_s, "setup_s": run.timings.get("setup_s"), "train_s": run.timings["train_s"],
                    "eval_s": run.timings["eval_s"], **throughput(run)},
        "num_classes": run.train_loader.num_classes, "world_size": run.d.world, "device": str(run.d.device),
        "batch": {"global": run.plan.global_batch, "per_process": run.plan.micro, "accum_steps": run.plan.accum,
                  "ghost_groups": run.plan.ghost_groups},
        "amp": run.amp, "channels_last": run.channels_last, "compile": run.compile,
        "cpu_threads": torch.get_num_threads(),
        "resume_changes": [list(c) for c in run.changes],
        "versions": {"normtrain": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "out": str(run.out),
    }
