"""`normtrain sweep`: grid expansion, run directories, summary table and curves, bad input."""
import csv
import json

import pytest
import torch
import yaml

from normtrain import sweep
from normtrain.errors import UsageError

TINY = ["--recipe", "digits-mlp", "--set", "train.max_steps=4", "--set", "model.options={widths: [32]}",
        "--set", "log.tensorboard=false", "--set", "run.device=cpu"]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_sweep_2x2_table_and_plot(tmp_path, capsys):
    out = tmp_path / "sw"
    assert sweep.main(TINY + ["--norm", "bn,none", "--set", "optim.lr=0.01,0.1", "--seeds", "1",
                              "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["bn-optim.lr=0.01-seed0", "bn-optim.lr=0.1-seed0", "none-optim.lr=0.01-seed0",
                     "none-optim.lr=0.1-seed0"]
    for n in names:
        res = json.loads((out / n / "results.json").read_text())
        assert res["status"] == "completed" and res["steps"] == 4
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 4
    assert {(r["norm"], r["optim.lr"]) for r in rows} == {("bn", "0.01"), ("bn", "0.1"), ("none", "0.01"),
                                                         ("none", "0.1")}
    assert all(r["runs"] == "1" and r["diverged"] == "0" and float(r["test_top1_mean"]) > 0 for r in rows)
    md = (out / "summary.md").read_text().splitlines()
    table = [line for line in md if line.startswith("| ") and "norm" not in line]
    assert len(table) == 4 and all("±" in line for line in table)
    for png in ("curves.png", "summary.png"):
        head = (out / png).read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(head[16:20], "big") >= 1200, png  # width
    # Run again: every finished run is reused, nothing is retrained.
    capsys.readouterr()
    assert sweep.main(TINY + ["--norm", "bn,none", "--set", "optim.lr=0.01,0.1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("reusing finished run") == 4


def test_seeds_give_mean_and_std(tmp_path):
    out = tmp_path / "sw"
    sweep.main(TINY + ["--norm", "bn", "--seeds", "2", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["bn-seed0", "bn-seed1"]
    seeds = [yaml.safe_load((out / f"bn-seed{k}/recipe.yaml").read_text())["run"]["seed"] for k in (0, 1)]
    assert seeds == [0, 1]
    (row,) = list(csv.DictReader((out / "summary.csv").open()))
    assert row["runs"] == "2" and row["seeds"] == "2" and row["test_top1_std"] != ""


def test_headline_names_the_best_configuration_and_divergences():
    rows = [{"config": "bn", "runs": 2, "diverged": 0, "test_top1_mean": 90.0, "test_top1_std": 1.0},
            {"config": "wn", "runs": 2, "diverged": 1, "test_top1_mean": 92.5, "test_top1_std": 0.3},
            {"config": "none", "runs": 2, "diverged": 2, "test_top1_mean": None, "test_top1_std": None}]
    assert sweep.headline(rows, "t") == "t\nbest eval top-1: wn 92.5 ± 0.3%; 3/6 runs diverged"


@pytest.mark.parametrize("raw, expected", [
    ("0.01,0.1", ["0.01", "0.1"]),
    ("[1,2],[3]", ["[1,2]", "[3]"]),
    ("{widths: [64, 32]}", ["{widths: [64, 32]}"]),
    ("{widths: [64, 32]},{widths: [8]}", ["{widths: [64, 32]}", "{widths: [8]}"]),
    ("'a,b',c", ["'a,b'", "c"]),
])
def test_split_values_respects_brackets(raw, expected):
    assert sweep.split_values(raw) == expected


def test_value_text_round_trips():
    from normtrain.config import parse_set
    for v in (0.01, 1e-4, 3, True, "bn", "true", [1, 2], {"widths": [64, 32]}):
        assert parse_set(f"k={sweep.value_text(v)}")[1] == v


@pytest.mark.parametrize("args, msg", [
    (["--norm", "bn,nonorm"], "unknown norm 'nonorm'"),
    (["--set", "optim.lr=0.1,abc"], "expected a number"),
    (["--set", "optim.lr=[0.1"], "unbalanced"),
    (["--set", "optim.lr=0.1,"], "empty value"),
    (["--set", "optim.nope=1"], "unknown key"),
    (["--set", "optim.lr=0.1", "--set", "optim.lr=0.2"], "more than once"),
    (["--set", "norm.name=bn,wn"], "use --norm"),
    (["--seeds", "0"], "--seeds"),
    (["--norm", "bn,bn"], "listed twice"),
    (["--data", "/no/such/data"], "does not exist"),
])
def test_bad_input_writes_nothing(tmp_path, args, msg):
    out = tmp_path / "sw"
    with pytest.raises(UsageError, match=msg):
        sweep.main(["--recipe", "digits-mlp", "--out", str(out)] + args)
    assert not out.exists()


def test_dry_run_lists_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sw"
    sweep.main(["--norm", "bn,wn", "--set", "optim.lr=0.1,0.2", "--set", "train.epochs=1", "--seeds", "2",
                "--out", str(out), "--dry-run"])
    lines = capsys.readouterr().out.split()
    assert len(lines) == 8 and lines[0].endswith("bn-optim.lr=0.1-seed0")
    assert not out.exists()


def test_subprocess_runner(tmp_path):
    """The multi-GPU path (one `python -m normtrain` per device), exercised on CPU with run.device=cpu."""
    import argparse
    args = argparse.Namespace(recipe="digits-mlp", norm="bn,none", sets=["train.max_steps=2", "run.device=cpu",
                                                                         "log.tensorboard=false"],
                              seeds=1, out=str(tmp_path / "sw"), data=None)
    specs, _ = sweep.build_grid(args)
    assert sweep.run_subprocesses(specs, "digits-mlp", gpus=2) == []
    for s in specs:
        res = json.loads((s.out / "results.json").read_text())
        assert res["status"] == "completed" and res["steps"] == 2 and res["norm"] == s.norm


def test_failed_run_is_reported_and_the_rest_summarized(tmp_path, capsys):
    out = tmp_path / "sw"
    rc = sweep.main(TINY + ["--norm", "none", "--set", "data.batch_size=32,4096", "--out", str(out)])
    assert rc == 1
    rows = {r["data.batch_size"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["32"]["runs"] == "1" and rows["4096"]["runs"] == "0"
    assert "data.batch_size=4096" in capsys.readouterr().err


def test_interrupted_run_stops_the_sweep(tmp_path, monkeypatch):
    """A run stopped by SIGTERM/SIGINT ends the sweep (exit 4) instead of starting the next run."""
    from normtrain import engine
    started = []

    def fake_train(recipe):
        started.append(recipe.run.out)
        return {"status": "interrupted"}

    monkeypatch.setattr(engine, "train", fake_train)
    rc = sweep.main(TINY + ["--norm", "bn,none", "--out", str(tmp_path / "s")])
    assert rc == 4 and len(started) == 1
