"""Issue 20 point 1: what a paper's training runs need, each from a maintained library.

Optimizers (torch's AdamW, timm's Lamb and Lars), the EMA of the weights (torch's
AveragedModel) checked against its recurrence and resumed bitwise, MixUp/CutMix and
RandAugment/TrivialAugment/random erasing (torchvision v2, DALI's auto_aug), `normtrain eval`
reproducing a run's numbers, evaluation switches, the held-out validation split that chooses
best.pt, and TensorBoard's HParams. The acceptance runs: a digits run with AdamW, EMA and
MixUp that `normtrain eval` reproduces exactly, and a CIFAR-shaped synthetic run with CutMix
and RandAugment.
"""
from __future__ import annotations

import glob
import json

import pytest
import torch
from torch import nn

from normtrain import checkpoint, config, ema, engine, evaluation, optim
from normtrain.data import autoaug, base
from normtrain.errors import UsageError

from . import datagen

QUIET = [("log.progress", False), ("log.tensorboard", False), ("run.device", "cpu")]
#: The acceptance's digits run: AdamW (no decay on norms and biases, as DeiT), EMA and MixUp.
ACCEPT = [("optim.name", "adamw"), ("optim.lr", 0.003), ("optim.weight_decay", 0.05),
          ("optim.no_decay_norm_bias", True), ("train.ema_decay", 0.9), ("data.mixup", 0.4),
          ("train.epochs", 2.0), ("model.dropout", 0.1)]


def recipe(out, *overrides, name="digits-mlp"):
    return config.load(name, [*QUIET, ("run.out", str(out)), *overrides])


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def accepted(tmp_path_factory):
    """The acceptance run (with TensorBoard): trained once for the tests below."""
    out = tmp_path_factory.mktemp("accept") / "run"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = engine.train(recipe(out, *ACCEPT, ("log.tensorboard", True)))
    finally:
        torch.set_num_threads(old)
    return out, res


# -- acceptance --------------------------------------------------------------------------------------
def test_digits_adamw_ema_mixup_trains_and_eval_reproduces_it_exactly(accepted, capsys):
    out, res = accepted
    f = res["final"]
    assert res["status"] == "completed" and res["eval_split"] == "val"
    assert f["eval/top1"] > 80 and f["eval_ema/top1"] > 80 and f["test/top1"] > 80  # chance: 10%
    state = checkpoint.load(out / "checkpoints/last.pt")
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(state["optimizer"]["state"].values())))  # AdamW's moments
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [0.05, 0.0]
    # normtrain eval on the final checkpoint: the run's own numbers, exactly (same pipeline, same batches)
    from normtrain import cli
    for args, prefix in [([], "eval"), (["--ema"], "eval_ema"), (["--split", "test"], "test"),
                         (["--split", "test", "--ema"], "test_ema")]:
        assert cli.main(["eval", str(out), *args]) == 0
        got = json.loads((out / "eval.json").read_text())
        for k in ("top1", "top5", "loss"):
            assert got[f"eval/{k}"] == pytest.approx(f[f"{prefix}/{k}"], rel=1e-9, abs=1e-9), (args, k)
        assert got["eval/top1"] == f[f"{prefix}/top1"]  # a count over the same samples: bit for bit
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("normtrain eval: ") and "test split" in line and "ema weights" in line
    # best.pt is chosen on the held-out validation split: the best of the eval rows, at its step
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/top1" in r]
    best = max(evals, key=lambda r: r["eval/top1"])
    assert res["best_eval_top1"] == best["eval/top1"]
    assert checkpoint.load(out / "checkpoints/best.pt")["step"] == min(r["step"] for r in evals
                                                                       if r["eval/top1"] == best["eval/top1"])
    assert [r for r in rows if "test/top1" in r][-1]["step"] == res["steps"]  # the test split once, at the end


def test_hparams_reach_tensorboard(accepted):
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.plugins.hparams import plugin_data_pb2
    out, _ = accepted
    hparams, metrics = {}, set()
    for path in glob.glob(str(out / "tb" / "events.*")):
        for event in event_file_loader.EventFileLoader(path).Load():
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    hparams = {k: (x.string_value or x.number_value) for k, x in data.session_start_info.hparams.items()}
                if data.HasField("experiment"):
                    metrics = {m.name.tag for m in data.experiment.metric_infos}
    assert hparams["norm"] == "bn" and hparams["model"] == "mlp" and hparams["optim.name"] == "adamw"
    assert hparams["train.ema_decay"] == pytest.approx(0.9) and hparams["data.mixup"] == pytest.approx(0.4)
    assert {"eval/top1", "eval_ema/top1", "test/top1", "hparams/best_eval_top1"} <= metrics


