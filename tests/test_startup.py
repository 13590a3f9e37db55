"""--help, list, scenario --help and bad input answer without importing torch (issue 13 point 1).

Each command runs in a fresh interpreter through `normtrain.cli.main`; the runner
then reports whether torch (or numpy, matplotlib) ended up in sys.modules. The
time and memory these commands take are measured in docs/PERFORMANCE.md, not here.
"""
import json
import subprocess
import sys

import pytest

from normtrain import scenarios

from .conftest import ROOT

RUNNER = r"""
import json, sys
from normtrain.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
heavy = sorted(m for m in ("torch", "numpy", "matplotlib", "torchvision") if m in sys.modules)
sys.stdout.flush()
print("\n@@" + json.dumps({"rc": rc, "heavy": heavy}))
"""


def run_light(*args):
    p = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    *out, last = p.stdout.rstrip("\n").split("\n")
    assert last.startswith("@@"), p.stderr
    return json.loads(last[2:]), "\n".join(out), p.stderr


LIGHT_OK = [["--help"], ["train", "--help"], ["list"], ["list", "all"], ["list", "keys"], ["list", "--help"],
            *[["list", w] for w in ("recipes", "norms", "models", "scenarios", "data")],
            ["scenario", "--help"], ["sweep", "--help"], ["runs", "--help"], ["eval", "--help"]]


@pytest.mark.parametrize("args", LIGHT_OK, ids=" ".join)
def test_help_and_lists_do_not_import_torch(args):
    res, out, err = run_light(*args)
    assert res["rc"] == 0, err
    assert res["heavy"] == [], f"{' '.join(args)} imported {res['heavy']}"
    assert out.strip()


@pytest.mark.parametrize("name", scenarios.names())
def test_scenario_help_does_not_import_torch(name):
    res, out, err = run_light("scenario", name, "--help")
    assert res["rc"] == 0 and res["heavy"] == [], (res, err)
    assert "parameters (--set key=value):" in out and "seed" in out


