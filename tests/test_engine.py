"""The training engine: DDP equivalence, exact resume, divergence, signals, checkpoints."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from normtrain import checkpoint, config, engine

from .conftest import ROOT, run_cli

QUIET = [("log.progress", False), ("log.tensorboard", False), ("run.device", "cpu")]


def recipe(tmp_path, *overrides, name="digits-mlp"):
    return config.load(name, [*QUIET, ("run.out", str(tmp_path)), *overrides])


def weights(path):
    return checkpoint.load(path)["model"]


def test_trains_above_chance_and_writes_outputs(tmp_path):
    res = engine.train(recipe(tmp_path, ("train.epochs", 3.0)))
    assert res["status"] == "completed" and res["steps"] == res["total_steps"] == 3 * res["steps_per_epoch"]
    assert res["final"]["eval/top1"] > 80  # 10 classes: chance is 10%
    for f in ("results.json", "recipe.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tmp_path / f).is_file(), f
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "completed" and saved["final"]["eval/top1"] == res["final"]["eval/top1"]
    assert config.load(str(tmp_path / "recipe.yaml")).optim.lr == config.load("digits-mlp").optim.lr


def test_resume_is_bitwise_equal(tmp_path):
    """A run stopped mid-epoch and resumed ends with exactly the weights of an uninterrupted run.

    Dropout and BN running statistics make sure RNG state and buffers are restored too.
    """
    common = [("train.epochs", 2.0), ("model.dropout", 0.2), ("log.every_steps", 3)]
    full = engine.train(recipe(tmp_path / "a", *common))
    part = engine.train(recipe(tmp_path / "b", *common, ("train.max_steps", 7)))
    assert part["steps"] == 7 and full["steps"] > 7 and 7 % full["steps_per_epoch"] != 0
    rest = engine.train(recipe(tmp_path / "b", *common))
    assert rest["resumed_from_step"] == 7 and rest["steps"] == full["steps"]
    wa, wb = weights(tmp_path / "a/checkpoints/last.pt"), weights(tmp_path / "b/checkpoints/last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_accumulation_equals_full_batch(tmp_path):
    """accum_steps=4 over micro-batches of 16 gives the same step as one batch of 64 (no batch statistics)."""
    common = [("norm.name", "none"), ("train.max_steps", 5), ("optim.weight_decay", 0.0)]
    engine.train(recipe(tmp_path / "a", *common))
    engine.train(recipe(tmp_path / "b", *common, ("train.accum_steps", 4)))
    wa, wb = weights(tmp_path / "a/checkpoints/last.pt"), weights(tmp_path / "b/checkpoints/last.pt")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0)


def test_divergence_is_a_result(tmp_path):
    """A non-finite loss stops the run with status diverged; the last good checkpoint is kept."""
    r = recipe(tmp_path, ("norm.name", "none"), ("optim.lr", 1e12), ("schedule.name", "constant"),
               ("train.checkpoint_every_steps", 1), ("log.every_steps", 1))
    res = engine.train(r)
    assert res["status"] == "diverged"
    step = res["diverged_at_step"]
    assert step is not None and step >= 1 and res["steps"] in (step - 1, step)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "diverged" and saved["diverged_at_step"] == step
    ckpt = tmp_path / "checkpoints/last.pt"
    if ckpt.exists():  # the last good state, never the diverged one
        ck = checkpoint.load(ckpt)
        assert ck["step"] < step
        assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_divergence_exit_code_and_summary(tmp_path):
    p = run_cli("--norm", "none", "--set", "optim.lr=1e12", "--set", "log.progress=false",
                "--set", "log.tensorboard=false", "--out", tmp_path / "d")
    assert p.returncode == 3, p.stderr
    assert "normtrain: diverged" in p.stdout and "diverged at step" in p.stdout


def test_sigterm_saves_and_resumes(tmp_path):
    out = tmp_path / "s"
    args = [sys.executable, "-m", "normtrain", "--set", "train.epochs=500", "--set", "log.progress=false",
            "--set", "log.tensorboard=false", "--set", "log.every_steps=1", "--out", str(out)]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").is_file() and
                                          len((out / "metrics.jsonl").read_text().splitlines()) > 5):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 4, stderr
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    ck = checkpoint.load(out / "checkpoints/last.pt")
    assert ck["step"] > 0
    again = run_cli("--set", "train.max_steps=%d" % (ck["step"] + 2), "--set", "log.progress=false",
                    "--set", "train.epochs=500", "--set", "log.tensorboard=false", "--out", out)
    assert again.returncode == 0, again.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["resumed_from_step"] == ck["step"] and res["steps"] == ck["step"] + 2


def test_two_process_ddp_equals_one_process(tmp_path):
    """gloo DDP with 2 processes = 1 process with the same global batch (no batch statistics)."""
    common = ["--norm", "none", "--set", "train.epochs=1", "--set", "log.progress=false",
              "--set", "log.tensorboard=false", "--set", "run.device=cpu"]
    one = run_cli(*common, "--out", tmp_path / "one")
    two = run_cli(*common, "--out", tmp_path / "two", "--nproc-per-node", "2")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr[-3000:]
    r2 = json.loads((tmp_path / "two/results.json").read_text())
    assert r2["world_size"] == 2
    w1, w2 = weights(tmp_path / "one/checkpoints/last.pt"), weights(tmp_path / "two/checkpoints/last.pt")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=0)
    # Rank 0 alone writes and prints.
    assert two.stdout.count("normtrain: completed") == 1


def test_data_init_synchronised_across_ranks(tmp_path):
    pytest.importorskip("normtrain.norms.wn")
    from normtrain import norms
    if "wn" not in norms.names():
        pytest.skip("wn not registered")
    p = run_cli("--norm", "wn", "--set", "norm.init=data", "--set", "train.max_steps=2", "--set", "log.progress=false",
                "--set", "log.tensorboard=false", "--set", "run.device=cpu", "--nproc-per-node", "2",
                "--out", tmp_path / "w")
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.parametrize("amp,channels_last,model,shape", [
    ("bf16", False, "mlp", [1, 8, 8]), ("fp16", False, "mlp", [1, 8, 8]), ("off", True, "cifar10-nv", [3, 28, 28])])
def test_amp_and_channels_last_run(tmp_path, amp, channels_last, model, shape):
    r = config.load(None, [*QUIET, ("run.out", str(tmp_path)), ("model.name", model), ("norm.name", "bn"),
                           ("data.source", "synthetic"), ("data.synthetic_shape", shape),
                           ("data.batch_size", 8), ("data.synthetic_samples", 32), ("train.max_steps", 2),
                           ("train.amp", amp), ("train.channels_last", channels_last)])
    res = engine.train(r)
    assert res["status"] == "completed" and res["steps"] == 2
    ck = checkpoint.load(tmp_path / "checkpoints/last.pt")
    if amp == "fp16":  # the grad scaler's state is part of the checkpoint
        assert ck["scaler"]["scale"] > 0


def test_no_decay_group_and_nesterov():
    r = config.load("digits-mlp", [("optim.no_decay_norm_bias", True), ("optim.nesterov", True),
                                   ("optim.weight_decay", 0.1)])
    raw = engine.setup_model(r, engine.dist.Dist(), 10, (1, 8, 8))
    opt, _ = engine.setup_optim(r, raw, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert opt.defaults["nesterov"]


def test_under_external_torchrun_acts_as_worker(tmp_path):
    """`torchrun ... -m normtrain` runs normtrain as a plain worker; rank 0 alone writes."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "normtrain",
            "--norm", "none", "--set", "train.max_steps=3", "--set", "log.progress=false",
            "--set", "log.tensorboard=false", "--set", "run.device=cpu", "--out", str(tmp_path / "t")]
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "t/results.json").read_text())
    assert res["world_size"] == 2 and res["steps"] == 3
    assert p.stdout.count("normtrain: completed") == 1


