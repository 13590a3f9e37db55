"""The benchmark (normtrain.benchmark, tools/bench.py) at smoke sizes on CPU.

What is checked is the benchmark's logic, never a speed: the configs it plans (methods
from the registry, both layouts where group norm runs, accumulation), that an
accumulated step is the big-batch step, that every compiled model really compiles
(dynamo reset between models), that ratios come from the same run's baselines.
"""
import importlib.util
import json
import os
import subprocess
import sys

import torch

from normtrain import benchmark, norms
from normtrain.benchmark import TORCHVISION, Config

from .conftest import ROOT

CPU = torch.device("cpu")


def bench(*args, timeout=300):
    p = subprocess.run([sys.executable, "tools/bench.py", "--device", "cpu", *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def bench_in_process(capsys, *args):
    """tools/bench.py's main() in this process (no interpreter start-up); returns its stdout."""
    spec = importlib.util.spec_from_file_location("bench_tool", ROOT / "tools" / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--device", "cpu", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    p = bench("--models", "resnet18", "--batches", "4", "--size", "16", "--classes", "10", "--amp", "off",
              "--methods", "bn,wn,ghost", "--ghost-groups", "2", "--warmup", "1", "--steps", "2", "--repeats", "2",
              "--json", out)
    res = json.loads(out.read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {TORCHVISION, "bn", "wn", "ghost"}
    assert all("error" not in r for r in rows.values()), rows
    assert all(len(r["round_step_s"]) == 2 and r["step_s"] == sorted(r["round_step_s"])[0] + (
        sorted(r["round_step_s"])[1] - sorted(r["round_step_s"])[0]) / 2 for r in rows.values())
    assert rows["bn"]["step_vs_bn"] == 1.0
    tv = rows[TORCHVISION]["images_per_s"]
    assert abs(rows["wn"]["vs_torchvision"] - rows["wn"]["images_per_s"] / tv) < 1e-9
    assert abs(rows["wn"]["step_vs_bn"] - rows["wn"]["step_s"] / rows["bn"]["step_s"]) < 1e-9
    assert "| bn |" in p.stdout and res["machine"]["torch"] and res["methods"] == ["bn", "wn", "ghost"]


def test_plan_takes_methods_from_the_registry_and_both_layouts_where_group_norm_runs(capsys):
    out = bench_in_process(capsys, "--dry-run", "--models", "resnet18", "--batches", "4,2x2", "--size", "16",
                           "--classes", "10", "--ghost-groups", "2", "--amp", "bf16,fp16")
    configs = [json.loads(line) for line in out.splitlines()]
    methods = {c["method"] for c in configs}
    assert methods == set(norms.names()) | {TORCHVISION}
    layouts = {}
    for c in configs:
        layouts.setdefault(c["method"], set()).add(c["channels_last"])
    both = {m for m, v in layouts.items() if v == {True, False}}
    assert {"gn", "ws-gn", "seqnorm", "ln", "in"} <= both          # these call group_norm
    assert not both & {"bn", "wn", "none", "ghost", TORCHVISION}   # these do not
    assert {(c["micro"], c["accum"]) for c in configs} == {(4, 1), (2, 2)}
    assert {c["amp"] for c in configs} == {"bf16", "fp16"}
    # every combination once: per method, batches x amps x layouts
    assert len(configs) == sum(2 * 2 * len(v) for v in layouts.values())


def test_an_accumulated_step_is_the_big_batch_step():
    def after_one_step(method, micro, accum):
        r = benchmark.BareRunner(Config("cifar10-nv", method, micro, accum, 28, 10, "off", False), CPU)
        r.step()
        return {k: v.detach().clone() for k, v in r.raw.state_dict().items()}

    # No batch statistics: 2 micro-batches of 2 with loss/2 each give the gradient of one batch of 4.
    a, b = after_one_step("none", 2, 2), after_one_step("none", 4, 1)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4) for k in a)
    # With batch norm the micro-batches really are separate forward passes (statistics over 2, not 4).
    a, b = after_one_step("bn", 2, 2), after_one_step("bn", 4, 1)
    assert not all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4) for k in a)


