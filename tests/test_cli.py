"""The command line end to end (subprocess): main job, list, bad input -> one line, exit 2, nothing written."""
import json

import pytest

from .conftest import run_cli


def test_default_job_end_to_end(tmp_path):
    p = run_cli("--out", tmp_path / "run", "--set", "train.epochs=2")
    assert p.returncode == 0, p.stderr
    last = p.stdout.strip().splitlines()[-1]
    # the default recipe holds out a validation split: its top-1, then the test split's
    assert last.startswith("normtrain: completed") and "| val top1 " in last and "| test top1 " in last
    res = json.loads((tmp_path / "run/results.json").read_text())
    assert res["final"]["eval/top1"] > 50
    assert (tmp_path / "run/tb").is_dir()


def test_python_m_and_help():
    p = run_cli("--help")
    assert p.returncode == 0 and "exit codes" in p.stdout and "--nproc-per-node" in p.stdout


@pytest.mark.parametrize("what", ["recipes", "norms", "models", "data", "keys", "scenarios"])
def test_list(what):
    p = run_cli("list", what)
    assert p.returncode == 0, p.stderr
    expected = {"recipes": "digits-mlp", "norms": "bn", "models": "cifar10-nv", "data": "synthetic",
                "keys": "optim.lr", "scenarios": "scenarios:"}[what]
    assert expected in p.stdout


@pytest.mark.parametrize("args,message", [
    (["--recipe", "nope"], "unknown recipe 'nope'; choose from:"),
    (["--norm", "nope"], "unknown norm 'nope'; choose from:"),
    (["--set", "model.name=nope"], "unknown model 'nope'; choose from:"),
    (["--set", "model.name=resnet18", "--nproc-per-node", "2", "--set", "run.device=cpu"],
     "model 'resnet18' has no option 'widths'"),
    (["scenario", "nope"], "unknown scenario 'nope'"),
    (["--set", "optim.nope=1"], "unknown key 'optim.nope'"),
    (["--set", "optim.lr"], "expected key=value"),
    (["--set", "optim.lr=abc"], "optim.lr: expected a number"),
    (["--data", "/definitely/missing"], "data path does not exist: /definitely/missing"),
    (["--set", "data.batch_size=63", "--set", "train.accum_steps=2"], "not divisible by processes (1) x train.accum_steps (2)"),
    (["--nproc-per-node", "0"], "--nproc-per-node: expected a positive integer"),
    (["--nproc-per-node", "x"], "--nproc-per-node: expected a positive integer"),
    (["--bogus-flag"], "unrecognized arguments"),
    (["list", "nothing"], "invalid choice"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, message):
    out = tmp_path / "out"
    p = run_cli(*args, "--out", out) if args[0] not in ("scenario", "list") else run_cli(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("normtrain: error:"), p.stderr
    assert message in lines[0]
    assert not out.exists()


def test_batch_not_divisible_by_processes(tmp_path):
    p = run_cli("--nproc-per-node", "2", "--set", "run.device=cpu", "--set", "data.batch_size=63", "--out", tmp_path / "o")
    assert p.returncode == 2 and "not divisible by processes (2)" in p.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("what", ["norms", "models", "data", "scenarios", "recipes"])
def test_list_lines_distinguish_items_and_align(what):
    """Each line says what distinguishes its item (no two alike, none cut short) and the columns align."""
    p = run_cli("list", what)
    assert p.returncode == 0, p.stderr
    rows = [l for l in p.stdout.splitlines()[1:] if l.strip()]
    docs = [l[2:].split(None, 1)[1] for l in rows]
    assert all(docs) and len(set(docs)) == len(docs), docs
    assert not any(d.endswith("…") or d.endswith(":") for d in docs)
    starts = {len(l) - len(l[2:].split(None, 1)[1]) for l in rows}
    assert len(starts) == 1  # every description starts in the same column


def test_list_keys_columns_align():
    p = run_cli("list", "keys")
    rows = p.stdout.splitlines()
    assert len(rows) > 50
    # The type column starts at the same place on every row, whatever the key's or the default's length.
    type_col = {l.index(" " + l.split()[1] + " ") for l in rows}
    assert len(type_col) == 1
    assert "run.name" in p.stdout and "train.memory_check" in p.stdout


def test_list_all_is_documented():
    p = run_cli("list", "--help")
    assert p.returncode == 0 and "'all' (the default) prints every table but keys" in p.stdout
    assert "normtrain list [all|" in run_cli("--help").stdout
