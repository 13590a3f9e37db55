"""Typed recipes: YAML files in `recipes/` loaded into dataclasses, strictly.

Precedence: `--set`/shorthand flags > the recipe's `per_norm` block for the
chosen method > the recipe file > the defaults below. Unknown keys, wrong types
and out-of-range values raise UsageError naming the key and the file. The
resolved recipe is written into the run directory as `recipe.yaml`.

Every field carries a docstring right under it; `normtrain list keys` prints them.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import os
import re
import sys
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import UsageError
from . import norms
from .norms.options import SharedOptions

#: libyaml's safe loader where PyYAML has it (the same YAML, several times faster than the pure-Python one).
_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LOADER(_BASE_LOADER):
    """The safe loader, refusing a mapping that gives one key twice (YAML itself keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = key_node.value
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key}'", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


#: Expanded size (values, counting each alias's target again) above which YAML is refused: aliases can make a
#: few bytes stand for billions of values ("billion laughs").
MAX_YAML_VALUES = 100_000


def _yaml(text: str, source: str):
    """Parse YAML text strictly: safe types only, no duplicate keys, no recursive or exploding aliases."""
    try:
        data = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as e:
        text = " ".join(str(e).replace('in "<unicode string>", ', "at ").split())
        raise UsageError(f"{source}: not valid YAML ({text[:300]})") from None
    count = 0

    def walk(v, stack):
        nonlocal count
        count += 1
        if count > MAX_YAML_VALUES:
            raise UsageError(f"{source}: more than {MAX_YAML_VALUES} values once its aliases are expanded")
        if isinstance(v, (list, dict)):
            if id(v) in stack:
                raise UsageError(f"{source}: a YAML alias refers to a value that contains it (a recursive "
                                 "structure); write the value out instead")
            stack.add(id(v))
            for item in (v.items() if isinstance(v, dict) else v):
                if isinstance(v, dict):
                    walk(item[0], stack)
                    item = item[1]
                walk(item, stack)
            stack.discard(id(v))

    walk(data, set())
    return data

_PKG = Path(__file__).resolve().parent
# Installed: recipes/ is packaged as normtrain/recipes (setup.py); in a source tree it sits beside the package.
RECIPES_DIR = next((p for p in (_PKG / "recipes", _PKG.parent / "recipes") if p.is_dir()), _PKG.parent / "recipes")


@dataclass
class RunConfig:
    name: str = ""
    """Run name; defaults to '<recipe>-<norm>'. Used in the default output directory."""
    out: str = ""
    """Run directory; defaults to 'runs/<name>'. Checkpoints, results.json, TensorBoard and recipe.yaml go here."""
    seed: int = 0
    """Seed for weights, data order and augmentation."""
    device: str = "auto"
    """'auto' (GPU if present), 'cpu' or 'cuda'."""
    resume: str = "auto"
    """'auto': continue from <out>/checkpoints/last.pt if present; 'never': start fresh (refuses a run directory that already holds a run); or a checkpoint path."""
    resume_changed: str = "refuse"
    """What a resume may change in the experiment: 'refuse' (any change to model, norm, data, batch, seed, schedule, optimizer or process count stops with a diff), 'allow' (continue with the new values, recorded), or a comma list of the keys allowed to change."""
    collective_timeout: float = 600.0
    """Seconds a collective may wait for a rank (and a rank may go without a heartbeat) before the run stops, naming the rank that did not answer. Must cover the slowest first batch and checkpoint save."""

    def check(self):
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _range("seed", self.seed, 0, 2 ** 31 - 1)
        _range("collective_timeout", self.collective_timeout, 5.0, 86400.0)


@dataclass
class ModelConfig:
    name: str = "mlp"
    """Network (`normtrain list models`)."""
    init: str = "kaiming"
    """Weight init: kaiming, xavier, caffe-xavier or default (PyTorch's)."""
    dropout: float = 0.0
    """Dropout probability before the classifier (0 = off)."""
    drop_path: float = 0.0
    """Stochastic depth (Huang et al. 2016): in training, drop each residual block's branch per sample with probability drop_path * i / L for block i = 1..L (the last block at drop_path), scaling kept branches by 1/(1 - p); evaluation is deterministic. 0 = off; networks without residual blocks accept only 0."""
    options: dict = field(default_factory=dict)
    """Extra keyword options of the network builder (e.g. widths for mlp); unknown ones are an error."""

    def builder_options(self) -> dict:
        """The keyword options of the network builder: `options`, plus `dropout` when it is on (so a
        network without dropout, e.g. one from another package, needs no dropout argument)."""
        return {**({"dropout": self.dropout} if self.dropout else {}), **self.options}

    def check(self):
        _range("dropout", self.dropout, 0.0, 1.0, hi_open=True)
        _check_options(self.options)
        _range("drop_path", self.drop_path, 0.0, 1.0, hi_open=True)


