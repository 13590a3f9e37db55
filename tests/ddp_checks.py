"""DDP checks that need two processes, run by tests under `torch.distributed.run`:

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_checks.py CHECK OUT.json METHOD...

CHECK is
- ``step-weights`` (tests/test_step_weights.py): per method, two identical DDP models,
  trained for a few steps of accumulated micro-batches (DDP no_sync on all but the
  last), one recomputing the weights every micro-batch, one through
  `norms.micro_batches`; gradients after every step and weights at the end compared,
  also across ranks; effective_weight calls counted.
- ``compile`` (tests/test_compile.py): per method, the same training through an eager
  DDP model and through ``torch.compile(DDP(model), backend="aot_eager")`` (what the
  engine compiles), with the weight cache on; losses and weights compared.
- ``vit`` (tests/test_transformers.py): per method, the small ViT trained under DDP against
  single-process simulations of per-process batches and of the global batch (`check_vit`).

Every rank trains on its own data; rank 0 writes the largest differences to OUT.json.
The tests call `run_check`; the network and counting helpers here are theirs too.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from normtrain import dist, norms  # noqa: E402
from normtrain.norms.wn import _StepWeight  # noqa: E402

STEPS, MICRO = 2, 3


def tiny_net(bundle: norms.Normalizer) -> nn.Module:
    return nn.Sequential(
        bundle.conv(3, 8, 3, padding=1), bundle.norm(8), bundle.act(8),
        bundle.conv(8, 8, 3, padding=1, groups=2), bundle.norm(8), bundle.act(8),
        nn.Flatten(), bundle.linear(8 * 4 * 4, 16), bundle.norm(16, dims=1), bundle.act(16),
        bundle.linear(16, 5, bias=True, last=True))


def reparam_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _StepWeight)
            and type(m).effective_weight is not _StepWeight.effective_weight]


def count_calls(model: nn.Module) -> list[int]:
    """Wrap each reparametrised layer's effective_weight with a counter; returns the shared counter."""
    calls = [0]
    for m in reparam_layers(model):
        def counted(orig=m.effective_weight):
            calls[0] += 1
            return orig()
        m.effective_weight = counted
    return calls


def run_check(check: str, out: Path, methods: list[str]) -> dict:
    """Run CHECK for `methods` in 2 gloo processes; returns rank 0's results."""
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(Path(__file__)), check, str(out), *methods], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(Path(out).read_text())


def train(model, raw, batches, cache: bool) -> tuple[list[dict], list[float]]:
    """SGD steps over `batches` (a list of steps, each a list of micro-batches); returns grads and losses."""
    opt = torch.optim.SGD(raw.parameters(), lr=0.1, momentum=0.9)
    grads, losses = [], []
    for step in batches:
        k = len(step)
        for i in (norms.micro_batches(raw, k) if cache else range(k)):
            x, y = step[i]
            with model.no_sync() if i < k - 1 else contextlib.nullcontext():
                loss = F.cross_entropy(model(x), y)
                (loss / k).backward()
            losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in raw.named_parameters()})
        opt.step()
        opt.zero_grad(set_to_none=True)
    return grads, losses


def max_diff(a: list[dict], b: list[dict]) -> float:
    return max((x[k] - y[k]).abs().max().item() for x, y in zip(a, b) for k in x)


def rank_spread(grads: dict, d: dist.Dist) -> float:
    """DDP averages gradients: every rank must hold the same ones (0 when they do)."""
    flat = torch.cat([grads[k].flatten() for k in sorted(grads)])
    total = flat.clone()
    dist.all_sum(total)
    return (total / d.world - flat).abs().max().item()


def data(d: dist.Dist, dtype, steps: int, micro: int, n: int = 2):
    g = torch.Generator().manual_seed(100 + d.rank)
    return [[(torch.randn(n, 3, 4, 4, generator=g, dtype=dtype), torch.randint(0, 5, (n,), generator=g))
             for _ in range(micro)] for _ in range(steps)]


