"""Will one training step fit in memory? Estimated before anything big is allocated.

A run whose step cannot fit would otherwise be killed by the kernel's OOM killer
with no message (CPU), or fail deep inside the first backward (GPU). The estimate
is a lower bound of what a step keeps alive at its peak:

- parameters x 2 (weights and SGD momentum, float32: gradients are freed between
  steps and grow while the activations are being freed, so they are not added);
- activations: the network is built on PyTorch's ``meta`` device (shapes only, no
  memory) and one forward of a per-process micro-batch is traced with hooks that
  add up every module's output, the tensors autograd keeps for backward. Outputs
  that are their input (in-place ReLU, Identity) or a view of it (Flatten) are not
  counted twice (a view counts once, for its storage); with AMP they count 2 bytes
  per element.

The engine traces it in the meta-device forward that checks the input shapes
(`engine.check_forward`); `estimate` does the same on its own. It is compared
with the memory available to this process: the free memory of its
GPU (`torch.cuda.mem_get_info`), or on CPU the smaller of MemAvailable and the
cgroup limit left, shared by the processes of this node. A run is refused (one
line, exit 2) only when the lower bound alone exceeds what is available;
``train.memory_check: false`` skips the check. If the network cannot be traced on
the meta device the check is skipped (nothing is claimed).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UsageError

GIB = 1024 ** 3


@dataclass
class Estimate:
    activations: int      # bytes
    parameters: int       # bytes: weights + optimizer state (+ the EMA's copy), see weight_copies

    @property
    def total(self) -> int:
        return self.activations + self.parameters


def activation_bytes(model: torch.nn.Module, x: torch.Tensor, element_size: int | None = None) -> int:
    """Bytes of every distinct module output of one forward of `x` (the input included)."""
    seen: set[int] = set()
    alive: list = []  # keep every tensor seen alive so that its id is not reused by a later one
    total = [0]

    def add(t):
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            base = t._base
            if base is not None and id(base) in seen:  # a view of a counted tensor (Flatten, reshape)
                return
            for v in (t, base) if base is not None else (t,):
                seen.add(id(v))
                alive.append(v)
            total[0] += t.numel() * (element_size or t.element_size())
        elif isinstance(t, (list, tuple)):
            for v in t:
                add(v)

    def hook(module, inputs, output):
        for i in inputs:  # an in-place op returns its input: counted once
            if isinstance(i, torch.Tensor):
                seen.add(id(i))
                alive.append(i)
        add(output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        add(x)
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def estimate(recipe, in_shape, num_classes: int, micro_batch: int, amp: str | None = None) -> Estimate | None:
    """The lower bound of one training step's memory for this recipe, or None if it cannot be traced.

    `amp`: the resolved precision (default train.amp; 'auto' counts as float32, as on CPU)."""
    from . import models, norms
    try:
        bundle = norms.get(recipe.norm.name, **recipe.norm.options())
        with torch.device("meta"):
            model = models.NETWORKS[recipe.model.name](bundle, num_classes, tuple(in_shape),
                                                       **recipe.model.builder_options())
            x = torch.empty((micro_batch, *in_shape))
        elem = 2 if (amp or recipe.train.amp) in ("bf16", "fp16") else None
        acts = activation_bytes(model, x, elem)
    except UsageError:
        raise
    except Exception:  # noqa: BLE001 - a layer that needs real data (or .item()) on meta: no estimate
        return None
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return Estimate(activations=acts, parameters=weight_copies(recipe) * params)


def weight_copies(recipe) -> int:
    """Tensors of the weights' size a training step holds: the weights, the optimizer's state per
    weight (sgd and lars: the momentum buffer; adamw and lamb: two moments) and the EMA's copy."""
    state = 2 if recipe.optim.name in ("adamw", "lamb") else 1
    return 1 + state + (1 if recipe.train.ema_decay else 0)


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def cpu_available() -> int | None:
    """Bytes this machine (or its cgroup) can still give: min(MemAvailable, cgroup limit - usage)."""
    values = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                values.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        lim, use = _read_int(limit), _read_int(usage)
        if lim is not None and use is not None and lim < 1 << 60:
            values.append(max(lim - use, 0))
    return min(values) if values else None


def available(device: torch.device) -> int | None:
    """Bytes available to this process on `device` (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = cpu_available()
    if free is None:
        return None
    return free // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 1024 ** 2:.1f} MiB"


def check(recipe, device: torch.device, in_shape, micro_batch: int, est: Estimate | None) -> Estimate | None:
    """UsageError when one training step (lower bound `est`, from `estimate` or the engine's
    meta-device forward) clearly cannot fit in the memory available on `device`."""
    if not recipe.train.memory_check or est is None:
        return est
    free = available(device)
    if free is None or est.total <= free:
        return est
    shape = "x".join(map(str, in_shape))
    raise UsageError(
        f"one training step needs at least {gib(est.total)} (activations {gib(est.activations)} for "
        f"{micro_batch} samples of {shape} per process, weights and momentum "
        f"{gib(est.parameters)}) but {gib(free)} is available on {device.type}; lower data.batch_size "
        f"(or raise train.accum_steps), or the input size (data.image_size, data.synthetic_shape); "
        f"train.memory_check=false runs it anyway")


__all__ = ["Estimate", "activation_bytes", "available", "check", "estimate"]
