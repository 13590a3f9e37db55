#!/usr/bin/env python3
"""Activation bytes a transformer saves for backward under CUDA bf16 autocast, per method, relative to `ln`:
traced on fake CUDA tensors (PyTorch's FakeTensorMode), so it runs on any CPU machine.

    python tools/saved_bytes_transformers.py                       # vit-b16, vit-s16, convnext-tiny; 128 images
    python tools/saved_bytes_transformers.py --models vit-s16 --methods ln,dyt --batch 64

Counts every storage autograd saves in the forward pass (``saved_tensors_hooks``), each once,
parameters left out. The fake-CUDA audit of issue 18 (tools/audit_gpu.py) counts more
(dtypes, layout copies, operators, the backward pass); this is the interim check of the
issue-21 target: rmsn and dyt save at most 1.1x what ln saves.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

from normtrain import models, norms  # noqa: E402


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype):
    """The thread-local state torch.autocast('cuda', dtype) sets (it turns itself off without a GPU)."""
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    torch.set_autocast_cache_enabled(True)
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", False)


def saved_bytes(net: str, method: str, batch: int, size: int) -> int:
    real = models.build(net, norms.get(method, eps=1e-6), 1000, (3, size, size), init="default")
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = real.to("cuda")
        params = {p.untyped_storage()._cdata for p in model.parameters()}
        x = torch.empty((batch, 3, size, size), device="cuda")
        seen: dict[int, int] = {}

        def pack(t):
            key = t.untyped_storage()._cdata
            if key not in params:
                seen[key] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cuda_autocast(torch.bfloat16):
            model(x)
    return sum(seen.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vit-b16,vit-s16,convnext-tiny")
    ap.add_argument("--methods", default="ln,rmsn,dyt,bn,none")
    ap.add_argument("--batch", type=int, default=128, help="images per GPU (DeiT: 1024 on 8 GPUs; ConvNeXt: 4096 on 32)")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)
    print(f"saved activation bytes for backward, bf16 autocast on fake CUDA, {args.batch} x 3 x {args.size}^2")
    print(f"{'model':14s} {'method':6s} {'GiB':>8s} {'vs ln':>6s}")
    for net in args.models.split(","):
        base = None
        for method in args.methods.split(","):
            b = saved_bytes(net, method, args.batch, args.size)
            base = base or (b if method == "ln" else None)
            ratio = f"{b / base:6.3f}" if base else "     -"
            print(f"{net:14s} {method:6s} {b / 2 ** 30:8.3f} {ratio}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