def check_step_weights(name: str, d: dist.Dist) -> dict:
    torch.manual_seed(0)  # the same initial weights on both ranks (DDP broadcasts rank 0's anyway)
    raw_a = tiny_net(norms.get(name, groups=4)).double()
    raw_b = copy.deepcopy(raw_a)
    calls_a, calls_b = count_calls(raw_a), count_calls(raw_b)
    batches = data(d, torch.float64, STEPS, MICRO)
    ga, _ = train(dist.wrap(raw_a, d), raw_a, batches, cache=False)
    gb, _ = train(dist.wrap(raw_b, d), raw_b, batches, cache=True)
    return {"max_grad_diff": max(max_diff(ga, gb), rank_spread(gb[-1], d)),
            "max_weight_diff": max((p - q).abs().max().item() for p, q in zip(raw_a.parameters(), raw_b.parameters())),
            "calls_plain": calls_a[0], "calls_cached": calls_b[0], "steps": STEPS, "micro_batches": MICRO,
            "layers": len(reparam_layers(raw_b)), "world": d.world}


def check_compile(name: str, d: dist.Dist) -> dict:
    torch._dynamo.reset()
    torch.manual_seed(0)
    raw_a = tiny_net(norms.get(name, groups=4))
    raw_b = copy.deepcopy(raw_a)
    batches = data(d, torch.float32, STEPS, 2, n=8)  # 8 samples: GhostNorm's 4 chunks of 2
    ga, la = train(dist.wrap(raw_a, d), raw_a, batches, cache=True)
    gb, lb = train(torch.compile(dist.wrap(raw_b, d), backend="aot_eager"), raw_b, batches, cache=True)
    return {"max_loss_diff": max(abs(x - y) for x, y in zip(la, lb)), "max_grad_diff": max_diff(ga, gb),
            "rank_spread": rank_spread(gb[-1], d),
            "max_weight_diff": max((p - q).abs().max().item() for p, q in zip(raw_a.parameters(), raw_b.parameters())),
            "world": d.world}


def sgd_steps(raw: nn.Module, steps) -> None:
    """SGD steps; each step is a list of (x, y, weight): the loss is sum(weight * mean cross-entropy)."""
    opt = torch.optim.SGD(raw.parameters(), lr=0.1, momentum=0.9)
    for step in steps:
        opt.zero_grad(set_to_none=True)
        for x, y, w in step:
            (w * F.cross_entropy(raw(x), y)).backward()
        opt.step()


def weight_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def check_vit(name: str, d: dist.Dist) -> dict:
    """The small ViT (2 blocks, 4 tokens + class token) trained under DDP on each rank's own 4 samples,
    against two single-process simulations that see every rank's data: per-process batches (each rank's
    half through its own forward, gradients averaged: what DDP computes with per-process statistics) and
    one forward of the whole global batch (equal to it for methods without batch statistics)."""
    from normtrain import models  # noqa: PLC0415 - only this check builds a registered network
    torch.manual_seed(0)
    raw = models.build("vit-tiny-digits", norms.get(name), 5, (1, 4, 4), init="xavier", depth=2).double()
    split, full = copy.deepcopy(raw), copy.deepcopy(raw)
    gens = [torch.Generator().manual_seed(100 + r) for r in range(d.world)]
    halves = [[(torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 5, (4,), generator=g))
               for _ in range(STEPS)] for g in gens]
    sgd_steps(dist.wrap(raw, d), [[(*halves[d.rank][s], 1.0)] for s in range(STEPS)])
    sgd_steps(split, [[(*halves[r][s], 1.0 / d.world) for r in range(d.world)] for s in range(STEPS)])
    sgd_steps(full, [[(torch.cat([h[s][0] for h in halves]), torch.cat([h[s][1] for h in halves]), 1.0)]
                     for s in range(STEPS)])
    return {"per_process_diff": weight_diff(raw, split), "global_batch_diff": weight_diff(raw, full),
            "rank_spread": rank_spread(dict(raw.named_parameters()), d), "world": d.world,
            "batch_statistics": any(isinstance(m, nn.modules.batchnorm._NormBase) for m in raw.modules())}


def main(check: str, out: str, methods: list[str]) -> None:
    d = dist.setup("cpu")
    fn = {"step-weights": check_step_weights, "compile": check_compile, "vit": check_vit}[check]
    results = {name: fn(name, d) for name in methods}
    if d.main:
        Path(out).write_text(json.dumps(results, indent=1))
    dist.teardown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
