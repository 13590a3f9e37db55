"""Networks x normalization methods (parametrized over both registries at collection time),
torchvision compatibility of the ResNets, cifar10-nv's shapes and init, NF-ResNet bookkeeping.

CPU only, tiny inputs; the whole file is meant to run in well under 3 minutes on 2 cores.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normtrain import models, norms
from normtrain.models.nf_resnet import NFBottleneck

# network -> (input shape, classes, norm options the network needs). Widths that GroupNorm's
# default 32 groups do not divide (mlp's 300, the 16-channel CIFAR stems) get 4 groups.
CASES = {
    "mlp": ((1, 28, 28), 10, {"groups": 4}),
    "linear50": ((1, 8, 8), 10, {}),
    "cifar10-nv": ((3, 28, 28), 10, {}),
    "resnet56": ((3, 32, 32), 10, {"groups": 4}),
    "resnet20": ((3, 16, 16), 10, {"groups": 4}),
    "resnet8": ((3, 16, 16), 10, {"groups": 4}),
    "wrn28-10": ((3, 16, 16), 100, {"groups": 4}),
    "resnet18": ((3, 64, 64), 5, {}),
    "resnet50": ((3, 64, 64), 5, {}),
    "preact-resnet50": ((3, 64, 64), 5, {}),
    "nf-resnet50": ((3, 64, 64), 5, {}),
}
DEFAULT_CASE = ((3, 64, 64), 5, {})
# Networks outside FULL that take a smaller input than DEFAULT_CASE (few tokens), and the methods they run
# with here when not SUBSET: vit-b16 is vit-s16's code at another size (86M parameters to initialise twice;
# its count and layout: tests/test_transformers.py, on the meta device), convnext-tiny runs bn's token form
# (every method on a ViT, and a small ConvNeXt against torchvision's: tests/test_transformers.py).
SMALL = {"vit-s16": ((3, 32, 32), 5, {}), "convnext-tiny": ((3, 32, 32), 5, {}),
         "vit-tiny-digits": ((1, 8, 8), 10, {"groups": 4})}
ONLY = {"vit-b16": (), "convnext-tiny": ("bn",)}
# Networks exercised with every registered method; the others (the 101-layer nets, ResNeXt and any
# network added later) only with a few representative ones, to keep the run short.
FULL = set(CASES)
SUBSET = ("bn", "wn", "gn")
BATCH = 4          # ghost/seqnorm with ghost_groups=2 -> chunks of 2 samples
GHOST_GROUPS = 2
# Methods allowed to overflow in deep networks at initialisation. `ws` alone (WS convs, no activation
# norm after them) has unit-variance standardized weights, so each layer multiplies the activation
# scale by about sqrt(fan_in): Qiao et al.'s eq. 2 assumes "normalization layers such as BN or GN
# will normalize this convolutional layer again". linear50, the ResNets and WRN overflow float32.
UNBOUNDED = {"ws"}


def _pairs():
    out = []
    for net in models.names():
        methods = norms.names() if net in FULL else [m for m in ONLY.get(net, SUBSET) if m in norms.names()]
        out += [(net, m) for m in methods]
    return out


def _case(net: str):
    return CASES.get(net) or SMALL.get(net, DEFAULT_CASE)


def _bundle(method: str, net: str, **extra):
    _, _, opts = _case(net)
    return norms.get(method, ghost_groups=GHOST_GROUPS, **{**opts, **extra})


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


@pytest.mark.parametrize("net,method", _pairs(), ids=[f"{n}-{m}" for n, m in _pairs()])
def test_forward_backward_roundtrip(net, method):
    shape, classes, _ = _case(net)
    torch.manual_seed(0)
    model = models.build(net, _bundle(method, net), classes, shape)
    x = torch.randn(BATCH, *shape)
    y = torch.randint(0, classes, (BATCH,))

    model.train()
    out = model(x)
    assert out.shape == (BATCH, classes)
    nn.functional.cross_entropy(out, y).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if method in UNBOUNDED and not (_finite(out) and all(_finite(g) for g in grads)):
        pytest.xfail(f"{method} has no activation norm to bound the signal; {net} overflows float32 at init")
    assert _finite(out), f"non-finite train-mode output for {net} with {method}"
    assert grads, "no parameter received a gradient"
    assert all(_finite(g) for g in grads), "non-finite gradient"
    assert any(bool(g.abs().sum() > 0) for g in grads), "all gradients are zero"

    model.eval()
    with torch.no_grad():
        ref = model(x)
    assert ref.shape == (BATCH, classes) and _finite(ref)

    # state_dict round trip into a freshly built (differently seeded) model reproduces eval outputs.
    torch.manual_seed(1)
    other = models.build(net, _bundle(method, net), classes, shape)
    other.load_state_dict(model.state_dict())
    other.eval()
    with torch.no_grad():
        again = other(x)
    torch.testing.assert_close(again, ref, rtol=1e-5, atol=1e-5)


def test_every_network_is_registered():
    expected = {"mlp", "linear50", "cifar10-nv", "resnet18", "resnet50", "resnet101", "resnext50-32x4d",
                "resnext101-32x4d", "preact-resnet50", "nf-resnet50", "resnet56", "resnet20", "resnet8", "wrn28-10"}
    assert expected <= set(models.names())


def test_dropout_option_and_unknown_option():
    m = models.build("resnet18", "bn", 10, (3, 32, 32), dropout=0.5)
    assert isinstance(m.dropout, nn.Dropout) and m.dropout.p == 0.5
    w = models.build("wrn28-10", "bn", 10, (3, 32, 32), block_dropout=0.3)
    assert any(isinstance(mod, nn.Dropout) and mod.p == 0.3 for mod in w.modules())
    from normtrain.errors import UsageError
    with pytest.raises(UsageError, match="no option 'widths'"):
        models.build("resnet50", "bn", 10, (3, 32, 32), widths=(1,))


def test_classifier_is_the_last_layer():
    """The engine's output-norm tracker takes the last conv/linear module as the output layer."""
    for net in ("resnet18", "preact-resnet50", "nf-resnet50", "resnet56", "wrn28-10"):
        m = models.build(net, "bn", 7, (3, 32, 32))
        layers = [mod for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
        assert layers[-1] is m.fc and layers[-1].out_features == 7


# -- parameter counts and torchvision compatibility ----------------------------------------

# torchvision.models.<name>() parameter counts (1000 classes).
TORCHVISION_COUNTS = {
    "resnet18": ("resnet18", 11_689_512),
    "resnet50": ("resnet50", 25_557_032),
    "resnet101": ("resnet101", 44_549_160),
    "resnext50-32x4d": ("resnext50_32x4d", 25_028_904),
}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _torchvision():
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001 - a CPU torch next to PyPI's CUDA torchvision fails on import
        pytest.skip(f"torchvision unavailable: {e}")
    return torchvision


def test_resnet50_parameter_count():
    assert _count(models.build("resnet50", "bn", 1000)) == 25_557_032


@pytest.mark.parametrize("net", sorted(TORCHVISION_COUNTS))
def test_parameter_counts_match_torchvision(net):
    tv_name, expected = TORCHVISION_COUNTS[net]
    assert _count(models.build(net, "bn", 1000)) == expected


def test_resnext101_32x4d_parameter_count():
    # torchvision has only resnext101_32x8d; 32x4d is its ResNet(Bottleneck, [3, 4, 23, 3], groups=32,
    # width_per_group=4), 44,177,704 parameters (timm's resnext101_32x4d: 44.18M).
    assert _count(models.build("resnext101-32x4d", "bn", 1000)) == 44_177_704


@pytest.mark.parametrize("net", ["resnet18", "resnet50", "resnext50-32x4d"])
def test_torchvision_state_dict_loads_and_matches(net):
    tv = _torchvision()
    tv_name, expected = TORCHVISION_COUNTS[net]
    torch.manual_seed(0)
    ref = getattr(tv.models, tv_name)()
    assert _count(ref) == expected
    ours = models.build(net, "bn", 1000)
    ours.load_state_dict(ref.state_dict())  # strict: same keys and shapes
    ref.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


# -- init: the reference we claim (DESIGN §5: torchvision's ResNet init) ---------------------------------

def test_kaiming_init_is_torchvisions_resnet50_init():
    """He fan_out on the convolutions only; the classifier keeps PyTorch's Linear default, as torchvision's fc.

    From the same seed our ResNet-50 draws exactly torchvision's weights, and the
    classifier's std is torchvision's and PyTorch's Linear default (1/sqrt(3 * 2048) = 0.0128) within 5%, not He
    fan_out's sqrt(2/classes)."""
    tv = _torchvision()
    torch.manual_seed(0)
    ref = tv.models.resnet50()
    torch.manual_seed(0)
    ours = models.build("resnet50", "bn", 1000)
    for (k, a), (k2, b) in zip(ref.state_dict().items(), ours.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    std_ref, std_ours = float(ref.fc.weight.detach().std()), float(ours.fc.weight.detach().std())
    assert std_ours == pytest.approx(std_ref, rel=0.05) and std_ours == pytest.approx(1 / math.sqrt(3 * 2048), rel=0.05)
    assert float(ours.fc.bias.detach().abs().max()) > 0  # PyTorch's default bias, not zeros
    conv = ours.layer1[0].conv2.weight.detach()  # 64 -> 64, 3x3: fan_out 576
    assert float(conv.std()) == pytest.approx(math.sqrt(2 / 576), rel=0.05)


def test_recipe_inits_keep_their_own_linear_init():
    """xavier / caffe-xavier (the papers' stated inits) set the classifier too; kaiming leaves it."""
    torch.manual_seed(0)
    m = models.build("resnet18", "bn", 10, (3, 32, 32), init="xavier")
    bound = math.sqrt(6 / (512 + 10))
    w = m.fc.weight.detach()
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.9 * bound
    assert float(m.fc.bias.detach().abs().max()) == 0
    torch.manual_seed(0)
    d = models.build("resnet18", "bn", 10, (3, 32, 32), init="default")
    torch.manual_seed(0)
    k = models.build("resnet18", "bn", 10, (3, 32, 32), init="kaiming")
    assert torch.equal(d.fc.weight, k.fc.weight) and torch.equal(d.fc.bias, k.fc.bias)
    assert not torch.equal(d.conv1.weight, k.conv1.weight)


# Methods whose definition puts the initial loss elsewhere, and why (see UNBOUNDED above for ws).
INIT_LOSS_EXEMPT = {"ws": "WS alone: unit-std weights with no activation norm multiply the scale by ~sqrt(fan_in) "
                          "per layer and overflow (norms list: 'deep nets overflow')"}
# Methods defined on their own network: nf is the NF-ResNet's set of pieces (scaled WS, gamma-ReLU, the
# alpha/beta block); in a torchvision-layout ResNet, without its beta bookkeeping, the variance grows.
INIT_LOSS_NET = {"nf": "nf-resnet50"}


@pytest.mark.parametrize("method", [m for m in norms.names() if m not in INIT_LOSS_EXEMPT])
def test_initial_loss_is_near_chance(method):
    """Every method starts near chance: cross-entropy within 20% of ln(classes) on random data (ResNet-18
    with kaiming init, 10 classes, 32 samples of 3x64x64 noise, training mode)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 64, 64, generator=g), torch.randint(0, 10, (32,), generator=g)
    torch.manual_seed(0)
    m = models.build(INIT_LOSS_NET.get(method, "resnet18"), norms.get(method, ghost_groups=GHOST_GROUPS), 10,
                     (3, 64, 64)).train()
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(m(x), y))
    assert loss == pytest.approx(math.log(10), rel=0.2), f"{method}: initial loss {loss:.3g}"


def test_resnext101_matches_torchvision_layout():
    _torchvision()  # skips when torchvision cannot be imported
    from torchvision.models.resnet import Bottleneck, ResNet
    ref = ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4)
    ours = models.build("resnext101-32x4d", "bn", 1000)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_zero_init_residual_is_opt_in():
    default = models.build("resnet50", "bn", 10, (3, 32, 32))
    assert all(bool((blk.bn3.weight == 1).all()) for blk in default.layer1)
    zero = models.build("resnet50", "bn", 10, (3, 32, 32), zero_init_residual=True)
    assert all(bool((blk.bn3.weight == 0).all()) for layer in (zero.layer1, zero.layer4) for blk in layer)


def test_resnet56_layout():
    m = models.build("resnet56", "bn", 10, (3, 32, 32))
    stages = [m.layer1, m.layer2, m.layer3]
    assert [len(s) for s in stages] == [9, 9, 9]
    assert [s[0].conv2.out_channels for s in stages] == [16, 32, 64]
    # Option-B shortcuts: a 1x1 conv + norm exactly where the shape changes.
    projections = [blk.downsample for s in stages for blk in s if blk.downsample is not None]
    assert len(projections) == 2 and all(p[0].kernel_size == (1, 1) for p in projections)
    # 2 + 6 * 9 conv layers + fc = 56 weighted layers; option A has 853,018 parameters, option B 2,752 more.
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d) and mod.kernel_size == (3, 3)]
    assert len(convs) + 1 == 56
    assert _count(m) == 855_770


def test_wrn28_10_layout():
    m = models.build("wrn28-10", "bn", 100, (3, 32, 32))
    assert [len(s) for s in (m.layer1, m.layer2, m.layer3)] == [4, 4, 4]
    assert [s[0].conv1.out_channels for s in (m.layer1, m.layer2, m.layer3)] == [160, 320, 640]
    assert abs(_count(m) - 36.5e6) < 0.1e6  # Zagoruyko & Komodakis Table: WRN-28-10 36.5M


def test_preact_resnet50_layout():
    m = models.build("preact-resnet50", "bn", 10, (3, 64, 64))
    first = m.layer1[0]
    assert isinstance(first.preact, nn.Sequential) and len(first.preact) == 0  # no pre-activation at all
    transition = m.layer2[0]
    assert isinstance(transition.preact[0], nn.BatchNorm2d)  # shared by projection and branch
    inner = m.layer2[1]
    assert isinstance(inner.preact, nn.Identity) and isinstance(inner.residual_branch[0], nn.BatchNorm2d)
    assert isinstance(m.final[0], nn.BatchNorm2d)


# -- cifar10-nv (Gitman & Ginsburg Table 2) -------------------------------------------------

def test_cifar10_nv_shapes_and_final_relu():
    m = models.build("cifar10-nv", "bn", 10, (3, 28, 28))
    seen = []
    for mod in m.modules():
        if isinstance(mod, (nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
            mod.register_forward_hook(lambda mod, i, o, kind=type(mod).__name__: seen.append((kind, i[0], o)))
    m.eval()
    m(torch.randn(2, 3, 28, 28))
    (k1, _, p1), (k2, _, p2), (k3, pool_in, _) = seen
    assert (k1, k2, k3) == ("MaxPool2d", "MaxPool2d", "GlobalAvgPool2d")  # an nn.AdaptiveAvgPool2d(1)
    assert p1.shape[-2:] == (14, 14) and p2.shape[-2:] == (7, 7)   # ceil mode: 28 -> 14 -> 7
    assert pool_in.shape[1:] == (10, 5, 5)                          # conv7 without padding: 7 -> 5
    assert bool((pool_in >= 0).all())                               # conv9 is followed by ReLU
    layers = list(m.net)
    assert isinstance(layers[-3], nn.ReLU) and isinstance(layers[-2], nn.AdaptiveAvgPool2d)


@pytest.mark.parametrize("method", ["none", "wn", "bn"])
def test_preact_identity_shortcut_carries_the_raw_input(method):
    """x + f(x) in every pre-activation block without projection, also for methods whose pre-activation norm is
    the identity (an in-place ReLU on the block input would turn the shortcut into ReLU(x))."""
    torch.manual_seed(0)
    m = models.build("preact-resnet50", method, 5, (3, 32, 32)).train()
    block = m.layer2[1]
    x = torch.randn(2, block.residual_branch[0].num_features if method == "bn" else 512, 4, 4)
    with torch.no_grad():
        ref = x.clone() + block.residual_branch(x.clone())
        out = block(x)
    torch.testing.assert_close(out, ref)


def test_cifar10_nv_width_option_scales_the_channels_only():
    full = [c.out_channels for c in models.build("cifar10-nv", "bn", 10, (3, 28, 28)).modules()
            if isinstance(c, nn.Conv2d)]
    assert full == [128, 128, 128, 256, 256, 256, 320, 320, 10]
    m = models.build("cifar10-nv", "bn", 10, (1, 16, 16), width=0.125)
    assert [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)] == [16, 16, 16, 32, 32, 32, 40, 40, 10]
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 10)            # 16 -> 8 -> 4 -> conv7 -> 2x2


def test_cifar10_nv_caffe_xavier_bound():
    torch.manual_seed(0)
    m = models.build("cifar10-nv", "bn", 10, (3, 28, 28), init="caffe-xavier")
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 9
    for conv in convs:
        w = conv.weight.detach()
        bound = math.sqrt(3.0 / w[0].numel())           # Caffe xavier: U(-sqrt(3/fan_in), +sqrt(3/fan_in))
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.9 * bound
        assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)


# -- NF-ResNet-50 (Brock et al. 2021a; Hoedt blog) ------------------------------------------

def test_nf_resnet_bookkeeping_matches_the_blog():
    m = models.build("nf-resnet50", _bundle("nf", "nf-resnet50"), 10, (3, 64, 64))
    blocks = [b for _, b in models.residual_blocks(m)]
    assert len(blocks) == 16 and all(isinstance(b, NFBottleneck) for b in blocks)
    a2 = 0.2 ** 2
    expected_in, v = [], 1.0
    for depth in (3, 4, 6, 3):           # the blog's _make_subnet
        for i in range(depth):
            expected_in.append(v)
            v = (1.0 + a2) if i == 0 else v + a2
    assert [b.beta for b in blocks] == pytest.approx([math.sqrt(e) for e in expected_in])
    assert len(blocks[0].preact) == 0  # the first block has no pre-activation (no_preact=True)
    assert all(b.skip_gain.item() == 0.0 for b in blocks)  # SkipInit by default


def test_nf_resnet_signal_propagation_follows_expected_variance():
    """White noise through NF-ResNet-50 at init (skip_gain = 1): each block's output variance is
    its tracked expected variance, growing by alpha^2 per block and reset to 1 + alpha^2 at each
    transition (Hoedt blog Fig. 5, right). Tolerance 20%: small images (96x96 -> 3x3 in the last
    stage, where zero padding lowers the variance) and 4 samples; at 128x128 the ratios are within 8%."""
    torch.manual_seed(0)
    m = models.build("nf-resnet50", _bundle("nf", "nf-resnet50", nf_skip_gain=1.0), 10, (3, 96, 96))
    m.eval()
    sp = models.signal_prop(m, torch.randn(4, 3, 96, 96))
    blocks = [b for _, b in models.residual_blocks(m)]
    expected = [b.expected_var for b in blocks]
    assert expected[:4] == pytest.approx([1.04, 1.08, 1.12, 1.04])
    for name, var, exp in zip(sp["names"], sp["var"], expected):
        assert var == pytest.approx(exp, rel=0.2), name
    # The variance grows within a stage and drops back at every transition block.
    starts = {0, 3, 7, 13}
    for i in range(1, 16):
        if i in starts:
            assert sp["var"][i] < sp["var"][i - 1]
        else:
            assert sp["var"][i] > sp["var"][i - 1]
    # Scaled WS keeps the squared channel mean near 0 and the residual branch near unit variance.
    assert max(sp["mean2"]) < 0.1
    assert all(0.5 < r < 1.3 for r in sp["res_var"])


def test_signal_prop_on_bn_resnets():
    for net, n in (("resnet50", 16), ("preact-resnet50", 16), ("resnet56", 27), ("wrn28-10", 12)):
        m = models.build(net, "bn", 10, (3, 32, 32))
        m.eval()
        sp = models.signal_prop(m, torch.randn(2, 3, 32, 32))
        assert len(sp["names"]) == n
        assert all(math.isfinite(v) for v in sp["var"] + sp["res_var"] + sp["mean2"])


# -- residual-branch scalings and stochastic depth, wired by models.build ---------------------

def test_every_network_marks_exactly_its_classifier():
    """AGC finds the classifier through the bundle's last=True mark, not by attribute name."""
    from normtrain.norms.bundle import output_layers
    for net in ("mlp", "linear50", "cifar10-nv", "resnet18", "preact-resnet50", "nf-resnet50", "resnet56",
                "wrn28-10"):
        shape, classes, opts = CASES[net]
        m = models.build(net, norms.get("bn", **opts), classes, shape)
        layers = [mod for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
        assert output_layers(m) == [layers[-1]], net


@pytest.mark.parametrize("scaling", ["sqrt2", "rescale", "depth", "skipinit"])
def test_residual_scaling_is_wired_into_every_block(scaling):
    from normtrain.norms import residual
    m = models.build("resnet56", norms.get("bn", groups=4, residual=scaling, residual_depth_power=0.5), 10,
                     (3, 32, 32), drop_path=0.1)
    blocks = [b for _, b in models.residual_blocks(m)]
    L = len(blocks)
    assert L == 27
    for i, blk in enumerate(blocks):
        a, b = residual.coefficients(scaling, i, L, 0.5)
        assert isinstance(blk.join, residual.ResidualJoin) and isinstance(blk.join.inner, norms.bundle.Add)
        assert (blk.join.shortcut_scale, blk.join.branch_scale) == pytest.approx((a, b))
        assert (blk.join.skip is not None) == (scaling == "skipinit")
        assert blk.join.drop.p == pytest.approx(0.1 * (i + 1) / L)  # Huang et al.'s linear rule
    x = torch.randn(2, 3, 32, 32)
    m.train()
    m(x).sum().backward()
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x))  # stochastic depth is off in eval


def test_skipinit_blocks_start_as_identity_in_a_network():
    m = models.build("resnet56", norms.get("bn", groups=4, residual="skipinit"), 10, (3, 32, 32)).eval()
    blk = m.layer2[3]                       # identity shortcut, ReLU after the join
    x = torch.rand(2, 32, 16, 16)           # block inputs are post-ReLU, so >= 0
    with torch.no_grad():
        torch.testing.assert_close(blk(x), x)
        blk.join.skip.gain.fill_(1.0)
        plain = models.build("resnet56", norms.get("bn", groups=4), 10, (3, 32, 32)).eval()
        plain_blk = plain.layer2[3]
        plain_blk.load_state_dict({k.replace("join.skip.gain", ""): v for k, v in blk.state_dict().items()
                                   if "join" not in k})
        torch.testing.assert_close(blk(x), plain_blk(x))  # gain 1: the plain block again


def test_drop_path_eval_is_the_plain_network_and_training_drops_branches():
    torch.manual_seed(0)
    plain = models.build("resnet56", norms.get("bn", groups=4), 10, (3, 32, 32))
    dropped = models.build("resnet56", norms.get("bn", groups=4), 10, (3, 32, 32), drop_path=0.5)
    assert plain.state_dict().keys() == dropped.state_dict().keys()  # StochasticDepth has no state
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    plain.eval(), dropped.eval()
    with torch.no_grad():
        torch.testing.assert_close(dropped(x), plain(x))
        dropped.train(), plain.train()
        torch.manual_seed(1)
        a = dropped(x)
        assert not torch.allclose(a, dropped(x))  # a fresh draw of dropped branches each forward


def test_residual_options_need_residual_blocks():
    from normtrain.errors import UsageError
    with pytest.raises(UsageError, match="model 'mlp' has none"):
        models.build("mlp", norms.get("bn", groups=4), 10, (1, 28, 28), drop_path=0.1)
    with pytest.raises(UsageError, match="norm.residual=depth"):
        models.build("cifar10-nv", norms.get("bn", residual="depth"), 10, (3, 28, 28))
    with pytest.raises(UsageError, match="drop_path"):
        models.build("resnet18", "bn", 10, (3, 32, 32), drop_path=1.0)


# -- the declared widths the torch-free checks read (issue 17 point 18) ---------------------------

def _normalized_widths(name: str, **options) -> set:
    """The channel counts that network `name` really splits into norm.groups groups (GroupNorm's own
    check, recorded while the network is built on meta with gn)."""
    from normtrain.norms import gn
    seen = set()
    real = gn.check_groups

    def record(num_channels, groups):
        seen.add(num_channels)
        return real(num_channels, groups)
    gn.check_groups = record
    try:
        shape = (1, 8, 8) if name in ("mlp", "linear50", "vit-tiny-digits") else (3, 32, 32)
        with torch.device("meta"):
            models.build(name, norms.get("gn", groups=1), 10, shape, init="default", **options)
    finally:
        gn.check_groups = real
    return seen


BUILT_IN_NETWORKS = [n for n in models.names() if models.NETWORKS.package_of(n) is None]
BUILT_IN_METHODS = [n for n in norms.names() if norms.METHODS.package_of(n) is None]


@pytest.mark.parametrize("name", BUILT_IN_NETWORKS)
def test_declared_norm_widths_are_the_networks_own(name):
    """models.NORM_WIDTHS (read without torch by preflight) is what each network builds."""
    assert name in models.NORM_WIDTHS, f"declare {name}'s normalized widths in models.NORM_WIDTHS"
    assert models.norm_widths(name, {}) == _normalized_widths(name)
    if name == "mlp":
        assert models.norm_widths(name, {"widths": [12, 20]}) == _normalized_widths(name, widths=[12, 20]) == {12, 20}
    if name == "linear50":
        assert models.norm_widths(name, {"depth": 3, "width": 6}) == _normalized_widths(name, depth=3, width=6)


@pytest.mark.parametrize("method", BUILT_IN_METHODS)
def test_grouped_methods_are_exactly_those_that_need_groups_to_divide_the_width(method):
    """norms.GROUPED (read without torch) lists the methods whose norm layer needs norm.groups | C."""
    from normtrain.errors import UsageError
    try:
        with torch.device("meta"):
            models.build("mlp", norms.get(method, groups=7), 10, (1, 8, 8), widths=[10])
        needs = False
    except UsageError:
        needs = True
    assert needs == (method in norms.GROUPED)