def test_cifar_shaped_synthetic_run_with_cutmix_and_randaugment(tmp_path):
    res = engine.train(recipe(tmp_path, ("data.source", "synthetic"), ("data.synthetic_samples", 32),
                              ("data.batch_size", 8), ("data.cutmix", 1.0), ("data.randaugment", 2),
                              ("train.max_steps", 3), name="resnet56-cifar10-onecycle"))
    assert res["status"] == "completed" and res["steps"] == 3
    saved = config.load(str(tmp_path / "recipe.yaml"))
    assert (saved.data.cutmix, saved.data.randaugment, saved.data.synthetic_shape) == (1.0, 2, [3, 32, 32])


# -- optimizers ------------------------------------------------------------------------------------
def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("name,cls", [("sgd", "SGD"), ("adamw", "AdamW"), ("lamb", "Lamb"), ("lars", "Lars")])
def test_optimizer_from_the_library_with_the_recipes_settings(name, cls):
    o = config.OptimConfig(name=name, lr=0.01, momentum=0.8, weight_decay=0.1, no_decay_norm_bias=True,
                           betas=[0.8, 0.99], eps=1e-6, trust_coefficient=0.002)
    model = _tiny()
    opt = optim.build(model, o, torch.device("cpu"))
    assert type(opt).__name__ == cls and type(opt).__module__.split(".")[0] == ("timm" if cls in ("Lamb", "Lars")
                                                                                   else "torch")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in model.parameters() if p.ndim <= 1}
    expect = {"sgd": {"momentum": 0.8}, "adamw": {"betas": (0.8, 0.99), "eps": 1e-6},
              "lamb": {"betas": (0.8, 0.99), "eps": 1e-6}, "lars": {"momentum": 0.8, "trust_coeff": 0.002}}[name]
    assert {k: decay[k] for k in expect} == expect
    # a resumed optimizer gets the recipe's (possibly changed) settings
    optim.apply_settings(opt, config.OptimConfig(name=name, momentum=0.5, weight_decay=0.2, betas=[0.7, 0.9]))
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert decay.get("momentum", 0.5) == 0.5 and tuple(decay.get("betas", (0.7, 0.9))) == (0.7, 0.9)
    x = torch.randn(16, 4)
    before = [p.detach().clone() for p in model.parameters()]
    model(x).square().mean().backward()
    opt.step()
    # every parameter with a gradient moved (the first bias, right before BN, gets ~1e-9: rounding)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()) if p.grad.abs().max() > 1e-6)


def test_lars_step_has_the_trust_ratio_length():
    """timm's Lars (momentum 0, decay on): ||dw|| = lr * eta * ||w|| * ||g + wd w|| / (||g|| + wd ||w||)."""
    w = nn.Parameter(torch.randn(5, 7))
    g = torch.randn(5, 7)
    w.grad = g.clone()
    o = config.OptimConfig(name="lars", lr=0.5, momentum=0.0, weight_decay=0.01, trust_coefficient=0.001)
    opt = optim.build(nn.ParameterList([w]), o, torch.device("cpu"))
    w0 = w.detach().clone()
    opt.step()
    wn, gn, wd = w0.norm(), g.norm(), 0.01
    expected = 0.5 * 0.001 * wn * (g + wd * w0).norm() / (gn + wd * wn)
    torch.testing.assert_close((w.detach() - w0).norm(), expected, rtol=1e-5, atol=0)


