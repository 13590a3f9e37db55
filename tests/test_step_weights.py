"""One reparametrised weight per optimizer step (normtrain/norms/step_weights.py).

The cache must not change training: gradients and weights after several accumulated
steps equal those of recomputing the weight every micro-batch, for every weight method
in the registry (wn, normprop, trelu-wn, ws*, nf and any later subclass of the bases),
in one process, under 2-process gloo DDP with no_sync, and through the engine (with DDP
and compile: tests/test_compile.py).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from normtrain import checkpoint, config, engine, norms

from .ddp_checks import count_calls, reparam_layers, run_check, tiny_net


def weight_methods() -> list[str]:
    """Every registered method that builds reparametrised layers (new ones are picked up automatically)."""
    return [n for n in norms.names() if reparam_layers(tiny_net(norms.get(n, groups=4)))]


def accumulate(model, opt, batches, cache: bool):
    """One optimizer step over `batches` (mean loss); returns the gradients before the step."""
    k = len(batches)
    steps = norms.micro_batches(model, k) if cache else range(k)
    for i in steps:
        x, y = batches[i]
        F.cross_entropy(model(x), y).div(k).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    opt.zero_grad(set_to_none=True)
    return grads


def test_weight_methods_are_found():
    assert {"wn", "normprop", "trelu-wn", "ws", "ws-gn", "ws-bn", "nf"} <= set(weight_methods())


@pytest.mark.parametrize("name", weight_methods())
def test_cache_gives_the_same_gradients_and_weights(name):
    """float64, so that only the order of summation may differ; 3 steps of 4 micro-batches of 2."""
    torch.manual_seed(0)
    ref = tiny_net(norms.get(name, groups=4)).double()
    ours = copy.deepcopy(ref)
    calls_ref, calls = count_calls(ref), count_calls(ours)
    n_layers = len(reparam_layers(ours))
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3) for m in (ref, ours)]
    k, steps = 4, 3
    for _ in range(steps):
        batches = [(torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randint(0, 5, (2,))) for _ in range(k)]
        g_ref = accumulate(ref, opts[0], batches, cache=False)
        g = accumulate(ours, opts[1], batches, cache=True)
        assert g.keys() == g_ref.keys()
        for pname in g:
            torch.testing.assert_close(g[pname], g_ref[pname], rtol=1e-9, atol=1e-12, msg=pname)
    for (pname, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=pname)
    assert calls_ref[0] == steps * k * n_layers        # the plain path: every micro-batch
    assert calls[0] == steps * n_layers                # the cache: once per optimizer step
    assert all(m.step_weight is None for m in reparam_layers(ours))  # restored after the step


def test_cache_is_a_no_op_for_one_micro_batch_eval_and_no_grad():
    net = tiny_net(norms.get("ws-gn", groups=4))
    calls = count_calls(net)
    n = len(reparam_layers(net))
    x = torch.randn(2, 3, 4, 4)
    for _ in norms.micro_batches(net, 1):
        net(x).sum().backward()
    assert calls[0] == n
    net.eval()
    for _ in norms.micro_batches(net, 3):
        net(x)
    assert calls[0] == 4 * n
    net.train()
    with torch.no_grad():
        for _ in norms.micro_batches(net, 3):
            net(x)
    assert calls[0] == 7 * n


def test_cache_waits_for_data_dependent_init():
    """A step whose first forward runs WN's data-dependent init (it changes g and b) is not cached."""
    net = tiny_net(norms.get("wn", init="data"))
    x = torch.randn(4, 3, 4, 4)
    ref = copy.deepcopy(net)
    norms.data_init(ref, x)
    for i in norms.micro_batches(net, 2):
        if i == 0:
            norms.data_init(net, x)
        F.cross_entropy(net(x), torch.zeros(4, dtype=torch.long)).backward()
    for _ in range(2):
        F.cross_entropy(ref(x), torch.zeros(4, dtype=torch.long)).backward()
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_cache_is_cleared_when_the_step_fails():
    net = tiny_net(norms.get("wn"))
    with pytest.raises(RuntimeError, match="boom"):
        for i in norms.micro_batches(net, 3):
            net(torch.randn(2, 3, 4, 4)).sum().backward()
            if i == 1:
                raise RuntimeError("boom")
    assert all(m.step_weight is None for m in reparam_layers(net))


def test_cache_under_two_process_ddp(tmp_path):
    """gloo DDP, no_sync on all but the last micro-batch, every weight method: the same gradients, on both ranks."""
    res = run_check("step-weights", tmp_path / "ddp.json", weight_methods())
    assert sorted(res) == sorted(weight_methods())
    for name, r in res.items():
        assert r["world"] == 2 and r["max_grad_diff"] < 1e-10 and r["max_weight_diff"] < 1e-10, (name, r)
        assert r["calls_cached"] == r["steps"] * r["layers"], (name, r)
        assert r["calls_plain"] == r["steps"] * r["micro_batches"] * r["layers"], (name, r)


QUIET = [("log.progress", False), ("log.tensorboard", False), ("run.device", "cpu"), ("optim.weight_decay", 0.0)]


@pytest.mark.parametrize("name", ["wn", "ws-gn", "nf", "normprop", "trelu-wn"])
def test_engine_accumulation_with_cache_equals_full_batch(tmp_path, name):
    """Through engine.train: accum_steps=4 (the cache) gives the weights of one batch of 64 (no cache).

    None of these methods has batch statistics (ws-gn's GroupNorm is per sample)."""
    common = [*QUIET, ("norm.name", name), ("train.max_steps", 4)]
    engine.train(config.load("digits-mlp", [*common, ("run.out", str(tmp_path / "a"))]))
    engine.train(config.load("digits-mlp", [*common, ("run.out", str(tmp_path / "b")), ("train.accum_steps", 4)]))
    wa = checkpoint.load(tmp_path / "a/checkpoints/last.pt")["model"]
    wb = checkpoint.load(tmp_path / "b/checkpoints/last.pt")["model"]
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=2e-5, rtol=0, msg=k)
