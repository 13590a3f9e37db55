"""The memory-lean forms of the custom layers (issue 18 point 2) against each method's reference formula.

Training forwards of frn, TLU/TReLU, evonorm-b0/s0, brn, mobn-wn and seqnorm run autograd
Functions that keep only the input (in its own dtype) and small statistics and recompute the
rest in the backward pass; GroupNorm runs in the autocast dtype; the global average pool writes
its gradient in the input's layout. Each must equal the definition written as tensor ops (the
references, which autograd differentiates): output, every gradient and the running statistics,
in fp32 (tight) and with bf16 input (within bf16 rounding), in NCHW and channels_last, for 4-d and
(N, C) input. tests/test_norms.py checks the references against the papers' equations.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from normtrain import norms
from normtrain.models.pool import GlobalAvgPool2d
from normtrain.norms import brn, evonorm, frn, ghost, mobn_wn, seqnorm, trelu_wn

CL = torch.channels_last
TIGHT = dict(rtol=1e-5, atol=1e-5)
BF16 = dict(rtol=3e-2, atol=3e-2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _inputs(shape, dtype, channels_last=False, scale=2.0, shift=0.5):
    x = (torch.randn(shape) * scale + shift).to(dtype)
    return x.contiguous(memory_format=CL) if channels_last else x


def _compare(lean, reference, x, params, dtype, tol=None):
    """Output and gradients (of x and each parameter) of lean(x, *params) and reference(x, *params)."""
    tol = tol or (TIGHT if dtype == torch.float32 else BF16)
    xs = [x.detach().clone().requires_grad_() for _ in range(2)]
    ps = [[p.detach().clone().requires_grad_() for p in params] for _ in range(2)]
    y = lean(xs[0], *ps[0])
    ref = reference(xs[1], *ps[1])
    assert y.dtype == ref.dtype == x.dtype and y.shape == x.shape
    if x.dim() == 4 and x.is_contiguous(memory_format=CL) and not x.is_contiguous():
        assert y.is_contiguous(memory_format=CL)  # the layout is kept
    torch.testing.assert_close(y, ref, **tol)
    g = torch.randn(y.shape).to(dtype)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, **tol)
    assert xs[0].grad.dtype == x.dtype
    for a, b in zip(ps[0], ps[1]):
        # parameter gradients sum over the batch: compare relative to their size
        scale = float(b.grad.abs().max()) + 1.0
        torch.testing.assert_close(a.grad / scale, b.grad / scale, **tol)
    return y


SHAPES = [((6, 8, 5, 5), False), ((6, 8, 5, 5), True), ((10, 8), False)]
DTYPES = [torch.float32, torch.bfloat16]


# -- frn (Singh & Krishnan 2020 eqs. 1-3) -------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,cl", SHAPES)
def test_frn_function_equals_eqs_1_to_3(shape, cl, dtype):
    c = shape[1]
    w, b = torch.rand(c) + 0.5, torch.randn(c)
    _compare(lambda x, w, b: frn.frn_function(x, w, b, 1e-5),
             lambda x, w, b: frn.frn_reference(x, w, b, 1e-5), _inputs(shape, dtype, cl), (w, b), dtype)


@pytest.mark.parametrize("eps_l", [1e-4, -0.3])
def test_frn_function_learned_eps_gradient(eps_l):
    """eps = norm.eps + |eps_l|: the gradient of eps_l (through the absolute value) matches autograd's."""
    w, b, e = torch.rand(4) + 0.5, torch.randn(4), torch.tensor(eps_l)
    for shape in ((5, 4, 3, 3), (7, 4)):
        _compare(lambda x, w, b, e: frn.frn_function(x, w, b, 1e-6, e),
                 lambda x, w, b, e: frn.frn_reference(x, w, b, 1e-6, e),
                 _inputs(shape, torch.float32, scale=0.05), (w, b, e), torch.float32)


