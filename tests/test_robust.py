"""Issue 17: nothing foreign runs, no writer outlives its run, no input gets a traceback.

One test (or a few) per point of the issue; the multi-process points (2-4) are in
test_distributed.py, the torch-free bad input (10, 11, 13, 17 and parts of 15, 18) in
test_startup.py. Most run normtrain in this process (`cli.main` returns the exit code)
to stay fast; a subprocess where the process itself is what is tested (signals, limits).
"""
import errno
import json
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

from normtrain import checkpoint, cli, config, engine, logger, runs
from normtrain.errors import EnvError, UsageError

from .conftest import ROOT
from .datagen import cifar10, image_folder

FLAGS = ["--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "run.device=cpu"]
QUIET = [("log.progress", False), ("log.tensorboard", False), ("run.device", "cpu")]


def recipe(out, *overrides):
    return config.load("digits-mlp", [*QUIET, ("run.out", str(out)), *overrides])


def main(capsys, *args):
    """normtrain in this process: (exit code, stderr lines)."""
    code = cli.main([str(a) for a in args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def one_line(err, code, expected):
    assert code == expected, err
    assert len(err) == 1 and err[0].startswith("normtrain: error: "), err
    return err[0]


def spawn(*args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "normtrain", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# -- 1. nothing foreign runs ---------------------------------------------------------------------

class Evil:
    """Unpickling this runs `touch marker` (what a hostile checkpoint or data file would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["last.pt", "--resume PATH"])
def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, capsys, where):
    marker = tmp_path / "PWNED"
    out = tmp_path / "run"
    evil = out / "checkpoints/last.pt" if where == "last.pt" else tmp_path / "evil.pt"
    evil.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": Evil(marker), "step": 1}, evil)
    code, err = main(capsys, *FLAGS, "--out", out, *(["--resume", evil] if where != "last.pt" else []))
    line = one_line(err, code, 2)
    assert not marker.exists()
    assert f"checkpoint {evil} is not a normtrain checkpoint" in line and "system" in line and "refused" in line


def test_a_checkpoint_made_to_pass_its_checksum_is_still_checked(tmp_path, capsys):
    """A checksum is no signature: a file of plain data with a valid checksum but not what a resume needs."""
    forged = tmp_path / "forged.pt"
    checkpoint.save(forged, {"model": {}, "step": "many", "recipe": {}})
    code, err = main(capsys, *FLAGS, "--resume", forged, "--out", tmp_path / "run")
    assert f"{forged} is not a normtrain training checkpoint" in one_line(err, code, 2)


def test_cifar_batches_are_unpickled_without_running_code(tmp_path):
    from normtrain.data import cifar
    root = cifar10(tmp_path / "c", train=50, test=10)
    marker = tmp_path / "PWNED"
    batch = next(root.rglob("data_batch_1"))
    batch.write_bytes(pickle.dumps(Evil(marker), protocol=2))
    with pytest.raises(UsageError, match="refusing to load posix.system"):
        cifar.load_arrays(str(root), "cifar10")
    assert not marker.exists()


def test_checkpoints_hold_tensors_and_plain_values_only_and_old_rng_states_still_load(tmp_path):
    import random

    import numpy as np
    state = checkpoint.rng_state()
    assert isinstance(state["numpy"]["keys"], torch.Tensor)  # no numpy array: weights_only loads it unaided
    old = {**state, "numpy": np.random.get_state()}  # how normtrain 0.2 saved it
    expected = np.random.rand(3)
    random.random()
    checkpoint.set_rng_state(old)
    assert np.array_equal(np.random.rand(3), expected)
    path = tmp_path / "old.pt"
    torch.save({"model": {}, "step": 0, "rng": old}, path)
    assert checkpoint.load(path, verify=False)["rng"]["numpy"][0] == "MT19937"


# -- 5. each (step, kind) once in metrics.jsonl ------------------------------------------------

def test_each_evaluation_is_recorded_once_across_resumes_and_reruns(tmp_path):
    # The 1,437 training digits at batch 64: 22 steps per epoch, evaluations at 11, 22 (also the epoch
    # end), 33 and 44 (the end).
    common = [("data.val_split", 0), ("train.epochs", 2.0), ("train.eval_every_steps", 11), ("log.every_steps", 5)]

    def rows(out):
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    engine.train(recipe(tmp_path / "a", *common))
    b = tmp_path / "b"
    engine.train(recipe(b, *common, ("train.max_steps", 33)))  # stops mid-epoch, as a killed run resumed
    engine.train(recipe(b, *common))
    (b / "results.json").unlink()
    engine.train(recipe(b, *common))  # a finished run without its results.json: nothing evaluated again
    evals = [r for r in rows(tmp_path / "a") if "eval/top1" in r]
    assert [r["step"] for r in evals] == [11, 22, 33, 44]
    assert [r for r in rows(b) if "eval/top1" in r] == evals  # the same rows: bitwise resume
    keys = [(r["step"], "eval/top1" in r) for r in rows(b)]
    assert len(keys) == len(set(keys))


# -- 6-8. a full disk, an unwritable folder ------------------------------------------------------

def test_a_disk_too_small_for_the_first_checkpoint_fails_cleanly_and_the_command_then_restarts(tmp_path, capsys):
    """RLIMIT_FSIZE makes every write past 300 kB fail (EFBIG) as a full disk would: torch.save's
    RuntimeError ("unexpected pos") is exit 5, one line, with TensorBoard on; no best.pt without a last.pt."""
    out = tmp_path / "small"
    args = ["--set", "log.progress=false", "--set", "run.device=cpu", "--set", "train.eval_every_steps=2",
            "--set", "train.max_steps=4", "--out", out]

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
    p = spawn(*args, preexec_fn=limit)
    _, err = p.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert p.returncode == 5 and len(lines) == 1 and "File too large" in lines[0], err
    assert not (out / "checkpoints/best.pt").exists() and not (out / "checkpoints/last.pt").exists()
    assert json.loads((out / "results.json").read_text())["status"] == "failed"
    code, err = main(capsys, *args)  # space freed: the same command starts again and completes
    assert code == 0, err
    assert checkpoint.load(out / "checkpoints/last.pt")["step"] == 4


def test_torch_save_on_a_full_disk_is_an_oserror_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    checkpoint.save(path, {"w": torch.zeros(3)})
    before = path.read_bytes()

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass
    monkeypatch.setattr(checkpoint, "_Recorder", lambda f, real=checkpoint._Recorder: real(Full(f)))
    with pytest.raises(OSError) as e:
        checkpoint.save(path, {"w": torch.ones(1000)})
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_results_json_that_cannot_be_written_is_exit_5_and_the_checkpoints_stay(tmp_path, capsys, monkeypatch):
    def refuse(self, res):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(logger.RunLogger, "results", refuse)
    out = tmp_path / "ro"
    code, err = main(capsys, *FLAGS, "--set", "train.max_steps=3", "--out", out)
    line = one_line(err, code, 5)
    assert f"cannot write {out / 'results.json'}: Read-only file system" in line and "completed at step 3" in line
    assert checkpoint.load(out / "checkpoints/last.pt")["step"] == 3


def test_a_failing_tensorboard_writer_thread_prints_no_traceback(tmp_path, capfd, monkeypatch):
    from tensorboard.summary.writer.record_writer import RecordWriter
    log = logger.RunLogger(tmp_path, 10, False, True)

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(RecordWriter, "write", full)
    log.scalars(1, {"train/loss": 1.0})
    worker = log.tb.file_writer.event_writer._async_writer._worker
    worker.join(timeout=30)  # the thread died on the write
    assert not worker.is_alive()
    with pytest.raises(OSError):  # the run hears of it on its next write (exit 5 in the engine)
        log.scalars(2, {"train/loss": 1.0})
    log.close()
    assert "Traceback" not in capfd.readouterr().err


# -- 9. signals at the edges --------------------------------------------------------------------

def _catches(pid: int, sig: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_ctrl_c_during_start_up_is_an_interruption(tmp_path):
    """SIGINT while the modules are still importing (once normtrain's handlers are in): exit 4, no traceback."""
    p = spawn(*FLAGS, "--out", tmp_path / "s")
    deadline = time.time() + 60
    while not _catches(p.pid, signal.SIGTERM) and time.time() < deadline:
        time.sleep(0.001)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 4, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_signals_after_completion_change_nothing(tmp_path):
    """SIGTERM every 10 ms from the moment results.json says completed: still exit 0."""
    out = tmp_path / "done"
    p = spawn(*FLAGS, "--set", "train.max_steps=2", "--out", out)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        try:
            if json.loads((out / "results.json").read_text())["status"] == "completed":
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    sent = 0
    while p.poll() is None:
        p.send_signal(signal.SIGTERM)
        sent += 1
        time.sleep(0.01)
    _, err = p.communicate()
    assert p.returncode == 0, (sent, err)
    assert "Traceback" not in err


# -- 12. a micro-batch of 1 with batch statistics -------------------------------------------------

@pytest.mark.parametrize("setting", ["data.batch_size=1", "train.accum_steps=64"])
def test_a_micro_batch_of_one_with_batch_statistics_is_refused_before_writing(tmp_path, capsys, setting):
    out = tmp_path / "one"
    code, err = main(capsys, *FLAGS, "--set", setting, "--out", out)
    line = one_line(err, code, 2)
    assert "norm bn normalizes over the batch and cannot train on a per-process micro-batch of 1" in line
    assert not out.exists()


# -- 14. images --------------------------------------------------------------------------------

def png_header(w: int, h: int) -> bytes:
    """A small PNG whose header claims w x h pixels (a decompression bomb's shape)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * (3 * w + 1) * 2)) + chunk(b"IEND", b""))


IMAGES = ["--set", "data.backend=folder", "--set", "model.name=mlp", "--set", "model.options={widths: [8]}",
          "--set", "data.image_size=16", "--set", "data.batch_size=4", "--set", "train.epochs=1",
          "--set", "data.val_split=0"]


def folder(tmp_path):
    return image_folder(tmp_path / "img", classes=2, train_per_class=4, val_per_class=2, size_range=(20, 24))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_decompression_bomb_is_a_corrupt_file(tmp_path, capsys, workers):
    root = folder(tmp_path)
    bomb = root / "train" / sorted(os.listdir(root / "train"))[0] / "bomb.png"
    bomb.write_bytes(png_header(20000, 20000))
    args = [*FLAGS, *IMAGES, "--data", root, "--set", f"data.workers={workers}"]
    code, err = main(capsys, *args, "--out", tmp_path / "a")
    line = one_line(err, code, 5)
    assert str(bomb) in line and "decompression bomb" in line
    code, err = main(capsys, *args, "--set", "data.skip_corrupt=true", "--out", tmp_path / "b")
    assert code == 0, err


def test_special_files_named_like_images_are_never_opened(tmp_path, capsys):
    root = folder(tmp_path)
    fifo = root / "train" / sorted(os.listdir(root / "train"))[0] / "fifo.jpg"
    os.mkfifo(fifo)  # reading it would block for ever
    args = [*FLAGS, *IMAGES, "--data", root, "--set", "data.workers=0"]
    code, err = main(capsys, *args, "--out", tmp_path / "a")
    line = one_line(err, code, 2)
    assert f"{fifo} is named like an image but is not a regular file" in line
    code, err = main(capsys, *args, "--set", "data.skip_corrupt=true", "--out", tmp_path / "b")
    assert code == 0, err


def test_file_names_that_are_not_utf8_are_read_and_named_readably(tmp_path, capsys):
    root = folder(tmp_path)
    cls = root / "train" / sorted(os.listdir(root / "train"))[0]
    good = next(p for p in cls.iterdir())
    os.rename(good, os.path.join(os.fsencode(cls), b"caf\xe9.JPEG"))  # latin-1 name: read like any other
    bad = os.path.join(os.fsencode(cls), b"bad\xff.JPEG")
    Path(os.fsdecode(bad)).write_bytes(b"not an image")
    args = [*FLAGS, *IMAGES, "--data", root, "--set", "data.workers=0"]
    code, err = main(capsys, *args, "--out", tmp_path / "a")
    line = one_line(err, code, 5)
    assert "bad\\xff.JPEG" in line and "cannot decode image" in line
    code, err = main(capsys, *args, "--set", "data.backend=dali", "--out", tmp_path / "d")
    line = one_line(err, code, 2)  # DALI takes UTF-8 names only: said before anything is written
    assert "caf\\xe9.JPEG is not UTF-8" in line or "bad\\xff.JPEG is not UTF-8" in line
    os.unlink(bad)
    code, err = main(capsys, *args, "--out", tmp_path / "b")
    assert code == 0, err


# -- 15. scenarios and sweeps: up front ---------------------------------------------------------

def test_a_scenario_network_that_cannot_fit_is_refused_before_it_runs(tmp_path, capsys):
    out = tmp_path / "big"
    code, err = main(capsys, "scenario", "linear50-wn", "--set", "width=65536", "--set", "batch_size=65536",
                     "--out", out)
    line = one_line(err, code, 2)
    assert "model linear50" in line and "GiB is available" in line and not out.exists()


def test_an_output_folder_on_a_read_only_file_system_is_named_before_the_work(tmp_path, monkeypatch):
    from normtrain import outputs

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(outputs.tempfile, "mkstemp", read_only)
    with pytest.raises(EnvError, match=f"--out {tmp_path / 'x'}: cannot write in {tmp_path}: read-only file system"):
        outputs.check_dir(tmp_path / "x")


def test_sweep_out_that_is_a_file_is_exit_5_before_any_run(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code, err = main(capsys, "sweep", "--recipe", "digits-mlp", "--norm", "bn", "--out", f)
    assert "exists and is not a directory" in one_line(err, code, 5)
    assert f.read_text() == "x"


# -- 16. normtrain runs on malformed folders --------------------------------------------------------

MALFORMED = {
    "not-json": ("results.json", "{not json"),
    "a-list": ("results.json", "[1, 2]"),
    "no-steps": ("results.json", '{"status": "completed"}'),
    "status-number": ("results.json", '{"status": 3, "steps": 1}'),
    "steps-string": ("results.json", '{"status": "completed", "steps": "many"}'),
    "top1-string": ("results.json", '{"status": "completed", "steps": 1, "best_eval_top1": "high"}'),
    "timings-list": ("results.json", '{"status": "completed", "steps": 1, "timings": [1]}'),
    "binary": ("results.json", b"\xff\xfe\x00garbage"),
    "results-dir": ("results.json/", None),
    "recipe-list": ("recipe.yaml", "- 1\n- 2\n"),
}


def test_runs_lists_every_folder_and_names_the_unreadable_ones(tmp_path, capsys):
    engine.train(recipe(tmp_path / "good", ("train.max_steps", 2)))
    for name, (file, content) in MALFORMED.items():
        d = tmp_path / name
        d.mkdir()
        if content is None:
            (d / file).mkdir()
        elif isinstance(content, bytes):
            (d / file).write_bytes(content)
        else:
            (d / file).write_text(content)
        if file == "recipe.yaml":
            (d / "metrics.jsonl").write_text('[1]\n{"step": "x"}\n')
    code = runs.main([str(tmp_path)])
    text = capsys.readouterr().out
    assert code == 0
    assert "good" in text and "completed" in text
    for name in MALFORMED:
        row = next(line for line in text.splitlines() if line.startswith(name + " "))
        assert "unreadable: " in row, row
    rows = runs.find_runs(tmp_path)
    assert len(rows) == len(MALFORMED) + 1


# -- 18. messages that used to mislead ---------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_says_so(tmp_path, capsys):
    code, err = main(capsys, *FLAGS, "--set", "run.device=cuda", "--out", tmp_path / "c")
    assert "run.device=cuda but no GPU is visible" in one_line(err, code, 2)


def test_a_directory_in_place_of_last_pt_is_named(tmp_path, capsys):
    out = tmp_path / "d"
    (out / "checkpoints/last.pt").mkdir(parents=True)
    code, err = main(capsys, *FLAGS, "--out", out)
    assert f"{out / 'checkpoints/last.pt'} is not a checkpoint file" in one_line(err, code, 2)


def test_a_folder_with_only_results_json(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"status": "completed", "steps": 5}))
    code, err = main(capsys, *FLAGS, "--out", out)
    line = one_line(err, code, 2)
    assert "holds a run (results.json) but no checkpoints/last.pt to continue from: start fresh with another " \
           "--out (or delete the folder)" in line
    (out / "results.json").write_text(json.dumps({"status": "failed", "steps": 0}))
    code, err = main(capsys, *FLAGS, "--set", "train.max_steps=2", "--out", out)  # a failed attempt: starts again
    assert code == 0, err