@dataclass
class NormName:
    name: str = "bn"
    """Normalization method (`normtrain list norms`); the other keys are its knobs."""

    def options(self) -> dict:
        """The knobs (every norm.* key but name), as `normtrain.norms.get` takes them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "name"}


@functools.lru_cache(maxsize=None)
def norm_config() -> type:
    """The class of a recipe's `norm:` section: `name` and every method's knobs (`norms.options_class`,
    which reads each method's ``Options`` from its source; installed methods' included). Built on first use."""
    return dataclass(type("NormConfig", (NormName, norms.options_class()), {"__module__": __name__,
                                                                           "__qualname__": "NormConfig"}))


def __getattr__(name: str):
    if name == "NormConfig":  # built on first use (norm_config), so importing this module reads no method
        return norm_config()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Training augmentation pipelines (evaluation always uses the matching deterministic resize/centre crop).
AUGMENTS = ("none", "flip", "crop-flip", "cifar-padcrop", "gitman", "rrc")


@dataclass
class DataConfig:
    source: str = "digits"
    """Dataset: a built-in name ('digits', 'synthetic') or a path to a dataset on disk (`--data`)."""
    backend: str = "auto"
    """Loader backend (`normtrain list data`); 'auto' picks one from `source`."""
    batch_size: int = 128
    """Global batch size (all processes and accumulation steps together)."""
    eval_batch_size: int = 0
    """Global evaluation batch size; 0 = batch_size."""
    paper_micro_batch: int = 0
    """Images per GPU in the paper's own runs (0 = not stated). At start, a run whose per-process micro-batch differs says so: per-process batch statistics (bn and its kin) then see another number of images than the paper's."""
    num_classes: int = 0
    """Number of classes; 0 = taken from the data. Must match the data when set."""
    image_size: int = 0
    """Training crop size in pixels; 0 = the backend's natural size."""
    augment: str = "none"
    """Training augmentation: none; flip; crop-flip (random image_size crop + flip, centre crop at eval; cifar10-nv's 28x28); cifar-padcrop (pad 4, random crop, flip); gitman (resize 256x256, random 224 crop, colour distortion, flip, [-1, 1]; Gitman & Ginsburg §4.2); rrc (random-resized crop + flip, ImageNet mean/std). Eval: resize 256, centre crop for ImageNet-style data."""
    normalize: str = "auto"
    """Input normalization: auto (the backend's standard), per-pixel or per-channel mean/std of the training set, imagenet (ImageNet mean/std), minus-one-one (scale to [-1, 1]), none."""
    cutout: int = 0
    """Cutout square side in pixels (0 = off)."""
    pad_mode: str = "reflect"
    """cifar-padcrop padding of 4 pixels: reflect (mirrored border pixels; the WRN paper's choice) or zero (zeros after normalization, i.e. the training-set mean colour)."""
    val_split: int = 0
    """If > 0, hold out this many training samples (stratified, fixed seed 0) as the validation split: evaluations during training (eval/*) and best.pt use it, and the final evaluation also reports the dataset's test split (test/*). 0 = evaluate on the test split (the dataset's val/ or test set)."""
    workers: int = 4
    """Loader workers per process: DataLoader processes (folder backend) or CPU threads of the DALI pipeline (dali; at most the CPUs per process on the node)."""
    skip_corrupt: bool = False
    """Skip unreadable images with a warning instead of stopping with an error."""
    mixup: float = 0.0
    """MixUp alpha (Zhang et al. 2018; torchvision.transforms.v2.MixUp): each training micro-batch is mixed with itself rolled by one, lambda ~ Beta(alpha, alpha), on the device, labels mixed alike. 0 = off. With cutmix too, each batch gets one of the two at random (p = 0.5), as timm and torchvision's references do."""
    cutmix: float = 0.0
    """CutMix alpha (Yun et al. 2019; torchvision.transforms.v2.CutMix): a box of area ~ 1 - lambda pasted from the batch rolled by one, labels mixed by area; on the device. 0 = off."""
    randaugment: int = 0
    """RandAugment (Cubuk et al. 2020; torchvision.transforms.v2.RandAugment, DALI's auto_aug.rand_augment on the dali backend): N operations per training image, at magnitude randaugment_magnitude. 0 = off. Image data only (not digits)."""
    randaugment_magnitude: int = 9
    """RandAugment magnitude M (0..30; torchvision's and DALI's scale of 31 bins; DeiT uses 9)."""
    trivialaugment: bool = False
    """TrivialAugment Wide (Müller & Hutter 2021; torchvision.transforms.v2.TrivialAugmentWide, DALI's trivial_augment_wide on the dali backend): one random operation at a random magnitude per training image. Image data only."""
    random_erasing: float = 0.0
    """Random erasing probability (Zhong et al. 2020; torchvision.transforms.v2.RandomErasing, scale 0.02-1/3, aspect 0.3-3.3): a rectangle of each training image set to 0 after normalization (the mean colour). 0 = off; DeiT uses 0.25. Image data only."""
    synthetic_shape: list = field(default_factory=list)
    """Synthetic backend: sample shape [C, H, W] (or [F]); [] = the shape of the recipe's own data (e.g. 3x28x28 for cifar10-nv; config.synthetic_like)."""
    synthetic_samples: int = 1024
    """Synthetic backend: samples per epoch."""
    synthetic_classes: int = 0
    """Synthetic backend: number of classes; 0 = num_classes, or the recipe's own data's."""

    def check(self):
        _range("batch_size", self.batch_size, 1, MAX_BATCH)
        _range("paper_micro_batch", self.paper_micro_batch, 0, MAX_BATCH)
        _choice("augment", self.augment, AUGMENTS)
        _choice("normalize", self.normalize, ("auto", "per-pixel", "per-channel", "imagenet", "minus-one-one", "none"))
        _range("eval_batch_size", self.eval_batch_size, 0, MAX_BATCH)
        _range("num_classes", self.num_classes, 0, 1_000_000)
        _range("image_size", self.image_size, 0, MAX_IMAGE)
        _range("cutout", self.cutout, 0, MAX_IMAGE)
        _choice("pad_mode", self.pad_mode, ("reflect", "zero"))
        _range("val_split", self.val_split, 0)
        _range("mixup", self.mixup, 0.0, 100.0)
        _range("cutmix", self.cutmix, 0.0, 100.0)
        _range("randaugment", self.randaugment, 0, 16)
        _range("randaugment_magnitude", self.randaugment_magnitude, 0, 30)
        _range("random_erasing", self.random_erasing, 0.0, 1.0)
        if self.randaugment and self.trivialaugment:
            raise ValueError("randaugment: choose one of randaugment and trivialaugment (both are automatic "
                             "augmentation policies)")
        _range("workers", self.workers, 0, 256)
        _range("synthetic_samples", self.synthetic_samples, 1, 100_000_000)
        _range("synthetic_classes", self.synthetic_classes, 0, 1_000_000)
        if len(self.synthetic_shape) > 3 or any(
                isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= MAX_IMAGE for s in self.synthetic_shape):
            raise ValueError(f"synthetic_shape: {self.synthetic_shape!r} is not [] (the recipe's own data's shape) "
                             f"or a list of 1 to 3 integers in [1, {MAX_IMAGE}]")


