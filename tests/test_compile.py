"""`train.compile` for every normalization method: same losses as eager, one graph per mode.

Design (an inductor compile costs about 30 CPU-seconds even for a tiny network here, most
of it in the C++ compiler, so not one per method):
- every method in the registry (``norms.names()``, so methods added later are covered
  without editing this file) is compiled with ``backend="aot_eager"`` on a tiny
  network: dynamo traces the method's Python and AOT autograd traces forward and
  backward into ATen graphs and functionalizes the buffer updates (running
  statistics); that is where methods break under compile (graph breaks, recompiles,
  Python state, in-place buffer updates), while inductor's code generation is
  method-independent. Two optimizer steps of two accumulated micro-batches each go
  through `norms.micro_batches` (the weight methods' per-step cache), then an eval
  forward: losses, weights and buffers must match eager, with no graph break and
  exactly one graph for training and one for evaluation (no recompiles);
- the transformer methods (ln, rmsn, dyt, and bn's and none's token forms) the same way on
  a one-block ViT (token norms, scaled_dot_product_attention);
- real inductor (the engine's default backend, code generation included) in-process
  for `ghost`: batch statistics from a permuted layout, and buffer updates;
- DDP under 2-process gloo: tests/ddp_checks.py compiles a DDP-wrapped model (what
  the engine compiles) with aot_eager for a weight method (wn, cache on) and a batch
  method (ghost); and one engine run through the CLI with inductor, DDP and gradient
  accumulation (ws-gn: weight standardization + GroupNorm, the cache) against an eager
  single-process run of the same global batch.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

from normtrain import checkpoint, config, engine, models, norms

from .conftest import run_cli
from .ddp_checks import run_check


def small_net(bundle: norms.Normalizer) -> nn.Module:
    return nn.Sequential(
        bundle.conv(3, 8, 3, padding=1), bundle.norm(8), bundle.act(8),
        nn.Flatten(), bundle.linear(8 * 4 * 4, 16), bundle.norm(16, dims=1), bundle.act(16),
        bundle.linear(16, 5, bias=True, last=True))


def train_and_eval(model: nn.Module, raw: nn.Module, batches) -> list[float]:
    """2 optimizer steps of 2 micro-batches (through the weight cache), then one eval forward."""
    opt = torch.optim.SGD(raw.parameters(), lr=0.1, momentum=0.9)
    losses = []
    raw.train()
    for step in range(2):
        for i in norms.micro_batches(raw, 2):
            x, y = batches[2 * step + i]
            loss = F.cross_entropy(model(x), y)
            (loss / 2).backward()
            losses.append(loss.detach())
        opt.step()
        opt.zero_grad(set_to_none=True)
    raw.eval()
    with torch.no_grad():
        losses.append(F.cross_entropy(model(batches[0][0]), batches[0][1]))
    raw.train()
    return torch.stack(losses).tolist()


def small_vit(bundle: norms.Normalizer) -> nn.Module:
    """One ViT block on 2x2 patches of a 3x4x4 input (4 tokens + the class token): the token norms, SDPA."""
    return models.build("vit-tiny-digits", bundle, 5, (3, 4, 4), init="xavier", depth=1)


def check_compiled_matches_eager(name: str, backend: str, net=small_net) -> None:
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    eager = net(norms.get(name, groups=4))
    raw = copy.deepcopy(eager)
    compiled = torch.compile(raw, backend=backend)
    batches = [(torch.randn(8, 3, 4, 4), torch.randint(0, 5, (8,))) for _ in range(4)]
    want = train_and_eval(eager, eager, batches)
    got = train_and_eval(compiled, raw, batches)
    assert got == pytest.approx(want, rel=1e-3, abs=1e-4), name
    for (pname, p), q in zip(raw.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=f"{name}: {pname}")
    for (bname, b), c in zip(raw.named_buffers(), eager.buffers()):
        if b.is_floating_point():
            torch.testing.assert_close(b, c, rtol=1e-3, atol=1e-4, msg=f"{name}: {bname}")
    assert not counters["graph_break"], f"{name}: graph breaks {dict(counters['graph_break'])}"
    assert counters["stats"]["unique_graphs"] == 2, f"{name}: {counters['stats']['unique_graphs']} graphs (recompiles)"


@pytest.mark.parametrize("name", norms.names())
def test_every_method_compiles_aot_eager(name):
    check_compiled_matches_eager(name, "aot_eager")


@pytest.mark.parametrize("name", ["ln", "rmsn", "dyt", "bn", "none"])
def test_transformer_methods_compile_aot_eager(name):
    """The transformer methods' token norms (and bn's and none's token forms) in a ViT block."""
    check_compiled_matches_eager(name, "aot_eager", net=small_vit)


def test_ghost_compiles_with_inductor():
    check_compiled_matches_eager("ghost", "inductor")


def test_compiled_ddp_matches_eager_ddp(tmp_path):
    res = run_check("compile", tmp_path / "compile.json", ["wn", "ghost"])
    for name, r in res.items():
        assert r["world"] == 2 and r["rank_spread"] < 1e-6, (name, r)
        assert r["max_loss_diff"] < 1e-4 and r["max_grad_diff"] < 1e-4 and r["max_weight_diff"] < 1e-4, (name, r)


def test_engine_compiled_ddp_with_accumulation_equals_one_eager_process(tmp_path):
    """2 gloo processes x accum_steps 2, compiled (inductor), weight cache, DDP no_sync =
    1 eager process, no accumulation, same global batch (GroupNorm has no batch statistics)."""
    common = ["--norm", "ws-gn", "--set", "train.max_steps=3", "--set", "log.progress=false",
              "--set", "log.tensorboard=false", "--set", "run.device=cpu", "--set", "optim.weight_decay=0"]
    two = run_cli(*common, "--set", "train.accum_steps=2", "--set", "train.compile=true",
                  "--out", tmp_path / "two", "--nproc-per-node", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    engine.train(config.load("digits-mlp", [("log.progress", False), ("log.tensorboard", False),
                                            ("run.device", "cpu"), ("optim.weight_decay", 0.0),
                                            ("norm.name", "ws-gn"), ("train.max_steps", 3),
                                            ("run.out", str(tmp_path / "one"))]))
    w1 = checkpoint.load(tmp_path / "one/checkpoints/last.pt")["model"]
    w2 = checkpoint.load(tmp_path / "two/checkpoints/last.pt")["model"]
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=2e-5, rtol=0, msg=k)
