#!/usr/bin/env python3
"""Layer-level fast paths of issue 9 point 7, each against the code it replaces, in one process.

ghost:    forward + backward of one normalization layer on an activation, interleaved
          repeats (min and median per variant): F.batch_norm (what `bn` costs), GhostNorm's
          reference formula (`ghost_norm_reference`, the pre-fast-path code) and its fused
          path (`ghost_norm_fused`), SeqNorm before (GroupNorm + reference) and now; fp32
          and bf16, NCHW and channels_last; with the ATen ops dispatched and a model of
          the bytes they move per activation element (`OpCounter`).
ghost-compiled (only when --only names it): bn, the reference formula and the fused
          path through torch.compile (inductor): kernels generated and time.
reparam:  one optimizer step of a weight method's network trained with gradient
          accumulation (1 image per micro-batch, as the WS recipes), recomputing the
          weights every micro-batch vs `norms.micro_batches` (once per step): fastest
          seconds per step and the ATen ops dispatched per step (a device-independent
          proxy for kernel launches; --step-repeats 0 counts only).

    OMP_NUM_THREADS=1 python tools/bench_layers.py --device cpu --only ghost,ghost-compiled,reparam \
        --model resnet50 --size 32 --accum 8 --json docs/bench-layers-cpu.json
    python tools/bench_layers.py --device cuda --shape 256,256,56,56 --ghost-groups 8 --model resnet50 --size 224 \
        --accum 64 --json bench-layers.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normtrain import models, norms  # noqa: E402
from normtrain.norms.ghost import ghost_norm_fused, ghost_norm_reference  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched and a traffic model of them: every op reads each tensor
    argument once and writes each output once; ops whose output aliases an input (views) move
    nothing. Device independent; a fused kernel that reads its input twice (batch norm's
    statistics and normalize passes) is counted once, so it is a lower bound for those."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops[str(func.overloadpacket)] += 1
        ins = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        ptrs = {t.untyped_storage().data_ptr() for t in ins}
        written = [t for t in outs if t.untyped_storage().data_ptr() not in ptrs]
        if written or not outs:
            self.bytes += sum(t.numel() * t.element_size() for t in ins + written)
        return out


# -- ghost / seqnorm ----------------------------------------------------------------------
def ghost_variants(c: int, g: int, gc: int, device):
    w = torch.rand(c, device=device).add_(0.5).requires_grad_()
    b = torch.randn(c, device=device).requires_grad_()
    eps = 1e-5

    def bn(x):
        return F.batch_norm(x, None, None, w, b, True, 0.0, eps)

    def ghost_ref(x):
        return ghost_norm_reference(x, g, w, b, eps)[0]

    def ghost_fused(x):
        return ghost_norm_fused(x, g, w, b, eps)[0]

    def seq_ref(x):  # the old SeqNorm: GroupNorm as autocast would run it (fp32 on CUDA), then the reference
        h = F.group_norm(x.float() if device.type == "cuda" else x, gc, None, None, eps)
        return ghost_norm_reference(h, g, w, b, eps)[0]

    def seq_fused(x):
        return ghost_norm_fused(F.group_norm(x, gc, None, None, eps), g, w, b, eps)[0]

    return {"bn": bn, "ghost-reference": ghost_ref, "ghost-fused": ghost_fused,
            "seqnorm-reference": seq_ref, "seqnorm-fused": seq_fused}, (w, b)


def bench_ghost(a, device) -> list[dict]:
    shape = tuple(int(v) for v in a.shape.split(","))
    rows = []
    for dtype_name in a.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        for layout in a.layouts.split(","):
            torch.manual_seed(0)
            x = torch.randn(shape, device=device).to(dtype)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            grad = torch.randn(shape, device=device).to(dtype)
            variants, params = ghost_variants(shape[1], a.ghost_groups, a.groups, device)

            def step(fn):
                def run():
                    fn(x).backward(grad)
                    x.grad = None
                    for p in params:
                        p.grad = None
                return run
            traffic = {}
            for k, fn in variants.items():
                with OpCounter() as c:
                    step(fn)()
                traffic[k] = (sum(c.ops.values()), c.bytes / x.numel())
            times = {k: [] for k in variants}
            for r in range(a.warmup + a.repeats):  # interleaved: drift hits every variant alike
                for k, fn in variants.items():
                    t = timed(step(fn), device)
                    if r >= a.warmup:
                        times[k].append(t)
            # min: on a shared machine the noise only ever adds time; the median is reported too
            best = {k: min(v) for k, v in times.items()}
            for k, t in best.items():
                ref = k.split("-")[0] + "-reference"
                rows.append({"dtype": dtype_name, "layout": layout, "variant": k, "ms_min": 1e3 * t,
                             "ms_median": 1e3 * statistics.median(times[k]), "vs_bn": t / best["bn"],
                             "speedup_vs_reference": best[ref] / t if ref in best else None,
                             "ops": traffic[k][0], "bytes_per_element": traffic[k][1]})
    return rows


def bench_ghost_compiled(a, device) -> list[dict]:
    """bn, the ghost reference formula (GhostNorm's compiled path) and the fused path, each
    through torch.compile (inductor): kernels generated for forward + backward, and time."""
    from torch._inductor import metrics
    shape = tuple(int(v) for v in a.shape.split(","))
    rows = []
    for dtype_name in a.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        torch.manual_seed(0)
        x = torch.randn(shape, device=device).to(dtype).requires_grad_()
        grad = torch.randn(shape, device=device).to(dtype)
        variants, params = ghost_variants(shape[1], a.ghost_groups, a.groups, device)
        compiled, kernels = {}, {}
        for k in ("bn", "ghost-reference", "ghost-fused"):
            torch._dynamo.reset()
            metrics.reset()
            compiled[k] = torch.compile(variants[k])
            compiled[k](x).backward(grad)
            kernels[k] = metrics.generated_kernel_count
        times = {k: [] for k in compiled}
        for r in range(a.warmup + a.repeats):
            for k, fn in compiled.items():
                def run(fn=fn):
                    fn(x).backward(grad)
                t = timed(run, device)
                if r >= a.warmup:
                    times[k].append(t)
        best = {k: min(v) for k, v in times.items()}
        for k, t in best.items():
            rows.append({"dtype": dtype_name, "variant": k, "kernels": kernels[k], "ms_min": 1e3 * t,
                         "ms_median": 1e3 * statistics.median(times[k]), "vs_bn": t / best["bn"]})
        for p in params:
            p.grad = None
    return rows


# -- reparametrisation once per step ---------------------------------------------------------
def bench_reparam(a, device) -> list[dict]:
    rows = []
    for method in a.methods.split(","):
        torch.manual_seed(0)
        net = models.build(a.model, norms.get(method, groups=a.groups), 10, (3, a.size, a.size)).to(device).train()
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        xs = [torch.randn(a.micro, 3, a.size, a.size, device=device) for _ in range(a.accum)]
        ys = [torch.randint(0, 10, (a.micro,), device=device) for _ in range(a.accum)]

        def step(cache):
            def run():
                for i in (norms.micro_batches(net, a.accum) if cache else range(a.accum)):
                    F.cross_entropy(net(xs[i]), ys[i]).div(a.accum).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return run
        step(False)()  # the first optimizer step also creates the momentum buffers: not counted
        counts = {}
        for cache in (False, True):
            with OpCounter() as c:
                step(cache)()
            counts[cache] = sum(c.ops.values())
        times = {False: [], True: []}
        for r in range(a.warmup + a.step_repeats if a.step_repeats else 0):
            for cache in (False, True):  # interleaved
                t = timed(step(cache), device)
                if r >= a.warmup:
                    times[cache].append(t)
        med = {k: min(v) if v else float("nan") for k, v in times.items()}  # fastest: noise only adds time
        rows.append({"method": method, "model": a.model, "size": a.size, "micro": a.micro, "accum": a.accum,
                     "step_s_per_micro_batch": med[False], "step_s_once_per_step": med[True],
                     "speedup": med[False] / med[True], "ops_per_micro_batch": counts[False],
                     "ops_once_per_step": counts[True], "op_ratio": counts[False] / counts[True]})
    return rows


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", default="ghost,reparam",
                   help="comma list of sections: ghost, ghost-compiled (inductor: slow to compile), reparam")
    p.add_argument("--shape", default="32,64,56,56", help="activation N,C,H,W for the ghost/seqnorm layers")
    p.add_argument("--ghost-groups", type=int, default=4)
    p.add_argument("--groups", type=int, default=32, help="SeqNorm's / GN's channel groups")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--layouts", default="contiguous,channels_last")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--methods", default="ws-gn,wn,nf")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--micro", type=int, default=1)
    p.add_argument("--accum", type=int, default=8)
    p.add_argument("--step-repeats", type=int, default=3, help="timed optimizer steps per variant (0: count ops only)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    sections = a.only.split(",")
    unknown = sorted(set(sections) - {"ghost", "ghost-compiled", "reparam"})
    if unknown:
        p.error(f"--only: unknown section {unknown[0]!r}; choose from ghost, ghost-compiled, reparam")
    res = {"machine": machine(), "args": vars(a), "ghost": [], "ghost_compiled": [], "reparam": []}
    if "ghost" in sections:
        res["ghost"] = bench_ghost(a, device)
        print(f"\n## ghost / seqnorm layer, forward + backward, activation {a.shape}, G_M={a.ghost_groups}")
        print("| dtype | layout | variant | ms (min / median) | vs bn | speed-up over reference | ATen ops | "
              "bytes moved per element (model) |\n|---|---|---|---:|---:|---:|---:|---:|")
        for r in res["ghost"]:
            s = f"{r['speedup_vs_reference']:.2f}x" if "fused" in r["variant"] else ""
            print(f"| {r['dtype']} | {r['layout']} | {r['variant']} | {r['ms_min']:.2f} / {r['ms_median']:.2f} | "
                  f"{r['vs_bn']:.2f}x | {s} | {r['ops']} | {r['bytes_per_element']:.1f} |")
    if "ghost-compiled" in sections:
        res["ghost_compiled"] = bench_ghost_compiled(a, device)
        print(f"\n## compiled (inductor), forward + backward, activation {a.shape}, G_M={a.ghost_groups}")
        print("| dtype | variant | kernels generated | ms (min / median) | vs bn |\n|---|---|---:|---:|---:|")
        for r in res["ghost_compiled"]:
            print(f"| {r['dtype']} | {r['variant']} | {r['kernels']} | {r['ms_min']:.2f} / {r['ms_median']:.2f} | "
                  f"{r['vs_bn']:.2f}x |")
    if "reparam" in sections:
        res["reparam"] = bench_reparam(a, device)
        print(f"\n## one optimizer step, {a.model} {a.size}x{a.size}, {a.micro} image(s) x {a.accum} micro-batches")
        print("| method | per micro-batch (s) | once per step (s) | speed-up | ATen ops per step (before / after) |")
        print("|---|---:|---:|---:|---:|")
        for r in res["reparam"]:
            t = (f"{r['step_s_per_micro_batch']:.3f} | {r['step_s_once_per_step']:.3f} | {r['speedup']:.2f}x"
                 if a.step_repeats else "- | - | -")
            print(f"| {r['method']} | {t} | {r['ops_per_micro_batch']} / {r['ops_once_per_step']} |")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