#: Optimizers (`optim.name`); normtrain/optim.py builds them.
OPTIMIZERS = ("sgd", "adamw", "lamb", "lars")


@dataclass
class OptimConfig:
    name: str = "sgd"
    """Optimizer: sgd (momentum SGD, the papers' optimizer); adamw (torch.optim.AdamW, decoupled weight decay, fused on CUDA); lamb and lars (timm.optim.Lamb / Lars, the optional extra normtrain[timm]: layer-wise trust ratios for large batches)."""
    lr: float = 0.1
    """Base (peak) learning rate for the whole global batch."""
    momentum: float = 0.9
    """Momentum of sgd and lars."""
    nesterov: bool = False
    """Nesterov momentum (sgd, lars)."""
    weight_decay: float = 0.0
    """Weight decay: L2 added to the gradient for sgd and lars, decoupled (AdamW-style, scaled by lr) for adamw and lamb (DeiT: 0.05)."""
    no_decay_norm_bias: bool = False
    """Exclude parameters with at most one dimension from weight decay (and lars/lamb from their trust ratio): norm scales and shifts, biases, and each method's own vectors and scalars (README, 'Optimizers'). AdamW recipes set it, as timm and DeiT do."""
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    """adamw, lamb: the coefficients (beta1, beta2) of the running averages of the gradient and its square."""
    eps: float = 1e-8
    """adamw, lamb: term added to the denominator; lars: to the norms of its trust ratio."""
    trust_coefficient: float = 0.001
    """lars: the trust coefficient eta of the layer-wise rate eta * ||w|| / ||grad + wd w|| (You et al. 2017; timm's default)."""

    def check(self):
        _choice("name", self.name, OPTIMIZERS)
        _range("lr", self.lr, 0.0)
        _range("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        _range("weight_decay", self.weight_decay, 0.0)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: needs momentum > 0")
        if len(self.betas) != 2 or any(isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1
                                       for b in self.betas):
            raise ValueError(f"betas: {self.betas!r} is not two numbers in [0, 1)")
        _range("eps", self.eps, 0.0, 1.0, lo_open=True)
        _range("trust_coefficient", self.trust_coefficient, 0.0, 1.0, lo_open=True)


