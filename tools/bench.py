#!/usr/bin/env python3
"""Training-step throughput per normalization method, against torchvision's ResNet-50.

Measures, in one process, images/s (median of timed, synchronised steps after
warm-up), the ratio to `torchvision.models.<model>()` trained with the same loop,
peak memory, and (with --overhead) the engine's per-step overhead over a bare
PyTorch loop. Writes JSON and a markdown table.

    # GPU (the issue's setting): ResNet-50, 224x224, batch 256, bf16, channels_last
    python tools/bench.py --device cuda --model resnet50 --batch 256 --size 224 --amp bf16 --channels-last \
        --methods bn,wn,trelu-wn,normprop,gn,ws-gn,seqnorm,ghost,brn,mobn-wn,cwn,gn-wn,frn,evonorm-b0,evonorm-s0 \
        --compile both --json bench.json
    # CPU smoke size
    python tools/bench.py --device cpu --model resnet18 --batch 8 --size 32 --methods bn,wn --steps 3 --warmup 1
    # engine overhead over a bare loop (cifar10-nv, batch 128, CPU)
    python tools/bench.py --overhead --device cpu
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normtrain import config, engine, models, norms  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, device, batch, size, classes, amp, channels_last, warmup, steps, in_ch=3):
    """Median seconds per training step (forward, backward, SGD step) on fixed synthetic data."""
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, in_ch, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp == "bf16" else (lambda: torch.autocast(device.type, enabled=False))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        with ctx():
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return statistics.median(times), peak


def bench_methods(a, device):
    rows = []
    compiles = {"off": [False], "on": [True], "both": [False, True]}[a.compile]
    import torchvision
    for comp in compiles:
        base_fn = getattr(torchvision.models, a.model)
        candidates = [("torchvision", lambda: base_fn(num_classes=a.classes))]
        candidates += [(m, (lambda m=m: models.build(a.model, norms.get(m, ghost_groups=a.ghost_groups), a.classes,
                                                     (3, a.size, a.size))))
                       for m in a.methods.split(",")]
        for name, make in candidates:
            torch.manual_seed(0)
            model = make()
            if comp:
                model = torch.compile(model)
            try:
                t, peak = time_steps(model, device, a.batch, a.size, a.classes, a.amp, a.channels_last,
                                     a.warmup, a.steps)
                rows.append({"method": name, "compile": comp, "step_s": t, "images_per_s": a.batch / t,
                             "peak_mem_gib": peak})
            except Exception as e:  # a method failing to run is a result to report, not a crash
                rows.append({"method": name, "compile": comp, "error": f"{type(e).__name__}: {e}"})
            print(json.dumps(rows[-1]), flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for comp in compiles:
        ref = {r["method"]: r for r in rows if r["compile"] == comp and "error" not in r}
        for r in rows:
            if r["compile"] == comp and "error" not in r:
                if "torchvision" in ref:
                    r["vs_torchvision"] = r["images_per_s"] / ref["torchvision"]["images_per_s"]
                if "bn" in ref:
                    r["step_vs_bn"] = r["step_s"] / ref["bn"]["step_s"]
                    if r.get("peak_mem_gib") and ref["bn"].get("peak_mem_gib"):
                        r["mem_vs_bn"] = r["peak_mem_gib"] / ref["bn"]["peak_mem_gib"]
    return rows


def bench_overhead(a, device):
    """Median step time of engine.train vs a bare loop: same model, data, optimizer and step count.

    Order bare, engine, bare: the bare figure is the mean of the two medians, so a
    slow drift of the machine does not favour either side.
    """
    import shutil

    from normtrain.data import DataContext, build
    n = a.warmup + a.steps
    recipe = config.load(None, [
        ("model.name", "cifar10-nv"), ("model.init", "caffe-xavier"), ("norm.name", "bn"),
        ("data.source", "synthetic"), ("data.synthetic_shape", [3, 28, 28]), ("data.synthetic_classes", 10),
        ("data.batch_size", 128), ("data.synthetic_samples", 128 * n), ("data.eval_batch_size", 128),
        ("optim.lr", 0.01), ("train.epochs", 1.0), ("log.progress", False), ("log.tensorboard", False),
        ("run.device", device.type), ("run.out", a.out_dir), ("run.resume", "never")])

    def bare():
        loader = build(recipe.data, "train", DataContext(0, 1, device, 128, 0, True))
        torch.manual_seed(0)
        model = models.build("cifar10-nv", "bn", 10, (3, 28, 28), init="caffe-xavier").to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        times = []
        it = loader.epoch(0)
        for _ in range(n):
            t = time.perf_counter()
            x, y = next(it)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            times.append(time.perf_counter() - t)
        return statistics.median(times[a.warmup:])

    def eng():
        shutil.rmtree(a.out_dir, ignore_errors=True)
        res = engine.train(recipe)
        shutil.rmtree(a.out_dir, ignore_errors=True)
        return res["timings"]["step_s_median"]  # the median is robust to the few warm-up steps

    b1 = bare()
    e = eng()
    b2 = bare()
    b = (b1 + b2) / 2
    return {"model": "cifar10-nv", "batch": 128, "steps": n, "warmup": a.warmup,
            "engine_step_s": e, "bare_step_s": b, "bare_runs_s": [b1, b2], "overhead": e / b - 1}


def machine(device):
    info = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads()}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown(rows) -> str:
    out = ["| method | compile | images/s | vs torchvision | step vs bn | peak GiB | mem vs bn |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['method']} | {r['compile']} | error: {r['error'][:60]} | | | | |")
            continue
        f = lambda k, fmt: (fmt % r[k]) if r.get(k) is not None else "–"
        out.append(f"| {r['method']} | {r['compile']} | {r['images_per_s']:.0f} | {f('vs_torchvision', '%.2fx')} | "
                   f"{f('step_vs_bn', '%.2fx')} | {f('peak_mem_gib', '%.1f')} | {f('mem_vs_bn', '%.2fx')} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--methods", default="bn,wn,trelu-wn,normprop,gn,ws-gn,seqnorm,ghost,"
                   "brn,mobn-wn,cwn,gn-wn,frn,evonorm-b0,evonorm-s0")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--ghost-groups", type=int, default=4)
    p.add_argument("--amp", choices=["off", "bf16"], default="bf16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--overhead", action="store_true", help="measure the engine's per-step overhead instead "
                   "(cifar10-nv, batch 128, synthetic data; --steps/--warmup apply)")
    p.add_argument("--out-dir", default="runs/bench-overhead")
    p.add_argument("--json", help="write results here")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    result = {"machine": machine(device), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "args": vars(a)}
    if a.overhead:
        result["overhead"] = bench_overhead(a, device)
        print(json.dumps(result["overhead"], indent=2))
    else:
        result["rows"] = bench_methods(a, device)
        print(markdown(result["rows"]))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
