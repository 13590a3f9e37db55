"""The fake-CUDA audit (normtrain/fakecuda.py, normtrain/audit.py, tools/audit_gpu.py; issue 18 point 1).

What a GPU would save, convert and launch for one training step, counted on this CPU machine on
fake CUDA tensors under CUDA's autocast. First the counting itself on small networks whose
answer is known; then the targets of issue 18, for every registered method and the
graph-changing options, in the configuration they are stated for: ResNet-50 as resnet50-imagenet
runs it on 8 GPUs (32 images per GPU), bf16 (fake tensors cost nothing per element, so the real
size costs no more than a small one: about 40 s of CPU for the ~30 rows). A method that
regresses, or one added later that misses a target, fails here, on a CPU; docs/PERFORMANCE.md has
the same table with fp16 beside it (tools/audit_gpu.py).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from normtrain import audit, fakecuda, norms
from normtrain.models.pool import GlobalAvgPool2d


def _trace(make, shape=(3, 8, 8), batch=4, amp="bf16", channels_last=True, classes=10):
    return fakecuda.trace_step(make, shape, batch, classes, amp, channels_last)


def _conv_bn(norm_layer=lambda c: nn.BatchNorm2d(c), extra=None):
    def make():
        layers = [nn.Conv2d(3, 8, 3, padding=1, bias=False), norm_layer(8), nn.ReLU(inplace=True)]
        if extra is not None:
            layers.append(extra)
        return nn.Sequential(*layers, GlobalAvgPool2d(), nn.Flatten(), nn.Linear(8, 10))
    return make


class _Fp32(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x.float())  # an fp32 activation, kept by sigmoid for its backward


class _Contiguous(nn.Module):
    def forward(self, x):
        return x.contiguous() + 1.0  # an explicit channels_last -> NCHW copy


def test_saved_activations_are_the_kernels_inputs_in_the_autocast_dtype():
    c = _trace(_conv_bn())
    acts = sorted((s.shape, s.dtype) for s in c.saved.values() if s.activation and len(s.shape) == 4)
    # conv keeps its bf16 input (the fp32 image is cast once); BN keeps its input; ReLU its output
    assert acts == [((4, 3, 8, 8), torch.bfloat16), ((4, 8, 8, 8), torch.bfloat16), ((4, 8, 8, 8), torch.bfloat16)]
    # (the global pool keeps nothing, the classifier its (4, 8) input)
    weights = [s for s in c.saved.values() if not s.activation]
    assert any(s.shape == (8, 3, 3, 3) and s.dtype == torch.bfloat16 for s in weights)  # the weight's cast
    assert c.fp32_outputs == {} and sum(c.conversions.values()) == 0
    # the bytes double with the batch
    twice = _trace(_conv_bn(), batch=8)
    act_bytes = lambda t: sum(s.nbytes for s in t.saved.values() if s.activation and len(s.shape) == 4)  # noqa: E731
    assert act_bytes(twice) == 2 * act_bytes(c)


def test_fp32_activations_layout_conversions_and_operators_are_counted():
    base = _trace(_conv_bn())
    is_fp32_act = lambda s: s.activation and s.dtype == torch.float32 and len(s.shape) == 4  # noqa: E731
    small = _trace(_conv_bn(extra=_Fp32()))
    assert [s.shape for s in small.saved.values() if is_fp32_act(s)] == [(4, 8, 8, 8)]
    assert small.fp32_outputs == {}  # 2048 elements: below the 100k-element bar
    big = fakecuda.trace_step(_conv_bn(extra=_Fp32()), (3, 128, 128), 2, 10, "bf16", True)
    kept = [s for s in big.saved.values() if is_fp32_act(s) and s.numel >= fakecuda.FP32_MIN_ELEMENTS]
    assert [s.shape for s in kept] == [(2, 8, 128, 128)] and sum(big.fp32_outputs.values()) == 2  # copy, sigmoid
    # one explicit copy out of channels_last: counted, in the forward pass
    conv = _trace(_conv_bn(extra=_Contiguous()))
    assert conv.conversions[("forward", "aten.clone")] == 1
    assert _trace(_conv_bn(extra=_Contiguous()), channels_last=False).conversions == {}
    # operators: the extra elementwise module adds exactly its ops (forward: copy + add; no views)
    assert conv.ops["forward"] == base.ops["forward"] + 2


def test_cuda_group_norm_on_channels_last_converts_and_autocast_fp32_is_seen():
    """On CUDA, F.group_norm copies a channels_last input to NCHW (its kernels are NCHW-only), and plain
    nn.GroupNorm under autocast runs in fp32: what the GN family's channels_last_ok=False and
    AmpGroupNorm avoid."""
    plain = _trace(_conv_bn(lambda ch: nn.GroupNorm(4, ch)), channels_last=True)
    assert sum(plain.conversions.values()) >= 1
    assert any(s.activation and s.dtype == torch.float32 and len(s.shape) == 4 for s in plain.saved.values())
    amp = _trace(_conv_bn(lambda ch: norms.get("gn", groups=4).norm(ch)), channels_last=False)
    assert plain.ops["forward"] > 0 and sum(amp.conversions.values()) == 0
    assert not any(s.activation and s.dtype == torch.float32 and len(s.shape) == 4 for s in amp.saved.values())


def test_a_network_whose_init_reads_values_is_built_on_the_cpu_and_traced():
    """A ViT's initialisation reads tensor values, which fake tensors cannot give: it is built for real on
    the CPU and its parameters and buffers made fake CUDA tensors (fakecuda._fake_network)."""
    def build():
        net = _conv_bn()()
        with torch.no_grad():
            net[0].weight.div_(float(net[0].weight.abs().max()))  # a value read: DataDependentOutputException
        return net
    c = _trace(build)
    assert c.ops["forward"] == _trace(_conv_bn()).ops["forward"]
    assert any(s.shape == (8, 3, 3, 3) and s.dtype == torch.bfloat16 for s in c.saved.values())


def test_batch_norm_backend_follows_torch_choice():
    """bf16 runs ATen's native batch norm, fp16 cuDNN's (torch._C._select_batch_norm_backend)."""
    bf16, fp16 = _trace(_conv_bn(), amp="bf16"), _trace(_conv_bn(), amp="fp16")
    assert bf16.by_op[("forward", "aten.native_batch_norm")] == 1
    assert fp16.by_op[("forward", "aten.cudnn_batch_norm")] == 1


# -- the targets, for every registered method (issue 18) ----------------------------------------------------
SMALL = (("model.name", "resnet18"),)


@pytest.fixture(scope="module")
def rows():
    return audit.run(audit.cases("resnet50-imagenet", 8, ("bf16",)))


def test_every_method_and_option_is_audited(rows):
    labels = {r["label"] for r in rows}
    assert set(norms.names()) <= labels  # methods added later are in it without a change here
    assert {label for label, _, _ in audit.variants()} <= labels
    assert all(r["micro"] == 32 and r["amp"] == "bf16" and r["model"] == "resnet50" for r in rows)
    trelu = next(r for r in rows if r["label"] == "trelu-wn")
    assert ["norm.trelu_join", "add"] not in trelu["overrides"]  # the recipe's weighted join


def test_targets_met_or_excepted(rows):
    missed = {r["label"]: audit.failures(r) for r in rows if audit.failures(r)}
    assert missed == {}, missed
    # the layout the engine chooses: channels_last except for the NCHW-only GroupNorm kernels
    for r in rows:
        assert r["channels_last"] == norms.get(r["method"]).channels_last_ok, r["label"]


def test_every_exception_is_still_needed_and_explained(rows):
    by_label = {r["label"]: r for r in rows}
    for label, targets in audit.EXCEPTIONS.items():
        assert label in by_label, f"exception for {label}, which the audit has no row for"
        missed = audit.failures(by_label[label], exceptions={})
        for target, why in targets.items():
            assert target in audit.TARGETS and target in missed, f"{label}: {target} is met now: drop the exception"
            assert len(why) > 80 and "would" in why, f"{label}: say why, and what would meet the target"


def test_compile_auto_follows_the_operator_count(rows):
    """train.compile auto on CUDA compiles exactly the rows over the operator target (or small micro-batches)."""
    from normtrain import config, engine
    for r in rows:
        assert r["compile_auto"] == (r["forward_ops_vs_bn"] > engine.COMPILE_OPS_RATIO), r["label"]
    brn = next(r for r in rows if r["label"] == "brn")
    assert brn["compile_auto"]  # its per-layer scalars: many small kernels
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for method, micro, want in (("brn", 32, True), ("bn", 32, False), ("bn", 8, True)):
        recipe = config.load("resnet50-imagenet", [("norm.name", method), *SMALL])
        bundle = norms.get(method)
        on, why = engine.resolve_compile(recipe, cuda, bundle, 1000, (3, 224, 224), micro, "bf16")
        assert on == want, (method, micro, why)
        assert engine.resolve_compile(recipe, cpu, bundle, 1000, (3, 224, 224), micro, "off")[0] is False
    forced = config.load("resnet50-imagenet", [("norm.name", "brn"), ("train.compile", False), *SMALL])
    assert engine.resolve_compile(forced, cuda, norms.get("brn"), 1000, (3, 224, 224), 32, "bf16") == (
        False, "train.compile")


def test_tool_prints_the_table_and_checks(tmp_path, capsys):
    import json
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import audit_gpu
    out = tmp_path / "a.json"
    rc = audit_gpu.main(["--methods", "bn,gn", "--no-variants", "--amp", "bf16", "--set", "model.name=resnet18",
                         "--check", "--json", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "| gn | bf16 | nchw |" in table and "| bn | bf16 | cl |" in table
    data = json.loads(out.read_text())
    assert {r["label"] for r in data["rows"]} == {"bn", "gn"} and data["targets"] == audit.TARGETS
    assert audit_gpu.main(["--amp", "fp32"]) == 2
    assert audit_gpu.main(["--methods", "nope"]) == 2
