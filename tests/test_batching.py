"""Batch arithmetic (normtrain.batching): every recipe starts on 1, 2, 4 and 8 processes."""
import pytest

from normtrain import batching, config
from normtrain.errors import UsageError

WORLDS = (1, 2, 4, 8)


GHOST_FAMILY = ("ghost", "seqnorm")


def methods_of(name):
    """The recipe's own method, every method it has a per_norm block for, and the GhostNorm family
    where the recipe's per-process batch can hold chunks (not the WS recipes' 1 image per GPU)."""
    r = config.load(name)
    return sorted({r.norm.name, *r.per_norm, *(GHOST_FAMILY if not r.train.micro_batch else ())})


CASES = [(name, norm) for name in config.recipe_names() for norm in methods_of(name)]


@pytest.mark.parametrize("name,norm", CASES)
@pytest.mark.parametrize("world", WORLDS)
def test_every_recipe_splits_on_1_2_4_8_processes(name, norm, world):
    r = config.load(name, [("norm.name", norm)])
    p = batching.for_recipe(r, world)
    assert p.world * p.micro * p.accum == r.data.batch_size == p.global_batch
    assert p.micro >= 1 and p.accum >= 1
    if r.train.micro_batch:
        assert p.micro == r.train.micro_batch
    if norm in GHOST_FAMILY:  # the chunks tile the per-process batch with at least 2 samples each (paper §3)
        assert p.micro % p.ghost_groups == 0 and p.micro // p.ghost_groups >= 2, (p.micro, p.ghost_groups)


@pytest.mark.parametrize("world,accum", [(1, 256), (2, 128), (4, 64), (8, 32)])
def test_ws_recipe_keeps_one_image_per_gpu_and_derives_the_iteration_size(world, accum):
    """WS §3.1: 1 image per GPU, gradients averaged so that one update sees 256 images."""
    p = batching.for_recipe(config.load("resnet50-imagenet-ws"), world)
    assert (p.micro, p.accum) == (1, accum)
    bn = batching.for_recipe(config.load("resnet50-imagenet-ws", [("norm.name", "bn")]), world)
    assert (bn.micro, bn.accum) == (256 // world, 1)  # 64 per GPU on the paper's 4 GPUs


@pytest.mark.parametrize("world,groups", [(1, 128), (2, 64), (4, 32), (8, 16)])
def test_ghost_batch_keeps_four_samples_per_chunk(world, groups):
    """GhostNorm §3.1: 4 samples per group of a 512 batch, whatever the number of GPUs."""
    p = batching.for_recipe(config.load("resnet56-cifar10-onecycle", [("norm.name", "ghost")]), world)
    assert p.ghost_groups == groups and p.micro // p.ghost_groups == 4


def test_plan_errors_name_the_fix():
    with pytest.raises(UsageError, match="not divisible by processes"):
        batching.plan(100, 8)
    with pytest.raises(UsageError, match="multiple of 24"):
        batching.plan(100, 8, accum_steps=0, micro_batch=3)
    with pytest.raises(UsageError, match="train.accum_steps=0 to derive it"):
        batching.plan(256, 8, accum_steps=64, micro_batch=1)
    with pytest.raises(UsageError, match="ghost_batch 3 does not divide"):
        batching.plan(64, 2, ghost_batch=3)
    assert batching.plan(256, 8, accum_steps=32, micro_batch=1).accum == 32


def test_accum_zero_needs_micro_batch():
    with pytest.raises(UsageError, match="accum_steps: 0"):
        config.load("digits-mlp", [("train.accum_steps", 0)])


def test_ghost_at_one_image_per_gpu_is_refused_before_anything_runs():
    """GhostNorm cannot split a 1-image micro-batch: the meta-device forward says so as bad input."""
    from normtrain import engine
    r = config.load("resnet50-imagenet-ws", [("norm.name", "ghost"), ("model.name", "resnet18")])
    p = batching.for_recipe(r, 8)
    with pytest.raises(UsageError, match="GhostNorm"):
        engine.check_forward(r, engine.bundle_for(r, p), 10, (3, 32, 32), p.micro)
