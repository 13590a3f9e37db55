"""Trusted run folders (README "What normtrain guarantees"): one writer, resume only what was run,
finished runs stay finished, verified checkpoints, every failure a documented exit and one line."""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch

from normtrain import checkpoint, config, engine, rundir
from normtrain.errors import EnvError, UsageError

from .conftest import ROOT, run_cli
from .datagen import cifar10, image_folder

QUIET = [("log.progress", False), ("log.tensorboard", False), ("run.device", "cpu")]
FLAGS = ["--set", "log.progress=false", "--set", "log.tensorboard=false"]


def recipe(out, *overrides, name="digits-mlp"):
    return config.load(name, [*QUIET, ("run.out", str(out)), *overrides])


def one_line_error(p, code=2):
    """The command failed with `code` and exactly one line on stderr, no traceback."""
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == code, (p.returncode, p.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("normtrain: error: "), p.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A completed 2-epoch digits run (22 steps per epoch)."""
    out = tmp_path_factory.mktemp("done") / "run"
    res = engine.train(recipe(out, ("train.epochs", 2.0)))
    assert res["status"] == "completed"
    return out


def snapshot(out):
    """Every file of the run (the lock file aside: holding it is what a command does)."""
    return {p.relative_to(out): (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")
            if p.is_file() and p.name != rundir.LOCK_NAME}


# -- 1. one writer ------------------------------------------------------------------------------

def test_second_command_on_a_live_run_folder_is_refused_and_a_killed_run_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "live"
    first = subprocess.Popen([sys.executable, "-m", "normtrain", *FLAGS, "--set", "train.epochs=500",
                              "--set", "log.every_steps=1", "--out", str(out)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "metrics.jsonl").is_file():
            time.sleep(0.2)
        second = run_cli(*FLAGS, "--set", "train.epochs=500", "--out", out)
        line = one_line_error(second)
        assert f"run folder {out} is in use by PID {first.pid} on " in line
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
    # The OS released the lock with the process: the same command resumes (or starts) at once.
    ok = run_cli(*FLAGS, "--set", "train.epochs=500", "--set", "train.max_steps=3", "--out", out)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_lock_is_exclusive_in_process(tmp_path):
    a = rundir.RunDir(tmp_path / "x")
    a.acquire()
    # flock is per open file: a second descriptor in the same process is refused too.
    with pytest.raises(UsageError, match=r"is in use by PID \d+ on "):
        rundir.RunDir(tmp_path / "x").acquire()
    a.release()
    b = rundir.RunDir(tmp_path / "x")
    b.acquire()
    b.release()


# -- 2. resume only what was run --------------------------------------------------------------

def test_changed_experiment_keys_are_refused_with_a_diff(done):
    for key, value in (("optim.lr", 0.07), ("run.seed", 3), ("data.batch_size", 32), ("norm.name", "gn"),
                       ("optim.weight_decay", 0.01), ("train.epochs", 3.0)):
        with pytest.raises(UsageError, match=rf"different experiment: {key} .* -> .*--resume-changed {key}"):
            engine.train(recipe(done, ("train.epochs", 2.0), (key, value)))


def test_free_keys_may_change(tmp_path):
    out = tmp_path / "free"
    engine.train(recipe(out, ("train.max_steps", 5)))
    res = engine.train(recipe(out, ("train.max_steps", 8), ("log.every_steps", 2), ("train.eval_every_steps", 3)))
    assert res["status"] == "completed" and res["resumed_from_step"] == 5 and res["steps"] == 8


def test_allowed_changes_are_applied_and_recorded(tmp_path):
    out = tmp_path / "allow"
    engine.train(recipe(out, ("train.max_steps", 4), ("optim.weight_decay", 0.0)))
    res = engine.train(recipe(out, ("train.max_steps", 6), ("optim.weight_decay", 0.01), ("optim.momentum", 0.5),
                              ("run.resume_changed", "optim.weight_decay,optim.momentum")))
    assert res["steps"] == 6 and res["resumed_from_step"] == 4
    assert sorted(c[0] for c in res["resume_changes"]) == ["optim.momentum", "optim.weight_decay"]
    groups = checkpoint.load(out / "checkpoints/last.pt")["optimizer"]["param_groups"]
    assert groups[0]["weight_decay"] == 0.01 and groups[0]["momentum"] == 0.5  # the new values, really used
    saved = config.load(str(out / "recipe.yaml"))
    assert saved.optim.weight_decay == 0.01 and saved.optim.momentum == 0.5


def test_resume_from_a_path_checks_the_recipe_too(done, tmp_path):
    with pytest.raises(UsageError, match=r"norm.name 'bn' -> 'ghost'"):
        engine.train(recipe(tmp_path / "g", ("norm.name", "ghost"), ("train.epochs", 2.0),
                            ("run.resume", str(done / "checkpoints/last.pt"))))
    assert not (tmp_path / "g").exists()  # nothing written


def test_changed_dataset_is_refused(tmp_path):
    data = cifar10(tmp_path / "c10", train=200, test=20)
    out = tmp_path / "ds"
    engine.train(recipe(out, ("data.source", str(data)), ("model.name", "mlp"), ("data.batch_size", 50),
                        ("train.max_steps", 2), name=None))
    with pytest.raises(UsageError, match="data.source"):
        engine.train(recipe(out, ("model.name", "mlp"), ("data.batch_size", 50), ("train.max_steps", 4), name=None))


# -- 3. finished runs ---------------------------------------------------------------------------

def test_rerunning_a_completed_command_changes_nothing(done):
    before = snapshot(done)
    p = run_cli(*FLAGS, "--set", "train.epochs=2", "--set", "run.device=cpu", "--out", done)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "already complete" in p.stdout and "normtrain: completed" in p.stdout
    # the rate is the recorded run's, not a rerun's zero (a bare substring would match "20260 img/s")
    assert not re.search(r"(?<![\d.])0 img/s", p.stdout), p.stdout
    assert snapshot(done) == before


# -- 4. no silent restart -----------------------------------------------------------------------

def test_missing_last_next_to_best_refuses_and_says_how_to_continue(tmp_path):
    out = tmp_path / "b"
    engine.train(recipe(out, ("train.max_steps", 30)))
    (out / "checkpoints/last.pt").unlink()
    best = (out / "checkpoints/best.pt").read_bytes()
    p = run_cli(*FLAGS, "--set", "train.max_steps=30", "--out", out)
    line = one_line_error(p)
    assert "no checkpoints/last.pt" in line and f"--resume {out / 'checkpoints/best.pt'}" in line
    assert (out / "checkpoints/best.pt").read_bytes() == best
    # ... and the suggested command works.
    res = engine.train(recipe(out, ("train.max_steps", 30), ("run.resume", str(out / "checkpoints/best.pt"))))
    assert res["status"] == "completed"


# -- 5. checkpoint integrity --------------------------------------------------------------------

def _tensor_record(path):
    """(offset, size) of the largest tensor payload inside a torch.save zip file."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_flipped_bytes_inside_a_tensor_are_caught(done, tmp_path):
    bad = tmp_path / "flipped.pt"
    bad.write_bytes((done / "checkpoints/last.pt").read_bytes())
    off, size = _tensor_record(bad)
    with open(bad, "r+b") as f:
        f.seek(off + size // 2)
        byte = f.read(1)
        f.seek(off + size // 2)
        f.write(bytes([byte[0] ^ 0x10]))
    # torch.load alone accepts it (the weights are just different) ...
    torch.load(bad, weights_only=False)
    # ... normtrain does not.
    with pytest.raises(checkpoint.CheckpointError, match=f"{bad} fails its checksum"):
        checkpoint.load(bad)


@pytest.mark.parametrize("damage", ["truncated", "foreign", "garbage"])
def test_unusable_checkpoints_are_one_line_naming_the_file(done, tmp_path, damage):
    out = tmp_path / damage
    (out / "checkpoints").mkdir(parents=True)
    last = out / "checkpoints/last.pt"
    raw = (done / "checkpoints/last.pt").read_bytes()
    if damage == "truncated":
        last.write_bytes(raw[: len(raw) // 2])
    elif damage == "foreign":
        torch.save({"state_dict": torch.zeros(3)}, last)
    else:
        last.write_bytes(os.urandom(1000))
    p = run_cli(*FLAGS, "--set", "train.epochs=2", "--out", out)
    line = one_line_error(p)
    assert str(last) in line


def test_temporaries_of_interrupted_saves_are_removed_at_start(tmp_path):
    out = tmp_path / "t"
    engine.train(recipe(out, ("train.max_steps", 3)))
    junk = out / "checkpoints" / ".last.pt.k1ll3d.tmp"
    junk.write_bytes(b"x" * 10000)
    engine.train(recipe(out, ("train.max_steps", 5)))
    assert not junk.exists() and not list(out.rglob("*.tmp"))


# -- 6. environment failures --------------------------------------------------------------------

def test_out_that_is_a_file_is_an_environment_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    line = one_line_error(run_cli(*FLAGS, "--out", f), code=5)
    assert f"{f} exists and is not a directory" in line


def test_disk_full_at_the_probe_is_caught_before_setup(tmp_path, monkeypatch):
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(EnvError, match=r"cannot write to .*: no space left on device"):
        engine.train(recipe(tmp_path / "full"))
    monkeypatch.setattr(os, "fsync", real)
    assert not (tmp_path / "full" / "recipe.yaml").exists()


def test_disk_full_at_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "save"
    engine.train(recipe(out, ("train.max_steps", 4)))
    good = checkpoint.load(out / "checkpoints/last.pt")
    real = checkpoint.atomic_write_bytes

    def full(path, write):
        if str(path).endswith(".pt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, write)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    with pytest.raises(EnvError, match="No space left on device.*previous checkpoints are intact"):
        engine.train(recipe(out, ("train.max_steps", 8), ("train.checkpoint_every_steps", 2)))
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", real)
    assert checkpoint.load(out / "checkpoints/last.pt")["step"] == good["step"] == 4
    assert json.loads((out / "results.json").read_text())["status"] == "failed"


def test_files_follow_the_umask(done):
    mode = 0o666 & ~checkpoint._UMASK
    for name in ("results.json", "recipe.yaml", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (done / name).stat().st_mode & 0o777 == mode, name


def test_sigterm_during_start_up_is_an_interruption(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "normtrain", *FLAGS, "--out", str(tmp_path / "s")], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # importing torch, building the data or the model
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 4, err[-2000:]
    assert "Traceback" not in err


# -- 7. bad values ------------------------------------------------------------------------------

@pytest.mark.parametrize("setting,match", [
    ("train.grad_clip=.nan", "train.grad_clip: expected a finite number"),
    ("train.epochs=.nan", "train.epochs: expected a finite number"),
    ("optim.lr=.inf", "optim.lr: expected a finite number"),
    ("run.seed=1e23", "run.seed: expected an integer"),
    ("run.seed=-1", "run.seed: -1 is out of range"),
    ("model.options={widths: [0]}", "options.widths: sizes must be positive"),
    ("data.image_size=100000", "data.image_size: 100000 is out of range"),
    ("data.batch_size=100000000", "data.batch_size: 100000000 is out of range"),
    ("data.synthetic_shape=[0]", "synthetic_shape"),
])
def test_bad_values_are_one_line_and_write_nothing(tmp_path, setting, match):
    out = tmp_path / "bad"
    line = one_line_error(run_cli(*FLAGS, "--set", setting, "--out", out))
    assert match in line
    assert not out.exists()


def test_network_that_cannot_take_the_input_is_bad_input(tmp_path):
    out = tmp_path / "small"
    line = one_line_error(run_cli(*FLAGS, "--set", "model.name=cifar10-nv", "--set", "model.options={}",
                                  "--set", "data.source=synthetic",
                                  "--set", "data.synthetic_shape=[3,8,8]", "--out", out))
    assert "cannot run on" in line and not out.exists()


def test_constant_images_are_a_data_problem_not_divergence(tmp_path):
    import numpy as np
    root = cifar10(tmp_path / "flat", train=100, test=10)
    for f in root.glob("data_batch_*"):
        import pickle
        d = pickle.loads(f.read_bytes())
        d["data"] = np.full_like(d["data"], 7)
        f.write_bytes(pickle.dumps(d))
    line = one_line_error(run_cli(*FLAGS, "--set", "model.name=mlp", "--set", "data.batch_size=20",
                                  "--set", "data.val_split=0", "--data", root, "--out", tmp_path / "o"))
    assert "constant (std 0)" in line and not (tmp_path / "o").exists()


def test_unreadable_eval_image_met_mid_run_is_a_resumable_data_error(tmp_path):
    root = image_folder(tmp_path / "img", classes=2, train_per_class=8, val_per_class=2, corrupt="val")
    out = tmp_path / "o"
    args = [*FLAGS, "--data", root, "--set", "data.backend=folder", "--set", "model.name=resnet18",
            "--set", "model.options={}",
            "--set", "data.image_size=32", "--set", "data.batch_size=4", "--set", "data.workers=0",
            "--set", "train.checkpoint_every_steps=2", "--set", "train.epochs=1", "--set", "data.val_split=0",
            "--out", out]
    line = one_line_error(run_cli(*args), code=5)
    assert "corrupt.JPEG" in line and "rerun the same command to resume" in line
    assert checkpoint.load(out / "checkpoints/last.pt")["step"] >= 2


# -- 9. metrics.jsonl after resume --------------------------------------------------------------

def test_metrics_hold_each_step_once_after_a_resume(tmp_path):
    out = tmp_path / "m"
    common = [("log.every_steps", 1)]
    engine.train(recipe(out, *common, ("train.max_steps", 6)))
    at6 = (out / "checkpoints/last.pt").read_bytes()
    engine.train(recipe(out, *common, ("train.max_steps", 10)))
    (out / "checkpoints/last.pt").write_bytes(at6)  # as if killed after step 10's logs but before its save
    engine.train(recipe(out, *common, ("train.max_steps", 10)))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in json.loads(line)]
    assert steps == list(range(1, 11))
