#!/usr/bin/env python3
"""The fake-CUDA audit (normtrain/audit.py): every method's training step as a GPU would run it, counted on
any machine (saved activation bytes and dtypes, fp32 activations, layout conversions, operators, compile auto).

A thin command line over `normtrain.audit`: prints a markdown table (ratios to bn), writes JSON, and with
--check exits 1 when a bf16 row misses a target without a documented exception (audit.EXCEPTIONS).

    # the table of docs/PERFORMANCE.md: ResNet-50, resnet50-imagenet on 8 GPUs (32 images per GPU)
    python tools/audit_gpu.py --recipe resnet50-imagenet --gpus 8 --amp bf16,fp16 --json docs/audit-resnet50.json
    # a few methods, another network
    python tools/audit_gpu.py --methods bn,gn,frn --set model.name=resnet18 --amp bf16
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="resnet50-imagenet", help="recipe whose network, batch and options to trace")
    p.add_argument("--gpus", type=int, default=8, help="GPUs the recipe's global batch is split over (default 8)")
    p.add_argument("--amp", default="bf16,fp16", help="comma-separated autocast dtypes: bf16, fp16")
    p.add_argument("--methods", default=None, help="norm methods, comma-separated (default: all registered)")
    p.add_argument("--no-variants", action="store_true", help="leave out the graph-changing option rows")
    p.add_argument("--torchvision", action="store_true",
                   help="add torchvision's network of the recipe's model name (a reference row, no targets)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override for every row (e.g. model.name=resnet18, data.batch_size=128)")
    p.add_argument("--check", action="store_true", help="exit 1 if a bf16 row misses a target (no exception)")
    p.add_argument("--inductor-cpu", action="store_true",
                   help="instead: per method, the eager step's ATen operators against the kernels inductor "
                        "generates for it on this CPU (real compilation: minutes per method)")
    p.add_argument("--size", type=int, default=32, help="--inductor-cpu: image side (default 32)")
    p.add_argument("--batch", type=int, default=8, help="--inductor-cpu: batch (default 8)")
    p.add_argument("--json", help="write the rows here")
    return p


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    from normtrain import audit, config, norms
    from normtrain.errors import UsageError
    try:
        overrides = tuple(config.parse_set(s) for s in a.set)
        amps = tuple(a.amp.split(","))
        bad = [x for x in amps if x not in ("bf16", "fp16")]
        if bad:
            raise UsageError(f"--amp: '{bad[0]}' is not one of: bf16, fp16")
        methods = a.methods.split(",") if a.methods else None
        for m in methods or ():
            norms.METHODS.require(m)
        cases = audit.cases(a.recipe, a.gpus, amps, methods, not a.no_variants, overrides)
        if a.torchvision:
            cases += [audit.Case(audit.TORCHVISION, a.recipe, a.gpus, amp, overrides,
                                 f"torchvision {config.load(a.recipe, list(overrides)).model.name}") for amp in amps]
        audit.setting(cases[0])  # bad recipe, key or method: one line, before any tracing
    except UsageError as e:
        print(f"audit_gpu.py: error: {e}", file=sys.stderr)
        return 2
    if a.inductor_cpu:
        return inductor_table(a, methods or ["bn"], overrides, argv)
    print(f"{len(cases)} traces ({a.recipe} on {a.gpus} GPUs)", file=sys.stderr)
    rows = audit.run(cases, on_row=lambda r: print(
        f"  {r['label']:24s} {r['amp']}  {r['saved_bytes'] / 2**20:8.0f} MiB saved  {r['forward_ops']:5d} fwd ops"
        f"  ({r['trace_cpu_s']:.1f} s)", file=sys.stderr, flush=True))
    print(audit.markdown(rows))
    failed = {r["label"]: audit.failures(r) for r in rows if audit.failures(r)}
    if a.json:
        import torch
        from normtrain import benchmark
        Path(a.json).write_text(json.dumps({
            "command": " ".join(["tools/audit_gpu.py"] + (sys.argv[1:] if argv is None else list(argv))),
            "machine": benchmark.machine(torch.device("cpu")), "targets": audit.TARGETS,
            "exceptions": audit.EXCEPTIONS, "failures": failed, "rows": rows}, indent=2) + "\n")
    if failed:
        for label, what in failed.items():
            print(f"audit_gpu.py: {label}: " + "; ".join(what.values()), file=sys.stderr)
    return 1 if a.check and failed else 0


def inductor_table(a, methods, overrides, argv) -> int:
    from normtrain import audit
    rows = []
    print("| method | model | eager ATen ops (fwd+bwd) | inductor kernels | graphs | compile s |")
    print("|---|---|---:|---:|---:|---:|")
    for m in methods:
        r = audit.inductor_cpu(m, a.recipe, overrides, a.size, a.batch)
        rows.append(r)
        print(f"| {m} | {r['model']} | {r['eager_ops']} | {r['inductor_kernels']} | {r['graphs']} | "
              f"{r['compile_s']:.0f} |", flush=True)
    if a.json:
        import torch
        from normtrain import benchmark
        Path(a.json).write_text(json.dumps({
            "command": " ".join(["tools/audit_gpu.py"] + (sys.argv[1:] if argv is None else list(argv))),
            "machine": benchmark.machine(torch.device("cpu")), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
