"""The CUDA path of the step loop and its settings (issue 18 points 3-4), exercised on the CPU with stand-ins.

- the stop flags: on CUDA a pinned host copy and an event, read one step later (a stand-in event here);
  elsewhere the collective's own wait, as before;
- train.compile auto (off on CPU; on CUDA decided from the micro-batch and the fake-CUDA operator count:
  tests/test_audit.py), and the start-up line when the per-GPU batch differs from the paper's;
- the fp16 grad scaler resumed from a checkpoint saved without one; the fused SGD on CUDA;
- DDP's gradient buckets: batched_grad_copy where torch has it, in-place zeroing otherwise;
- DALI handing channels_last batches over without a copy.
"""
from __future__ import annotations

import pytest
import torch

from normtrain import checkpoint, config, dist, engine

QUIET = [("log.progress", False), ("log.tensorboard", False), ("run.device", "cpu")]


def recipe(tmp_path, *overrides, name="digits-mlp"):
    return config.load(name, [*QUIET, ("run.out", str(tmp_path)), *overrides])


class FakeEvent:
    """torch.cuda.Event's record/synchronize, counted (there is no CUDA here)."""

    def __init__(self, log=None):
        self.log = log if log is not None else []

    def record(self):
        self.log.append("record")

    def synchronize(self):
        self.log.append("synchronize")


def test_flags_through_a_host_buffer_and_an_event():
    log = []
    flags = engine.StepFlags(torch.device("cpu"), event=FakeEvent(log), host=torch.zeros(2))
    flags.post(3, torch.tensor(float("nan")), False)
    assert log == ["record"] and flags.host.tolist() == [1.0, 0.0]  # copied when posted, not when read
    assert flags.read() == (3, True, False) and log == ["record", "synchronize"]
    assert flags.read() is None
    flags.post(4, torch.tensor(1.0), True)
    assert flags.read() == (4, False, True)
    # Without an event (CPU, gloo): the collective's own wait, as before.
    plain = engine.StepFlags(torch.device("cpu"))
    assert plain.event is None
    plain.post(5, torch.tensor(float("inf")), True)
    assert plain.read() == (5, True, True)


def test_loop_reads_each_event_after_the_next_step_is_queued(tmp_path, monkeypatch):
    """With the event path (as on CUDA), step k's event is waited on only after step k+1's forward and
    backward are issued, and the run still stops on a non-finite loss."""
    events = []
    init, step_fn = engine.StepFlags.__init__, engine.train_step

    def with_event(self, device, event=None, host=None):
        init(self, device, FakeEvent(events), torch.zeros(2))
    monkeypatch.setattr(engine.StepFlags, "__init__", with_event)

    def train_step(run, *a, **k):
        events.append(("issue", run.step + 1))
        return step_fn(run, *a, **k)
    monkeypatch.setattr(engine, "train_step", train_step)
    res = engine.train(recipe(tmp_path / "a", ("train.max_steps", 6), ("log.every_steps", 1000)))
    assert res["status"] == "completed" and res["steps"] == 6
    issued = [e for e in events if isinstance(e, tuple)]
    assert issued == [("issue", k) for k in range(1, 7)] and events.count("record") == 6
    waits = [i for i, e in enumerate(events) if e == "synchronize"]
    assert len(waits) == 6
    for k, i in enumerate(waits[:-1], start=1):  # step k's flags are waited on after step k+1 is issued
        assert ("issue", k + 1) in events[:i]
    events.clear()
    bad = engine.train(recipe(tmp_path / "b", ("norm.name", "none"), ("optim.lr", 1e12),
                              ("schedule.name", "constant"), ("log.every_steps", 1000)))
    assert bad["status"] == "diverged"


def test_compile_auto_is_off_on_cpu_and_said_at_start(tmp_path, capsys):
    r = recipe(tmp_path, ("train.max_steps", 2), ("data.paper_micro_batch", 16))
    assert r.train.compile is None and "compile: null" in config.dump(r)
    res = engine.train(r)
    assert res["compile"] is False
    out = capsys.readouterr().out
    assert f"{res['batch']['per_process']} images per process per micro-batch; the paper used 16 per GPU" in out
    same = recipe(tmp_path / "same", ("train.max_steps", 2), ("data.paper_micro_batch", r.data.batch_size))
    engine.train(same)
    assert "the paper used" not in capsys.readouterr().out
    assert config.load("resnet50-imagenet").data.paper_micro_batch == 64  # Gitman & Ginsburg fn. 4
    on, why = engine.compile_auto(1, None)
    assert on and "1 image(s) per micro-batch" in why
    assert engine.compile_auto(32, 1.1)[0] is False and engine.compile_auto(32, 3.0)[0] is True