def test_frn_layer_runs_the_function_and_keeps_only_its_input():
    layer = norms.get("frn").norm(4)
    x = _inputs((3, 4, 6, 6), torch.bfloat16).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1 and big[0].dtype == torch.bfloat16  # x itself, not an fp32 copy
    torch.testing.assert_close(y, frn.frn_reference(x, layer.weight, layer.bias, layer.eps), **BF16)


# -- TLU / TReLU: max(x, a) -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,cl", SHAPES)
def test_trelu_function_equals_maximum(shape, cl, dtype):
    a = torch.randn(shape[1]) * 0.5
    view = lambda a, x: a.view((-1,) + (1,) * (x.dim() - 2)).to(x.dtype)  # noqa: E731
    _compare(lambda x, a: trelu_wn._TReLU.apply(x, a), lambda x, a: torch.maximum(x, view(a, x)),
             _inputs(shape, dtype, cl), (a,), dtype)


def test_trelu_keeps_its_output_not_its_input():
    act = trelu_wn.TReLU(4)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        z = act(x * 1.0)
    assert [t.numel() for t in saved if t.numel() == x.numel()] == [x.numel()]
    assert any(t is z or t.data_ptr() == z.data_ptr() for t in saved)


# -- EvoNorm (Liu et al. 2020) ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,cl", SHAPES)
def test_evonorm_b0_function_equals_definition(shape, cl, dtype):
    c = shape[1]
    v, w, b = torch.rand(c) * 2 - 0.5, torch.rand(c) + 0.5, torch.randn(c)
    x = _inputs(shape, dtype, cl)

    def lean(x, v, w, b):
        y, var = evonorm._B0.apply(x, v, w, b, None, 1e-5)
        return y

    def ref(x, v, w, b):
        return evonorm.b0_reference(x, v, w, b, 1e-5)[0]
    _compare(lean, ref, x, (v, w, b), dtype)
    # both branches of the max are exercised for 4-d input
    if x.dim() == 4:
        xf = x.float()
        left = torch.sqrt(xf.var((0, 2, 3), unbiased=False) + 1e-5).view(1, c, 1, 1)
        right = xf * v.view(1, c, 1, 1) + torch.sqrt(xf.var((2, 3), unbiased=False, keepdim=True) + 1e-5)
        assert (left > right).any() and (left < right).any()
    # evaluation with gradients (running variance, no batch term)
    rv = torch.rand(c) + 0.5
    _compare(lambda x, v, w, b: evonorm._B0.apply(x, v, w, b, rv, 1e-5)[0],
             lambda x, v, w, b: evonorm.b0_reference(x, v, w, b, 1e-5, rv)[0], x, (v, w, b), dtype)