@dataclass
class ScheduleConfig:
    name: str = "constant"
    """Learning-rate schedule: constant, step, poly, linear, cosine or onecycle."""
    warmup_epochs: float = 0.0
    """Linear warm-up length in epochs (from warmup_from x lr to lr), before the schedule proper."""
    warmup_from: float = 0.0
    """Warm-up start as a fraction of lr."""
    final_lr: float = 0.0
    """poly/linear/cosine: lr at the end of training; onecycle: the final annealed lr."""
    power: float = 2.0
    """poly: decay power (Gitman & Ginsburg use 2)."""
    step_every: float = 30.0
    """step: multiply lr by gamma every this many epochs (when milestones is empty)."""
    milestones: list = field(default_factory=list)
    """step: epochs at which lr is multiplied by gamma (overrides step_every)."""
    gamma: float = 0.1
    """step: decay factor."""
    max_lr: float = 0.0
    """onecycle: peak lr (optim.lr is the starting lr)."""
    pct_start: float = 0.45
    """onecycle: fraction of training spent rising to max_lr; the same length falls back to lr, the rest anneals to final_lr."""

    def check(self):
        _choice("name", self.name, ("constant", "step", "poly", "linear", "cosine", "onecycle"))
        _range("warmup_epochs", self.warmup_epochs, 0.0)
        _range("warmup_from", self.warmup_from, 0.0)
        _range("final_lr", self.final_lr, 0.0)
        _range("power", self.power, 0.0)
        _range("step_every", self.step_every, 0.0, lo_open=True)
        _range("gamma", self.gamma, 0.0)
        _range("max_lr", self.max_lr, 0.0)
        _range("pct_start", self.pct_start, 0.0, 0.5, lo_open=True)
        if self.name == "onecycle" and self.max_lr <= 0:
            raise ValueError("max_lr: onecycle needs max_lr > 0")
        if any(isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= MAX_EPOCHS
               for m in self.milestones):
            raise ValueError(f"milestones: expected a list of epochs in [0, {MAX_EPOCHS}]")


