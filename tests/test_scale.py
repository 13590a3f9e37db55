"""`--scale paper` (issue 19 points 1 and 3): every scenario's PAPER plan, its arithmetic on 1/8/64 GPUs,
the dataset checks, the plan printed without torch, GPU-hours from measured step times, and one training
plan run end to end through the training launcher (2 CPU processes) and judged, then reused."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from normtrain import batching, config, scenarios
from normtrain.cli import main
from normtrain.errors import UsageError
from normtrain.recipe_runs import LaunchOptions
from normtrain.scenarios import paper

from . import datagen
from .conftest import ROOT

NAMES = scenarios.names()


def module_of(name):
    return scenarios.SCENARIOS[name]


def training(name):
    return paper.kind(module_of(name)) == paper.TRAINING


def paper_params(name):
    m = module_of(name)
    return config.apply_overrides(m.Params(), list(m.PAPER.params.items()), f"{name} PAPER")


# -- the PAPER data --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_every_scenario_states_its_paper_experiment_as_data(name):
    """PAPER is a `paper.Paper` whose params are real Params fields passing Params.check, whose dataset and
    recipes exist and whose values say where they come from; a training scenario's runs load as recipes,
    with unique folders and the arms its verdict reads."""
    m = module_of(name)
    pp = m.PAPER
    assert isinstance(pp, paper.Paper) and pp.where and pp.gpus >= 1
    assert pp.dataset is None or pp.dataset in paper.DATASETS
    assert pp.dataset is None or m.USES_DATA
    p = paper_params(name)  # unknown keys or values that fail check() raise here
    for r in pp.recipes:
        config.load(r)
    assert all(isinstance(v, paper.Value) and v.where for v in pp.values.values())
    if training(name):
        assert pp.recipes and hasattr(m, "paper_judge")
        runs = m.paper_runs(p)
        assert runs and len({r.name for r in runs}) == len(runs)
        assert {r.recipe for r in runs} <= set(pp.recipes)
        from normtrain.preflight import validate
        for r in runs:
            validate(paper.load_run(r, paper.SYNTHETIC))  # methods, networks and options the recipe can build
        assert len({(r.arm, r.seed) for r in runs}) == len(runs)


TRAINING = {"ws-micro-batch", "ghost-ranking", "wn-small-net", "trelu-wn-instability", "dyt-tanh-shape",
            "wn-generalization", "ws-curves", "output-norms"}


def test_the_readme_names_each_scenarios_kind_and_dataset():
    """README's --scale paper section lists the training scenarios and, per dataset, the scenarios that need it."""
    text = (ROOT / "README.md").read_text()
    assert {n for n in NAMES if training(n)} == TRAINING
    section = text[text.index("### At the paper's size"):text.index("### Sweeps")]
    kinds = section[section.index("- **Training scenarios**"):section.index("- **Analysis scenarios**")]
    assert set(__import__("re").findall(r"`([a-z0-9-]+)`", kinds)) >= TRAINING
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] not in ("dataset",):
            rows[cells[0]] = {x.strip() for x in cells[1].split(",")}
    want = {}
    for n in NAMES:
        ds = module_of(n).PAPER.dataset
        want.setdefault(paper.DATASETS[ds].title if ds else "none (generated inputs)", set()).add(n)
    assert rows == want


# -- the plan's arithmetic ---------------------------------------------------------------------------------