BAD = [
    (["--bogus-flag"], "unrecognized arguments"),
    (["--recipe", "nope"], "unknown recipe 'nope'"),
    (["--set", "optim.nope=1"], "unknown key 'optim.nope'"),
    (["--set", "optim.lr=abc"], "optim.lr: expected a number"),
    (["--set", "train.amp=fp8"], "train.amp: 'fp8' is not one of"),
    (["--norm", "nope"], "unknown norm 'nope'"),
    (["--set", "model.name=nope"], "unknown model 'nope'"),
    (["--set", "model.init=nope"], "unknown model.init 'nope'"),
    (["--set", "data.backend=nope"], "unknown data backend 'nope'"),
    (["--data", "/definitely/missing"], "data path does not exist"),
    (["list", "nothing"], "invalid choice"),
    (["scenario", "nope"], "unknown scenario 'nope'"),
    (["scenario", "linear50-wn", "--set", "nope=1"], "unknown key 'nope'"),
    (["scenario", "linear50-wn", "--set", "steps=x"], "steps: expected an integer"),
    (["scenario", "linear50-wn", "--set", "methods=[wn,nope]"], "unknown norm 'nope'"),
    (["scenario", "ghost-example", "--data", "digits"], "takes no --data"),
    (["sweep", "--norm", "bn,nope"], "unknown norm 'nope'"),
    (["sweep", "--set", "optim.lr=0.1,abc"], "optim.lr: expected a number"),
    (["eval", "/definitely/missing"], "no run folder or checkpoint at /definitely/missing"),
    (["eval", ".", "--split", "train"], "invalid choice: 'train'"),
    (["--set", "optim.name=adam"], "optim.name: 'adam' is not one of: sgd, adamw, lamb, lars"),
    (["--set", "data.mixup=-1"], "data.mixup: -1.0 is out of range"),
    (["scenario", "linear50-wn", "--set", "lrs=0.1,x"], "lrs[1]: expected a number"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_usage_errors_do_not_import_torch(args, message, tmp_path):
    res, out, err = run_light(*args, *(["--out", str(tmp_path / "o")] if args[0] not in ("list", "eval") else []))
    assert res["rc"] == 2, (out, err)
    assert message in err and err.count("\n") == 1, err
    assert res["heavy"] == [], f"{' '.join(args)} imported {res['heavy']}"
    assert not (tmp_path / "o").exists()


def test_light_scenario_params_equal_the_real_ones():
    """The Params read without torch (static.light) are the scenario's own: same fields, defaults and docs."""
    import dataclasses
    from normtrain import config
    for name in scenarios.names():
        light, real = scenarios.light(name).Params, scenarios.SCENARIOS[name].Params
        assert light is not real
        assert dataclasses.asdict(light()) == dataclasses.asdict(real()), name
        assert config.dataclass_docs(light) == config.dataclass_docs(real), name
        assert scenarios.light(name).USES_DATA == scenarios.SCENARIOS[name].USES_DATA


SOURCE = '''"""A module that needs torch for some of its definitions."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import UsageError

K = math.sqrt(4)


class Net(nn.Module):
    pass


@dataclass
class Params:
    n: int = 2
    """How many."""
    xs: list = field(default_factory=lambda: [K])
    """Values."""

    def check(self):
        if self.n < 0:
            raise UsageError("n must be >= 0")


def uses_torch():
    return torch.zeros(1)
'''


def test_light_stand_in_keeps_what_needs_no_torch(tmp_path, monkeypatch):
    from normtrain import config, static
    src = tmp_path / "fake_heavy.py"
    src.write_text(SOURCE)
    real = static.path_of
    monkeypatch.setattr(static, "path_of", lambda m: src if m == "normtrain.fake_heavy" else real(m))
    assert not static.is_light("normtrain.fake_heavy")
    mod = static.light("normtrain.fake_heavy")
    try:
        assert mod.__doc__.startswith("A module that needs torch") and mod.K == 2.0
        assert not hasattr(mod, "Net") and not hasattr(mod, "torch")  # needs torch: left out
        p = mod.Params()
        assert p.xs == [2.0] and config.dataclass_docs(mod.Params) == {"n": "How many.", "xs": "Values."}
        assert config.apply_overrides(mod.Params(), [("n", 3)]).n == 3
        with pytest.raises(config.UsageError, match="n must be >= 0"):
            config.apply_overrides(mod.Params(), [("n", -1)])
        with pytest.raises(NameError):
            mod.uses_torch()  # defined, but fails only if called
        assert "normtrain.fake_heavy" not in sys.modules  # the real name is never taken
    finally:
        sys.modules.pop(static.PREFIX + "normtrain.fake_heavy", None)



# -- issue 17: bad input that used to import torch or end in a traceback ------------------------
# All in one interpreter (`run_many`): each command's exit code and stderr, and at the end whether any
# of them imported torch.

MANY = r"""
import contextlib, io, json, sys
from normtrain.cli import main
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main(args)
        except SystemExit as e:
            rc = e.code
    results.append({"rc": rc, "err": err.getvalue()})
heavy = sorted(m for m in ("torch", "numpy", "matplotlib", "torchvision") if m in sys.modules)
print("\n@@" + json.dumps({"results": results, "heavy": heavy}))
"""


def run_many(commands):
    p = subprocess.run([sys.executable, "-c", MANY, json.dumps([list(map(str, c)) for c in commands])],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    last = p.stdout.rstrip("\n").split("\n")[-1]
    assert last.startswith("@@"), p.stderr
    res = json.loads(last[2:])
    return res["results"], res["heavy"]


BAD17 = [
    (["--set", "model.options={widths: [3.5]}"], "model.options.widths of model 'mlp': expected a non-empty list"),
    (["--set", "model.options={widths: [1e3]}"], "model.options.widths of model 'mlp': expected a non-empty list"),
    (["--set", "model.options={widths: abc}"], "model.options.widths of model 'mlp': expected a non-empty list"),
    (["--set", "model.options={widths: [512, 0]}"], "model.options.widths"),
    (["--set", "model.name=linear50", "--set", "model.options={depth: 2.5}"], "expected a positive integer"),
    (["--set", "model.options={nope: 1}"], "model 'mlp' has no option 'nope'"),
    (["--norm", "gn", "--set", "norm.groups=7"], "does not divide the width(s) 300, 512 of model mlp"),
    (["--norm", "seqnorm", "--set", "model.name=resnet20", "--set", "model.options={}", "--set", "norm.groups=32"],
     "does not divide the width(s) 16 of model resnet20"),
    (["--set", "model.options={widths: &a [1, *a]}"], "a YAML alias refers to a value that contains it"),
    (["--set", "model.options={a: 1, a: 2}"], "duplicate key 'a'"),
    (["--recipe", ""], "--recipe: empty"),
    (["--recipe", "recipes/"], "recipe file not found: recipes/ (not a regular file)"),
    (["--nnodes", "abc"], "--nnodes: expected a positive integer N or MIN:MAX"),
    (["--nnodes", "0"], "--nnodes: expected 1 <= MIN <= MAX"),
    (["--nnodes", "1:2:4"], "--nnodes: expected a positive integer N or MIN:MAX"),
    (["--nnodes", "2", "--node-rank", "2"], "--node-rank 2: expected 0 <= K < 2"),
    (["scenario", "linear50-wn", "--set", "methods=[bn]"], "the verdict compares wn with bn and none; add wn, none"),
    (["scenario", "linear50-wn", "--set", "depth=100000000"], "depth: 100000000 is out of range"),
    (["scenario", "loss-landscape", "--set", "batch_size=10000000"], "batch_size: 10000000 is out of range"),
]


def test_issue_17_usage_errors_are_one_line_without_torch(tmp_path):
    out = tmp_path / "o"
    results, heavy = run_many([[*args, "--out", out] for args, _ in BAD17])
    for (args, message), r in zip(BAD17, results):
        assert r["rc"] == 2 and message in r["err"] and r["err"].count("\n") == 1, (args, r)
    assert heavy == [] and not out.exists()


BAD_FILES = {
    "not-utf8.yaml": (b"description: \"\xff\xfe\"\n", "not UTF-8 text"),
    "alias.yaml": (b"model:\n  options:\n    widths: &a [1, *a]\n", "a YAML alias refers to a value that contains it"),
    "laughs.yaml": (b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n".encode() for p, c in zip("abcde", "bcdef")),
        "values once its aliases are expanded"),
    "dup.yaml": (b"train:\n  epochs: 2\n  epochs: 3\n", "duplicate key 'epochs' at line 3"),
    "list.yaml": (b"- 1\n- 2\n", "a recipe must be a mapping of sections"),
}


def test_bad_recipe_files_are_one_line_without_torch(tmp_path):
    for name, (content, _) in BAD_FILES.items():
        (tmp_path / name).write_bytes(content)
    results, heavy = run_many([["--recipe", tmp_path / name, "--out", tmp_path / "o"] for name in BAD_FILES])
    for (name, (_, message)), r in zip(BAD_FILES.items(), results):
        assert r["rc"] == 2 and message in r["err"] and r["err"].count("\n") == 1, (name, r)
    assert heavy == [] and not (tmp_path / "o").exists()


def test_outputs_that_cannot_be_written_are_exit_5_before_any_work(tmp_path):
    """--out a file, or below a file, for every scenario; doctor's --out in a missing folder: one line,
    exit 5, before torch is even imported (issue 17 points 15 and 17)."""
    f = tmp_path / "file"
    f.write_text("x")
    cases = [(["scenario", name, "--out", out], message) for name in scenarios.names()
             for out, message in ((f, "exists and is not a directory"), (f / "below", f"{f} is a file, not a folder"))]
    cases.append((["doctor", "--out", tmp_path / "missing" / "doctor.json"], "does not exist"))
    results, heavy = run_many([c for c, _ in cases])
    for (args, message), r in zip(cases, results):
        assert r["rc"] == 5 and message in r["err"] and r["err"].count("\n") == 1, (args, r)
    assert heavy == [] and f.read_text() == "x"
