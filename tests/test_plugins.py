"""Adding a method: one file (its builder and its own `Options`), one registry line, or an installed package.

- Every method's `Options` as read from the source without torch (`static.light`) is
  the class the module itself defines: same fields, defaults, docs and checks.
- The `norm.*` keys are SharedOptions plus every method's Options, each declared once;
  a second declaration of a key is refused, naming both places.
- The README's example package, installed with pip exactly as written there, registers
  a method and a network through the entry-point groups `normtrain.norms` and
  `normtrain.networks`: they are listed, their knob is a recipe key checked like the
  built-in ones (all without importing torch), and a run trains with `--norm mine`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from normtrain import config, norms, static
from normtrain.errors import UsageError

from .conftest import ROOT, run_cli
from .test_startup import RUNNER


def method_modules() -> list[str]:
    return [m for m in norms.METHODS.modules() if m.startswith("normtrain.")]


def test_light_options_equal_the_real_ones():
    """What `list keys` and the recipe checks see (read without torch) is what each method file defines."""
    import importlib
    declared = 0
    for module in method_modules():
        light, real = norms.method_options(module), getattr(importlib.import_module(module), "Options", None)
        if real is None:
            assert light is None, module
            continue
        declared += 1
        assert light is not real and light.__module__.startswith(static.PREFIX), module  # really read from source
        assert dataclasses.asdict(light()) == dataclasses.asdict(real()), module
        assert config.dataclass_docs(light) == config.dataclass_docs(real), module
        assert all(config.dataclass_docs(real).get(f.name) for f in dataclasses.fields(real)), f"{module}: a field has no doc"
    assert declared >= 9  # gn, ghost, wn, normprop, ws, trelu_wn, nf, brn, frn


def test_norm_keys_are_the_shared_ones_plus_each_methods_own():
    composed = norms.options_class()
    keys = [f.name for f in dataclasses.fields(composed)]
    assert len(keys) == len(set(keys))
    expected = [f.name for f in dataclasses.fields(norms.SharedOptions)]
    for module in method_modules():
        cls = norms.method_options(module)
        expected += [f.name for f in dataclasses.fields(cls)] if cls else []
    assert keys == expected
    assert composed._owners["ghost_groups"] == "normtrain.norms.ghost.Options"
    # every key is a recipe key with its doc in `normtrain list keys`, and each part's check runs
    docs = {k: doc for k, _, _, doc in config.field_docs() if k.startswith("norm.")}
    assert set(docs) == {f"norm.{k}" for k in keys} | {"norm.name"} and all(docs.values())
    for key, value, message in [("ghost_groups", 0, "ghost_groups must be >= 1"), ("eps", -1.0, "eps must be >= 0"),
                                ("brn_r_max", 0.5, "brn_r_max must be >= 1"), ("groups", 0, "groups must be >= 1")]:
        with pytest.raises(UsageError, match=f"norm.{message}"):
            config.load(None, [(f"norm.{key}", value)])
        with pytest.raises(UsageError, match=message):
            norms.get("bn", **{key: value})


def test_a_key_declared_twice_is_refused(tmp_path, monkeypatch):
    """Two methods declaring the same norm.* key: refused, naming both; a key without default too."""
    (tmp_path / "twice_a.py").write_text('"""A."""\nfrom dataclasses import dataclass\n\nimport torch\n\n\n'
                                         '@dataclass\nclass Options:\n    ghost_groups: int = 2\n    """Again."""\n')
    (tmp_path / "twice_b.py").write_text('"""B."""\nfrom dataclasses import dataclass\n\n\n'
                                         '@dataclass\nclass Options:\n    b_knob: int\n    """No default."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    from normtrain.registry import Registry
    for module, message in [("twice_a", r"'ghost_groups' of twice_a.Options is already declared by "
                                        r"normtrain.norms.ghost.Options"),
                            ("twice_b", r"'b_knob' of twice_b.Options needs a default")]:
        reg = Registry("norm", {**{n: norms.METHODS._items[n] for n in ("ghost", "bn")}}, "normtrain.norms")
        reg._items["twice"] = module + ":build"
        reg._where = lambda name, _r=reg, _m=module: (_m, "build") if name == "twice" else Registry._where(_r, name)
        monkeypatch.setattr(norms, "METHODS", reg)
        with pytest.raises(UsageError, match=message):
            norms.options_class.__wrapped__()
    assert "twice_a" not in sys.modules  # read from the source, not imported (it imports torch)


