"""Every recipe in recipes/ loads, builds its network with its method, keeps the papers' numbers,
and trains 2 optimizer steps on CPU with the synthetic backend."""
from __future__ import annotations

import importlib

import pytest
import torch

from normtrain import batching, config, models, norms
from normtrain.errors import UsageError

RECIPES = config.recipe_names()

# Small synthetic stand-ins for each recipe's input: (C, H, W) by data source.


def _synthetic_shape(recipe) -> list[int]:
    source = recipe.data.source
    if source == "digits":
        return [1, 8, 8]
    if "mnist" in source:
        return [1, 28, 28]
    if recipe.model.name == "cifar10-nv":
        return [3, 28, 28]
    if recipe.model.name == "wrn28-10":
        return [3, 16, 16]          # the real WRN-28-10 is 36.5M parameters; keep the CPU step cheap
    return [3, 32, 32]              # CIFAR and ImageNet networks (global pooling: any size works)


def _real_shape(recipe) -> tuple[int, ...]:
    if recipe.data.source == "digits":
        return (1, 8, 8)
    if "mnist" in recipe.data.source:
        return (1, 28, 28)
    if "cifar" in recipe.data.source:
        return (3, recipe.data.image_size or 32, recipe.data.image_size or 32)
    return (3, 224, 224)


def _num_classes(recipe) -> int:
    return recipe.data.num_classes or 10


def test_recipes_exist():
    expected = {"digits-mlp", "cifar10-nv", "resnet50-imagenet", "resnet50-imagenet-ws", "resnet101-imagenet",
                "resnext50-imagenet", "resnext101-imagenet", "wrn28-10-cifar100", "resnet56-cifar10-onecycle",
                "mlp-mnist", "nf-resnet50-imagenet"}
    assert expected <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_and_builds(name):
    r = config.load(name)
    assert r.description, f"{name}: every recipe says what it reproduces"
    assert r.model.name in models.names()
    assert r.norm.name in norms.names()
    bundle = norms.get(r.norm.name, **r.norm.options())
    m = models.build(r.model.name, bundle, _num_classes(r), _real_shape(r), init=r.model.init,
                     dropout=r.model.dropout, **r.model.options)
    assert sum(p.numel() for p in m.parameters()) > 0


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds_with_every_method(name):
    """`--norm X` works with every recipe: e.g. the recipe's norm.groups divides every layer's width.
    Built on the meta device (shapes only, no memory, no init cost)."""
    for method in norms.names():
        r = config.load(name, overrides=[("norm.name", method)])
        bundle = norms.get(method, **r.norm.options())
        try:
            with torch.device("meta"):
                models.build(r.model.name, bundle, _num_classes(r), _real_shape(r),
                             init=r.model.init, dropout=r.model.dropout, **r.model.options)
        except UsageError as e:  # a transformer refuses exactly the methods without a token form
            assert bundle.tokens is None and "has no meaning in a transformer" in str(e), (method, str(e))


@pytest.mark.parametrize("name", RECIPES)
def test_per_norm_blocks_apply(name):
    r = config.load(name)
    for method in r.per_norm:
        assert method in norms.names(), f"{name}: per_norm names unknown method '{method}'"
        resolved = config.load(name, overrides=[("norm.name", method)])
        assert resolved.norm.name == method


def test_resnet50_imagenet_trelu_wn_uses_the_authors_join():
    """Xiang & Li's weighted join for trelu-wn in resnet50-imagenet; the other methods never see it."""
    assert config.load("resnet50-imagenet", [("norm.name", "trelu-wn")]).norm.trelu_join == "weighted"
    assert config.load("resnet50-imagenet", [("norm.name", "wn")]).norm.trelu_join == "add"
    assert config.load("cifar10-nv", [("norm.name", "trelu-wn")]).norm.trelu_join == "add"
    r = config.load("resnet50-imagenet", [("norm.name", "trelu-wn"), ("norm.trelu_join", "add")])
    assert r.norm.trelu_join == "add"  # --set wins over per_norm


def test_cifar10_nv_footnote3():
    """Gitman & Ginsburg footnote 3: per-method lr schedule and weight decay, lr 0.01 for all."""
    want = {  # method: (schedule, final lr, weight decay)
        "bn": ("linear", 1e-5, 0.002),
        "none": ("linear", 1e-5, 0.0),
        "wn": ("linear", 1e-4, 0.0),
        "normprop": ("poly", 1e-5, 0.001),
        "trelu-wn": ("poly", 1e-5, 0.001),
    }
    for method, (sched, final, wd) in want.items():
        r = config.load("cifar10-nv", [("norm.name", method)])
        assert (r.schedule.name, r.schedule.final_lr, r.optim.weight_decay) == (sched, final, wd), method
        assert r.optim.lr == 0.01 and r.optim.momentum == 0.9 and r.data.batch_size == 128
        assert r.train.epochs == 256 and r.model.init == "caffe-xavier"
        if sched == "poly":
            assert r.schedule.power == 2.0


