#!/usr/bin/env python3
"""Training-step throughput per normalization method, against torchvision's network, in one process.

A thin command line over `normtrain.benchmark` (read its docstring for what is timed
and how): per-GPU batches (N, or NxK for K accumulated micro-batches of N images),
AMP dtypes, memory layouts (auto: channels_last, plus NCHW for networks that run
group norm), eager and compiled (torch._dynamo.reset() before each compile), the bare
loop and the engine's own loop, in --repeats interleaved rounds. Methods default to
every registered one (`normtrain list norms`). Writes JSON and prints a markdown table.

    # GPU: the recipes' per-GPU batches, ResNet-50, bf16 and fp16, eager and compiled
    python tools/bench.py --device cuda --models resnet50 --batches 32,256 --amp bf16,fp16 --compile both \
        --repeats 3 --json bench-resnet50.json
    # the WS recipes' 1-image micro-batches with iteration size 64
    python tools/bench.py --device cuda --methods gn,ws-gn,bn --batches 1x64 --warmup 2 --steps 5
    # the engine's loop beside the bare loop
    python tools/bench.py --device cuda --methods bn,wn --batches 256 --loops bare,engine
    # CPU smoke size
    python tools/bench.py --device cpu --models resnet18 --batches 8 --size 32 --methods bn,wn --steps 3 --warmup 1
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if visible)")
    p.add_argument("--models", "--model", default="resnet50", help="networks, comma-separated (normtrain list models)")
    p.add_argument("--methods", default=None, help="norm methods, comma-separated (default: all registered)")
    p.add_argument("--batches", "--batch", default="32,256",
                   help="per-GPU batches: N, or NxK = K accumulated micro-batches of N images (e.g. 32,256,1x64)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--ghost-groups", type=int, default=4)
    p.add_argument("--recipe", default="resnet50-imagenet",
                   help="each method's norm.* options as this recipe gives them (its per_norm block: trelu-wn's "
                        "weighted join in resnet50-imagenet); 'none' for the defaults")
    p.add_argument("--amp", default="bf16", help="comma-separated: bf16, fp16 (grad scaler), off")
    p.add_argument("--layouts", default="auto", choices=["auto", "cl", "nchw", "both"],
                   help="memory layout: auto = channels_last, plus NCHW where the network runs group norm")
    p.add_argument("--channels-last", action="store_true", help="same as --layouts cl")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (tests use 'eager')")
    p.add_argument("--loops", default="bare", help="comma-separated: bare, engine")
    p.add_argument("--warmup", type=int, default=10, help="untimed optimizer steps per config and round")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per config and round")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds over all configs")
    p.add_argument("--overhead", action="store_true",
                   help="preset: the engine's overhead over the bare loop on cifar10-nv + bn, batch 128, fp32, NCHW")
    p.add_argument("--dry-run", action="store_true", help="print the configs (JSON lines) and exit")
    p.add_argument("--json", help="write the results here")
    return p


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    import torch

    from normtrain import benchmark, norms
    if a.overhead:
        a.models, a.methods, a.batches, a.size, a.classes = "cifar10-nv", "bn", "128", 28, 10
        a.recipe = "cifar10-nv"
        a.amp, a.layouts, a.loops = "off", "nchw", "bare,engine"
    if a.channels_last:
        a.layouts = "cl"
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    methods = a.methods.split(",") if a.methods else norms.names()
    try:
        batches = benchmark.parse_batches(a.batches)
    except ValueError as e:
        print(f"bench.py: error: --batches: {e}", file=sys.stderr)
        return 2
    if a.compile != "off" and a.warmup < 1:
        print("bench.py: error: --compile needs --warmup >= 1 (the first step compiles)", file=sys.stderr)
        return 2
    settings = benchmark.set_fast_defaults(device)
    configs = benchmark.plan(a.models.split(","), methods, batches, a.amp.split(","), a.layouts,
                             {"off": [False], "on": [True], "both": [False, True]}[a.compile],
                             a.loops.split(","), a.size, a.classes, device, a.ghost_groups,
                             None if a.recipe == "none" else a.recipe)
    if a.dry_run:
        for c in configs:
            print(json.dumps(dataclasses.asdict(c)))
        return 0
    print(f"{len(configs)} configs x {a.repeats} rounds on {device}", file=sys.stderr)
    rows = benchmark.run(configs, device, a.warmup, a.steps, a.repeats, a.ghost_groups, a.compile_backend,
                         on_row=lambda r: print(json.dumps(r), file=sys.stderr, flush=True))
    result = {"machine": benchmark.machine(device), "settings": settings,
              "command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv))),
              "args": vars(a), "methods": methods, "rows": rows}
    print(benchmark.markdown(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
