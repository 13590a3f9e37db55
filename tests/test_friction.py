"""Issue 20 point 2: what got in the way of a new user, one test each.

- small rates keep their digits; a run that train.max_steps stops early says so, and its
  evaluation can be skipped;
- --nproc-per-node N on a machine without GPUs starts CPU processes without run.device=cpu;
- threads per process come from the CPUs available (affinity, cgroup quota) over the local
  processes, unless OMP_NUM_THREADS is set;
- sweeps: a zoomed summary plot, every run in runs.csv, the network in the title, runs at
  chance flagged collapsed;
- scenario --set takes comma lists, and every scenario's --help shows an example that works;
- every list line says what distinguishes the item; runs shows final and best top-1 and a
  run in progress as running.
"""
from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from normtrain import cli, config, dist, engine, runs, scenarios, sweep, threads
from normtrain.errors import UsageError
from normtrain.logger import rate

QUIET = [("log.progress", False), ("log.tensorboard", False), ("run.device", "cpu")]


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# -- numbers and status of a short run -----------------------------------------------------------
def test_small_rates_keep_significant_digits():
    assert [rate(v) for v in (0.183, 0.0456, 1.5, 12.345, 99.94, 100.2, 3752.4, None)] == \
        ["0.183", "0.0456", "1.5", "12.3", "99.9", "100", "3752", "-"]
    res = {"status": "completed", "recipe": "r", "model": "m", "norm": "bn", "steps": 2, "total_steps": 5005,
           "stopped_early": True, "final": {}, "timings": {"images_per_s": 0.18, "total_s": 570.0}, "out": "o"}
    line = engine.summary_line(res)
    assert "step 2/5005 (stopped early: train.max_steps)" in line and "| 0.18 img/s, 9m30s |" in line