def test_paper_numbers():
    r = config.load("resnet50-imagenet")   # Gitman & Ginsburg §4.2, fn. 4
    assert (r.train.epochs, r.data.batch_size, r.optim.lr, r.optim.weight_decay) == (120, 256, 0.1, 1e-4)
    assert (r.schedule.name, r.schedule.power, r.schedule.final_lr) == ("poly", 2.0, 0.0)
    assert (r.data.augment, r.data.normalize, r.model.init) == ("gitman", "minus-one-one", "xavier")

    r = config.load("resnet50-imagenet-ws")  # Qiao et al. §3.1
    assert (r.train.epochs, r.schedule.name, r.schedule.step_every, r.schedule.gamma) == (90, "step", 30, 0.1)
    # 1 image per GPU and iteration size 64 on the paper's 4 GPUs (batching derives it from the GPU count).
    assert (r.norm.name, r.data.batch_size, r.train.micro_batch) == ("ws-gn", 256, 1)
    assert batching.for_recipe(r, 4).accum == 64
    bn = config.load("resnet50-imagenet-ws", [("norm.name", "bn")])
    assert (bn.train.accum_steps, batching.for_recipe(bn, 4).micro) == (1, 64)   # 64 images per GPU
    r = config.load("resnet101-imagenet")
    assert (r.train.epochs, r.data.batch_size, batching.for_recipe(r, 4).accum) == (100, 128, 32)
    for name in ("resnext50-imagenet", "resnext101-imagenet"):
        r = config.load(name)
        assert (r.train.epochs, batching.for_recipe(r, 4).accum, r.train.micro_batch, r.norm.groups) == (100, 32, 1, 32)

    r = config.load("wrn28-10-cifar100")     # Dimitriou & Arandjelovic §3.2
    assert (r.data.batch_size, r.train.epochs, r.data.val_split) == (512, 200, 5000)
    assert (r.schedule.name, r.schedule.warmup_epochs) == ("cosine", 5)
    assert r.schedule.warmup_from * r.optim.lr == pytest.approx(0.1)   # "increases the lr by four times"
    r = config.load("resnet56-cifar10-onecycle")  # §3.1
    assert (r.optim.lr, r.schedule.name, r.schedule.max_lr, r.schedule.final_lr) == (0.1, "onecycle", 3.0, 1e-4)
    assert config.load("resnet56-cifar10-onecycle", [("norm.name", "none")]).schedule.max_lr == 1.0
    r = config.load("mlp-mnist")
    assert (r.optim.lr, r.data.batch_size, list(r.model.options["widths"])) == (0.4, 512, [512, 300])

    r = config.load("nf-resnet50-imagenet")
    assert (r.norm.name, r.norm.nf_alpha, r.norm.nf_skip_gain, r.model.name) == ("nf", 0.2, 0.0, "nf-resnet50")


def test_default_recipe_is_digits_mlp():
    r = config.load("digits-mlp")
    assert (r.model.name, r.norm.name, r.data.source) == ("mlp", "bn", "digits")


# -- two optimizer steps per recipe through the engine -----------------------------------

def _engine():
    # Only the import is guarded: the engine is written in parallel with these recipes.
    try:
        return importlib.import_module("normtrain.engine")
    except ImportError as e:
        pytest.skip(f"normtrain.engine not importable yet: {e}")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_two_steps_on_synthetic_data(name, tmp_path):
    engine = _engine()
    base = config.load(name)
    classes = _num_classes(base)
    overrides = [
        ("data.source", "synthetic"), ("data.backend", "synthetic"),
        ("data.synthetic_shape", _synthetic_shape(base)),
        ("data.synthetic_classes", classes), ("data.num_classes", classes),
        ("data.synthetic_samples", 16), ("data.batch_size", 8), ("data.eval_batch_size", 8),
        ("data.val_split", 0),          # nothing to hold out of 16 synthetic samples
        ("train.max_steps", 2), ("train.accum_steps", 1), ("train.micro_batch", 0),
        ("log.progress", False), ("log.tensorboard", False),
        ("run.out", str(tmp_path / "run")), ("run.device", "cpu"),
    ]
    recipe = config.load(name, overrides=overrides)
    res = engine.train(recipe)
    assert res["status"] == "completed", res
    assert res["steps"] == 2


def test_default_recipe_learns_digits(tmp_path):
    """digits-mlp, the default recipe, gets well above chance (> 90%) on CPU (its speed is a
    benchmark figure in the README, not a unit-test bound)."""
    engine = _engine()
    recipe = config.load("digits-mlp", overrides=[
        ("log.progress", False), ("log.tensorboard", False),
        ("run.out", str(tmp_path / "run")), ("run.device", "cpu")])
    res = engine.train(recipe)
    assert res["status"] == "completed"
    assert res["final"]["eval/top1"] > 90.0