def engine_steps(n_train, micro, world, accum, epochs, max_steps=0):
    """The engine's count (engine.setup_data / prepare): batches per process per epoch // accum, times epochs."""
    spe = (n_train // (micro * world)) // accum
    steps = max(1, math.ceil(epochs * spe))
    return spe, min(steps, max_steps) if max_steps else steps


@pytest.mark.parametrize("world", [1, 8, 64])
@pytest.mark.parametrize("name", [n for n in NAMES if training(n)])
def test_training_plan_arithmetic(name, world):
    m = module_of(name)
    plans = paper.plan(m.paper_runs(paper_params(name)), world, m.PAPER.dataset)
    for rp in plans:
        rec = rp.recipe
        try:
            want = batching.for_recipe(rec, world)
        except UsageError as e:
            assert rp.error == str(e) and rp.steps == 0
            continue
        assert not rp.error and rp.batch == want and want.global_batch == rec.data.batch_size
        n = paper.DATASETS[m.PAPER.dataset].train - rec.data.val_split
        assert (rp.steps_per_epoch, rp.steps) == engine_steps(n, want.micro, world, want.accum, rec.train.epochs,
                                                               rec.train.max_steps)
        assert rp.images == rp.steps * rec.data.batch_size


def _by_arm(name, world):
    m = module_of(name)
    return {rp.run.name: rp for rp in paper.plan(m.paper_runs(paper_params(name)), world, m.PAPER.dataset)}


def test_paper_plans_in_numbers():
    """Hand-computed: ImageNet's 1,281,167 images at batch 256 are 5,004 steps an epoch; CIFAR's 45,000 (5k held
    out) at 512 are 87, all 50,000 at 128 are 390; the WS recipe's 1-image micro-batches accumulate 256/GPUs."""
    for world, (bn_micro, ws_accum) in {1: (256, 256), 8: (32, 32), 64: (4, 4)}.items():
        ws = _by_arm("ws-micro-batch", world)
        assert (ws["bn-at-B-seed0"].batch.micro, ws["bn-at-B-seed0"].batch.accum) == (bn_micro, 1)
        assert (ws["gn-ws-at-1-seed0"].batch.micro, ws["gn-ws-at-1-seed0"].batch.accum) == (1, ws_accum)
        assert ws["bn-at-1-seed0"].batch.accum == ws_accum
        assert all(rp.steps_per_epoch == 5004 and rp.steps == 90 * 5004 for rp in ws.values())
    tr = _by_arm("trelu-wn-instability", 4)
    assert tr["trelu-wn-seed0"].steps == 600_480 and tr["trelu-wn-seed0"].batch.micro == 64
    gr8, gr64 = _by_arm("ghost-ranking", 8), _by_arm("ghost-ranking", 64)
    assert gr8["bn-seed0"].batch.micro == 64 and gr8["bn-seed0"].batch.ghost_groups == 1
    assert gr8["ghost-G_M8-seed0"].batch.ghost_groups == 8 and gr8["ghost-G_M8-seed0"].steps == 200 * 87
    assert gr64["ghost-G_M8-seed0"].batch.micro == 8 and gr64["ghost-G_M8-seed0"].batch.ghost_groups == 1
    assert "does not divide" in gr64["bn-seed0"].error  # 8 images per GPU cannot hold BN's 64-sample chunks
    wn = _by_arm("wn-small-net", 1)
    assert wn["bn-seed0"].steps_per_epoch == 390 and wn["bn-seed0"].steps == 256 * 390
    dyt1, dyt64, dyt48 = _by_arm("dyt-tanh-shape", 1), _by_arm("dyt-tanh-shape", 64), _by_arm("dyt-tanh-shape", 48)
    assert (dyt1["ln-seed0"].batch.micro, dyt1["ln-seed0"].batch.accum) == (64, 64)
    assert (dyt64["ln-seed0"].batch.micro, dyt64["ln-seed0"].batch.accum) == (64, 1)
    assert dyt64["ln-seed0"].steps_per_epoch == 1_281_167 // 4096 == 312
    assert "multiple of 3072" in dyt48["ln-seed0"].error  # 4096 images do not split into 64 on 48 processes


def test_world_size_and_launch_flags(monkeypatch):
    assert paper.world_size("8", 2, 4) == (16, "8 per node x 2 node(s)")
    assert paper.world_size("auto", 1, 4, gpus_here=0)[0] == 4         # none here: the paper's count
    assert paper.world_size("auto", 2, 4, gpus_here=8)[0] == 16
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert paper.visible_gpus() == 3
    o = LaunchOptions("8", "2", 1, "node0:29500", "job")
    assert o.flags("bn-seed0") == ["--nproc-per-node", "8", "--nnodes", "2", "--node-rank", "1",
                                   "--rdzv-endpoint", "node0:29500", "--rdzv-id", "job-bn-seed0"]
    assert LaunchOptions().flags("x") == ["--nproc-per-node", "auto"]
    for bad in (LaunchOptions("0"), LaunchOptions(nnodes="2"), LaunchOptions(nnodes="x"),
                LaunchOptions(nnodes="2", node_rank=2, rdzv_endpoint="h:1")):
        with pytest.raises(UsageError):
            bad.check()


# -- GPU-hours from measured step times ----------------------------------------------------------------------

def _bench(path, device, rows):
    path.write_text(json.dumps({"args": {"device": device}, "machine": {"gpu": "H100"}, "rows": rows}))
    return path


def test_gpu_hours_come_from_gpu_measurements_only(tmp_path):
    m = module_of("trelu-wn-instability")
    runs = m.paper_runs(paper_params("trelu-wn-instability"))
    row = {"model": "resnet50", "micro": 64, "size": 224, "loop": "bare", "images_per_s": 2000.0}  # 64/GPU on 4
    gpu = paper.timing_rows([_bench(tmp_path / "g.json", "cuda", [{**row, "method": "bn"},
                                                                  {**row, "method": "trelu-wn", "images_per_s": 1600.0}])])
    plans = paper.plan(runs, 4, "imagenet", timing=gpu)
    hours = {rp.run.arm: rp.gpu_hours for rp in plans}
    assert hours["bn"] == pytest.approx(600_480 * 256 / 2000 / 3600)
    assert hours["trelu-wn"] == pytest.approx(600_480 * 256 / 1600 / 3600)
    only_bn = paper.timing_rows([_bench(tmp_path / "b.json", "cuda", [{**row, "method": "bn"}])])
    plans = paper.plan(runs, 4, "imagenet", timing=only_bn)
    assert plans[0].rate is None and paper.total_gpu_hours(plans) is None  # no stand-in for trelu-wn's rate
    assert paper.bench_command(plans) == ("python tools/bench.py --device cuda --models resnet50 --methods trelu-wn "
                                          "--batches 64 --size 224 --json bench.json")
    ws = module_of("ws-micro-batch").paper_runs(paper_params("ws-micro-batch"))
    one = paper.plan(ws, 4, "imagenet", timing=only_bn)
    assert {rp.run.arm: rp.rate is not None for rp in one} == {"bn@B": True, "bn@1": False, "gn+ws@1": False}
    cpu = paper.timing_rows([_bench(tmp_path / "c.json", "cpu", [{**row, "method": "bn"}])])
    assert cpu == [] and paper.total_gpu_hours(paper.plan(runs, 4, "imagenet", timing=cpu)) is None
    doctor = tmp_path / "doctor.json"
    doctor.write_text(json.dumps({"device": "cuda:0", "items": [{"item": "step", "rows": [{**row, "method": "bn"}]}]}))
    assert paper.timing_rows([doctor])[0]["images_per_s"] == 2000.0


# -- datasets -----------------------------------------------------------------------------------------------

def fake_imagenet(root: Path, classes=1000, flat_val=False) -> Path:
    for split in ("train",) + (() if flat_val else ("val",)):
        for k in range(classes):
            d = root / split / f"n{k:08d}"
            d.mkdir(parents=True)
            if k == 0:
                (d / "a.JPEG").write_bytes(b"")
    if flat_val:
        (root / "val").mkdir()
        (root / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    return root


def test_dataset_checks(tmp_path):
    pp = module_of("ws-micro-batch").PAPER
    good = fake_imagenet(tmp_path / "in1k")
    paper.check_dataset("ws-micro-batch", pp, str(good))
    paper.check_dataset("ws-micro-batch", pp, paper.SYNTHETIC)
    cases = [(None, "needs ImageNet-1k"), (str(tmp_path / "nope"), "does not exist"),
             (str(fake_imagenet(tmp_path / "small", classes=3)), "has 3 class folders"),
             (str(fake_imagenet(tmp_path / "flat", flat_val=True)), "tools/sort_imagenet_val.py"),
             (str(datagen.cifar10(tmp_path / "c10")), "no train/ folder")]
    for data, msg in cases:
        with pytest.raises(UsageError, match=msg):
            paper.check_dataset("ws-micro-batch", pp, data)
    c100 = module_of("ghost-ranking").PAPER
    paper.check_dataset("ghost-ranking", c100, str(datagen.cifar100(tmp_path / "c100")))
    with pytest.raises(UsageError, match="holds CIFAR-10, not CIFAR-100"):
        paper.check_dataset("ghost-ranking", c100, str(tmp_path / "c10"))
    paper.check_dataset("wn-small-net", module_of("wn-small-net").PAPER, str(tmp_path / "c10"))
    mnist = paper.Paper("x", "mnist", 1)
    paper.check_dataset("x", mnist, str(datagen.mnist(tmp_path / "mn")))
    with pytest.raises(UsageError, match="no MNIST idx files"):
        paper.check_dataset("x", mnist, str(tmp_path / "c10"))


@pytest.mark.parametrize("name, args, msg", [
    ("ws-micro-batch", [], "needs ImageNet-1k"),
    ("ws-micro-batch", ["--data", "/definitely/missing"], "does not exist"),
    ("linear50-wn", [], "needs ImageNet-1k"),
    ("ghost-ranking", ["--data", "synthetic", "--nproc-per-node", "64"], "does not divide the per-process"),
    ("ws-micro-batch", ["--data", "synthetic", "--nnodes", "2"], "needs --rdzv-endpoint"),
    ("ws-hessian", ["--nproc-per-node", "8"], "runs in one process"),
])
def test_paper_scale_refuses_bad_input_before_writing(tmp_path, capsys, name, args, msg):
    """A missing dataset, a batch that does not split on the processes given, launcher options an analysis
    scenario cannot use: one line, exit 2, nothing written."""
    out = tmp_path / "sc"
    rc = main(["scenario", name, "--scale", "paper", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# -- the plan, printed without torch ----------------------------------------------------------------------

PRINT_ALL = r"""
import io, json, sys, contextlib
from normtrain.cli import main
from normtrain import scenarios
out = {}
for name in scenarios.names():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["scenario", name, "--scale", "paper", "--dry-run", "--nproc-per-node", "8"])
    out[name] = {"rc": rc, "plan": buf.getvalue(), "help": scenarios.parser(name).format_help()}
heavy = sorted(m for m in ("torch", "numpy", "matplotlib") if m in sys.modules)
print("@@" + json.dumps({"out": out, "heavy": heavy}))
"""


def test_dry_run_prints_every_plan_and_help_documents_scale():
    p = subprocess.run([sys.executable, "-c", PRINT_ALL], capture_output=True, text=True, cwd=ROOT, timeout=300)
    res = json.loads(p.stdout.rstrip().splitlines()[-1][2:])
    assert res["heavy"] == [], res["heavy"]
    for name, r in res["out"].items():
        assert r["rc"] == 0, (name, p.stderr)
        assert "--scale {cpu,paper}" in r["help"] and "--scale paper:" in r["help"], name
        plan = r["plan"]
        assert f"scenario {name} --scale paper" in plan and "command:" in plan, name
        if training(name):
            assert "planned on 8 process(es)" in plan and "optimizer steps" in plan and "GPU-hours: unknown" in plan
        else:
            assert "one process on one GPU" in plan


# -- end to end: a training plan through the launcher, judged, then reused --------------------------------

RECIPE_SETS = ["model.name=resnet8", "data.synthetic_shape=[3,16,16]", "data.synthetic_samples=64",
               "data.num_classes=10", "data.workers=0", "log.tensorboard=false"]
PARAMS = [("steps", 3), ("record_every", 1), ("batch_size", 16), ("control", "")]
TINY = ["--data", "synthetic", "--set", "progress=false", "--nproc-per-node", "2",
        *[a for k, v in PARAMS for a in ("--set", f"{k}={v}")], *[a for s in RECIPE_SETS for a in ("--recipe-set", s)]]


def test_training_plan_end_to_end_through_the_launcher(tmp_path):
    out = tmp_path / "sc"
    cmd = [sys.executable, "-m", "normtrain", "scenario", "trelu-wn-instability", "--scale", "paper",
           "--out", str(out), *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run_dir = out / "runs" / "trelu-wn-seed0"
    run = json.loads((run_dir / "results.json").read_text())
    assert run["status"] == "completed" and run["world_size"] == 2 and run["norm"] == "trelu-wn"
    assert (run_dir / "recipe.yaml").is_file() and (run_dir / "metrics.jsonl").is_file()
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    # The plan's arithmetic is the engine's: same recipe, 2 processes.
    m = module_of("trelu-wn-instability")
    params = config.apply_overrides(m.Params(), [*m.PAPER.params.items(), *PARAMS])
    rp = paper.plan(m.paper_runs(params), 2, "imagenet", "synthetic", [config.parse_set(s) for s in RECIPE_SETS])[0]
    assert (rp.steps_per_epoch * 120, rp.batch.micro) == (run["total_steps"], run["batch"]["per_process"])
    assert rp.steps == run["steps"] == 3
    res = json.loads((out / "results.json").read_text())
    assert res["scale"] == "paper" and res["scenario"] == "trelu-wn-instability"
    assert res["measurements"]["runs"][0]["folder"] == str(run_dir)
    div = next(q for q in res["verdict"]["parts"] if q["name"] == "sudden divergence")
    assert div["paper_value"]["where"] == "§4.2" and div["state"] == "inconclusive"
    assert "paper | ours:" in p.stdout
    assert res["plots"] and (out / res["plots"][0]).is_file()
    # Rerun: the finished run is reused (no launch), the verdict is the same.
    mtime = (run_dir / "results.json").stat().st_mtime
    p2 = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert p2.returncode == 0 and "reusing finished run" in p2.stdout, p2.stderr[-2000:]
    assert (run_dir / "results.json").stat().st_mtime == mtime
    assert json.loads((out / "results.json").read_text())["verdict"]["state"] == res["verdict"]["state"]


# -- each training scenario's paper_judge on constructed run folders ------------------------------------------

R = "reproduced"


def _judge(name, tmp_path, top1=None, level=None, extra=None, sets=()):
    """paper_judge of scenario `name` on one finished run per entry of its plan (3 seeds): flat logged training
    loss at level(arm), final test top-1 top1(arm, seed), metrics rows extra(arm) written to metrics.jsonl."""
    from normtrain.scenarios import common, paper_runs
    m = module_of(name)
    seeds = [("seeds", 3)] if "seeds" in vars(m.Params()) else []
    p = config.apply_overrides(m.Params(), [*m.PAPER.params.items(), *seeds, ("progress", False), *sets])
    done = []
    for r in m.paper_runs(p):
        out = tmp_path / "runs" / r.name
        out.mkdir(parents=True)
        lv = level(r.arm) if level else 1.0
        rows = [{"step": s, "train/loss": lv * (1 + 0.001 * ((s // 10) % 3 - 1)), "train/top1": 90.0}
                for s in range(10, 2010, 10)]
        rows = [{**row, **(extra(r.arm, row["step"]) if extra else {})} for row in rows]
        (out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        (out / "recipe.yaml").write_text(config.dump(paper.load_run(r, None)))
        t = top1(r.arm, r.seed) if top1 else 50.0
        res = {"status": "completed", "steps": 2000, "total_steps": 2000, "eval_split": "test", "world_size": 8,
               "final": {"test/top1": t, "eval/top1": t, "train/loss": lv, "train/top1": rows[-1]["train/top1"]}}
        done.append(paper_runs.Finished(r, out, res, rows))
    ctx = common.Context(name, p, tmp_path, "/data/x", scale="paper", paper=m.PAPER)
    res = m.paper_judge(ctx, p, done)
    assert res["scale"] == "paper" and len(res["measurements"]["runs"]) == len(done)
    assert res["plots"] and all((tmp_path / q).is_file() for q in res["plots"])
    return {q["name"]: q for q in res["verdict"]["parts"]}


def _noise(seed):
    return 0.05 * (seed % 3 - 1)


def test_ws_micro_batch_judge(tmp_path):
    top = {"bn@B": 75.5, "bn@1": 40.0, "gn+ws@1": 76.3}
    parts = _judge("ws-micro-batch", tmp_path, lambda a, s: top[a] + _noise(s))
    assert {k: q["state"] for k, q in parts.items()} == {"gn+ws@1 vs bn@B": R, "bn@1 vs bn@B": R,
                                                         "gn+ws@1 vs bn@1": R}  # the iteration-size part: CPU only
    assert parts["gn+ws@1 vs bn@B"]["paper_value"]["value"] == {"gn+ws@1": 23.72, "bn@64": 24.30}


def test_ghost_ranking_judge(tmp_path):
    top = {"bn": 80.0, "seqnorm G_C=4,G_M=8": 83.0}
    parts = _judge("ghost-ranking", tmp_path, lambda a, s: top.get(a, 81.5) + _noise(s))
    assert all(q["state"] == R for q in parts.values()) and set(parts) == set(module_of("ghost-ranking").PAPER.values)


def test_wn_small_net_judge(tmp_path):
    top = {"bn": 80.0, "wn": 79.0, "normprop": 82.0, "trelu-wn": 82.0, "none": 80.0}
    lv = {"bn": 0.15, "none": 0.15}
    parts = _judge("wn-small-net", tmp_path, lambda a, s: top[a] + _noise(s), lambda a: lv.get(a, 0.05))
    assert all(q["state"] == R for q in parts.values()), {k: (q["state"], q["measured"]) for k, q in parts.items()}


def test_wn_generalization_judge(tmp_path):
    top = {"bn": 73.0, "wn": 67.0, "wn+dropout": 67.5, "wn+wd": 67.2}
    parts = _judge("wn-generalization", tmp_path, lambda a, s: top[a] + _noise(s),
                   extra=lambda a, step: {"train/top1": (80.0 if a == "bn" else 85.0) + _noise(step // 10)})
    assert all(q["state"] == R for q in parts.values()), {k: (q["state"], q["measured"]) for k, q in parts.items()}
    assert parts["wn: tests-worse"]["paper_value"]["where"]


def test_ws_curves_judge(tmp_path):
    lv = {"gn": 1.30, "gn+eq6": 1.25, "gn+eq5": 1.10, "gn+ws": 1.05}
    parts = _judge("ws-curves", tmp_path, level=lambda a: lv[a])
    assert all(q["state"] == R for q in parts.values()), {k: (q["state"], q["measured"]) for k, q in parts.items()}
    assert parts["eq5-major"]["paper_value"]["value"]["gn+eq5"] == 23.96


def test_output_norms_judge(tmp_path):
    def norms(a, step):
        grow = 1 + (1.0 if a == "wn" else 0.05) * step / 2000
        return {"norms/first_layer_output": 10.0, "norms/last_hidden_output": 5.0 * grow,
                "norms/last_layer_output": 3.0}
    parts = _judge("output-norms", tmp_path, extra=norms)
    assert parts["wn-drift"]["state"] == R and parts["bn-control"]["state"] == R


def test_dyt_tanh_shape_judge_probes_the_runs_networks(tmp_path):
    """Two real (2-step) runs of the plan trained in this process by the engine, then judged: the networks of
    their initial weights and last checkpoints are rebuilt from the run folders and probed."""
    from normtrain import recipe_runs
    from normtrain.scenarios import common, paper_runs
    m = module_of("dyt-tanh-shape")
    p = config.apply_overrides(m.Params(), [*m.PAPER.params.items(), ("model", "vit-tiny-digits"),
                                            ("probe_images", 8), ("progress", False)])
    extra = [("data.synthetic_shape", [1, 8, 8]), ("data.synthetic_samples", 64), ("data.num_classes", 10),
             ("data.batch_size", 32), ("train.micro_batch", 16), ("train.max_steps", 2), ("data.workers", 0),
             ("log.tensorboard", False), ("data.randaugment", 0), ("data.random_erasing", 0.0), ("data.image_size", 8)]
    specs = paper_runs.specs("dyt-tanh-shape", m, p, tmp_path, "synthetic", extra)
    assert [s.out for s in specs] == [tmp_path / "runs" / "ln-seed0", tmp_path / "runs" / "ln-seed1"]
    assert recipe_runs.run_inprocess(specs, "test") == []
    done = [paper_runs.Finished(s.run, s.out, recipe_runs.load_result(s.out), recipe_runs.read_metrics(s.out))
            for s in specs]
    res = m.paper_judge(common.Context("dyt-tanh-shape", p, tmp_path, "synthetic", scale="paper", paper=m.PAPER),
                        p, done)
    assert res["scale"] == "paper" and len(res["measurements"]["r2_trained"]["tanh"]) == 2
    assert len(res["measurements"]["ln_layers"]) == len(res["measurements"]["r2_trained"]["tanh"][0]) > 3
    parts = {q["name"]: q for q in res["verdict"]["parts"]}
    assert parts["deep-tanh"]["paper_value"]["where"].startswith("Fig. 2")


def test_an_analysis_scenario_at_paper_scale_runs_in_this_process(tmp_path):
    """ghost-example's paper size is its own: --scale paper runs it here, records the scale and puts the paper's
    printed numbers beside ours; the CPU size records its scale too."""
    res = scenarios.run("ghost-example", ["progress=false"], out=str(tmp_path / "p"), scale="paper")
    assert res["scale"] == "paper" and res["verdict"]["state"] == R
    assert all(q["paper_value"]["where"] == "§2.2" for q in res["verdict"]["parts"])
    assert scenarios.run("ghost-example", ["progress=false"], out=str(tmp_path / "c"))["scale"] == "cpu"
    with pytest.raises(UsageError, match="--recipe-set applies to the training runs"):
        scenarios.run("ghost-example", [], out=str(tmp_path / "x"), scale="paper", recipe_sets=["train.epochs=1"])
    assert not (tmp_path / "x").exists()