# -- an installed package ------------------------------------------------------------------
def readme_block(caption: str) -> str:
    """The README code block whose first line is the comment `# caption`."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"```\w+\n# {re.escape(caption)}\n(.*?)```", text, re.S)
    assert m, f"README.md has no code block starting with '# {caption}'"
    return m.group(1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The README's example package, installed by pip (no index, no isolation) into a folder put on PYTHONPATH."""
    tmp = tmp_path_factory.mktemp("plugin")
    pkg, site = tmp / "normtrain-mine", tmp / "site"
    pkg.mkdir()
    (pkg / "pyproject.toml").write_text(readme_block("pyproject.toml"))
    (pkg / "normtrain_mine.py").write_text(readme_block("normtrain_mine.py"))
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                        "--quiet", "--target", str(site), str(pkg)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (site / "normtrain_mine.py").is_file()
    assert "mine = normtrain_mine:build" in next(site.glob("normtrain_mine-*.dist-info")).joinpath(
        "entry_points.txt").read_text()
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}, tmp


def run_light(env, *args):
    p = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=120)
    *out, last = p.stdout.rstrip("\n").split("\n")
    assert last.startswith("@@"), p.stderr
    return json.loads(last[2:]), "\n".join(out), p.stderr


def test_installed_method_and_network_are_listed_and_checked_without_torch(installed):
    env, tmp = installed
    res, out, err = run_light(env, "list", "all")
    assert res == {"rc": 0, "heavy": []}, err
    assert re.search(r"^  mine +BatchNorm with its scale gamma initialised at norm.mine_gain\. \[normtrain-mine\]$",
                     out, re.M), out
    assert re.search(r"^  tiny-mlp +One hidden layer of `width` units.* \[normtrain-mine\]$", out, re.M), out
    res, out, err = run_light(env, "list", "keys")
    assert res == {"rc": 0, "heavy": []}, err
    assert re.search(r"^norm.mine_gain +float +1.0 +Initial BatchNorm scale gamma \(norm.mine_gain\).$", out, re.M)
    # bad input about the installed method's knob: one line, exit 2, nothing written, no torch
    res, out, err = run_light(env, "--norm", "mine", "--set", "norm.mine_gain=-1", "--out", str(tmp / "bad"))
    assert res == {"rc": 2, "heavy": []} and err.count("\n") == 1 and "norm.mine_gain must be >= 0" in err, err
    assert not (tmp / "bad").exists()


def test_installed_method_trains_with_norm_flag(installed):
    env, tmp = installed
    out = tmp / "run"
    p = run_cli("--norm", "mine", "--set", "norm.mine_gain=0.5", "--set", "model.name=tiny-mlp",
                "--set", "model.options={}", "--set", "train.epochs=2", "--out", out, env=env)
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "completed"
    recipe = (out / "recipe.yaml").read_text()
    assert re.search(r"^  name: mine$", recipe, re.M) and re.search(r"^  mine_gain: 0.5$", recipe, re.M)
    assert re.search(r"^  name: tiny-mlp$", recipe, re.M)
    # the knob reaches the layers the network builds through the bundle (init untouched by model.init)
    check = ("from normtrain import models, norms; import torch\n"
             "net = models.build('tiny-mlp', norms.get('mine', mine_gain=0.5), 10, (1, 8, 8))\n"
             "bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)]\n"
             "assert len(bns) == 1 and bool((bns[0].weight == 0.5).all()), bns\n"
             "assert net[1].bias is None and net[-1].bias is not None\n"
             "print('ok')")
    p = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=120)
    assert p.stdout.strip() == "ok", p.stderr