def test_every_compiled_method_really_compiles():
    # More methods than dynamo's recompile_limit (8): without a reset between models the 9th
    # onward would silently run eager (compiled_frames 0). The 'eager' backend traces with
    # dynamo without inductor's code generation, so this stays fast.
    methods = norms.names()[:10]
    assert len(methods) > 8
    configs = [Config("cifar10-nv", m, 4, 1, 28, 10, "off", False, compile=True) for m in methods]
    rows = benchmark.run(configs, CPU, warmup=1, steps=1, ghost_groups=2, compile_backend="eager")
    compiled = [r for r in rows if "error" not in r]
    assert len(compiled) > 8, [r.get("error") for r in rows]
    assert all(r["compiled_frames"] > 0 for r in compiled), [(r["method"], r["compiled_frames"]) for r in compiled]


def test_engine_loop_row_beside_the_bare_loop():
    configs = [Config("mlp", "bn", 8, 1, 8, 10, "off", False, loop=loop) for loop in ("bare", "engine")]
    bare, eng = benchmark.run(configs, CPU, warmup=1, steps=3)
    assert "error" not in eng, eng
    assert eng["step_s"] > 0 and abs(eng["engine_vs_bare"] - eng["step_s"] / bare["step_s"]) < 1e-12


def test_parse_batches():
    assert benchmark.parse_batches("32,256,1x64") == [(32, 1), (256, 1), (1, 64)]
    for bad in ("0", "x4", "2x0", "a"):
        try:
            benchmark.parse_batches(bad)
        except ValueError as e:
            assert "batch" in str(e)
        else:
            raise AssertionError(bad)


def test_methods_take_the_recipe_norm_options(capsys):
    """trelu-wn is timed with resnet50-imagenet's weighted join, not the plain default (--recipe none)."""
    out = bench_in_process(capsys, "--dry-run", "--models", "resnet18", "--batches", "4", "--methods", "bn,trelu-wn")
    opts = {c["method"]: c["norm_options"] for c in map(json.loads, out.splitlines())}
    assert opts["trelu-wn"] == [["trelu_join", "weighted"]] and opts["bn"] == []
    out = bench_in_process(capsys, "--dry-run", "--models", "resnet18", "--batches", "4", "--methods", "trelu-wn",
                           "--recipe", "none")
    assert all(json.loads(line)["norm_options"] == [] for line in out.splitlines())
    from normtrain.norms.trelu_wn import WeightedAddition
    net = benchmark.build_network(Config("resnet18", "trelu-wn", 2, 1, 16, 10, "off", False,
                                         norm_options=(("trelu_join", "weighted"),)))
    assert any(isinstance(m, WeightedAddition) for m in net.modules())


def test_each_config_is_freed_before_the_next_is_built(monkeypatch):
    """Peak memory is per config: the previous config's network, optimizer and inputs are gone when the
    next one is built, and the peak is counted above what was allocated before it."""
    import weakref
    alive, init = [], benchmark.BareRunner.__init__

    def tracked(self, *a, **k):
        assert all(ref() is None for ref in alive), "a previous config is still alive"
        init(self, *a, **k)
        alive.append(weakref.ref(self.raw))
    monkeypatch.setattr(benchmark.BareRunner, "__init__", tracked)
    configs = [Config("mlp", m, 4, 1, 8, 10, "off", False) for m in ("bn", "none")]
    rows = benchmark.run(configs, CPU, warmup=1, steps=1, repeats=2)
    assert len(alive) == 4 and all("error" not in r for r in rows)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 5 * 2**30)
    assert benchmark.peak_gib(torch.device("cuda"), 2 * 2**30) == 3.0 and benchmark.peak_gib(CPU, 0) is None


def test_engine_rows_print_nothing_of_their_own(capsys):
    configs = [Config("mlp", "bn", 8, 1, 8, 10, "off", False, loop="engine")]
    (row,) = benchmark.run(configs, CPU, warmup=1, steps=3)
    out = capsys.readouterr()
    assert "error" not in row and "eval loss" not in out.out + out.err and "normtrain:" not in out.out + out.err
