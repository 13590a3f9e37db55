"""Synthetic data shaped like the recipe's own data, and the memory check before a run (issue 13 point 2)."""
import pytest
import torch
from torch import nn

from normtrain import config, memory
from normtrain.errors import UsageError

from .conftest import run_cli


@pytest.mark.parametrize("recipe,shape,classes", [
    ("cifar10-nv", [3, 28, 28], 10),          # image_size 28: the random 28x28 crop of footnote 3
    ("resnet56-cifar10-onecycle", [3, 32, 32], 10),
    ("wrn28-10-cifar100", [3, 32, 32], 100),
    ("mlp-mnist", [1, 28, 28], 10),
    ("digits-mlp", [1, 8, 8], 10),
    ("resnet50-imagenet", [3, 224, 224], 1000),
])
def test_synthetic_data_takes_the_recipes_shape_and_classes(recipe, shape, classes):
    d = config.load(recipe, [("data.source", "synthetic")]).data
    assert (d.synthetic_shape, d.synthetic_classes) == (shape, classes)


def test_explicit_synthetic_settings_win_and_reload_exactly(tmp_path):
    r = config.load("cifar10-nv", [("data.source", "synthetic"), ("data.synthetic_shape", [3, 8, 8]),
                                   ("data.synthetic_classes", 4), ("data.num_classes", 0)])
    assert (r.data.synthetic_shape, r.data.synthetic_classes) == ([3, 8, 8], 4)
    r = config.load("cifar10-nv", [("data.source", "synthetic"), ("data.image_size", 16)])
    assert r.data.synthetic_shape == [3, 16, 16]
    (tmp_path / "r.yaml").write_text(config.dump(r))
    assert config.load(str(tmp_path / "r.yaml")).data == r.data


def test_activation_bytes_counts_each_output_once():
    """Linear(8,16) -> ReLU(inplace) -> Flatten -> Linear(16,4): input 8 + 16 + 4 floats per sample
    (the in-place ReLU and the Flatten view add no memory)."""
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(16, 4))
    with torch.device("meta"):
        net_meta = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(16, 4))
        x = torch.empty(32, 8)
    assert memory.activation_bytes(net_meta, x) == 32 * (8 + 16 + 4) * 4
    assert memory.activation_bytes(net, torch.zeros(32, 8)) == 32 * (8 + 16 + 4) * 4
    net2 = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU())  # out-of-place ReLU: a new tensor
    assert memory.activation_bytes(net2, torch.zeros(2, 3, 4, 4)) == 2 * (3 + 5 + 5) * 16 * 4
    assert memory.activation_bytes(net2, torch.zeros(2, 3, 4, 4), element_size=2) == 2 * (3 + 5 + 5) * 16 * 2


def test_estimate_of_the_default_mlp_is_exact():
    """digits-mlp: 64 -> Linear 512 -> BN -> ReLU(in place) -> Linear 300 -> BN -> ReLU -> Linear 10
    (the linear layers before BN have no bias: the norm's shift replaces it)."""
    r = config.load("digits-mlp")
    est = memory.estimate(r, (1, 8, 8), 10, 64)
    assert est.activations == 64 * (64 + 512 * 2 + 300 * 2 + 10) * 4
    params = 64 * 512 + 2 * 512 + 512 * 300 + 2 * 300 + (300 * 10 + 10)
    assert est.parameters == 2 * 4 * params  # weights and momentum


def test_check_refuses_what_cannot_fit(monkeypatch):
    r = config.load("cifar10-nv", [("data.source", "synthetic")])
    monkeypatch.setattr(memory, "available", lambda device: 64 * 1024 ** 2)
    big, small = (memory.estimate(r, (3, 28, 28), 10, n) for n in (128, 2))
    with pytest.raises(UsageError, match=r"one training step needs at least [\d.]+ MiB .* but 64\.0 MiB is available"):
        memory.check(r, torch.device("cpu"), (3, 28, 28), 128, big)
    assert memory.check(r, torch.device("cpu"), (3, 28, 28), 2, small) is small  # a small batch fits
    r.train.memory_check = False
    assert memory.check(r, torch.device("cpu"), (3, 28, 28), 128, big) is big


def test_cli_synthetic_runs_at_the_recipes_shape(tmp_path):
    p = run_cli("--recipe", "cifar10-nv", "--data", "synthetic", "--set", "data.batch_size=8",
                "--set", "data.synthetic_samples=16", "--set", "train.max_steps=1", "--set", "log.tensorboard=false",
                "--out", tmp_path / "r")
    assert p.returncode == 0, p.stderr
    assert "data: synthetic, 3x28x28 samples, 10 classes" in p.stdout


def test_cli_refuses_a_step_that_cannot_fit(tmp_path):
    p = run_cli("--recipe", "cifar10-nv", "--data", "synthetic", "--set", "data.synthetic_shape=[3,4096,4096]",
                "--out", tmp_path / "r")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("normtrain: error: one training step needs at least"), p.stderr
    assert "128 samples of 3x4096x4096" in lines[0]
    assert not (tmp_path / "r").exists()