@dataclass
class TrainConfig:
    epochs: float = 10.0
    """Training length in epochs (may be fractional)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = no limit); the schedule still spans `epochs`."""
    accum_steps: int = 1
    """Gradient accumulation steps per optimizer step (the WS paper's 'iteration size'); 0 = derived from micro_batch: data.batch_size / (processes x micro_batch)."""
    micro_batch: int = 0
    """Images per process per micro-batch (the WS paper's '1 image per GPU'); 0 = data.batch_size / (processes x accum_steps)."""
    amp: str = "auto"
    """Mixed precision: auto (bf16 on CUDA, off on CPU), off, bf16, or fp16 (with a dynamic grad scaler)."""
    channels_last: Optional[bool] = None
    """channels_last memory format for 4-d activations and weights: true, false, or auto (null: on CUDA when the method's kernels support it; GroupNorm-family methods stay NCHW)."""
    compile: Optional[bool] = None
    """Compile the model with torch.compile: true, false, or auto (null: on CUDA, on when the per-process micro-batch is <= 8 images or the method's eager forward runs more than 2.5x bn's operators on this network, so that the step is not bound by kernel launches; off on CPU)."""
    cudnn_benchmark: bool = True
    """CUDA: let cuDNN pick the fastest convolution algorithms (torch.backends.cudnn.benchmark)."""
    tf32: bool = True
    """CUDA: allow TensorFloat-32 in fp32 matmuls and convolutions (torch.set_float32_matmul_precision('high'))."""
    broadcast_buffers: bool = True
    """DDP: copy rank 0's buffers (BN running statistics) to every rank at each forward, as DDP does by default. false keeps each process's own running statistics (averaged over ranks before evaluation and checkpoints, as timm's --dist-bn reduce)."""
    static_graph: Optional[bool] = None
    """DDP static_graph: true, false or auto (null: on when accum_steps is 1 and the model is not compiled; DDP's static graph mis-handles no_sync accumulation, pytorch#187732)."""
    eval_every_steps: int = 0
    """Also evaluate every N optimizer steps (0 = only at the end of each epoch)."""
    eval_every_epochs: int = 1
    """Evaluate every N epochs (0 = never during training; see final_eval for the end)."""
    final_eval: bool = True
    """Evaluate at the end of training (on the evaluation split, and on the test split when data.val_split holds out a validation split). false with eval_every_epochs 0: no evaluation at all (smoke runs, benchmarks)."""
    ema_decay: float = 0.0
    """Exponential moving average of the weights and buffers (torch.optim.swa_utils.AveragedModel with get_ema_multi_avg_fn), updated after every optimizer step: ema = decay * ema + (1 - decay) * weights. Evaluated beside the raw weights (eval_ema/*), saved in checkpoints. 0 = off; timm and DeiT use 0.99996 at batch 1024 (0.9998 at 10k steps a run)."""
    grad_clip: float = 0.0
    """Gradient clipping threshold (0 = off; the global gradient norm before clipping is logged either way): the maximum global norm (grad_clip_mode norm) or AGC's lambda (grad_clip_mode agc)."""
    grad_clip_mode: str = "norm"
    """norm: clip the global gradient norm to grad_clip; agc: adaptive gradient clipping (Brock et al. 2021 §4.1), unit-wise ||G_i|| <= grad_clip * max(||W_i||, 1e-3) for every output unit, the classifier excluded (timm's default lambda is 0.01; Brock et al. find the best lambda depends on the batch size)."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing."""
    checkpoint_every_steps: int = 0
    """Also save `last` every N optimizer steps (0 = at each epoch end only)."""
    memory_check: bool = True
    """Before building the model, refuse (exit 2) a run whose training step clearly cannot fit in the memory available (a lower-bound estimate, normtrain/memory.py)."""

    def check(self):
        _range("epochs", self.epochs, 0.0, MAX_EPOCHS, lo_open=True)
        _range("max_steps", self.max_steps, 0)
        _range("accum_steps", self.accum_steps, 0, MAX_BATCH)
        _range("micro_batch", self.micro_batch, 0, MAX_BATCH)
        if self.accum_steps == 0 and self.micro_batch == 0:
            raise ValueError("accum_steps: 0 (derived) needs micro_batch > 0, the images per process per micro-batch")
        _choice("amp", self.amp, ("auto", "off", "bf16", "fp16"))
        _range("eval_every_steps", self.eval_every_steps, 0)
        _range("eval_every_epochs", self.eval_every_epochs, 0)
        _range("ema_decay", self.ema_decay, 0.0, 1.0, hi_open=True)
        _range("grad_clip", self.grad_clip, 0.0)
        _choice("grad_clip_mode", self.grad_clip_mode, ("norm", "agc"))
        if self.grad_clip_mode == "agc" and self.grad_clip <= 0:
            raise ValueError("grad_clip_mode: agc needs grad_clip > 0 (AGC's lambda, e.g. 0.01 as Brock et al. 2021)")
        _range("label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        _range("checkpoint_every_steps", self.checkpoint_every_steps, 0)
        if self.static_graph and self.accum_steps != 1:
            raise ValueError("static_graph: DDP's static graph mis-handles gradient accumulation with no_sync "
                             "(pytorch#187732); use it with accum_steps 1 or leave it auto")


@dataclass
class LogConfig:
    progress: bool = True
    """Progress on stderr (rank 0): a tqdm bar (loss, lr, images/s, ETA) on a terminal; off a terminal a plain line (step, epoch, loss, lr, images/s, ETA) at most every interval_s."""
    interval_s: float = 30.0
    """Off a terminal: seconds between progress lines (0 = one at every every_steps); with eval_lines=interval, the least time between printed evaluation lines."""
    eval_lines: str = "interval"
    """Evaluation lines on stdout: all (one per evaluation), interval (at most one per interval_s) or none (the final summary only). metrics.jsonl and TensorBoard get every evaluation."""
    tensorboard: bool = True
    """Write TensorBoard scalars under <out>/tb."""
    every_steps: int = 10
    """Log training scalars every N optimizer steps."""
    track_norms: bool = False
    """Log the mean L2 norm of the first layer's output (after its norm), the last residual block's (or last hidden layer's) and the classifier's (Gitman & Ginsburg Fig. 4) every `every_steps`."""

    def check(self):
        _range("every_steps", self.every_steps, 1)
        _range("interval_s", self.interval_s, 0.0)
        _choice("eval_lines", self.eval_lines, ("all", "interval", "none"))


@dataclass
class Recipe:
    description: str = ""
    """What the recipe reproduces, with the paper and section."""
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    norm: SharedOptions = field(default_factory=lambda: norm_config()())  # a NormConfig: the keys come from the methods
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    per_norm: dict = field(default_factory=dict)
    """Overrides applied when a given method is chosen: {norm name: {'section.key': value}} (e.g. cifar10-nv footnote 3)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = ["run", "model", "norm", "data", "optim", "schedule", "train", "log"]


def synthetic_like(data: DataConfig, like: DataConfig) -> None:
    """Fill an unset synthetic_shape / synthetic_classes of `data` from the data `like` describes.

    `like` is the recipe file's own data section (before --data synthetic replaced its
    source). Its kind is read from its backend or the name of its source: the built-in
    digits are 1x8x8; a source named like MNIST 1x28x28, CIFAR 3x32x32 (100 classes for
    CIFAR-100); anything else ImageNet-style 3x224x224. data.image_size, when set, is the
    side (it is the training crop every backend produces). Classes: num_classes if set.
    """
    kind = like.backend if like.backend not in ("auto", "synthetic") else Path(like.source).name.lower()
    if "digits" in kind:
        channels, side, classes = 1, 8, 10
    elif "mnist" in kind:
        channels, side, classes = 1, 28, 10
    elif "cifar" in kind:
        channels, side, classes = 3, 32, 100 if "100" in kind else 10
    else:
        channels, side, classes = 3, 224, 1000 if "imagenet" in kind else 10
    if not data.synthetic_shape:
        side = data.image_size or side
        data.synthetic_shape = [channels, side, side]
    if not data.synthetic_classes:
        data.synthetic_classes = data.num_classes or like.num_classes or classes


# -- checks -------------------------------------------------------------------

def _choice(key, value, choices):
    if value not in choices:
        raise ValueError(f"{key}: '{value}' is not one of: {', '.join(choices)}")


#: Upper bounds of sizes: far above any real setting, low enough to fail here rather than in an allocation.
MAX_BATCH = 1 << 20
MAX_IMAGE = 8192
MAX_EPOCHS = 100_000


def _check_options(options: dict) -> None:
    """model.options values: numbers must be finite and sizes positive (the builder checks names)."""
    def walk(key, v):
        if isinstance(v, bool):
            return
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"options.{key}: {v} is not a finite number")
        if isinstance(v, int) and v <= 0 and key in ("widths", "depth", "width", "groups"):
            raise ValueError(f"options.{key}: sizes must be positive integers, got {v}")
        if isinstance(v, int) and abs(v) > 1 << 24:
            raise ValueError(f"options.{key}: {v} is out of range")
        if isinstance(v, list):
            if not v and key == "widths":
                raise ValueError("options.widths: must not be empty")
            for item in v:
                walk(key, item)
    for k, v in options.items():
        walk(k, v)


def _range(key, value, lo=None, hi=None, lo_open=False, hi_open=False):
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or \
          (hi is not None and (value > hi or (hi_open and value == hi)))
    if bad:
        lo_s = "" if lo is None else ("> " if lo_open else ">= ") + str(lo)
        hi_s = "" if hi is None else ("< " if hi_open else "<= ") + str(hi)
        raise ValueError(f"{key}: {value} is out of range (must be {' and '.join(s for s in (lo_s, hi_s) if s)})")


_SCI = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _coerce(value: Any, typ, where: str):
    """Return `value` as `typ` or raise UsageError; ints widen to floats, nothing else is converted."""
    origin = typing.get_origin(typ) or typ
    if origin is typing.Union and type(None) in typing.get_args(typ):
        # Optional[X]: null or 'auto' mean "decide at run time" (written back as null).
        if value is None or value == "auto":
            return None
        inner = next(t for t in typing.get_args(typ) if t is not type(None))
        return _coerce(value, inner, where)
    if typ is float:
        if isinstance(value, str) and _SCI.match(value.strip()):
            # PyYAML (YAML 1.1) reads 1e-4 (no dot) as a string; accept it as the number it is.
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise UsageError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2 ** 53:
                return int(value)
            raise UsageError(f"{where}: expected an integer, got {value!r}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{where}: expected true or false, got {value!r}")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise UsageError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {typ}")


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    """Field types of a dataclass (cached: resolving string annotations compiles each of them)."""
    return typing.get_type_hints(cls)


def _set(recipe: Recipe, key: str, value: Any, source: str) -> None:
    """Set dotted `key` (section.field, or a top-level field) with type checking."""
    parts = key.split(".")
    top = {f.name for f in dataclasses.fields(Recipe)}
    if parts[0] not in top:
        raise UsageError(f"{source}: unknown key '{key}'; top-level keys are: {', '.join(sorted(top))}")
    if parts[0] in SECTIONS:
        if len(parts) != 2:
            raise UsageError(f"{source}: '{key}' must be of the form {parts[0]}.<key>")
        section = getattr(recipe, parts[0])
        hints = _hints(type(section))
        if parts[1] not in hints:
            raise UsageError(f"{source}: unknown key '{key}'; {parts[0]} keys are: {', '.join(sorted(hints))}")
        setattr(section, parts[1], _coerce(value, hints[parts[1]], f"{source}: {key}"))
    else:
        if len(parts) != 1:
            raise UsageError(f"{source}: unknown key '{key}'")
        setattr(recipe, parts[0], _coerce(value, _hints(Recipe)[parts[0]], f"{source}: {key}"))


def _flatten(data: dict, source: str) -> list[tuple[str, Any]]:
    out = []
    for k, v in data.items():
        if not isinstance(k, str):
            raise UsageError(f"{source}: keys must be strings, got {k!r}")
        if k in SECTIONS:
            if v is None:
                continue
            if not isinstance(v, dict):
                raise UsageError(f"{source}: '{k}' must be a mapping of keys, got {v!r}")
            out += [(f"{k}.{kk}", vv) for kk, vv in v.items()]
        else:
            out.append((k, v))
    return out


def check(recipe: Recipe, source: str) -> None:
    for name in SECTIONS:
        try:
            getattr(recipe, name).check()
        except ValueError as e:
            raise UsageError(f"{source}: {name}.{e}") from None


# -- loading --------------------------------------------------------------------

#: A recipe file larger than this is not a recipe (the largest shipped one is a few KB).
MAX_RECIPE_BYTES = 1 << 20


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def find_recipe(name_or_path: str) -> Path:
    if not name_or_path.strip():
        raise UsageError("--recipe: empty; give a recipe name (normtrain list recipes) or a .yaml path")
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not p.is_file():  # a folder, a FIFO or a device is not a recipe either
            raise UsageError(f"recipe file not found: {name_or_path}"
                             + (" (not a regular file)" if p.exists() else ""))
        return p
    p = RECIPES_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise UsageError(f"unknown recipe '{name_or_path}'; choose from: {', '.join(recipe_names())} (or give a .yaml path)")
    return p


def parse_set(item: str) -> tuple[str, Any]:
    """Parse one `--set key=value`; the value is read as YAML (numbers, true/false, lists)."""
    if "=" not in item:
        raise UsageError(f"--set '{item}': expected key=value, e.g. --set optim.lr=0.02")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise UsageError(f"--set '{item}': empty key")
    if not raw.strip():
        return key, ""
    try:
        yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UsageError(f"--set '{item}': cannot parse value {raw!r}") from None
    return key, _yaml(raw, f"--set '{item}'")


def load(name_or_path: str | None, overrides: list[tuple[str, Any]] = ()) -> Recipe:
    """Load a recipe (name, path, or None for the defaults) and apply `overrides` (key, value) pairs.

    Overrides come from the command line and win over everything; the recipe's
    `per_norm` block for the final method is applied between the file and them.
    """
    recipe = Recipe()
    source = "defaults"
    stem = "default"
    if name_or_path is not None:
        path = find_recipe(name_or_path)
        source, stem = str(path), path.stem
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise UsageError(f"{source}: cannot read the recipe ({e.strerror or e})") from None
        if len(raw) > MAX_RECIPE_BYTES:
            raise UsageError(f"{source}: {len(raw)} bytes is not a recipe (at most {MAX_RECIPE_BYTES})")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"{source}: not UTF-8 text (byte {e.start}); a recipe is a UTF-8 YAML file") from None
        data = _yaml(text, source) or {}
        if not isinstance(data, dict):
            raise UsageError(f"{source}: a recipe must be a mapping of sections")
        for key, value in _flatten(data, source):
            _set(recipe, key, value, source)
    # The chosen method decides which per_norm block applies.
    norm_name = dict(overrides).get("norm.name", recipe.norm.name)
    for k, v in (recipe.per_norm or {}).items():
        if not isinstance(v, dict):
            raise UsageError(f"{source}: per_norm.{k} must be a mapping of 'section.key: value'")
    for key, value in (recipe.per_norm or {}).get(norm_name, {}).items():
        _set(recipe, key, value, f"{source} (per_norm.{norm_name})")
    own_data = dataclasses.replace(recipe.data)  # what the recipe itself trains on (for synthetic stand-ins)
    for key, value in overrides:
        if key == "per_norm":
            raise UsageError("--set: per_norm cannot be set from the command line")
        _set(recipe, key, value, "--set")
    check(recipe, source if not overrides else f"{source} with --set")
    if "synthetic" in (recipe.data.source, recipe.data.backend):
        d, keys = recipe.data, dict(overrides)
        if "data.synthetic_classes" in keys and d.synthetic_classes and "data.num_classes" not in keys:
            d.num_classes = d.synthetic_classes  # the recipe's count describes its real data, not the stand-in
        elif d.synthetic_classes and d.num_classes and d.synthetic_classes != d.num_classes:
            raise UsageError(f"{source}: data.synthetic_classes {d.synthetic_classes} differs from data.num_classes "
                             f"{d.num_classes}; set one of them")
        synthetic_like(recipe.data, own_data)
    if not recipe.run.name:
        recipe.run.name = f"{stem}-{recipe.norm.name}"
    if not recipe.run.out:
        recipe.run.out = str(Path("runs") / recipe.run.name)
    return recipe


def from_dict(saved: dict, source: str, overrides: list[tuple[str, Any]] = ()) -> Recipe:
    """The recipe a run saved (a checkpoint's ``recipe``, `Recipe.to_dict`), checked like a recipe file;
    keys it lacks (written by an older normtrain) take their defaults; `overrides` win."""
    recipe = Recipe()
    for key, value in _flatten({k: v for k, v in saved.items() if k != "per_norm"}, source):
        _set(recipe, key, value, source)
    for key, value in overrides:
        _set(recipe, key, value, "--set")
    check(recipe, source)
    return recipe


def dump(recipe: Recipe) -> str:
    """The resolved recipe as YAML; reloading it gives the same recipe.

    `per_norm` is left out: its values for the chosen method are already in the
    sections, and re-applying it on reload would undo `--set` overrides of the same keys.
    """
    d = recipe.to_dict()
    d["per_norm"] = {}
    return yaml.safe_dump(d, sort_keys=False)


@functools.lru_cache(maxsize=None)
def _class_nodes(path: str) -> dict:
    """{name: ast.ClassDef} of the top-level classes of a source file, parsed once."""
    from .static import parse
    return {n.name: n for n in parse(path).body if isinstance(n, ast.ClassDef)}


def dataclass_docs(cls) -> dict[str, str]:
    """{field: docstring} for a dataclass whose fields carry a string literal right under them (MRO included)."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass) or not vars(klass).get("__annotations__"):
            continue  # declares no field of its own (e.g. the NormConfig put together from its parts)
        path = sys.modules[klass.__module__].__file__
        upto = klass.__module__.rpartition(":")[2] if ":" in klass.__module__ else None
        if upto:  # read from the head of its file (`static.light` with upto): parse that head only
            from .static import head
            node = next((n for n in head(path, upto).body if isinstance(n, ast.ClassDef)
                         and n.name == klass.__qualname__), None)
        else:
            node = _class_nodes(path).get(klass.__qualname__)
        if node is None:  # not a top-level class of its file
            node = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        body = node.body
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def split_values(raw: str) -> list[str]:
    """Split on top-level commas: not inside [], {}, () or quotes (sweep axes, comma lists of `apply_overrides`)."""
    out, depth, quote, cur = [], 0, None, []
    for ch in raw:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
            if depth < 0:
                raise UsageError(f"--set value {raw!r}: unbalanced brackets")
        elif ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if depth != 0 or quote:
        raise UsageError(f"--set value {raw!r}: unbalanced brackets or quotes")
    out.append("".join(cur))
    if any(not v.strip() for v in out):
        raise UsageError(f"--set value {raw!r}: empty value in the comma-separated list")
    return out


def apply_overrides(obj, overrides, source: str = "--set"):
    """Set fields of dataclass instance `obj` from (key, value) pairs with the recipe's type rules.

    Unknown keys and wrong types raise UsageError naming the key; list fields typed
    ``list[float]`` (etc.) have their elements checked too, and take a YAML list, a comma
    list (``lrs=0.01,0.1``) or a single value. If `obj` has a ``check()``
    method, its ValueError becomes a UsageError. Used by the scenarios' parameters.
    """
    hints = _hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in overrides:
        if key not in names:
            raise UsageError(f"{source}: unknown key '{key}'; valid keys are: {', '.join(names)}")
        typ = hints[key]
        where = f"{source}: {key}"
        if (typing.get_origin(typ) or typ) is list and not isinstance(value, list):
            # A comma list (lrs=0.01,0.1) or one value (lrs=0.1), as `normtrain sweep` takes them.
            items = split_values(value) if isinstance(value, str) else [value]
            value = [parse_set(f"{key}={v.strip()}")[1] if isinstance(v, str) else v for v in items]
        value = _coerce(value, typ, where)
        args = typing.get_args(typ)
        if typing.get_origin(typ) is list and len(args) == 1:
            value = [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        setattr(obj, key, value)
    if hasattr(obj, "check"):
        try:
            obj.check()
        except ValueError as e:
            raise UsageError(f"{source}: {e}") from None
    return obj


def field_docs() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, doc) for every recipe key, read from the docstrings under the fields."""
    rows = []
    for section in SECTIONS:
        cls = type(getattr(Recipe(), section))
        docs = dataclass_docs(cls)
        obj = cls()
        for f in dataclasses.fields(cls):
            rows.append((f"{section}.{f.name}", type_name(_hints(cls)[f.name]), getattr(obj, f.name),
                         docs.get(f.name, "")))
    return rows


def type_name(typ) -> str:
    """'float', 'list', or 'bool|auto' for an Optional field (null/auto = decided at run time)."""
    args = typing.get_args(typ)
    if typing.get_origin(typ) is typing.Union and type(None) in args:
        return "|".join(t.__name__ for t in args if t is not type(None)) + "|auto"
    return getattr(typ, "__name__", str(typ))