def test_resume_never_refuses_a_used_run_directory(tmp_path):
    engine.train(recipe(tmp_path, ("train.max_steps", 2)))
    from normtrain.errors import UsageError
    with pytest.raises(UsageError, match="already holds a run"):
        engine.train(recipe(tmp_path, ("train.max_steps", 2), ("run.resume", "never")))


def test_sigterm_to_the_launcher_exits_4(tmp_path):
    """With --nproc-per-node the agent forwards the signal; workers save; the launcher exits 4."""
    out = tmp_path / "l"
    args = [sys.executable, "-m", "normtrain", "--nproc-per-node", "2", "--set", "run.device=cpu",
            "--set", "train.epochs=500", "--set", "log.progress=false", "--set", "log.tensorboard=false",
            "--set", "log.every_steps=1", "--out", str(out)]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while time.time() < deadline and not ((out / "metrics.jsonl").is_file() and
                                          len((out / "metrics.jsonl").read_text().splitlines()) > 3):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 4, stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    assert checkpoint.load(out / "checkpoints/last.pt")["step"] > 0


@pytest.mark.parametrize("norm,compile_,channels_last", [("bn", False, True), ("wn", False, True),
                                                         ("gn", False, False), ("ws-gn", False, False),
                                                         ("seqnorm", False, False), ("gn", True, True)])