def test_evonorm_b0_layer_running_variance_matches_the_reference():
    layer = norms.get("evonorm-b0", momentum=0.3).norm_act(4)[0]
    x = _inputs((6, 4, 3, 3), torch.float32)
    _, var = evonorm.b0_reference(x, layer.v, layer.weight, layer.bias, layer.eps)
    layer(x)
    n = 6 * 9
    torch.testing.assert_close(layer.running_var, 0.7 + 0.3 * var.detach() * n / (n - 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,cl", SHAPES)
def test_evonorm_s0_function_equals_definition(shape, cl, dtype):
    c = shape[1]
    v, w, b = torch.rand(c) * 2 - 0.5, torch.rand(c) + 0.5, torch.randn(c)
    _compare(lambda x, v, w, b: evonorm._S0.apply(x, v, w, b, 2, 1e-5),
             lambda x, v, w, b: evonorm.s0_reference(x, v, w, b, 2, 1e-5), _inputs(shape, dtype, cl), (v, w, b),
             dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_evonorm_affine_function_equals_definition(dtype):
    c = 8
    w, b = torch.rand(c) + 0.5, torch.randn(c)
    for shape, cl in SHAPES:
        _compare(lambda x, w, b: evonorm._Affine.apply(x, w, b), evonorm.affine_reference,
                 _inputs(shape, dtype, cl), (w, b), dtype)


# -- brn (Ioffe 2017, Algorithm 1) --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,cl", SHAPES)
def test_brn_through_batch_norm_equals_algorithm_1(shape, cl, dtype):
    c = shape[1]
    mu, sigma = torch.randn(c), torch.rand(c) + 0.5

    w, b = torch.rand(c) + 0.5, torch.randn(c)
    x = _inputs(shape, dtype, cl, scale=2.0, shift=0.7)
    xs = [x.detach().clone().requires_grad_() for _ in range(2)]
    ws = [w.clone().requires_grad_() for _ in range(2)]
    bs = [b.clone().requires_grad_() for _ in range(2)]
    layer = brn.BatchRenorm(c, momentum=0.2, r_max=1.5, d_max=0.3, relax_start=0, r_max_at=0, d_max_at=0)
    with torch.no_grad():
        layer.running_mean.copy_(mu)
        layer.running_std.copy_(sigma)
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    y = layer(xs[0])
    ref = brn.brn_reference(xs[1], ws[1], bs[1], mu, sigma, 1.5, 0.3, layer.eps)
    tol = TIGHT if dtype == torch.float32 else BF16
    torch.testing.assert_close(y, ref, **tol)
    g = torch.randn(y.shape).to(dtype)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, **tol)
    for p, q in ((layer.weight, ws[1]), (layer.bias, bs[1])):
        s = float(q.grad.abs().max()) + 1
        torch.testing.assert_close(p.grad / s, q.grad / s, **tol)
    # clipping exercised, and the moving averages of Algorithm 1 (mean and std, updated after r and d)
    dims = (0,) + tuple(range(2, x.dim()))
    var, mean = torch.var_mean(x.float(), dim=dims, unbiased=False)
    std = torch.sqrt(var + layer.eps)
    r = std / sigma
    assert ((r > 1.5) | (r < 1 / 1.5)).any() and ((mean - mu).abs() / sigma > 0.3).any()
    torch.testing.assert_close(layer.running_mean, 0.8 * mu + 0.2 * mean)
    torch.testing.assert_close(layer.running_std, 0.8 * sigma + 0.2 * std)


def test_brn_host_step_counter_follows_the_buffer_through_state_dicts():
    """The bounds come from a host copy of num_batches_tracked: counted from 0, re-read after loading."""
    layer = norms.get("brn", brn_relax_start=2, brn_r_max_at=4, brn_d_max_at=4).norm(3)
    for _ in range(3):
        layer(torch.randn(8, 3))
    assert layer._steps == 3 == int(layer.num_batches_tracked)
    other = norms.get("brn", brn_relax_start=2, brn_r_max_at=4, brn_d_max_at=4).norm(3)
    other.load_state_dict(layer.state_dict())
    assert other._steps is None
    x = torch.randn(8, 3) * 3 + 2
    torch.testing.assert_close(other(x), layer(x))  # the same bounds: step 3 of the ramp on both
    assert other._steps == 4 == int(other.num_batches_tracked)


# -- mobn-wn's mean-only BN (Salimans & Kingma §3.2) --------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,cl", SHAPES)
def test_mean_only_function_equals_definition(shape, cl, dtype):
    b = torch.randn(shape[1])
    _compare(lambda x, b: mobn_wn._MeanOnly.apply(x, b)[0], mobn_wn.mean_only_reference,
             _inputs(shape, dtype, cl, shift=3.0), (b,), dtype)


# -- seqnorm (Dimitriou & Arandjelović 2020): one Function for GroupNorm then GhostNorm ------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,g", [((8, 8, 3, 3), 2), ((8, 8, 3, 3), 1), ((12, 8), 3)])
def test_seqnorm_function_equals_groupnorm_then_ghostnorm(shape, g, dtype):
    layer = seqnorm.SeqNorm(shape[1], groups=2, ghost_groups=g, momentum=0.3)
    with torch.no_grad():
        layer.ghost.weight.uniform_(0.5, 2)
        layer.ghost.bias.normal_()
    w_ref = layer.ghost.weight.detach().clone().requires_grad_()
    b_ref = layer.ghost.bias.detach().clone().requires_grad_()
    x = _inputs(shape, dtype, shift=1.0)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = layer(x1)
    h = F.group_norm(x2.float(), 2, None, None, layer.eps).to(dtype)
    ref, means, variances = ghost.ghost_norm_reference(h, g, w_ref, b_ref, layer.eps)
    tol = TIGHT if dtype == torch.float32 else BF16
    assert y.dtype == dtype
    torch.testing.assert_close(y, ref, **tol)
    grad = torch.randn(shape).to(dtype)
    y.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x1.grad, x2.grad, **tol)
    for p, q in ((layer.ghost.weight, w_ref), (layer.ghost.bias, b_ref)):
        s = float(q.grad.abs().max()) + 1
        torch.testing.assert_close(p.grad / s, q.grad / s, **tol)
    torch.testing.assert_close(layer.ghost.running_mean, 0.3 * means.mean(0), **tol)
    torch.testing.assert_close(layer.ghost.running_var, 0.7 + 0.3 * variances.mean(0), **tol)


def test_seqnorm_keeps_only_its_input():
    layer = seqnorm.SeqNorm(8, groups=4, ghost_groups=2)
    x = torch.randn(8, 8, 4, 4, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x * 1.0)
    assert len([t for t in saved if t.numel() == x.numel()]) == 1


# -- GroupNorm in the autocast dtype (timm's fast_group_norm) -------------------------------------------
@pytest.mark.parametrize("name", ["gn", "ln", "in", "ws-gn", "gn-wn"])
def test_group_norm_family_runs_in_the_autocast_dtype(name):
    layer = norms.get(name, groups=4).norm(8)
    x = torch.randn(4, 8, 5, 5) * 3 + 1
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
    assert not norms.get(name).channels_last_ok  # CUDA group_norm is NCHW-only


def test_group_norm_keeps_no_fp32_copy_under_cuda_autocast():
    """Traced on fake CUDA tensors under CUDA's bf16 autocast: GN saves its bf16 input, no fp32 copy."""
    from normtrain import fakecuda
    layer_for = lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1, bias=False),  # noqa: E731
                                            norms.get("gn").norm(32))
    c = fakecuda.trace_step(lambda: torch.nn.Sequential(layer_for(), torch.nn.Flatten(), torch.nn.Linear(32 * 64, 10)),
                            (3, 8, 8), 64, 10, "bf16", False)
    acts = [s for s in c.saved.values() if s.activation and len(s.shape) == 4]
    assert acts and all(s.dtype == torch.bfloat16 for s in acts), [(s.shape, s.dtype) for s in acts]


