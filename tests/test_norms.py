"""Normalization methods checked against their papers' definitions (CPU, small tensors).

Papers (DESIGN §2): Gitman & Ginsburg 2017 (wn, normprop, trelu-wn), Qiao et al.
2019 (ws), Dimitriou & Arandjelović 2020 (ghost, seqnorm), Hoedt et al. 2022 /
Brock et al. 2021a (nf).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normtrain import norms
from normtrain.errors import UsageError
from normtrain.norms import brn, cwn, evonorm, frn, ghost, mobn_wn, nf, normprop, residual, trelu_wn, wn, ws

#: Every registered method: the generic tests below run on each, so a new method is covered by adding it.
ALL = norms.names()
#: The methods of the papers (DESIGN §3) and the issues since: none may go missing from the registry.
PAPERS = ["bn", "syncbn", "none", "wn", "normprop", "trelu-wn", "gn", "ln", "in", "ws", "ws-gn", "ws-bn",
          "ghost", "seqnorm", "nf", "brn", "mobn-wn", "cwn", "gn-wn", "frn", "evonorm-b0", "evonorm-s0", "rmsn", "dyt"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def orthogonal(n: int) -> torch.Tensor:
    """A random orthogonal matrix (QR of a Gaussian, sign-fixed); nn.init.orthogonal_ is slow on CPU."""
    q, r = torch.linalg.qr(torch.randn(n, n))
    return q * torch.sign(torch.diagonal(r))


# -- every method ---------------------------------------------------------------------
def test_registry_has_every_method():
    assert set(PAPERS) <= set(ALL) and ALL == sorted(ALL)


def test_unknown_option_is_usage_error():
    with pytest.raises(UsageError):
        norms.get("wn", no_such_knob=1)


def _tiny_net(bundle: norms.Normalizer) -> nn.Module:
    """Every bundle call a network makes: norm + act pairs, a norm alone, an act alone, 4-d and 2-d input."""
    return nn.Sequential(
        bundle.conv(3, 8, 3, padding=1), *bundle.norm_act(8),
        bundle.conv(8, 8, 3, padding=1, groups=2), bundle.norm(8), bundle.act(8),
        nn.Flatten(), bundle.linear(8 * 4 * 4, 16), *bundle.norm_act(16, dims=1),
        bundle.linear(16, 5, bias=True, last=True))


@pytest.mark.parametrize("name", ALL + ["wn-data"])
def test_method_builds_runs_and_round_trips(name):
    opts = {"groups": 4}
    if name == "wn-data":
        name, opts = "wn", {"init": "data"}
    bundle = norms.get(name, **opts)
    x = torch.randn(8, 3, 4, 4)
    net = _tiny_net(bundle)
    norms.data_init(net, x)
    net.train()
    out = net(x)
    assert out.shape == (8, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    # residual join
    r = bundle.residual()(torch.ones(2, 3), torch.ones(2, 3))
    assert r.shape == (2, 3)
    # the layer built with last=True, and only it, is marked as the output layer (AGC leaves it alone)
    assert norms.bundle.output_layers(net) == [net[-1]]
    # state_dict round trip into a differently-seeded copy reproduces train and eval outputs
    torch.manual_seed(123)
    other = _tiny_net(norms.get(name, **opts))
    other.load_state_dict(net.state_dict())
    for mode in (True, False):
        net.train(mode), other.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(other(x), net(x))


def test_channels_last_matches_contiguous():
    x = torch.randn(8, 4, 5, 5)
    for name in ALL:
        bundle = norms.get(name, groups=4)  # 8 channels: 4 groups for the GroupNorm family
        net = nn.Sequential(bundle.conv(4, 8, 3, padding=1), *bundle.norm_act(8))
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        out = net_cl(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5, msg=name)


# -- wn ---------------------------------------------------------------------------------
def test_wn_forward_is_g_v_over_norm():
    conv = norms.get("wn").conv(4, 6, 3, padding=1)
    with torch.no_grad():
        conv.gain.uniform_(0.5, 2.0)
        conv.bias.normal_()
    x = torch.randn(2, 4, 7, 7)
    v = conv.weight.detach()
    norm = v.flatten(1).norm(dim=1)
    w = conv.gain.detach()[:, None, None, None] * v / (norm + 1e-5)[:, None, None, None]
    torch.testing.assert_close(conv(x), F.conv2d(x, w, conv.bias, padding=1))
    lin = norms.get("wn").linear(5, 3)
    xl = torch.randn(4, 5)
    wl = lin.weight.detach() / (lin.weight.detach().norm(dim=1, keepdim=True) + 1e-5)
    torch.testing.assert_close(lin(xl), F.linear(xl, wl, lin.bias))


def test_wn_equals_torch_weight_norm_when_eps_zero():
    ours = wn.WNConv2d(4, 6, 3, padding=1, eps=0.0)
    ref = nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    ref = torch.nn.utils.parametrizations.weight_norm(ref, dim=0)
    with torch.no_grad():
        g = torch.rand(6) + 0.5
        ref.parametrizations.weight.original0.copy_(g.view(6, 1, 1, 1))
        ours.gain.copy_(g)
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(ours(x), ref(x))


def test_wn_gradient_is_orthogonal_to_v():
    conv = wn.WNConv2d(4, 6, 3, padding=1, eps=0.0)
    conv(torch.randn(3, 4, 5, 5)).pow(3).sum().backward()
    v, grad = conv.weight.detach().flatten(1), conv.weight.grad.flatten(1)
    cos = (v * grad).sum(1) / (v.norm(dim=1) * grad.norm(dim=1))
    assert cos.abs().max() < 1e-5


def test_wn_data_dependent_init_standardizes_preactivations():
    bundle = norms.get("wn", init="data")
    conv, lin = bundle.conv(3, 8, 3), bundle.linear(10, 6)
    assert conv.needs_data_init and lin.needs_data_init
    x = torch.randn(16, 3, 8, 8) * 3 + 1
    xl = torch.randn(32, 10) * 2 - 1
    with torch.no_grad():
        y, yl = conv(x), lin(xl)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var((0, 2, 3), unbiased=False), torch.ones(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(yl.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(yl.var(0, unbiased=False), torch.ones(6), atol=1e-4, rtol=0)
    assert not conv.needs_data_init and not bool(conv.data_init_pending)
    g = conv.gain.detach().clone()
    conv(torch.randn(4, 3, 8, 8))  # later forwards leave g alone
    torch.testing.assert_close(conv.gain.detach(), g)


def test_wn_data_init_only_in_train_mode_and_flag_survives_state_dict():
    bundle = norms.get("wn", init="data")
    conv = bundle.conv(3, 4, 3).eval()
    conv(torch.randn(4, 3, 5, 5))
    assert conv.needs_data_init  # eval forwards do not initialise
    conv.train()(torch.randn(4, 3, 5, 5))
    fresh = bundle.conv(3, 4, 3)
    assert fresh.needs_data_init
    fresh.load_state_dict(conv.state_dict())
    assert not fresh.needs_data_init  # a resumed model must not re-initialise
    pending = bundle.conv(3, 4, 3)
    other = bundle.conv(3, 4, 3)
    other.load_state_dict(pending.state_dict())
    assert other.needs_data_init
    assert not norms.get("wn").conv(3, 4, 3).needs_data_init  # init='unit'


def test_wn_data_init_through_bundle_helper_runs_layer_by_layer():
    bundle = norms.get("wn", init="data")
    net = nn.Sequential(bundle.conv(3, 8, 3), bundle.act(8), bundle.conv(8, 8, 3))
    x = torch.randn(16, 3, 10, 10)
    assert norms.data_init(net, x)
    assert not norms.data_init(net, x)  # nothing left to do
    with torch.no_grad():
        y = net(x)  # the second conv was initialised on the first conv's initialised output
    torch.testing.assert_close(y.var((0, 2, 3), unbiased=False), torch.ones(8), atol=1e-4, rtol=0)


# -- ws ---------------------------------------------------------------------------------
def _ws_conv(**kw):
    conv = ws.WSConv2d(6, 10, 3, padding=1, **kw)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(10, 1, 1, 1) * 3).add_(torch.randn(10, 1, 1, 1))  # off-centre, varied scale
    return conv


def test_ws_standardized_weight_statistics_and_forward():
    conv = _ws_conv()
    raw = conv.weight.detach()
    mu = raw.mean((1, 2, 3), keepdim=True)
    sd = raw.std((1, 2, 3), unbiased=False, keepdim=True)
    w = conv.effective_weight().detach().flatten(1)
    torch.testing.assert_close(w.mean(1), torch.zeros(10), atol=1e-6, rtol=0)
    # biased std of W_hat is std/(std + eps): 1 within eps/std
    torch.testing.assert_close(w.std(1, unbiased=False), (sd / (sd + 1e-5)).flatten())
    assert (w.std(1, unbiased=False) - 1).abs().max() < 1e-5 / sd.min()
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, (raw - mu) / (sd + 1e-5), conv.bias, padding=1))


def test_ws_center_only_is_eq5():
    conv = _ws_conv(scale=False)
    raw = conv.weight.detach()
    w = conv.effective_weight().detach()
    torch.testing.assert_close(w, raw - raw.mean((1, 2, 3), keepdim=True))
    assert w.flatten(1).mean(1).abs().max() < 1e-6
    assert (w.flatten(1).std(1, unbiased=False) - 1).abs().max() > 0.1


def test_ws_scale_only_is_eq6_on_raw_weight():
    # Eq. 6 divides by sqrt(1/I <1, W^2>), the root mean square, and does not centre.
    conv = _ws_conv(center=False)
    raw = conv.weight.detach()
    w = conv.effective_weight().detach()
    rms = raw.square().mean((1, 2, 3), keepdim=True).sqrt()
    torch.testing.assert_close(w, raw / (rms + 1e-5))
    ratio = (w / raw).flatten(1)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))  # a pure per-channel rescale
    assert w.flatten(1).mean(1).abs().max() > 1e-2  # not centred
    # unit root mean square (within eps), not unit std
    torch.testing.assert_close(w.flatten(1).square().mean(1), (rms / (rms + 1e-5)).flatten() ** 2)
    assert (w.flatten(1).std(1, unbiased=False) - 1).abs().max() > 0.05


def test_ws_affine_variant_and_pairings():
    conv = _ws_conv(affine=True)
    with torch.no_grad():
        conv.weight_gain.fill_(2.0)
        conv.weight_shift.fill_(0.5)
    w = conv.effective_weight().detach().flatten(1)
    torch.testing.assert_close(w.mean(1), torch.full((10,), 0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(w.std(1, unbiased=False), torch.full((10,), 2.0), atol=1e-3, rtol=0)
    assert isinstance(norms.get("ws").norm(32), nn.Identity)
    assert isinstance(norms.get("ws-gn").norm(64), nn.GroupNorm)
    assert isinstance(norms.get("ws-bn").norm(64), nn.BatchNorm2d)
    assert isinstance(norms.get("ws-bn").norm(64, dims=1), nn.BatchNorm1d)
    assert norms.get("ws").conv(3, 4, 3).bias is not None
    assert norms.get("ws-gn").conv(3, 4, 3).bias is None
    b = norms.get("ws", ws_center=False)
    assert not b.conv(3, 4, 3).center
    with pytest.raises(UsageError):
        norms.get("ws", ws_center=False, ws_scale=False)


def test_ws_linear_standardizes_rows_but_not_the_output_layer():
    bundle = norms.get("ws-gn")
    lin = bundle.linear(20, 8)
    w = lin.effective_weight().detach()
    torch.testing.assert_close(w.mean(1), torch.zeros(8), atol=1e-6, rtol=0)
    torch.testing.assert_close(w.std(1, unbiased=False), torch.ones(8), atol=1e-4, rtol=0)
    assert type(bundle.linear(20, 8, last=True)) is nn.Linear
    assert type(bundle.conv(20, 8, 1, last=True)) is nn.Conv2d


# -- normprop ---------------------------------------------------------------------------
def test_normprop_constants_and_activation():
    assert normprop.C0 == pytest.approx(0.3989422804)  # sqrt(1/(2 pi)), not sqrt(1/2)/pi
    assert normprop.C1 == pytest.approx(1 / math.sqrt(0.5 * (1 - 1 / math.pi)))
    x = torch.randn(100)
    torch.testing.assert_close(normprop.NormPropReLU()(x), normprop.C1 * (F.relu(x) - normprop.C0))
    bundle = norms.get("normprop")
    conv = bundle.conv(4, 6, 3)
    assert isinstance(bundle.norm(6), nn.Identity)
    torch.testing.assert_close(conv.gain.detach(), torch.full((6,), 1 / 1.21))  # Arpit et al.'s gamma init
    assert conv.bias is not None
    torch.testing.assert_close(bundle.conv(4, 6, 3, last=True).gain.detach(), torch.ones(6))


def test_normprop_layer_propagates_unit_gaussian():
    # Gitman & Ginsburg §3.2: derived for gamma = 1, beta = 0, W (near) orthogonal, x ~ N(0, I).
    bundle = norms.get("normprop", gamma_init=1.0)
    lin, act = bundle.linear(256, 256), bundle.act(256)
    with torch.no_grad():
        lin.weight.copy_(orthogonal(256) * 0.1)  # any scale: the layer divides by ||W_j||
        y = act(lin(torch.randn(8192, 256)))
    # 2M samples: tolerance far above the sampling error (~1e-3)
    assert abs(y.mean().item()) < 0.05
    assert abs(y.var().item() - 1) < 0.1


def _normprop_residual_stacks(blocks: int = 20, width: int = 512) -> tuple[list[float], list[float]]:
    """Variance after each of `blocks` residual blocks (branch = normprop linear + act), with and without scaling.

    Each block gets a fresh random orthogonal matrix: one QR, then random row permutations and
    column sign flips (still orthogonal, and much cheaper than a QR per block).
    """
    torch.manual_seed(1)
    q = orthogonal(width)
    scaled_b = norms.get("normprop", gamma_init=1.0, residual_scale=True)
    plain_b = norms.get("normprop", gamma_init=1.0, residual_scale=False)
    xs = xp = torch.randn(1024, width)
    scaled, plain = [], []
    with torch.no_grad():
        for _ in range(blocks):
            w = q[torch.randperm(width)] * (torch.randint(0, 2, (width,)) * 2 - 1)
            lin = scaled_b.linear(width, width)
            lin.weight.copy_(w)
            xs = scaled_b.residual()(xs, scaled_b.act(width)(lin(xs)))
            xp = plain_b.residual()(xp, plain_b.act(width)(lin(xp)))
            scaled.append(xs.var().item())
            plain.append(xp.var().item())
    return scaled, plain


def test_normprop_residual_modification_keeps_variance():
    scaled, plain = _normprop_residual_stacks()
    # With (shortcut + branch)/sqrt(2) the variance stays near 1 (it drifts slowly: WN-style
    # normalization is only approximate, Gitman & Ginsburg §5; measured ~1.2-1.8 after 20 blocks).
    assert max(abs(v - 1) for v in scaled[:10]) < 0.15
    assert max(scaled) < 2.5
    # The plain sum doubles it block after block.
    assert plain[0] > 1.8 and plain[-1] > 1e4
    assert isinstance(norms.get("normprop", residual_scale=False).residual(), norms.bundle.Add)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(norms.get("normprop").residual()(a, b), (a + b) / math.sqrt(2))


# -- trelu-wn ---------------------------------------------------------------------------
def test_trelu_is_max_x_a_per_channel():
    act = trelu_wn.TReLU(3)
    with torch.no_grad():
        act.a.copy_(torch.tensor([-0.5, 0.0, 0.7]))
    a = act.a.detach()
    x2 = torch.randn(5, 3)
    torch.testing.assert_close(act(x2), torch.maximum(x2, a))
    torch.testing.assert_close(act(x2), F.relu(x2 - a) + a)
    x4 = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(act(x4), torch.maximum(x4, a.view(1, 3, 1, 1)))
    act(x4).sum().backward()
    torch.testing.assert_close(act.a.grad, (x4 < a.view(1, 3, 1, 1)).float().sum((0, 2, 3)))
    assert torch.equal(trelu_wn.TReLU(4).a.detach(), torch.zeros(4))


def test_trelu_wn_layers():
    bundle = norms.get("trelu-wn")
    conv = bundle.conv(4, 6, 3, padding=1, bias=True)  # the method fixes: no bias, no gain
    assert [n for n, _ in conv.named_parameters()] == ["weight"]
    lin = bundle.linear(5, 7, bias=True)
    assert [n for n, _ in lin.named_parameters()] == ["weight"]
    x = torch.randn(2, 4, 5, 5)
    v = conv.weight.detach()
    w = v / (v.flatten(1).norm(dim=1) + 1e-5).view(6, 1, 1, 1)
    torch.testing.assert_close(conv(x), F.conv2d(x, w, padding=1))
    # The output layer is W/||W|| too: gamma and beta come after it (Xiang & Li's Affine), in `output`.
    last = bundle.conv(4, 6, 1, bias=True, last=True)
    assert [n for n, _ in last.named_parameters()] == ["weight"]
    assert [n for n, _ in bundle.linear(5, 3, last=True).named_parameters()] == ["weight"]
    assert isinstance(bundle.act(6), trelu_wn.TReLU) and isinstance(bundle.norm(6), nn.Identity)
    head = bundle.output(6)
    torch.testing.assert_close(head.weight.detach(), torch.ones(6))  # gamma 1, beta 0 at init
    torch.testing.assert_close(head.bias.detach(), torch.zeros(6))
    with torch.no_grad():
        head.weight.copy_(torch.randn(6))
        head.bias.copy_(torch.randn(6))
    g, b = head.weight.detach(), head.bias.detach()
    y2 = torch.randn(3, 6)
    torch.testing.assert_close(head(y2), g * y2 + b)
    y4 = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(head(y4), g.view(1, 6, 1, 1) * y4 + b.view(1, 6, 1, 1))
    # every other method leaves the output alone
    assert all(isinstance(norms.get(m).output(6), nn.Identity) for m in norms.names() if m != "trelu-wn")


def test_trelu_wn_affine_comes_after_the_last_layer_and_its_relu():
    """cifar10-nv ends conv9 -> TReLU -> average pool: o = gamma * pool(TReLU(conv9)) + beta."""
    from normtrain import models
    torch.manual_seed(0)
    m = models.build("cifar10-nv", "trelu-wn", 10, (3, 28, 28))
    assert isinstance(m.output, trelu_wn.Affine)
    with torch.no_grad():
        m.output.weight.copy_(torch.rand(10) + 0.5)
        m.output.bias.copy_(torch.randn(10))
        for mod in m.modules():
            if isinstance(mod, trelu_wn.TReLU):
                mod.a.copy_(torch.randn_like(mod.a) * 0.1)
    x = torch.randn(2, 3, 28, 28)
    pooled = m.net(x)
    assert bool((pooled >= m.net[-3].a.view(1, 10) - 1e-6).all())  # the TReLU acted before the affine
    torch.testing.assert_close(m(x), m.output.weight * pooled + m.output.bias)


def test_trelu_wn_weighted_join_definition():
    """Xiang & Li's WeightNormalizedAddition: (w_s s + w_b b) / sqrt(w_s^2 + w_b^2 + 1e-6), per channel."""
    assert isinstance(norms.get("trelu-wn").residual(8), norms.bundle.Add)  # default: the plain sum
    bundle = norms.get("trelu-wn", trelu_join="weighted")
    with pytest.raises(ValueError, match="channel count"):
        bundle.residual()
    join = bundle.residual(5)
    assert isinstance(join, trelu_wn.WeightedAddition)
    s, b = torch.randn(4, 5, 3, 3), torch.randn(4, 5, 3, 3)
    # init (shortcut 1, branch 0): the shortcut alone
    torch.testing.assert_close(join(s, b), s / math.sqrt(1 + 1e-6))
    with torch.no_grad():
        join.shortcut_weight.copy_(torch.randn(5) * 3)
        join.branch_weight.copy_(torch.randn(5) * 3)
    ws, wb = join.shortcut_weight.detach(), join.branch_weight.detach()
    norm = (ws.square() + wb.square() + 1e-6).sqrt()
    want = (ws / norm).view(1, 5, 1, 1) * s + (wb / norm).view(1, 5, 1, 1) * b
    torch.testing.assert_close(join(s, b), want)
    torch.testing.assert_close(join(s[:, :, 0, 0], b[:, :, 0, 0]), want[:, :, 0, 0])  # (N, C) input
    # the applied weights are unit-norm across the two operands, whatever the raw weights' scale
    a1, a2 = (w.detach() for w in join.normalized())
    torch.testing.assert_close(a1.square() + a2.square(), ws.square() / norm.square() + wb.square() / norm.square())
    assert float((a1.square() + a2.square() - 1).abs().max()) < 1e-5
    with torch.no_grad():
        join.shortcut_weight.mul_(7.0)
        join.branch_weight.mul_(7.0)
    torch.testing.assert_close(join(s, b), want, rtol=1e-5, atol=1e-5)
    # at init the branch gets no gradient but its weight does (the block can learn to use it)
    fresh = bundle.residual(5)
    br = b.clone().requires_grad_(True)
    fresh(s, br).square().sum().backward()
    assert float(br.grad.abs().max()) == 0.0 and float(fresh.branch_weight.grad.abs().max()) > 0
    assert fresh.shortcut_weight.ndim == 1 and fresh.branch_weight.ndim == 1  # no weight decay with no_decay_norm_bias


