"""Share of training-step time spent in normalization, per method (Gitman & Ginsburg Fig. 1: BN ~ 1/4).

Gitman & Ginsburg 2017 §1 and Fig. 1: "BN takes about 1/4 of the total
training time of the ResNet-50 network on the ImageNet classification problem
using Titan X Pascal GPU" — BN "is memory-bandwidth limited, since it requires
two passes through the input data".

What runs: for each method of ``methods``, one network (``model``, default a
ResNet-18 at 32x32 so that the default finishes quickly on CPU; ``--set
model=resnet50 --set image_size=224`` for the paper's setting) trained on random
inputs for ``warmup`` + ``steps`` SGD steps, the last ``steps`` under
torch.profiler (CPU, plus CUDA on a GPU).

Attribution (what counts as normalization):
- forward: every op executed inside a normalization scope, a ``record_function``
  range opened by a forward pre-hook and closed by a forward hook on each
  activation-normalization module (BN, GhostNorm, GroupNorm/LN/IN: what the
  method's ``norm()`` builds), and around the effective-weight computation of
  reparametrised conv/linear layers (WN, WS, NormProp, NF: the weight
  normalization itself, not the convolution that uses the weight);
- backward: each autograd node created by one of those forward ops, matched by
  its autograd sequence number (the profiler's ``sequence_nr`` of the
  ``autograd::engine::evaluate_function`` event).
The share is (forward scopes + matched backward nodes) / step time, with the
step time the duration of a ``record_function`` around forward, backward and
the optimizer step (CPU time on CPU; on a GPU the device (kernel) time of the
same events over the total kernel time). The optimizer's update of the norm
parameters and the activation functions are not counted.

Verdict, in parts: the paper's ``bn-quarter``, BN's share is within
``tolerance`` of 1/4; our ``wn-cheaper`` (when ``wn`` is among the methods, the
default), BN's share is larger than WN's (the paper's premise: weight
normalization does not slow the step down). The paper's figure is a GPU
measurement, so on a CPU both parts are n/a and the output prints the GPU command
that decides them (``--set device=cuda --set model=resnet50 --set
image_size=224 --set batch_size=64``); on a GPU at another network or size they are inconclusive. On
CPU the share depends on the thread count and the size (resnet18 32x32 batch 32
on a shared 2-core machine: ~4% with 1 thread, ~24% with 2; resnet50 112x112
batch 16, 1 thread: ~10%).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import models, norms
from . import common

USES_DATA = False
#: The headline numbers are timings: they change from run to run (the rerun test compares states only).
TIMED = True

CLAIM = ("Batch normalization takes about 1/4 of the training step time of ResNet-50 "
         "(Gitman & Ginsburg 2017 Fig. 1, Titan X Pascal GPU).")

SCOPE = "normtrain::norm"
STEP = "normtrain::step"


@dataclass
class Params(common.Params):
    model: str = "resnet18"
    """Network to profile (resnet50 + image_size 224 is the paper's setting)."""
    methods: list[str] = field(default_factory=lambda: ["bn", "ghost", "gn", "ws-gn", "wn", "none"])
    """Methods to profile; the verdict needs bn."""
    image_size: int = 32
    """Input resolution (square, 3 channels)."""
    batch_size: int = 32
    """Batch size per step."""
    num_classes: int = 10
    """Classifier outputs."""
    groups: int = 32
    """GroupNorm groups for gn / ws-gn."""
    warmup: int = 2
    """Unprofiled steps first (allocator, caches, cudnn autotune)."""
    steps: int = 3
    """Profiled steps."""
    tolerance: float = 0.1
    """Verdict: |BN share - 1/4| <= tolerance (and BN's share > WN's)."""
    threads: int = 1
    """CPU threads (1: steadier timings on a shared machine; 0 = torch's default)."""

    def check(self) -> None:
        super().check()
        common.known(self.model, self.methods)
        for k in ("image_size", "batch_size", "num_classes", "groups", "steps", "tolerance"):
            common.positive(k, getattr(self, k))
        common.positive("warmup", self.warmup, allow_zero=True)


# -- scopes -------------------------------------------------------------------------------------

def instrument(model: torch.nn.Module) -> tuple[list, int]:
    """Open a profiler scope around every normalization computation; returns (hook handles, scopes)."""
    from torch.profiler import record_function
    handles, count = [], 0
    for m in model.modules():
        if common.is_norm_layer(m):
            stack = []

            def pre(mod, inputs, stack=stack):
                rf = record_function(SCOPE)
                rf.__enter__()
                stack.append(rf)

            def post(mod, inputs, output, stack=stack):
                stack.pop().__exit__(None, None, None)
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
            count += 1
        elif common.has_weight_reparam(m):
            orig = m.effective_weight

            def wrapped(orig=orig):
                with record_function(SCOPE):
                    return orig()
            m.effective_weight = wrapped
            count += 1
    return handles, count


def _descendants(e):
    for c in e.cpu_children:
        yield c
        yield from _descendants(c)


def _elapsed(e) -> float:
    return float(e.time_range.end - e.time_range.start)


def attribute(events, device: str = "cpu") -> dict:
    """Normalization time vs step time from profiler events (see the module docstring)."""
    scopes = [e for e in events if e.name == SCOPE]
    scope_ids = {id(e) for e in scopes}

    def outermost(e):
        p = e.cpu_parent
        while p is not None:
            if id(p) in scope_ids:
                return False
            p = p.cpu_parent
        return True
    top = [e for e in scopes if outermost(e)]
    seqs = set()
    for e in top:
        for c in _descendants(e):
            if c.sequence_nr is not None and c.sequence_nr >= 0:
                seqs.add(c.sequence_nr)
    bwd = [e for e in events if e.name.startswith("autograd::engine::evaluate_function")
           and e.sequence_nr is not None and e.sequence_nr in seqs]
    steps = [e for e in events if e.name == STEP]
    if device == "cuda":
        dev = lambda e: float(getattr(e, "device_time_total", 0.0) or 0.0)  # noqa: E731
        fwd_t, bwd_t = sum(dev(e) for e in top), sum(dev(e) for e in bwd)
        total = sum(float(getattr(e, "self_device_time_total", 0.0) or 0.0) for e in events)
    else:
        fwd_t, bwd_t = sum(_elapsed(e) for e in top), sum(_elapsed(e) for e in bwd)
        total = sum(_elapsed(e) for e in steps)
    return {"norm_forward_us": fwd_t, "norm_backward_us": bwd_t, "step_total_us": total,
            "share": (fwd_t + bwd_t) / total if total > 0 else float("nan"),
            "forward_scopes": len(top), "backward_nodes": len(bwd)}


def profile_method(ctx, p: Params, method: str) -> dict:
    from torch.profiler import ProfilerActivity, profile, record_function
    torch.manual_seed(p.seed)
    shape = (3, p.image_size, p.image_size)
    model = models.build(p.model, norms.get(method, groups=p.groups), p.num_classes, shape).to(ctx.device)
    model.train()
    handles, n_scopes = instrument(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(p.seed)
    x = torch.randn((p.batch_size,) + shape, generator=g).to(ctx.device)
    y = torch.randint(0, p.num_classes, (p.batch_size,), generator=g).to(ctx.device)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    sync = torch.cuda.synchronize if ctx.device.type == "cuda" else (lambda: None)
    for _ in range(p.warmup):
        step()
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.device.type == "cuda" else [])
    import time
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(p.steps):
            with record_function(STEP):
                step()
            sync()
    wall = (time.perf_counter() - t0) / p.steps
    for h in handles:
        h.remove()
    res = attribute(prof.events(), ctx.device.type)
    res.update({"method": method, "norm_scopes": n_scopes, "step_ms_profiled": 1e3 * wall,
                "images_per_s_profiled": p.batch_size / wall})
    return res


#: The paper's setting (Fig. 1: ResNet-50 on ImageNet; footnote 4: 64 images per GPU).
PAPER_MODEL, PAPER_SIZE, PAPER_BATCH = "resnet50", 224, 64
GPU_COMMAND = (f"normtrain scenario bn-cost --set device=cuda --set model={PAPER_MODEL} --set image_size={PAPER_SIZE} "
               f"--set batch_size={PAPER_BATCH}")


def verdict(shares: dict, tolerance: float = 0.1, device: str = "cpu", model: str = "", size: int = 0,
            batch: int = 0) -> dict:
    """shares[method] = share of the step time; needs bn, and uses wn (a weight method) as the control when given.

    The claim is about a GPU: on a CPU both parts are n/a (the printed GPU command decides them); on a GPU at
    another network or size than the paper's they are inconclusive."""
    if "bn" not in shares or not math.isfinite(shares["bn"]):
        return common.not_judged(CLAIM, "methods must include bn")
    others = ", ".join(f"{m} {s:.1%}" for m, s in shares.items() if m != "bn")
    setting = f"{model} {size}x{size}, batch {batch}, {device}"
    paper_size = model == PAPER_MODEL and size == PAPER_SIZE

    def state(ok: bool) -> str:
        if device != "cuda":
            return common.NA
        return (common.REPRODUCED if ok else common.NOT_REPRODUCED) if paper_size else common.INCONCLUSIVE
    where = ("" if device == "cuda" and paper_size else
             f"; a GPU claim measured on {device}: `{GPU_COMMAND}` decides it" if device != "cuda" else
             f"; at another size than the paper's: `{GPU_COMMAND}` decides it")
    parts = [common.part("bn-quarter", CLAIM, "paper", state(abs(shares["bn"] - 0.25) <= tolerance),
                         f"{setting}: BN {shares['bn']:.1%} of the step time" + (f"; {others}" if others else "")
                         + where, f"BN's share of the step time is within {tolerance:g} of 1/4 on a GPU",
                         {"value": 0.25, "where": "§1, Fig. 1 (Titan X Pascal)"})]
    if "wn" in shares and math.isfinite(shares["wn"]):
        parts.append(common.part(
            "wn-cheaper", "Weight normalization does not slow the step down as BN does (the paper's premise, §1).",
            "added", state(shares["bn"] > shares["wn"]), f"{setting}: WN {shares['wn']:.1%} vs BN {shares['bn']:.1%}"
            + where, "BN's share of the step time is larger than WN's on a GPU"))
    headline = f"BN {shares['bn']:.1%} of the step ({model} {size}px, {device})" + (
        f", WN {shares['wn']:.1%}" if "wn" in shares else "")
    if device != "cuda":
        headline = f"n/a on {device} (a GPU claim): {headline}; decide it with `{GPU_COMMAND}`"
    return common.verdict_of(CLAIM, parts, headline)


def plot(ctx, p: Params, res: list[dict], v: dict) -> None:
    names = [r["method"] for r in res]
    fwd = [r["norm_forward_us"] / max(r["step_total_us"], 1e-9) for r in res]
    bwd = [r["norm_backward_us"] / max(r["step_total_us"], 1e-9) for r in res]
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, 2, panel=(6.5, 4.6))
        ax = axes[0][0]
        ax.bar(names, fwd, label="forward", color="tab:blue")
        ax.bar(names, bwd, bottom=fwd, label="backward", color="tab:orange")
        ax.axhline(0.25, color="k", lw=1, ls="--", label="1/4 (Gitman & Ginsburg Fig. 1, GPU)")
        ax.set_ylim(0, 1.4 * max([0.25] + [a + b for a, b in zip(fwd, bwd)]))  # room for the legend
        ax.set_ylabel("share of the training-step time")
        ax.set_xlabel("method")
        ax.set_title(f"normalization share: {p.model} {p.image_size}x{p.image_size}, batch {p.batch_size}, "
                     f"{ctx.device.type}")
        ax.legend()
        ax = axes[0][1]
        ax.bar(names, [r["step_ms_profiled"] for r in res], color="tab:gray")
        ax.set_ylabel("step time under the profiler (ms)")
        ax.set_xlabel("method")
        ax.set_title(f"training-step time ({p.steps} profiled steps, {p.threads or 'default'} thread(s))")
        ctx.savefig(fig, "bn_cost.png", v)


def run(ctx, p: Params) -> dict:
    res = []
    for m in ctx.progress(p.methods, desc="bn-cost"):
        r = profile_method(ctx, p, m)
        res.append(r)
        ctx.scalars("share", {m: r["share"]}, 0)
    shares = {r["method"]: r["share"] for r in res}
    v = verdict(shares, p.tolerance, ctx.device.type, p.model, p.image_size, p.batch_size)
    plot(ctx, p, res, v)
    rows = [[r["method"], r["step_ms_profiled"], r["norm_forward_us"] / 1e3 / p.steps,
             r["norm_backward_us"] / 1e3 / p.steps, r["share"], r["norm_scopes"]] for r in res]
    summary = common.table(["method", "step ms", "norm fwd ms", "norm bwd ms", "norm share", "norm scopes"], rows)
    meas = {"model": p.model, "image_size": p.image_size, "batch_size": p.batch_size, "device": ctx.device.type,
            "time_basis": "device (kernel) time" if ctx.device.type == "cuda" else "CPU wall time of the step",
            "per_method": res}
    return ctx.finish(meas, v, summary)
