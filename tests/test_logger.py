"""Progress display and the run's numbers (issue 13 points 3 and 4): plain lines off a terminal,
tqdm with messages written through it on one, eval-line modes, one definition of images/s and epoch."""
import io
import json
import sys
from types import SimpleNamespace

import pytest

from normtrain import config, engine
from normtrain.logger import RunLogger

from .conftest import run_cli

VALUES = {"train/loss": 0.5, "train/lr": 0.1, "train/images_per_s": 1234.0}


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def logger(tmp_path, stream, **kw):
    return RunLogger(tmp_path, 100, True, False, steps_per_epoch=20, stream=stream, **kw)


def test_off_a_terminal_plain_lines_at_the_interval(tmp_path):
    err = io.StringIO()
    log = logger(tmp_path, err, interval_s=0)
    for _ in range(10):
        log.advance(10, VALUES)
    log.close()
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue() and len(lines) == 10
    assert lines[0].startswith("step 10/100 (10.0%) epoch 0.50 | loss 0.5000 | lr 0.1 | 1234 img/s | ETA ")
    assert lines[-1].startswith("step 100/100 (100.0%) epoch 5.00")
    # A long interval: the first line, then only the last step's.
    err = io.StringIO()
    log = logger(tmp_path, err, interval_s=3600)
    for _ in range(10):
        log.advance(10, VALUES)
    assert [l.split(" (")[0] for l in err.getvalue().splitlines()] == ["step 10/100", "step 100/100"]


def test_on_a_terminal_messages_go_through_the_bar(tmp_path, monkeypatch):
    """stdout and stderr on one terminal: every message ends up on a line of its own, the bar redrawn below it."""
    tty = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", tty)
    log = logger(tmp_path, tty, eval_lines="all")
    assert log.bar is not None and not log.plain
    msgs = [f"step {s} epoch {s / 20:.2f}: eval loss 0.1000 top1 90.00% top5 99.00%" for s in (20, 40)]
    log.advance(20, VALUES)
    log.eval_line(msgs[0])
    log.advance(20, VALUES)
    log.print("resumed from step 40 (epoch 2.00)")
    log.eval_line(msgs[1])
    import warnings
    warnings.warn("skipping unreadable image x.jpg")
    log.close()
    assert warnings.showwarning is not log._warn  # restored
    # What a terminal shows of each physical line is what follows its last carriage return.
    shown = [line.rsplit("\r", 1)[-1] for line in tty.getvalue().split("\n")]
    for m in msgs + ["resumed from step 40 (epoch 2.00)"]:
        assert m in shown, (m, tty.getvalue())
    assert any(l.endswith("UserWarning: skipping unreadable image x.jpg") for l in shown), tty.getvalue()
    assert "\r" in tty.getvalue()  # the bar itself redraws in place


@pytest.mark.parametrize("mode,expected", [("all", 5), ("none", 0), ("interval", 1)])
def test_eval_line_modes(tmp_path, capsys, mode, expected):
    log = RunLogger(tmp_path, 100, False, False, steps_per_epoch=20, interval_s=3600, eval_lines=mode)
    for i in range(5):
        log.eval_line(f"eval {i}")
    log.close()
    assert capsys.readouterr().out.count("eval ") == expected


def fake_run(step_times, batch=64):
    return SimpleNamespace(step_times=step_times, recipe=SimpleNamespace(data=SimpleNamespace(batch_size=batch)))


def test_throughput_definition():
    """images/s = global batch x timed steps / their summed time, the first min(5, n // 2) steps left out."""
    t = engine.throughput(fake_run([9.0] * 5 + [0.5, 0.25, 0.25, 0.5, 0.5, 0.25, 0.25]))
    assert t == {"images_per_s": 64 * 7 / 2.5, "warmup_steps": 5, "timed_steps": 7, "step_s_median": 0.25}
    t = engine.throughput(fake_run([9.0] * 4 + [0.5] * 4))
    assert t["warmup_steps"] == 4 and t["images_per_s"] == 64 * 4 / 2.0
    t = engine.throughput(fake_run([3.0, 0.5]))
    assert t["warmup_steps"] == 1 and t["images_per_s"] == 128
    t = engine.throughput(fake_run([0.5]))  # a run stopped after one step still has a figure
    assert t["warmup_steps"] == 0 and t["images_per_s"] == 128
    assert engine.throughput(fake_run([])) == {"images_per_s": None, "warmup_steps": 0, "timed_steps": 0,
                                               "step_s_median": None}


def keys(obj, prefix=""):
    for k, v in obj.items():
        yield prefix + k
        if isinstance(v, dict):
            yield from keys(v, prefix + k + ".")


def test_one_images_per_s_and_one_epoch_count(tmp_path):
    r = config.load("digits-mlp", [("log.progress", False), ("log.tensorboard", False), ("run.device", "cpu"),
                                   ("run.out", str(tmp_path)), ("train.epochs", 2.0), ("log.every_steps", 4)])
    res = engine.train(r)
    assert [k for k in keys(res) if "images_per_s" in k] == ["timings.images_per_s"]
    t = res["timings"]
    assert t["warmup_steps"] == 5 and t["timed_steps"] == res["steps"] - 5 and t["images_per_s"] > 0
    assert t["total_s"] >= t["setup_s"] + t["train_s"] + t["eval_s"]
    assert res["epoch"] == 2.0
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    spe = res["steps_per_epoch"]
    assert all(row["epoch"] == round(row["step"] / spe, 4) for row in rows)
    evals = [row for row in rows if "eval/top1" in row]
    assert [row["epoch"] for row in evals] == [1.0, 2.0]


def test_cli_off_a_terminal_writes_lines_not_redraws(tmp_path):
    p = run_cli("--out", tmp_path / "r", "--set", "train.epochs=3", "--set", "log.tensorboard=false",
                "--set", "log.interval_s=0", "--set", "log.eval_lines=all")
    assert p.returncode == 0, p.stderr
    assert "\r" not in p.stderr and "\r" not in p.stdout
    progress = [l for l in p.stderr.splitlines() if l.startswith("step ")]
    res = json.loads((tmp_path / "r/results.json").read_text())
    assert len(progress) == -(-res["steps"] // 10)  # one per log.every_steps (10), the last step included
    assert progress[-1].startswith(f"step {res['steps']}/{res['steps']} (100.0%)")
    assert sum(": eval loss" in l for l in p.stdout.splitlines()) == 3
    assert p.stdout.strip().splitlines()[-1].startswith("normtrain: completed")