def test_trelu_wn_weighted_resnet_starts_as_its_shortcuts():
    """With the weighted join every block at init is act(shortcut): an identity block returns TReLU(x)."""
    from normtrain import models
    torch.manual_seed(0)
    m = models.build("resnet20", norms.get("trelu-wn", trelu_join="weighted"), 10, (3, 16, 16))
    joins = [mod for mod in m.modules() if isinstance(mod, trelu_wn.WeightedAddition)]
    assert len(joins) == 9 and [j.num_features for j in joins] == [16] * 3 + [32] * 3 + [64] * 3
    block = m.layer1[1]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block.relu(x / math.sqrt(1 + 1e-6)))


# -- ghost ------------------------------------------------------------------------------
# Dimitriou & Arandjelović 2020, §2.2: X = (35, 39, 30, 4, 38, 26, 27, 19) as an (8, 1, 1) tensor.
PAPER_X = [35, 39, 30, 4, 38, 26, 27, 19]
PAPER_BN = ["0.7", "1.1", "0.3", "-2.2", "1.0", "-0.1", "-0.02", "-0.8"]
PAPER_GHOST2 = ["0.6", "0.9", "0.2", "-1.7", "1.5", "-0.2", "-0.07", "-1.2"]


def _matches_printed(values, printed):
    for v, s in zip(values, printed):
        decimals = len(s.split(".")[1])
        assert abs(v - float(s)) <= 0.5 * 10 ** -decimals + 1e-9, (v, s)


