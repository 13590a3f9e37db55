"""`normtrain runs [DIR]`: a table (and CSV) of the runs under a folder, from their results.json (issue 13 point 8)."""
import csv
import io
import json
import shutil

from normtrain import config, engine

from .test_startup import run_light

QUIET = [("log.progress", False), ("log.tensorboard", False), ("run.device", "cpu")]


def make_runs(root):
    done = engine.train(config.load("digits-mlp", [*QUIET, ("run.out", str(root / "a")), ("train.epochs", 1.0)]))
    div = engine.train(config.load("digits-mlp", [*QUIET, ("run.out", str(root / "sweep/none-lr")), ("norm.name", "none"),
                                                  ("optim.lr", 1e12), ("log.every_steps", 1)]))
    # A run killed before it could write results.json: its recipe.yaml and metrics.jsonl only.
    (root / "killed").mkdir()
    for f in ("recipe.yaml", "metrics.jsonl"):
        shutil.copy(root / "a" / f, root / "killed" / f)
    # A scenario's results are not a training run.
    (root / "scenario-x").mkdir()
    (root / "scenario-x/results.json").write_text(json.dumps({"scenario": "x", "verdict": {"reproduced": True}}))
    return done, div


def test_runs_table_and_csv(tmp_path):
    done, div = make_runs(tmp_path)
    res, out, err = run_light("runs", str(tmp_path))
    assert res == {"rc": 0, "heavy": []}, err  # reads files only: no torch
    lines = out.splitlines()
    assert lines[0].split() == ["run", "updated", "status", "name", "model", "norm", "steps", "final", "top-1",
                                "best", "top-1", "img/s", "diverged"]
    body = {l.split()[0]: l for l in lines[2:]}
    assert set(body) == {"a", "sweep/none-lr", "killed"}
    assert " completed " in body["a"] and f"{done['steps']}/{done['total_steps']}" in body["a"]
    assert f"{done['best_eval_top1']:.2f}" in body["a"] and f"{done['timings']['images_per_s']:.0f}" in body["a"]
    assert " diverged " in body["sweep/none-lr"] and body["sweep/none-lr"].rstrip().endswith(str(div["diverged_at_step"]))
    assert " unfinished " in body["killed"]

    res, out, err = run_light("runs", str(tmp_path), "--csv")
    assert res["rc"] == 0, err
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(out))}
    assert set(rows) == {"a", "sweep/none-lr", "killed"}
    a = rows["a"]
    assert (a["status"], a["model"], a["norm"], int(a["steps"])) == ("completed", "mlp", "bn", done["steps"])
    assert float(a["best_top1"]) == done["best_eval_top1"]
    assert float(a["images_per_s"]) == done["timings"]["images_per_s"]
    assert int(rows["sweep/none-lr"]["diverged_at_step"]) == div["diverged_at_step"]
    assert rows["killed"]["status"] == "unfinished" and float(rows["killed"]["best_top1"]) == done["best_eval_top1"]


def test_runs_bad_folder_and_empty(tmp_path):
    res, out, err = run_light("runs", str(tmp_path / "missing"))
    assert res["rc"] == 2 and "no such folder" in err
    res, out, err = run_light("runs", str(tmp_path))
    assert res["rc"] == 0 and "no training runs under" in err