def test_max_steps_run_is_stopped_early_without_compulsory_evaluation(tmp_path, capsys):
    out = tmp_path / "short"
    res = engine.train(config.load("digits-mlp", [*QUIET, ("run.out", str(out)), ("train.max_steps", 2),
                                                  ("train.epochs", 1.0), ("train.final_eval", False),
                                                  ("train.eval_every_epochs", 0)]))
    assert res["status"] == "completed" and res["stopped_early"] and res["steps"] == 2 < res["total_steps"]
    assert res["timings"]["eval_s"] == 0 and "eval/top1" not in res["final"]
    assert "(stopped early: train.max_steps)" in capsys.readouterr().out
    capsys.readouterr()
    assert cli.main(["runs", str(tmp_path)]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row.split()[0] == "short" and "stopped early" in row and f"2/{res['total_steps']}" in row
    # the same folder rerun to its end: completed (max_steps is free to change on resume)
    done = engine.train(config.load("digits-mlp", [*QUIET, ("run.out", str(out)), ("train.epochs", 1.0),
                                                   ("train.final_eval", True), ("train.eval_every_epochs", 0)]))
    assert done["status"] == "completed" and not done["stopped_early"] and runs.read_run(out, tmp_path)[
        "status"] == "completed"


# -- processes and threads --------------------------------------------------------------------------
def test_nproc_on_a_machine_without_gpus_means_cpu_processes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dist, "visible_gpus", lambda: 0)
    assert dist.resolve_nproc("2", "auto") == dist.resolve_nproc("2", "cpu") == 2
    assert dist.resolve_nproc("auto", "auto") == 1
    with pytest.raises(UsageError, match="expected a positive integer"):
        dist.resolve_nproc("0", "auto")
    # the launcher is reached: the next check is the batch split over the 2 processes, not the device
    rc = cli.main(["--nproc-per-node", "2", "--set", "data.batch_size=63", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "not divisible by processes (2)" in err and "run.device" not in err
    monkeypatch.setattr(dist, "visible_gpus", lambda: 1)
    with pytest.raises(UsageError, match="more than the 1 visible GPU"):
        dist.resolve_nproc("2", "auto")


@pytest.mark.parametrize("files,proc,expected", [
    ({"cpu.max": "150000 100000\n"}, "0::/\n", 2),                      # v2: 1.5 CPUs -> 2
    ({"cpu.max": "max 100000\n"}, "0::/\n", None),                      # v2: no quota
    ({"job/cpu.max": "300000 100000\n"}, "0::/job\n", 3),               # v2: the process's own cgroup
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "4:cpu,cpuacct:/\n", 1),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "4:cpu,cpuacct:/\n", None),
])
def test_cpus_available_from_affinity_and_cgroup_quota(tmp_path, monkeypatch, files, proc, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    quota = threads.cgroup_quota(tmp_path, proc)
    assert (None if quota is None else -(-quota // 1)) == expected
    monkeypatch.setattr(threads, "affinity", lambda: 64)
    assert threads.available(tmp_path, proc) == (expected or 64)
    assert threads.per_process(4, cpus=threads.available(tmp_path, proc)) == max(1, (expected or 64) // 4)


def test_threads_set_per_process_unless_omp_num_threads(monkeypatch):
    monkeypatch.setattr(threads, "available", lambda *a: 6)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.apply(3) == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(5)
    assert threads.apply(3) == 5  # explicit OMP_NUM_THREADS: left alone
    # the launcher hands each worker its share of the same CPUs
    import torch.distributed.launcher.api as api
    monkeypatch.delenv("OMP_NUM_THREADS")
    seen = {}
    monkeypatch.setattr(api, "elastic_launch", lambda config, entrypoint: lambda *a: seen.update(
        omp=os.environ.get("OMP_NUM_THREADS"), nproc=config.nproc_per_node))
    monkeypatch.delenv(dist.LAUNCHED_ENV, raising=False)
    dist.launch(["--help"], 3)
    os.environ.pop(dist.LAUNCHED_ENV, None)
    assert seen == {"omp": "2", "nproc": 3}


# -- sweeps -------------------------------------------------------------------------------------------
def test_sweep_flags_collapsed_runs_writes_every_run_and_zooms(tmp_path, capsys):
    out = tmp_path / "sw"
    assert sweep.main(["--recipe", "digits-mlp", "--norm", "bn", "--set", "optim.lr=0,0.05",
                       "--set", "model.name=linear50", "--set", "model.options={depth: 2, width: 32}",
                       "--set", "train.max_steps=12", "--set", "log.tensorboard=false", "--set", "run.device=cpu",
                       "--seeds", "2", "--out", str(out)]) == 0
    per_run = list(csv.DictReader((out / "runs.csv").open()))
    assert [r["run"] for r in per_run] == ["bn-optim.lr=0-seed0", "bn-optim.lr=0-seed1", "bn-optim.lr=0.05-seed0",
                                           "bn-optim.lr=0.05-seed1"]
    assert [r["seed"] for r in per_run] == ["0", "1", "0", "1"] and all(r["eval_top1"] for r in per_run)
    # lr 0 leaves the network at its random init: at chance (10%), flagged; lr 0.05 learns
    assert [r["collapsed"] for r in per_run] == ["True", "True", "False", "False"]
    rows = {r["optim.lr"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["0"]["collapsed"] == "2" and rows["0.05"]["collapsed"] == "0"
    md = (out / "summary.md").read_text()
    assert md.startswith("# sweep: digits-mlp (network linear50, data digits), 4 runs") and "collapsed" in md
    assert "2/4 collapsed (at chance)" in sweep.headline(sweep.summarize(sweep.build_grid(_args(out))[0]), "t")
    # the summary plot's axis spans the data, not 0-100
    tops = [float(r["eval_top1"]) for r in per_run]
    lo, hi = sweep.zoom(tops)
    assert 0 <= lo <= min(tops) and max(tops) <= hi <= 100 and (lo, hi) != (0.0, 100.0)
    assert sweep.zoom([90.1, 90.4]) == pytest.approx((89.6, 90.9))


def _args(out):
    import argparse
    return argparse.Namespace(recipe="digits-mlp", norm="bn", seeds=2, out=str(out), data=None, sets=[
        "optim.lr=0,0.05", "model.name=linear50", "model.options={depth: 2, width: 32}", "train.max_steps=12",
        "log.tensorboard=false", "run.device=cpu"])


def test_collapsed_is_chance_within_a_stated_margin():
    def res(top1, classes=10, status="completed"):
        return {"status": status, "num_classes": classes, "final": {"eval/top1": top1}}
    assert sweep.collapsed(res(15.0)) and not sweep.collapsed(res(15.1))       # 10 classes: <= 10 + 5
    assert sweep.collapsed(res(3.0, 100)) and not sweep.collapsed(res(3.5, 100))  # 100 classes: <= 1 + 2
    assert not sweep.collapsed(res(10.0, status="diverged")) and not sweep.collapsed({"status": "completed"})


# -- scenarios ------------------------------------------------------------------------------------
def test_scenario_set_takes_comma_lists_and_single_values():
    module, params = scenarios.resolve("linear50-wn", ["lrs=0.01,0.1", "methods=wn,bn,none", "steps=5"])
    assert params.lrs == [0.01, 0.1] and params.methods == ["wn", "bn", "none"] and params.steps == 5
    assert scenarios.resolve("linear50-wn", ["lrs=0.1"])[1].lrs == [0.1]
    assert scenarios.resolve("linear50-wn", ["lrs=[0.01, 0.1]"])[1].lrs == [0.01, 0.1]
    with pytest.raises(UsageError, match=r"lrs\[1\]: expected a number"):
        scenarios.resolve("linear50-wn", ["lrs=0.01,abc"])


@pytest.mark.parametrize("name", scenarios.names())
def test_every_scenario_help_shows_a_working_example(name):
    text = scenarios.parser(name).format_help()
    example = text.rstrip().splitlines()[-1].split()
    assert example[:3] == ["normtrain", "scenario", name] and example.count("--set") >= 1
    sets = [example[i + 1] for i, w in enumerate(example) if w == "--set"]
    scenarios.resolve(name, sets)  # the example's values are accepted


# -- lists and runs ---------------------------------------------------------------------------------
def test_every_list_line_says_what_distinguishes_the_item():
    from normtrain import data, models, norms, static
    for reg in (norms.METHODS, models.NETWORKS, data.BACKENDS, scenarios.SCENARIOS):
        lines = {n: reg.summary(n) for n in reg.names()}
        for n in reg.names():
            module, attr = reg.source(n)
            own = static.docstring(module, attr) if attr else static.docstring(module)
            assert own, f"{reg.kind} {n}: its builder has no docstring of its own (the list would show its module's)"
        assert len(set(lines.values())) == len(lines), f"{reg.kind}: two items with the same line"
    assert models.NETWORKS.summary("resnet20").startswith("ResNet-20 for CIFAR: 3 stages of 3 basic blocks")


def test_runs_shows_final_and_best_and_a_run_in_progress_as_running(tmp_path, capsys):
    from normtrain.rundir import RunDir
    out = tmp_path / "r"
    res = engine.train(config.load("digits-mlp", [*QUIET, ("run.out", str(out)), ("train.epochs", 2.0)]))
    row = runs.read_run(out, tmp_path)
    assert row["status"] == "completed" and row["final_top1"] == res["final"]["eval/top1"]
    assert row["best_top1"] == res["best_eval_top1"] and row["test_top1"] == res["final"]["test/top1"]
    capsys.readouterr()
    cli.main(["runs", str(tmp_path)])
    table = capsys.readouterr().out.splitlines()
    assert "final top-1" in table[0] and f"{row['final_top1']:.2f} (val)" in table[2]
    held = RunDir(out)
    held.acquire()  # what a training process holds for its run's life
    try:
        assert runs.lock_held(out) and runs.read_run(out, tmp_path)["status"] == "running"
    finally:
        held.release()
    assert not runs.lock_held(out) and runs.read_run(out, tmp_path)["status"] == "completed"