def test_ghost_reproduces_paper_worked_example():
    x = torch.tensor(PAPER_X, dtype=torch.float32).view(8, 1, 1)
    bn_out = ghost.GhostBatchNorm(1, ghost_groups=1)(x).flatten().tolist()
    gh_out = ghost.GhostBatchNorm(1, ghost_groups=2)(x).flatten().tolist()
    _matches_printed(bn_out, PAPER_BN)
    _matches_printed(gh_out, PAPER_GHOST2)
    assert bn_out[1] > bn_out[4] and gh_out[1] < gh_out[4]  # "the 2nd value has become much smaller than the 5th"


@pytest.mark.parametrize("shape", [(12, 5, 3, 4), (12, 5)])
def test_ghost_with_one_group_is_batchnorm(shape):
    x = torch.randn(shape) * 2 + 1
    ours = ghost.GhostBatchNorm(5, ghost_groups=1, momentum=0.3)
    ref = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(5, momentum=0.3)
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.arange(1.0, 6.0))
            m.bias.copy_(torch.linspace(-1, 1, 5))
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert int(ours.num_batches_tracked) == 1
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x))


def test_ghost_matches_per_chunk_batchnorm_and_running_stats():
    G, x = 3, torch.randn(12, 4, 5, 5) * 3 - 2
    layer = ghost.GhostBatchNorm(4, ghost_groups=G, momentum=0.2)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2)
        layer.bias.normal_()
    y = layer(x)
    chunks = x.chunk(G)
    ref = torch.cat([F.batch_norm(c, None, None, layer.weight, layer.bias, True, 0.0, 1e-5) for c in chunks])
    torch.testing.assert_close(y, ref)
    mean = torch.stack([c.mean((0, 2, 3)) for c in chunks]).mean(0)
    var = torch.stack([c.var((0, 2, 3), unbiased=True) for c in chunks]).mean(0)
    torch.testing.assert_close(layer.running_mean, 0.2 * mean)
    torch.testing.assert_close(layer.running_var, 0.8 + 0.2 * var)