# -- the global average pool ------------------------------------------------------------------------------
@pytest.mark.parametrize("cl", [False, True])
def test_global_pool_equals_adaptive_pool_and_keeps_the_layout_in_backward(cl):
    x = _inputs((4, 6, 5, 5), torch.float32, cl)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, ref = GlobalAvgPool2d()(x1), torch.nn.AdaptiveAvgPool2d(1)(x2)
    assert torch.equal(y, ref)
    g = torch.randn(y.shape)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=0)
    assert x1.grad.is_contiguous(memory_format=CL if cl else torch.contiguous_format)


# -- rmsn on conv maps (Zhang & Sennrich 2019 eq. 4 over a sample's (C, H, W)) ------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,cl", SHAPES)
def test_sample_rms_function_equals_definition(shape, cl, dtype):
    from normtrain.norms import rmsn
    w = torch.rand(shape[1]) + 0.5
    _compare(lambda x, w: rmsn._SampleRMS.apply(x, w, 1e-5), lambda x, w: rmsn.sample_rms_reference(x, w, 1e-5),
             _inputs(shape, dtype, cl), (w,), dtype)
    x2 = _inputs((4, 6), torch.float32)  # an (N, C) input is torch.nn.RMSNorm(C)
    torch.testing.assert_close(rmsn.sample_rms_reference(x2, torch.ones(6), 1e-5), torch.nn.RMSNorm(6, eps=1e-5)(x2))
