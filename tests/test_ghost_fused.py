"""GhostNorm's fused path (normtrain/norms/ghost.py) against the reference formula.

`ghost_norm_reference` is the paper's definition written out; training forwards take
`ghost_norm_fused` (chunks permuted into channels, one F.batch_norm), which
tests/test_norms.py checks against the paper's worked example and per-chunk BatchNorm.
Both must agree on the output, on the gradients of x, gamma and beta, and on the
running statistics, in fp32, bf16 and channels_last.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from normtrain import norms
from normtrain.norms import ghost


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_chunk_permutation_round_trips_and_maps_chunks_to_channels():
    x = torch.randn(12, 5, 3, 4)
    for t in (x, x.contiguous(memory_format=torch.channels_last)):
        p = ghost.chunks_to_channels(t, 3)
        assert p.shape == (4, 15, 3, 4)
        # channel j*C + c of sample i is channel c of sample j*m + i
        assert torch.equal(p[1, 2 * 5 + 3], t[2 * 4 + 1, 3])
        assert torch.equal(ghost.channels_to_chunks(p, 3), t)
        if t is not x:
            assert p.is_contiguous(memory_format=torch.channels_last)


CASES = [  # (shape, groups, dtype, channels_last)
    ((12, 5, 3, 4), 3, torch.float32, False),
    ((12, 5, 3, 4), 3, torch.float32, True),
    ((12, 5, 3, 4), 2, torch.bfloat16, False),
    ((12, 5, 3, 4), 2, torch.bfloat16, True),
    ((12, 5), 4, torch.float32, False),          # linear layers (the MLP recipes)
    ((12, 5), 2, torch.bfloat16, False),
    ((8, 5, 7), 2, torch.float32, False),
    ((12, 5, 3, 4), 1, torch.float32, False),     # G_M = 1 is BatchNorm
]


def _tol(dtype):
    # bf16: both paths use fp32 statistics and differ only in where the output is rounded.
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shape,groups,dtype,channels_last", CASES)
def test_fused_equals_reference(shape, groups, dtype, channels_last):
    c = shape[1]
    layer = ghost.GhostBatchNorm(c, ghost_groups=groups, momentum=0.3)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2)
        layer.bias.normal_()
    w_ref = layer.weight.detach().clone().requires_grad_()
    b_ref = layer.bias.detach().clone().requires_grad_()
    running = [torch.zeros(c), torch.ones(c)]
    for step in range(2):  # two updates of the running statistics
        x = (torch.randn(shape) * 3 + 2).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y = layer(x1)
        y_ref, means, variances = ghost.ghost_norm_reference(x2, groups, w_ref, b_ref, layer.eps)
        assert y.dtype == dtype and y.shape == x.shape
        if channels_last:
            assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, y_ref, **_tol(dtype))
        grad = torch.randn(shape).to(dtype)
        y.backward(grad)
        y_ref.backward(grad)
        torch.testing.assert_close(x1.grad, x2.grad, **_tol(dtype))
        torch.testing.assert_close(layer.weight.grad, w_ref.grad, rtol=1e-4 if dtype == torch.float32 else 2e-2,
                                   atol=1e-4 if dtype == torch.float32 else 5e-2)
        torch.testing.assert_close(layer.bias.grad, b_ref.grad, rtol=1e-5, atol=1e-4)
        for buf, stat in zip(running, (means, variances)):
            buf.lerp_(stat.mean(0), 0.3)
        torch.testing.assert_close(layer.running_mean, running[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.running_var, running[1], rtol=1e-5, atol=1e-5)
        layer.weight.grad = layer.bias.grad = w_ref.grad = b_ref.grad = None
    assert int(layer.num_batches_tracked) == 2


def test_fused_path_runs_in_training():
    """The module's training forward is the fused path (the same tensors, bit for bit)."""
    layer = ghost.GhostBatchNorm(4, ghost_groups=2)
    x = torch.randn(8, 4, 3, 3)
    y_fused, _, _ = ghost.ghost_norm_fused(x, 2, layer.weight, layer.bias, layer.eps)
    assert torch.equal(layer(x), y_fused)


def test_seqnorm_low_precision_under_autocast_keeps_the_input_dtype():
    """bf16 in, bf16 out (GroupNorm is not upcast to an fp32 activation), close to the fp32 result."""
    layer = norms.get("seqnorm", groups=4, ghost_groups=2).norm(8)
    x = torch.randn(8, 8, 3, 3) * 2 + 0.5
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=2e-2)
    gn = F.group_norm(x, 4, None, None, 1e-5)
    expected = torch.cat([F.batch_norm(ch, None, None, layer.ghost.weight, layer.ghost.bias, True, 0.0, 1e-5)
                          for ch in gn.chunk(2)])
    torch.testing.assert_close(ref, expected)