def test_ghost_eval_uses_running_statistics():
    layer = ghost.GhostBatchNorm(4, ghost_groups=2)
    for _ in range(3):
        layer(torch.randn(8, 4, 3, 3) * 2 + 1)
    layer.eval()
    x = torch.randn(3, 4, 3, 3)  # any batch size works in eval
    expected = F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, 1e-5)
    torch.testing.assert_close(layer(x), expected)
    before = layer.running_mean.clone()
    layer(x)
    assert torch.equal(before, layer.running_mean)


def test_ghost_rejects_batches_that_do_not_split():
    layer = ghost.GhostBatchNorm(4, ghost_groups=4)
    with pytest.raises(ValueError, match=r"batch size 10.*G_M=4"):
        layer(torch.randn(10, 4))
    with pytest.raises(ValueError, match=r"batch size 4.*G_M=4"):
        layer(torch.randn(4, 4, 2, 2))  # chunks of 1 sample
    with pytest.raises(UsageError):  # NormShapeError: a ValueError and a one-line CLI error
        layer(torch.randn(6, 4))
    layer(torch.randn(8, 4))
    assert isinstance(norms.get("ghost", ghost_groups=2).norm(8), ghost.GhostBatchNorm)


def test_ghost_low_precision_input_uses_fp32_statistics():
    layer = ghost.GhostBatchNorm(4, ghost_groups=2)
    x = torch.randn(8, 4, 3, 3) * 4 + 100  # a large mean stresses bf16 statistics
    xb = x.bfloat16()
    ref = layer(xb.float())
    out = ghost.GhostBatchNorm(4, ghost_groups=2)(xb)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.02, rtol=0.01)  # only the output rounding