def test_fp16_resume_from_a_checkpoint_without_a_scaler(tmp_path):
    """train.amp changed to fp16 on resume: the checkpoint's scaler state is empty (no scaler ran)."""
    out = tmp_path / "run"
    first = engine.train(recipe(out, ("train.max_steps", 3), ("train.amp", "off")))
    assert checkpoint.load(out / "checkpoints/last.pt")["scaler"] == {}
    res = engine.train(recipe(out, ("train.max_steps", 5), ("train.amp", "fp16"),
                              ("run.resume_changed", "train.amp")))
    assert first["steps"] == 3 and res["status"] == "completed" and res["steps"] == 5 and res["amp"] == "fp16"
    assert checkpoint.load(out / "checkpoints/last.pt")["scaler"]["scale"] > 0  # the fp16 scaler now saved
    back = engine.train(recipe(out, ("train.max_steps", 6), ("train.amp", "off"), ("run.resume_changed", "train.amp")))
    assert back["status"] == "completed" and back["steps"] == 6


def test_fused_sgd_on_cuda_and_the_resumed_setting_follows_the_machine(tmp_path):
    r = recipe(tmp_path)
    model = torch.nn.Linear(4, 3)
    gpu_opt, _ = engine.setup_optim(r, model, torch.device("cuda"))   # (CPU tensors: fused SGD runs on CPU too)
    cpu_opt, _ = engine.setup_optim(r, model, torch.device("cpu"))
    assert gpu_opt.defaults["fused"] is True and not cpu_opt.defaults["fused"]
    model(torch.randn(2, 4)).sum().backward()
    gpu_opt.step()
    cpu_opt.load_state_dict(gpu_opt.state_dict())  # a GPU checkpoint resumed on a CPU
    assert cpu_opt.param_groups[0]["fused"] is True
    engine.apply_optim_settings(r, cpu_opt)
    assert all(not g["fused"] for g in cpu_opt.param_groups)


def test_ddp_keeps_gradient_bucket_views(monkeypatch):
    """batched_grad_copy where this torch's DDP has it (and set_to_none zeroing); otherwise in-place zeroing."""
    made = {}

    class FakeDDP(torch.nn.Module):
        def __init__(self, module, device_ids=None, gradient_as_bucket_view=False, static_graph=False,
                     forward_sync_buffers=None, batched_grad_copy=False):
            super().__init__()
            made.update(gradient_as_bucket_view=gradient_as_bucket_view, batched_grad_copy=batched_grad_copy)
            self.module, self.batched_grad_copy = module, batched_grad_copy

    class OldDDP(FakeDDP):  # an older torch: no batched_grad_copy
        def __init__(self, module, device_ids=None, gradient_as_bucket_view=False, static_graph=False,
                     broadcast_buffers=True):
            torch.nn.Module.__init__(self)
            made.update(gradient_as_bucket_view=gradient_as_bucket_view, batched_grad_copy=None)
            self.module = module

    d = dist.Dist(rank=0, world=2, device=torch.device("cpu"))
    net = torch.nn.Linear(2, 2)
    for cls, batched in ((FakeDDP, True), (OldDDP, None)):
        monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", cls)
        wrapped = dist.wrap(net, d)
        assert made == {"gradient_as_bucket_view": True, "batched_grad_copy": batched}
        assert dist.zero_grad_set_to_none(wrapped) is bool(batched)
    assert dist.zero_grad_set_to_none(net) is True


def test_dali_hands_over_nhwc_memory_as_channels_last(tmp_path):
    from normtrain.data import dali
    if not dali.available():
        pytest.skip(f"nvidia.dali cannot be imported: {dali._import_error}")
    from normtrain import data
    from normtrain.config import DataConfig
    from normtrain.data.base import DataContext

    from . import datagen
    root = datagen.image_folder(tmp_path / "img", classes=2, train_per_class=4, val_per_class=3)
    cfg = DataConfig(source=str(root), backend="dali", workers=1, image_size=16)
    ctx = DataContext(0, 1, torch.device("cpu"), 3, 0, False)
    plain, nhwc = data.build(cfg, "val", ctx), data.build(cfg, "val", ctx)
    nhwc.use_channels_last(True)
    for (x, y), (xc, yc) in zip(plain.epoch(0), nhwc.epoch(0)):
        assert xc.shape == x.shape and xc.is_contiguous(memory_format=torch.channels_last)
        assert not xc.is_contiguous()  # NHWC memory, not a copy into NCHW
        assert torch.equal(xc, x) and torch.equal(yc, y)