# -- EMA ---------------------------------------------------------------------------------------------
def test_ema_follows_its_recurrence_buffers_included():
    model = _tiny()
    avg = ema.build(model, 0.8)
    assert ema.build(model, 0.0) is None
    ref = None
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(4):
        model.train()
        model(torch.randn(16, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        avg.update_parameters(model)
        now = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ref = now if ref is None else {k: (0.8 * ref[k] + 0.2 * v if v.is_floating_point() else v)
                                       for k, v in now.items()}
    got = ema.network_state(avg.state_dict())
    assert got.keys() == ref.keys()
    for k in ref:  # running_mean/var follow the average too; num_batches_tracked is copied
        torch.testing.assert_close(got[k], ref[k], msg=k)
    assert int(got["1.num_batches_tracked"]) == 4


def test_ema_mixup_adamw_resume_is_bitwise(tmp_path):
    """Stopped mid-epoch and resumed: the weights, the optimizer and the EMA are the uninterrupted run's."""
    common = [*ACCEPT, ("train.epochs", 1.5), ("train.final_eval", False), ("train.eval_every_epochs", 0)]
    engine.train(recipe(tmp_path / "a", *common))
    part = engine.train(recipe(tmp_path / "b", *common, ("train.max_steps", 5)))
    assert part["steps"] == 5 and part["stopped_early"]
    rest = engine.train(recipe(tmp_path / "b", *common))
    assert rest["resumed_from_step"] == 5 and not rest["stopped_early"]
    a, b = (checkpoint.load(tmp_path / f"{r}/checkpoints/last.pt") for r in "ab")
    for part_name in ("model", "ema"):
        assert a[part_name].keys() == b[part_name].keys()
        for k in a[part_name]:
            assert torch.equal(a[part_name][k], b[part_name][k]), (part_name, k)
    assert int(a["ema"]["n_averaged"]) == a["step"]


def test_evaluation_can_be_turned_off(tmp_path):
    res = engine.train(recipe(tmp_path, ("train.max_steps", 3), ("train.eval_every_epochs", 0),
                              ("train.final_eval", False)))
    assert res["status"] == "completed" and res["stopped_early"] and res["timings"]["eval_s"] == 0
    assert not any(k.startswith(("eval", "test")) for k in res["final"]) and res["best_eval_top1"] is None
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows and not any("eval/top1" in r for r in rows)
    assert (tmp_path / "checkpoints/last.pt").is_file()
    assert "top1" not in engine.summary_line(res).split("train loss")[0]


# -- augmentation ------------------------------------------------------------------------------------
def _batch_of(loader, epoch=0, k=0):
    it = loader.epoch(epoch, start=k)
    return next(iter(it))


def test_tensor_policy_and_erasing_are_per_image_global_batch_consistent():
    """RandAugment and random erasing on a device-held dataset: deterministic per image and batch, the same
    slice for rank 1 of 2 as in the one-process batch, and really applied (erasing leaves zeros)."""
    from normtrain.data.augment import TensorAugment
    from torchvision.transforms import v2
    x = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    y = torch.arange(40) % 4
    mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25)

    def loader(rank, world, policy=True, erase=True):
        aug = TensorAugment("flip", mean, std, policy=v2.RandAugment(2, 9) if policy else None,
                            eraser=v2.RandomErasing(1.0, value=0) if erase else None)
        return base.TensorLoader(x, y, 4, base.DataContext(rank, world, torch.device("cpu"), 8 // world, 3, True), aug)

    one = _batch_of(loader(0, 1))[0]
    assert torch.equal(one, _batch_of(loader(0, 1))[0])                        # a pure function of the batch
    assert torch.equal(_batch_of(loader(1, 2))[0], one[4:8])                  # N processes = one process
    plain = _batch_of(loader(0, 1, policy=False, erase=False))[0]
    only_policy = _batch_of(loader(0, 1, erase=False))[0]
    assert not torch.equal(only_policy, plain)                               # the policy changed the images
    erased = (one == 0).all(1).flatten(1).sum(1)                              # zeroed pixels per image
    assert (erased > 0).all() and (erased < 16 * 16).all()


def test_folder_and_dali_policies_and_erasing(tmp_path):
    from normtrain.data import dali as dali_backend
    from normtrain.data import folder
    root = datagen.image_folder(tmp_path / "data", classes=2, train_per_class=4, val_per_class=1)
    cfg = config.DataConfig(source=str(root), backend="folder", image_size=32, batch_size=4, workers=0,
                            augment="crop-flip", randaugment=2, random_erasing=1.0)
    spec = __import__("normtrain.data.imagefolder", fromlist=["x"]).image_pipeline(cfg)
    assert type(folder.transforms(spec, True)[-1]).__name__ == "RandAugment"
    assert all(type(t).__name__ != "RandAugment" for t in folder.transforms(spec, False))
    ctx = base.DataContext(0, 1, torch.device("cpu"), 4, 0, True)
    xb = _batch_of(folder.build(cfg, "train", ctx))[0]
    assert torch.equal(xb, _batch_of(folder.build(cfg, "train", ctx))[0])
    assert ((xb == 0).all(1).flatten(1).sum(1) > 0).all()  # every image erased somewhere (p = 1)
    if not dali_backend.available():
        pytest.skip("nvidia.dali cannot be imported")
    # DALI's auto_aug (trivial_augment_wide takes the same path; building either graph costs seconds)
    # augment none: resize and centre crop, nothing random but the policy
    dcfg = config.DataConfig(source=str(root), backend="dali", image_size=32, batch_size=4, workers=1,
                             augment="none", randaugment=2)
    plain = config.DataConfig(source=str(root), backend="dali", image_size=32, batch_size=4, workers=1, augment="none")
    (xa, ya), (xp, yp) = _batch_of(dali_backend.build(dcfg, "train", ctx)), _batch_of(dali_backend.build(plain, "train", ctx))
    assert xa.shape == xp.shape == (4, 3, 32, 32) and torch.isfinite(xa).all() and torch.equal(ya, yp)
    assert not torch.equal(xa, xp)  # the policy ran


def test_mixing_and_image_augmentations_refuse_what_they_cannot_take(tmp_path):
    with pytest.raises(UsageError, match="data.randaugment: the built-in digits .* are not images"):
        engine.train(recipe(tmp_path / "a", ("data.randaugment", 2)))
    with pytest.raises(UsageError, match=r"data.mixup: torchvision's MixUp/CutMix mix image batches .* \[64\]"):
        engine.train(recipe(tmp_path / "b", ("data.source", "synthetic"), ("data.synthetic_shape", [64]),
                            ("data.mixup", 0.2)))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_image_seeds_are_per_global_index_and_stream():
    assert autoaug.image_seeds(7, 4, 2) == autoaug.image_seeds(7, 0, 6)[4:]
    assert set(autoaug.image_seeds(7, 0, 4)).isdisjoint(autoaug.image_seeds(7, 0, 4, autoaug.ERASING))
    g = torch.get_rng_state()
    autoaug.per_image(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), lambda t: t + torch.randint(0, 9, ()), [1, 2])
    assert torch.equal(g, torch.get_rng_state())  # the training RNG stream is untouched


# -- recipe keys -------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value,message", [
    ("optim.name", "adam", "optim.name: 'adam' is not one of: sgd, adamw, lamb, lars"),
    ("optim.betas", [0.9], "optim.betas: [0.9] is not two numbers in [0, 1)"),
    ("optim.betas", [0.9, 1.0], "is not two numbers in [0, 1)"),
    ("optim.eps", 0.0, "optim.eps: 0.0 is out of range"),
    ("optim.trust_coefficient", 0.0, "optim.trust_coefficient: 0.0 is out of range"),
    ("train.ema_decay", 1.0, "train.ema_decay: 1.0 is out of range (must be >= 0.0 and < 1.0)"),
    ("train.eval_every_epochs", -1, "train.eval_every_epochs: -1 is out of range"),
    ("data.mixup", -0.1, "data.mixup: -0.1 is out of range"),
    ("data.random_erasing", 1.5, "data.random_erasing: 1.5 is out of range"),
    ("data.randaugment_magnitude", 31, "data.randaugment_magnitude: 31 is out of range"),
])
def test_new_keys_are_range_checked(key, value, message):
    with pytest.raises(UsageError) as e:
        config.load(None, [(key, value)])
    assert message in str(e.value)
    with pytest.raises(UsageError, match="choose one of randaugment and trivialaugment"):
        config.load(None, [("data.randaugment", 2), ("data.trivialaugment", True)])