# -- seqnorm ----------------------------------------------------------------------------
def test_seqnorm_is_groupnorm_then_ghostnorm():
    layer = norms.get("seqnorm", groups=4, ghost_groups=2, momentum=0.1).norm(8)
    with torch.no_grad():
        layer.ghost.weight.uniform_(0.5, 2)
        layer.ghost.bias.normal_()
    x = torch.randn(6, 8, 3, 3) * 2 + 0.5
    y = layer(x)
    gn = F.group_norm(x, 4, None, None, 1e-5)
    ref = torch.cat([F.batch_norm(c, None, None, layer.ghost.weight, layer.ghost.bias, True, 0.0, 1e-5)
                     for c in gn.chunk(2)])
    torch.testing.assert_close(y, ref)
    assert [n for n, _ in layer.named_parameters()] == ["ghost.weight", "ghost.bias"]  # GN step has no affine
    with pytest.raises(ValueError, match="C=10, groups=4"):
        norms.get("seqnorm", groups=4).norm(10)


# -- gn / ln / in -----------------------------------------------------------------------
@pytest.mark.parametrize("name,groups", [("gn", 32), ("ln", 1), ("in", 64)])
def test_group_norm_family(name, groups):
    layer = norms.get(name).norm(64)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2)
        layer.bias.normal_()
    x = torch.randn(3, 64, 4, 4) * 3 + 1
    torch.testing.assert_close(layer(x), F.group_norm(x, groups, layer.weight, layer.bias, 1e-5))
    x2 = torch.randn(3, 64)
    torch.testing.assert_close(layer(x2), F.group_norm(x2, groups, layer.weight, layer.bias, 1e-5))
    assert norms.get(name).conv(3, 64, 3).bias is None


def test_group_norm_indivisible_channels_is_clear_error():
    with pytest.raises(ValueError, match="C=300, groups=32"):
        norms.get("gn").norm(300)
    assert norms.get("gn", groups=4).norm(300).num_groups == 4


# -- nf ---------------------------------------------------------------------------------
def test_nf_scaled_ws_statistics():
    bundle = norms.get("nf")
    conv = bundle.conv(6, 10, 3, padding=1)
    assert conv.bias is not None and isinstance(bundle.norm(10), nn.Identity)
    with torch.no_grad():
        conv.weight.mul_(3).add_(1)
    fan_in = 6 * 9
    w = conv.effective_weight().detach().flatten(1)
    torch.testing.assert_close(w.mean(1), torch.zeros(10), atol=1e-6, rtol=0)
    torch.testing.assert_close(w.var(1, unbiased=False) * fan_in, torch.ones(10), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        conv.gain.copy_(torch.linspace(0.5, 2, 10))
    w = conv.effective_weight().detach().flatten(1)
    torch.testing.assert_close(w.var(1, unbiased=False) * fan_in, torch.linspace(0.5, 2, 10) ** 2)
    raw = conv.weight.detach()
    var, mean = torch.var_mean(raw, (1, 2, 3), unbiased=False, keepdim=True)
    expected = conv.gain.detach().view(10, 1, 1, 1) * (raw - mean) / torch.sqrt(torch.clamp(fan_in * var, min=1e-4))
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, expected, conv.bias, padding=1))
    with torch.no_grad():  # the 1e-4 floor keeps a constant filter finite
        conv.weight.fill_(0.3)
    assert torch.isfinite(conv.effective_weight()).all()
    lin = bundle.linear(20, 4)
    assert (lin.effective_weight().detach().var(1, unbiased=False) * 20 - 1).abs().max() < 1e-5
    assert type(bundle.linear(20, 4, last=True)) is nn.Linear


def test_nf_gamma_relu_gives_unit_variance():
    z = torch.randn(2_000_000, dtype=torch.float64)
    act = norms.get("nf").act(8)
    y = act(z)
    assert act.gamma == 1.7139588594436646
    # Brock et al.'s gamma is 1/std(relu(z)): unit *variance* (analytically 1.0013) ...
    assert abs(y.var().item() - 1) < 0.01
    # ... while the second moment is gamma^2/2 ~ 1.469, not 1.
    assert abs(y.square().mean().item() - act.gamma ** 2 / 2) < 0.01


def test_nf_expected_variance_bookkeeping():
    alpha = 0.2
    a2 = alpha ** 2
    got = nf.expected_variances([3, 4], alpha)
    expected = [[1.0, 1 + a2, 1 + 2 * a2],
                [1 + 3 * a2, 1 + a2, 1 + 2 * a2, 1 + 3 * a2]]  # reset to 1 + alpha^2 after each transition
    for g_stage, e_stage in zip(got, expected):
        assert g_stage == pytest.approx(e_stage)
    betas = nf.block_betas([3, 4, 6, 3], alpha)
    assert [len(s) for s in betas] == [3, 4, 6, 3]
    assert betas[3][0] == pytest.approx(math.sqrt(1 + 6 * a2))  # after stage 3's 6 blocks
    assert betas[2][5] == pytest.approx(math.sqrt(1 + 5 * a2))
    tracker = nf.VarianceTracker(alpha)
    assert [tracker.block(transition=(i == 0)) for i in range(3)] == pytest.approx(
        [1.0, math.sqrt(1 + a2), math.sqrt(1 + 2 * a2)])