def test_cuda_defaults_are_the_fast_path_that_keeps_each_method(norm, compile_, channels_last):
    """On CUDA: bf16, channels_last unless the method's kernels are NCHW-only (GN family, unless compiled)."""
    from normtrain import norms
    r = config.load("cifar10-nv", [("norm.name", norm), ("train.compile", compile_)])
    amp, cl = engine.runtime(r, torch.device("cuda"), norms.get(norm))
    assert (amp, cl) == ("bf16", channels_last)
    assert engine.runtime(r, torch.device("cpu"), norms.get(norm)) == ("off", False)
    # Every switch can be turned off (or forced) from the command line.
    off = config.load("cifar10-nv", [("norm.name", norm), ("train.amp", "off"), ("train.channels_last", False)])
    assert engine.runtime(off, torch.device("cuda"), norms.get(norm)) == ("off", False)
    forced = config.load("cifar10-nv", [("norm.name", norm), ("train.channels_last", True)])
    assert engine.runtime(forced, torch.device("cpu"), norms.get(norm))[1] is True
    auto = config.load("cifar10-nv", [("train.channels_last", "auto")])
    assert auto.train.channels_last is None and "channels_last: null" in config.dump(auto)


def test_no_host_device_sync_per_step(tmp_path, monkeypatch):
    """A step's stop flags are read only after the next step's forward and backward are queued (or at
    a step that syncs anyway: logging, evaluation, checkpoints, the end), so the host never waits for
    an idle GPU; nothing else in the loop reads device values per step."""
    events, calls = [], []
    for name in ("item", "tolist", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    step_fn, read_fn = engine.train_step, engine.StepFlags.read

    def train_step(run, *a, **k):
        events.append(("issue", run.step + 1))
        return step_fn(run, *a, **k)

    def read(self):
        if self.pending is not None:
            events.append(("read", self.pending[0]))
        return read_fn(self)
    monkeypatch.setattr(engine, "train_step", train_step)
    monkeypatch.setattr(engine.StepFlags, "read", read)
    r = recipe(tmp_path, ("train.max_steps", 20), ("log.every_steps", 1000), ("train.epochs", 1.0),
               ("data.val_split", 0))  # one evaluation at the end (with a validation split, the test split's too)
    run = engine.prepare(r, engine.dist.Dist())
    calls.clear()
    status = engine.loop(run, engine.RunLogger(None, 0, False, False), engine.StopFlag())
    assert status == "completed" and run.step == 20
    reads = [s for kind, s in events if kind == "read"]
    assert reads == list(range(1, 21))  # every step's flags are read, once
    for i, (kind, s) in enumerate(events):
        if kind == "read" and s != 20:  # step 20 is the last (and a log) step: it settles at once
            assert ("issue", s + 1) in events[:i], (s, events[:i + 1])
    # Besides the 20 flag reads: the last step's log line, its evaluation and the weight check.
    assert len(calls) - len(reads) <= 8, calls


@pytest.mark.parametrize("net,shape,first,hidden,last", [
    ("resnet20", (1, 8, 8), "bn1", "layer3.2", "fc"),        # conv1 -> bn1 measured after BN; last block; fc
    ("mlp", (1, 8, 8), "net.2", "net.5", "net.7"),           # no blocks: last hidden linear's BN
    ("cifar10-nv", (3, 28, 28), "net.0", "net.23", "net.26"),  # no BN after conv1 (Table 2); conv8; conv9
])
def test_norm_tracker_points(net, shape, first, hidden, last):
    """Gitman & Ginsburg Fig. 4 points, picked from the forward order: the values are those modules' output norms."""
    from normtrain import models
    torch.manual_seed(0)
    m = models.build(net, "bn", 10, shape)
    tracker = engine.NormTracker(m)
    mods = dict(m.named_modules())
    seen = {}
    for name in (first, hidden, last):
        # the norm at once: an in-place ReLU may overwrite the output afterwards
        mods[name].register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__(
            name, o.detach().float().flatten(1).norm(dim=1).mean().item()))
    for _ in range(2):  # the first forward picks the modules, the second uses only their hooks
        tracker.active = True
        m(torch.randn(4, *shape))
        values = tracker.pop()
        assert {k: n for n, mod in mods.items() for k, t in tracker.targets.items() if t is mod} == {
            "first_layer_output": first, "last_hidden_output": hidden, "last_layer_output": last}
        for key, name in (("first_layer_output", first), ("last_hidden_output", hidden), ("last_layer_output", last)):
            assert values[f"norms/{key}"] == pytest.approx(seen[name], rel=1e-6)
    tracker.active = False
    m(torch.randn(4, *shape))
    assert tracker.pop() == {}