def test_new_keys_are_documented_and_resume_semantics_stated():
    from normtrain import rundir
    docs = {k: doc for k, _, _, doc in config.field_docs()}
    new = ["optim.betas", "optim.eps", "optim.trust_coefficient", "train.ema_decay", "train.final_eval",
           "data.mixup", "data.cutmix", "data.randaugment", "data.randaugment_magnitude", "data.trivialaugment",
           "data.random_erasing"]
    assert all(docs[k] for k in new)
    # evaluation cadence may change on resume; what changes the experiment may not
    assert rundir.is_free("train.final_eval") and rundir.is_free("train.eval_every_epochs")
    assert not any(rundir.is_free(k) for k in new if k != "train.final_eval")
    # the CIFAR and digits recipes hold out a validation split; the others evaluate on the test split
    held = {n: config.load(n).data.val_split for n in config.recipe_names()}
    assert held["digits-mlp"] == 360 and held["cifar10-nv"] == held["resnet56-cifar10-onecycle"] == 5000
    assert held["wrn28-10-cifar100"] == 5000 and held["resnet50-imagenet"] == 0


def test_eval_command_bad_input_one_line(tmp_path, capsys):
    from normtrain import cli
    assert cli.main(["eval", str(tmp_path / "nope")]) == 2
    assert "no run folder or checkpoint at" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    assert cli.main(["eval", str(tmp_path / "run")]) == 2
    assert "has no checkpoints/last.pt" in capsys.readouterr().err
    with pytest.raises(UsageError, match="holds no EMA"):
        evaluation.evaluate(*_a_run_without_ema(tmp_path), use_ema=True)


def _a_run_without_ema(tmp_path):
    out = tmp_path / "plain"
    engine.train(recipe(out, ("train.max_steps", 1), ("train.final_eval", False)))
    return out, out / "checkpoints/last.pt"


def test_memory_check_counts_the_optimizer_state_and_the_ema():
    from normtrain import memory
    copies = {(o, e): memory.weight_copies(config.load(None, [("optim.name", o), ("train.ema_decay", e)]))
              for o in ("sgd", "lars", "adamw", "lamb") for e in (0.0, 0.999)}
    assert copies == {("sgd", 0.0): 2, ("sgd", 0.999): 3, ("lars", 0.0): 2, ("lars", 0.999): 3,
                      ("adamw", 0.0): 3, ("adamw", 0.999): 4, ("lamb", 0.0): 3, ("lamb", 0.999): 4}