def test_nf_skip_gain_and_scale():
    bundle = norms.get("nf")
    skip = nf.SkipGain(bundle.nf_alpha, bundle.nf_skip_gain)
    x = torch.randn(3, 4)
    assert torch.equal(skip(x), torch.zeros_like(x))  # SkipInit
    skip1 = nf.SkipGain(0.2, 1.0)
    torch.testing.assert_close(skip1(x), 0.2 * x)
    skip1(x).sum().backward()
    assert skip1.gain.grad is not None
    torch.testing.assert_close(nf.Scale(0.5)(x), 0.5 * x)
    assert isinstance(bundle.residual(), norms.bundle.Add)


# -- brn (Ioffe 2017, Algorithm 1) --------------------------------------------------------
def _brn(**kw):
    layer = brn.BatchRenorm(4, momentum=0.2, **kw)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2)
        layer.bias.normal_()
    return layer


def test_brn_schedule_is_bn_then_linear_ramps():
    # Ioffe 2017 §4: r_max = 1, d_max = 0 for 5000 steps, r_max = 3 at 40k, d_max = 5 at 25k.
    b = lambda t: brn.bounds(t, 3.0, 5.0, 5000, 40000, 25000)  # noqa: E731
    assert b(0) == (1.0, 0.0) and b(5000) == (1.0, 0.0)
    assert b(15000) == pytest.approx((1 + 2 * 10000 / 35000, 5 * 10000 / 20000))
    assert b(25000) == pytest.approx((1 + 2 * 20000 / 35000, 5.0))
    assert b(40000) == (3.0, 5.0) and b(10 ** 6) == (3.0, 5.0)
    o = norms.get("brn", brn_r_max=2.0, brn_relax_start=0, brn_r_max_at=0, brn_d_max_at=10).norm(4)
    assert o.current_bounds() == (2.0, 0.0)
    o(torch.randn(4, 4))
    assert int(o.num_batches_tracked) == 1 and o.current_bounds() == (2.0, 0.5)
    with pytest.raises(UsageError):
        norms.get("brn", brn_relax_start=100, brn_r_max_at=50)
    layer = norms.get("brn").norm(4)  # the forward's on-device bounds follow the same schedule
    for t in (0, 4999, 5000, 5001, 15000, 25000, 39999, 40000, 90000):
        layer.num_batches_tracked.fill_(t)
        assert [float(v) for v in layer._bounds_tensor()] == pytest.approx(list(b(t))), t


def test_brn_with_unit_bounds_is_batchnorm():
    x = torch.randn(6, 4, 3, 3) * 3 + 1
    layer = _brn()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = layer(x1)
    ref = F.batch_norm(x2, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    y.backward(g), ref.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad)


def test_brn_forward_gradient_and_moving_averages_follow_algorithm_1():
    layer = _brn(r_max=1.5, d_max=0.3, relax_start=0, r_max_at=0, d_max_at=0)
    mu0, sigma0 = torch.tensor([0.0, 1.0, -1.0, 3.0]), torch.tensor([1.0, 0.5, 4.0, 2.0])
    with torch.no_grad():
        layer.running_mean.copy_(mu0)
        layer.running_std.copy_(sigma0)
    x = (torch.randn(8, 4, 2, 2) * torch.tensor([1.0, 2.0, 1.0, 0.5]).view(1, 4, 1, 1)).requires_grad_()
    y = layer(x)
    # Algorithm 1 by hand, r and d as constants
    xd = x.detach()
    mean = xd.mean((0, 2, 3))
    std = torch.sqrt(xd.var((0, 2, 3), unbiased=False) + layer.eps)
    r = (std / sigma0).clamp(1 / 1.5, 1.5)
    d = ((mean - mu0) / sigma0).clamp(-0.3, 0.3)
    assert (r == 1.5).any() and (r < 1.5).any() and (d.abs() == 0.3).any()  # the clipping is exercised
    v = lambda t: t.view(1, 4, 1, 1)  # noqa: E731
    xr = x.detach().clone().requires_grad_()
    mean_r = xr.mean((0, 2, 3))
    std_r = torch.sqrt(xr.var((0, 2, 3), unbiased=False) + layer.eps)
    ref = v(layer.weight.detach()) * ((xr - v(mean_r)) / v(std_r) * v(r) + v(d)) + v(layer.bias.detach())
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    y.backward(g), ref.backward(g)
    torch.testing.assert_close(x.grad, xr.grad)  # no gradient through r and d
    # moving averages of the mean and of the *standard deviation*, updated after r and d were taken
    torch.testing.assert_close(layer.running_mean, 0.8 * mu0 + 0.2 * mean)
    torch.testing.assert_close(layer.running_std, 0.8 * sigma0 + 0.2 * std)
    layer.eval()
    xe = torch.randn(3, 4, 2, 2)
    expected = v(layer.weight) * (xe - v(layer.running_mean)) / v(layer.running_std) + v(layer.bias)
    with torch.no_grad():
        torch.testing.assert_close(layer(xe), expected)
    assert int(layer.num_batches_tracked) == 1  # eval forwards do not advance the schedule
    assert isinstance(norms.get("brn").norm(8, dims=1), brn.BatchRenorm) and norms.get("brn").conv(3, 8, 3).bias is None


# -- mobn-wn (Salimans & Kingma 2016 §3.2) --------------------------------------------------
def test_mobn_wn_is_wn_then_mean_only_batch_norm():
    bundle = norms.get("mobn-wn", momentum=0.25)
    conv, bn = bundle.conv(3, 6, 3), bundle.norm(6)
    assert conv.bias is None and isinstance(conv, wn.WNConv2d) and conv.gain is not None
    assert bundle.conv(3, 6, 1, bias=True, last=True).bias is not None
    with torch.no_grad():
        conv.gain.uniform_(0.5, 2)
        bn.bias.normal_()
    x = torch.randn(5, 3, 6, 6) * 2 + 1
    t = conv(x)
    v = conv.weight.detach()
    w = conv.gain.detach().view(6, 1, 1, 1) * v / (v.flatten(1).norm(dim=1) + 1e-5).view(6, 1, 1, 1)
    torch.testing.assert_close(t, F.conv2d(x, w))
    y = bn(t)
    mean = t.detach().mean((0, 2, 3))
    torch.testing.assert_close(y, t - mean.view(1, 6, 1, 1) + bn.bias.view(1, 6, 1, 1))
    torch.testing.assert_close(y.mean((0, 2, 3)), bn.bias.detach(), atol=1e-5, rtol=0)  # centred, then shifted by b
    assert (y.std((0, 2, 3)) - t.std((0, 2, 3))).abs().max() < 1e-4  # not divided by the std
    torch.testing.assert_close(bn.running_mean, 0.25 * mean)
    bn.eval()
    torch.testing.assert_close(bn(t), t - 0.25 * mean.view(1, 6, 1, 1) + bn.bias.view(1, 6, 1, 1))
    xl = torch.randn(7, 6)
    lin_bn = bundle.norm(6, dims=1)
    torch.testing.assert_close(lin_bn(xl), xl - xl.mean(0))


