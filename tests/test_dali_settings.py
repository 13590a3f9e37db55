"""The DALI backend's version handling and GPU settings, checked on the CPU pipeline.

- an older DALI without fn.readers.file's shuffle_after_epoch_seed (simulated): the reader
  is built without it, warns once, still reshuffles every epoch, and the order no longer
  follows the run seed (the proof that the argument really was left out);
- a DALI older than the supported minimum is reported as unusable in one line;
- the GPU decoder's memory padding uses arguments the installed DALI's schemas define
  (DALI rejects unknown arguments only when a GPU pipeline is built, which CI cannot do);
- decoder threads per process: data.workers capped at the node's CPUs per local process.
"""
import warnings

import pytest

from normtrain import data
from normtrain.config import DataConfig
from normtrain.data import dali
from normtrain.data import imagefolder
from normtrain.errors import UsageError

from . import datagen
from .datagen import collect
from .test_data_images import ctx, red_ids

needs_dali = pytest.mark.skipif(not dali.available(), reason=f"nvidia.dali cannot be used: {dali._import_error}")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return datagen.image_folder(tmp_path_factory.mktemp("dali") / "u", classes=3, train_per_class=8,
                                val_per_class=4, unique=True)


def orders(tree, seeds=(0, 1)):
    c = DataConfig(source=str(tree), backend="dali", augment="none", normalize="none", image_size=16, workers=1)
    spec = imagefolder.image_pipeline(c)
    out = {}
    for seed in seeds:
        ld = data.build(c, "train", ctx(4, seed=seed))
        for e in (0, 1):
            out[seed, e] = red_ids(collect(ld, e)[0], spec.mean, spec.std)
    return out


@needs_dali
def test_missing_shuffle_seed_argument_falls_back_with_one_warning(tree, monkeypatch):
    assert dali.has_argument("readers__File", "shuffle_after_epoch_seed")  # the installed DALI has it
    assert not dali.has_argument("readers__File", "no_such_argument")
    real = dali.has_argument
    monkeypatch.setattr(dali, "has_argument",
                        lambda schema, arg: False if arg == "shuffle_after_epoch_seed" else real(schema, arg))
    monkeypatch.setattr(dali, "_warned_missing", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        o = orders(tree)
    ours = [w for w in caught if "shuffle_after_epoch_seed" in str(w.message)]
    assert len(ours) == 1 and "run.seed" in str(ours[0].message)
    for order in o.values():
        assert sorted(order) == list(range(24))          # each epoch reads every image once
    assert o[0, 0] != o[0, 1]                            # and reshuffles every epoch
    assert o[0, 0] == o[1, 0] and o[0, 1] == o[1, 1]     # from DALI's fixed seed, whatever run.seed


@needs_dali
def test_with_the_argument_the_order_follows_the_run_seed(tree):
    o = orders(tree)
    assert o[0, 0] != o[1, 0]


def test_dali_older_than_the_minimum_is_unusable_with_a_reason(monkeypatch):
    nvidia_dali = pytest.importorskip("nvidia.dali")
    monkeypatch.setattr(nvidia_dali, "__version__", "1.30.0")
    monkeypatch.setattr(dali, "_checked", False)
    monkeypatch.setattr(dali, "_import_error", None)
    assert not dali.available()
    with pytest.raises(UsageError) as e:
        dali.require()
    msg = str(e.value)
    assert "\n" not in msg and "1.30.0" in msg and "1.33" in msg and "data.backend=folder" in msg


@needs_dali
def test_gpu_decoder_settings_are_arguments_of_the_installed_dali():
    gpu = dali.decoder_args(True)
    assert gpu == {"device_memory_padding": 211025920, "host_memory_padding": 140544512}  # DLE's values
    for schema in ("decoders__Image", "decoders__ImageRandomCrop"):
        assert all(dali.has_argument(schema, k) for k in gpu), schema
    assert dali.decoder_args(False) == {}
    assert dali.reader_args(False, 5) == {"stick_to_shard": True}


def test_decoder_threads_per_process():
    assert dali.decoder_threads(4, 8, cpus=128) == 4       # data.workers when the CPUs allow
    assert dali.decoder_threads(32, 8, cpus=128) == 16     # at most the per-GPU share of the node
    assert dali.decoder_threads(8, 8, cpus=4) == 1         # never zero
    assert dali.decoder_threads(4, 1, cpus=2) == 2


@needs_dali
def test_loader_uses_the_per_process_share_of_cpus(tree, monkeypatch):
    c = DataConfig(source=str(tree), backend="dali", augment="none", image_size=16, workers=64)
    cpus = dali.usable_workers(64)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert data.build(c, "train", ctx(4)).num_threads == cpus
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cpus))
    assert data.build(c, "train", ctx(4)).num_threads == 1
