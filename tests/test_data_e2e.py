"""End to end: the engine trains resnet18 on a generated ImageNet-style folder through each image backend."""
import json

import pytest

from normtrain import config, engine
from normtrain.data import dali as dali_backend

from . import datagen
from .conftest import run_cli


@pytest.mark.parametrize("backend", ["folder", pytest.param("dali", marks=pytest.mark.skipif(
    not dali_backend.available(), reason="nvidia.dali cannot be imported"))])
def test_engine_trains_on_an_image_folder(tmp_path, backend):
    root = datagen.image_folder(tmp_path / "data", classes=3, train_per_class=4, val_per_class=2)
    recipe = config.load(None, [
        ("log.progress", False), ("log.tensorboard", False), ("run.device", "cpu"), ("run.out", str(tmp_path / "run")),
        ("model.name", "resnet18"), ("data.source", str(root)), ("data.backend", backend), ("data.image_size", 32),
        ("data.batch_size", 4), ("data.augment", "gitman"), ("data.workers", 1), ("train.epochs", 1.0),
        ("train.max_steps", 2)])
    res = engine.train(recipe)
    assert res["status"] == "completed" and res["steps"] == 2
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    # Resuming the finished run is a no-op that still rebuilds the loaders from the checkpoint.
    assert engine.train(recipe)["steps"] == 2


QUICK = ["--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "run.device=cpu",
         "--set", "train.max_steps=1", "--set", "data.workers=1"]


@pytest.mark.parametrize("backend", ["folder", pytest.param("dali", marks=pytest.mark.skipif(
    not dali_backend.available(), reason="nvidia.dali cannot be imported"))])
def test_resnet50_imagenet_recipe_on_a_generated_folder(tmp_path, backend):
    """`normtrain --recipe resnet50-imagenet --data <folder>`: the paper's pipeline (gitman, 224 px) end to end."""
    root = datagen.image_folder(tmp_path / "data", classes=3, train_per_class=4, val_per_class=1)
    p = run_cli("--recipe", "resnet50-imagenet", "--data", root, "--out", tmp_path / "run", *QUICK,
                "--set", f"data.backend={backend}", "--set", "data.num_classes=3", "--set", "data.batch_size=4")
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "run/results.json").read_text())
    assert res["status"] == "completed" and res["model"] == "resnet50" and res["steps"] == 1


@pytest.mark.parametrize("recipe,make", [
    ("cifar10-nv", lambda root: datagen.cifar10(root, train=64, test=16)),
    ("resnet56-cifar10-onecycle", lambda root: datagen.cifar10(root, train=64, test=16)),
    ("wrn28-10-cifar100", lambda root: datagen.cifar100(root, train=200, test=20)),
    ("mlp-mnist", lambda root: datagen.mnist(root, train=64, test=16)),
])
def test_cifar_and_mnist_recipes_on_generated_files(tmp_path, recipe, make):
    root = make(tmp_path / "data")
    # The CIFAR recipes hold out 5,000 validation images: a few of the generated ones here.
    extra = ["--set", "data.val_split=100" if recipe == "wrn28-10-cifar100" else "data.val_split=16"] \
        if recipe != "mlp-mnist" else []
    p = run_cli("--recipe", recipe, "--data", root, "--out", tmp_path / "run", *QUICK, *extra,
                "--set", "data.batch_size=8", "--set", "data.eval_batch_size=8")
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "run/results.json").read_text())
    assert res["status"] == "completed" and res["steps"] == 1 and "eval/top1" in res["final"]
    if extra:  # a held-out validation split: the test split is evaluated at the end too
        assert res["eval_split"] == "val" and "test/top1" in res["final"]


@pytest.mark.skipif(not dali_backend.available(), reason="nvidia.dali cannot be imported")
def test_dali_two_process_resume_is_exact(tmp_path):
    """2-process DDP on the DALI CPU pipeline, stopped mid-way through the second epoch and resumed: bitwise
    the uninterrupted weights.

    Each rank's DALI reader checkpoint is gathered into the checkpoint and restored on its own rank; without
    it the resumed second epoch would restart the reader's shuffle (checked: the test then fails).
    """
    import torch

    from normtrain import checkpoint
    root = datagen.image_folder(tmp_path / "data", classes=3, train_per_class=8, val_per_class=1)
    common = ["--norm", "bn", "--set", "optim.lr=0.01", "--set", "model.name=resnet18", "--set", "model.options={}",
              "--data", root, "--set", "data.backend=dali", "--set", "data.image_size=32", "--set", "data.batch_size=4",
              "--set", "data.augment=gitman", "--set", "train.epochs=2", "--set", "log.progress=false",
              "--set", "log.tensorboard=false", "--set", "run.device=cpu", "--set", "data.val_split=0",
              "--nproc-per-node", "2"]
    for args in ([], ["--set", "train.max_steps=8"], []):
        out = tmp_path / ("b" if args or (tmp_path / "b").exists() else "a")
        p = run_cli(*common, *args, "--out", out)
        assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "b/results.json").read_text())
    assert res["resumed_from_step"] == 8 and res["steps"] == 12 and 8 % res["steps_per_epoch"] != 0
    wa = checkpoint.load(tmp_path / "a/checkpoints/last.pt")["model"]
    wb = checkpoint.load(tmp_path / "b/checkpoints/last.pt")["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