# -- cwn (Huang et al. 2017) ----------------------------------------------------------------
def test_cwn_weight_is_centred_unit_norm_times_gain():
    conv = norms.get("cwn").conv(4, 6, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(6, 1, 1, 1) * 3).add_(torch.randn(6, 1, 1, 1))
        conv.gain.uniform_(0.5, 2)
    v = conv.weight.detach().flatten(1)
    centred = v - v.mean(1, keepdim=True)
    w = conv.gain.detach()[:, None] * centred / (centred.norm(dim=1, keepdim=True) + 1e-5)
    torch.testing.assert_close(conv.effective_weight().detach().flatten(1), w)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, w.view(6, 4, 3, 3), conv.bias, padding=1))
    w1 = cwn.CWNLinear(20, 5, eps=0.0).effective_weight().detach()
    torch.testing.assert_close(w1.mean(1), torch.zeros(5), atol=1e-7, rtol=0)       # zero mean
    torch.testing.assert_close(w1.norm(dim=1), torch.ones(5))                         # unit norm (g = 1)
    raw = ws.WSLinear(20, 5, eps=0.0)
    with torch.no_grad():
        raw.weight.copy_(cwn.CWNLinear(20, 5).weight)
    # the same direction as WS, 1/sqrt(d) of its unit-variance scale
    lin = cwn.CWNLinear(20, 5, eps=0.0)
    with torch.no_grad():
        lin.weight.copy_(raw.weight)
    torch.testing.assert_close(lin.effective_weight(), raw.effective_weight() / math.sqrt(20))
    assert isinstance(norms.get("cwn").norm(6), nn.Identity) and norms.get("cwn").linear(3, 2).bias is not None


def test_cwn_gradient_is_orthogonal_to_ones_and_to_v():
    # w(v) is invariant to v + c 1 and to a (v - mean) scaling, so dL/dv is orthogonal to 1 and to v.
    lin = cwn.CWNLinear(12, 4, eps=0.0)
    lin(torch.randn(9, 12)).pow(3).sum().backward()
    g, v = lin.weight.grad, lin.weight.detach()
    assert g.abs().max() > 1e-3
    assert (g.sum(1).abs() / g.norm(dim=1)).max() < 1e-5
    assert ((g * v).sum(1).abs() / (g.norm(dim=1) * v.norm(dim=1))).max() < 1e-5


# -- gn-wn (Qiao et al. Table 2 "GN+WN") ----------------------------------------------------
def test_gn_wn_is_wn_conv_then_groupnorm():
    bundle = norms.get("gn-wn", groups=2)
    conv, gn_layer = bundle.conv(3, 8, 3), bundle.norm(8)
    assert isinstance(conv, wn.WNConv2d) and conv.bias is None and isinstance(gn_layer, nn.GroupNorm)
    assert gn_layer.num_groups == 2
    x = torch.randn(3, 3, 6, 6)
    v = conv.weight.detach()
    w = v / (v.flatten(1).norm(dim=1) + 1e-5).view(8, 1, 1, 1)
    torch.testing.assert_close(gn_layer(conv(x)), F.group_norm(F.conv2d(x, w), 2, gn_layer.weight, gn_layer.bias))


# -- frn (Singh & Krishnan 2020 eqs. 1-4) ---------------------------------------------------
def test_frn_is_eqs_1_to_3_per_sample_and_channel_and_tlu_is_eq_4():
    bundle = norms.get("frn")
    layer, tlu = bundle.norm_act(6)
    assert isinstance(layer, frn.FilterResponseNorm) and isinstance(tlu, trelu_wn.TReLU)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2)
        layer.bias.normal_()
        tlu.a.uniform_(-0.5, 0.5)
    x = torch.randn(4, 6, 5, 5) * 3 + 1
    nu2 = x.square().mean((2, 3), keepdim=True)                                            # eq. 1
    y = layer.weight.view(1, 6, 1, 1) * x / torch.sqrt(nu2 + 1e-5) + layer.bias.view(1, 6, 1, 1)  # eqs. 2-3
    torch.testing.assert_close(layer(x), y)
    torch.testing.assert_close(tlu(layer(x)), torch.maximum(y, tlu.a.view(1, 6, 1, 1)))   # eq. 4
    torch.testing.assert_close(layer(x[1:2]), layer(x)[1:2])  # no batch dependence
    assert bundle.conv(3, 6, 3).bias is None and isinstance(bundle.act(6), trelu_wn.TReLU)
    xl = torch.randn(5, 6)                               # (N, C): a 1x1 map, x / sqrt(x^2 + eps)
    lin_layer = bundle.norm(6, dims=1)
    torch.testing.assert_close(lin_layer(xl), xl / torch.sqrt(xl.square() + 1e-5))


def test_frn_learned_eps():
    layer = norms.get("frn", frn_learn_eps=True, eps=1e-6).norm(3)
    torch.testing.assert_close(layer.eps_l.detach(), torch.tensor(1e-4))
    x = torch.randn(4, 3)
    torch.testing.assert_close(layer(x), x / torch.sqrt(x.square() + 1e-6 + 1e-4))  # eps = 1e-6 + |eps_l|
    with torch.no_grad():
        layer.eps_l.fill_(-0.5)
    torch.testing.assert_close(layer(x), x / torch.sqrt(x.square() + 1e-6 + 0.5))
    layer(x).sum().backward()
    assert layer.eps_l.grad is not None and layer.eps_l.grad != 0
    assert norms.get("frn").norm(3).eps_l is None


# -- evonorm (Liu et al. 2020) --------------------------------------------------------------
def _evo_params(layer):
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2)
        layer.bias.normal_()
        layer.v.uniform_(-1, 2)
    return layer


def test_evonorm_b0_definition_running_var_and_eval():
    bundle = norms.get("evonorm-b0", momentum=0.3)
    layer, act = bundle.norm_act(4)
    assert isinstance(layer, evonorm.EvoNormB0) and isinstance(act, nn.Identity)
    _evo_params(layer)
    x = torch.randn(6, 4, 3, 3) * 2 + 0.5
    v = lambda t: t.view(1, 4, 1, 1)  # noqa: E731
    batch_var = x.var((0, 2, 3), unbiased=False)
    inst_std = torch.sqrt(x.var((2, 3), unbiased=False, keepdim=True) + 1e-5)
    den = torch.maximum(v(torch.sqrt(batch_var + 1e-5)), v(layer.v.detach()) * x + inst_std)
    expected = x / den * v(layer.weight.detach()) + v(layer.bias.detach())
    y = layer(x)
    torch.testing.assert_close(y, expected)
    left_wins = v(torch.sqrt(batch_var + 1e-5)) > v(layer.v.detach()) * x + inst_std
    assert left_wins.any() and (~left_wins).any()  # both branches of the max are exercised
    n = 6 * 9
    torch.testing.assert_close(layer.running_var, 0.7 + 0.3 * batch_var * n / (n - 1))
    x2 = x.clone()
    x2[0] *= 10
    assert not torch.allclose(layer(x2)[1], y[1])  # training output depends on the other samples
    layer.eval()
    rv = layer.running_var
    den_e = torch.maximum(v(torch.sqrt(rv + 1e-5)), v(layer.v.detach()) * x + inst_std)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x / den_e * v(layer.weight) + v(layer.bias))
        torch.testing.assert_close(layer(x2)[1], layer(x)[1])  # eval: no batch dependence


def test_evonorm_s0_definition_and_group_statistics():
    bundle = norms.get("evonorm-s0", groups=2)
    layer, act = bundle.norm_act(6)
    assert isinstance(layer, evonorm.EvoNormS0) and isinstance(act, nn.Identity)
    _evo_params(layer)
    x = torch.randn(3, 6, 4, 4) * 2 + 0.5
    v = lambda t: t.view(1, 6, 1, 1)  # noqa: E731
    grouped = x.view(3, 2, 3, 4, 4)
    std = torch.sqrt(grouped.var((2, 3, 4), unbiased=False, keepdim=True) + 1e-5).expand_as(grouped).reshape(x.shape)
    expected = x * torch.sigmoid(v(layer.v.detach()) * x) / std * v(layer.weight.detach()) + v(layer.bias.detach())
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x[2:]), layer(x)[2:])  # no batch dependence
    layer.eval()
    torch.testing.assert_close(layer(x), expected)          # nor any train/eval difference
    with pytest.raises(ValueError, match="C=10, groups=4"):
        norms.get("evonorm-s0", groups=4).norm_act(10)


@pytest.mark.parametrize("name", ["evonorm-b0", "evonorm-s0"])
def test_evonorm_placement_follows_the_authors_resnet(name):
    """A norm with no activation after it is the affine part alone (the authors' nonlinearity=False);
    an activation with no norm before it stays ReLU (their tf.nn.relu after the residual addition)."""
    bundle = norms.get(name, groups=2)
    alone = bundle.norm(4)
    assert alone.v is None and not alone.nonlinear
    with torch.no_grad():
        alone.weight.uniform_(0.5, 2)
        alone.bias.normal_()
    x = torch.randn(5, 4, 3, 3) * 3
    torch.testing.assert_close(alone(x), x * alone.weight.view(1, 4, 1, 1) + alone.bias.view(1, 4, 1, 1))
    assert isinstance(bundle.act(4), nn.ReLU)
    assert bundle.conv(3, 4, 3).bias is None


# -- residual-branch scalings (norms/residual.py) ------------------------------------------------
def test_residual_scaling_coefficients():
    L = 16
    r2 = 1 / math.sqrt(2)
    assert all(residual.coefficients("sqrt2", i, L) == pytest.approx((r2, r2)) for i in range(L))
    for i in range(L):
        a, b = residual.coefficients("rescale", i, L)
        assert a ** 2 + b ** 2 == pytest.approx(1.0)
        assert a == pytest.approx(math.sqrt((i + L - 1) / (i + L)))
    # first block: the released RescaleNet code's identity sqrt((L-1)/L) and branch L^-1/2
    assert residual.coefficients("rescale", 0, L) == pytest.approx((math.sqrt(15 / 16), 0.25))
    assert residual.coefficients("depth", 3, L) == (1.0, 1 / 16)
    assert residual.coefficients("depth", 3, L, power=0.5) == (1.0, 0.25)
    assert residual.coefficients("skipinit", 3, L) == (1.0, 1.0)
    assert residual.drop_rates(0.2, 4) == pytest.approx([0.05, 0.1, 0.15, 0.2])
    with pytest.raises(UsageError):
        norms.get("bn", residual="fixup")


def test_residual_join_composes_with_the_methods_join():
    x, f = torch.randn(4, 3), torch.randn(4, 3)
    plain = norms.get("bn", residual="rescale")
    a, b = residual.coefficients("rescale", 2, 5)
    torch.testing.assert_close(plain.residual_join(plain.residual(), 2, 5)(x, f), a * x + b * f)
    npb = norms.get("normprop", residual="depth", residual_depth_power=0.5)  # on top of NormProp's /sqrt(2)
    torch.testing.assert_close(npb.residual_join(npb.residual(), 0, 4)(x, f), (x + f / 2) / math.sqrt(2))
    unchanged = norms.get("bn")
    join = unchanged.residual()
    assert unchanged.residual_join(join, 0, 4) is join  # nothing wrapped: state_dict keys stay as they are
    skip = norms.get("gn", residual="skipinit")
    sj = skip.residual_join(skip.residual(), 1, 4)
    torch.testing.assert_close(sj(x, f), x)            # SkipInit/ReZero: every block starts as the identity
    sj(x, f).sum().backward()
    assert sj.skip.gain.grad is not None and sj.skip.gain.grad != 0
    with torch.no_grad():
        sj.skip.gain.fill_(0.5)
    torch.testing.assert_close(sj(x, f), x + 0.5 * f)


def test_stochastic_depth_expectation_and_deterministic_eval():
    p, n = 0.3, 20000
    join = residual.ResidualJoin(norms.bundle.Add(), drop_rate=p)
    x, f = torch.zeros(n, 2), torch.ones(n, 2)
    torch.manual_seed(0)
    y = join(x, f)
    kept = y[:, 0] != 0
    assert torch.equal(y[:, 0], y[:, 1])  # a whole sample's branch is dropped or kept ("row" mode)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))  # kept branches scaled by 1/(1-p)
    assert abs((~kept).float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert abs(y.mean().item() - 1.0) < 0.03        # the expectation is the branch
    join.eval()
    xe, fe = torch.randn(8, 3), torch.randn(8, 3)
    torch.testing.assert_close(join(xe, fe), xe + fe)
    torch.testing.assert_close(join(xe, fe), join(xe, fe))
