"""ViT and ConvNeXt: torchvision's layout (parameter counts on the meta device, state_dicts and outputs of
small configurations), pre/post norm, every method on the small ViT, residual options, bad input."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from normtrain import models, norms
from normtrain.errors import UsageError
from normtrain.models.convnext import ConvNeXt
from normtrain.models.vit import VisionTransformer

from .conftest import run_cli


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_equal_torchvision_with_ln():
    with torch.device("meta"):
        vit_b = models.build("vit-b16", "ln", 1000, (3, 224, 224), init="default")
        vit_s = models.build("vit-s16", "ln", 1000, (3, 224, 224), init="default")
        cnx = models.build("convnext-tiny", "ln", 1000, (3, 224, 224), init="default")
        tv_b, tv_c = torchvision.models.vit_b_16(), torchvision.models.convnext_tiny()
        tv_s = torchvision.models.VisionTransformer(224, 16, 12, 6, 384, 1536)
    assert count(vit_b) == count(tv_b) == 86_567_656
    assert count(cnx) == count(tv_c) == 28_589_128
    assert count(vit_s) == count(tv_s) == 22_050_664
    assert vit_b.state_dict().keys() == {k.replace("in_proj_", "in_proj.") for k in tv_b.state_dict()}
    assert cnx.state_dict().keys() == tv_c.state_dict().keys()


def test_small_vit_loads_torchvision_weights_and_computes_the_same():
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                              hidden_dim=16, mlp_dim=32, num_classes=5)
    nn.init.normal_(tv.heads.head.weight)  # torchvision starts it at 0: make the output depend on everything
    ours = VisionTransformer(norms.get("ln", eps=1e-6), 5, (3, 32, 32), 8, 2, 16, 2, 32)
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(3, 3, 32, 32)
    tv.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-5, atol=1e-6)


def test_small_convnext_loads_torchvision_weights_and_computes_the_same():
    from torchvision.models.convnext import CNBlockConfig
    tv = torchvision.models.ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, 24, 2), CNBlockConfig(24, None, 1)],
                                     num_classes=5, layer_scale=0.5)
    ours = ConvNeXt(norms.get("ln", eps=1e-6), 5, (3, 32, 32), ((8, 1), (16, 2), (24, 1)), layer_scale=0.5)
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(3, 3, 32, 32)
    tv.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-5, atol=1e-6)


def test_torchvision_init_under_model_init_default():
    m = models.build("vit-tiny-digits", "ln", 10, (1, 8, 8), init="default")
    assert torch.count_nonzero(m.heads.head.weight) == 0 and torch.count_nonzero(m.class_token) == 0
    assert 0.01 < float(m.encoder.pos_embedding.detach().std()) < 0.03
    assert float(m.conv_proj.weight.detach().std()) == pytest.approx(0.5, rel=0.2)   # sqrt(1 / fan_in), fan_in 4
    wn = models.build("vit-tiny-digits", "wn", 10, (1, 8, 8), init="default")
    assert torch.count_nonzero(wn.heads.head.weight) > 0                     # a WN direction cannot start at 0
    c = models.build("convnext-tiny", "ln", 10, (3, 32, 32), init="default")
    assert float(c.classifier[2].weight.detach().std()) == pytest.approx(0.02, rel=0.2)


def test_no_weight_decay_names_parameters_of_the_network():
    m = models.build("vit-tiny-digits", "ln", 10, (1, 8, 8))
    names = dict(m.named_parameters())
    assert m.no_weight_decay() == {"class_token", "encoder.pos_embedding"} and m.no_weight_decay() <= set(names)
    with torch.device("meta"):
        c = models.build("convnext-tiny", "ln", 10, (3, 32, 32))
    nwd = c.no_weight_decay()
    assert len(nwd) == 18 and all(dict(c.named_parameters())[n].shape[1:] == (1, 1) for n in nwd)


def test_optimizer_keeps_the_named_parameters_out_of_weight_decay():
    """DeiT/timm: with no_decay_norm_bias the class token and position embedding (3-d) are not decayed."""
    from normtrain import config, optim
    m = models.build("vit-tiny-digits", "ln", 10, (1, 8, 8))
    names = {id(p): n for n, p in m.named_parameters()}
    decay, no_decay = optim.build(m, config.OptimConfig(name="adamw", weight_decay=0.05, no_decay_norm_bias=True),
                                  torch.device("cpu")).param_groups
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"class_token", "encoder.pos_embedding"} <= skipped
    assert skipped == {n for n, p in m.named_parameters() if p.ndim <= 1} | m.no_weight_decay()
    assert all(p.ndim > 1 and names[id(p)] not in m.no_weight_decay() for p in decay["params"])
    # without the switch every parameter is decayed, the network's list included
    only, = optim.build(m, config.OptimConfig(name="adamw", weight_decay=0.05), torch.device("cpu")).param_groups
    assert len(only["params"]) == len(names)


def _block_by_hand(block, x, pre: bool):
    attn = block.self_attention
    if pre:
        x = x + attn(block.ln_1(x))
        return x + block.mlp(block.ln_2(x))
    x = block.ln_1(x + attn(x))
    return block.ln_2(x + block.mlp(x))


@pytest.mark.parametrize("position", ["pre", "post"])
def test_norm_position(position):
    m = models.build("vit-tiny-digits", "ln", 10, (1, 8, 8), norm_position=position, depth=2).eval()
    x = torch.randn(2, 17, 64)
    blk = m.encoder.layers[0]
    with torch.no_grad():
        torch.testing.assert_close(blk(x), _block_by_hand(blk, x, position == "pre"))
    assert isinstance(m.encoder.ln, nn.LayerNorm if position == "pre" else nn.Identity)
    with pytest.raises(UsageError, match="norm_position: 'middle' is not one of: pre, post"):
        models.build("vit-tiny-digits", "ln", 10, (1, 8, 8), norm_position="middle")


def test_every_method_on_the_small_vit_trains_or_is_refused():
    """Each registered method: a finite forward and backward (train and eval) on the small ViT, or the
    one-line refusal when it has no token form (`Normalizer.tokens`)."""
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    for name in norms.names():
        bundle = norms.get(name, groups=4, ghost_groups=2)
        if bundle.tokens is None:
            with pytest.raises(UsageError, match="has no meaning in a transformer"):
                models.build("vit-tiny-digits", bundle, 10, (1, 8, 8), depth=2)
            continue
        m = models.build("vit-tiny-digits", bundle, 10, (1, 8, 8), init="default", depth=2)
        nn.functional.cross_entropy(m(x), y).backward()
        grads = [p.grad for p in m.parameters() if p.grad is not None]
        if name == "ws":  # WS alone: nothing normalizes the activations (tests/test_models.py UNBOUNDED)
            continue
        assert grads and all(bool(torch.isfinite(g).all()) for g in grads), name
        with torch.no_grad():
            assert bool(torch.isfinite(m.eval()(x)).all()), name


def test_residual_options_act_on_every_branch_of_a_vit_and_every_convnext_block():
    from normtrain.norms import residual
    m = models.build("vit-tiny-digits", norms.get("ln", residual="depth"), 10, (1, 8, 8), drop_path=0.2, depth=3)
    blocks = models.residual_blocks(m)
    assert len(blocks) == 6                                   # attention and MLP of each of 3 blocks
    assert all(isinstance(b.join, residual.ResidualJoin) and b.join.branch_scale == pytest.approx(1 / 6)
               for _, b in blocks)
    assert blocks[-1][1].join.drop.p == pytest.approx(0.2)
    with torch.device("meta"):
        c = models.build("convnext-tiny", "ln", 10, (3, 32, 32), drop_path=0.1)
    assert len(models.residual_blocks(c)) == 18


def test_bad_shapes_and_options_are_usage_errors():
    with pytest.raises(UsageError, match="divisible by 16"):
        models.build("vit-s16", "ln", 10, (3, 40, 40))
    with pytest.raises(UsageError, match="at least 32x32"):
        models.build("convnext-tiny", "ln", 10, (3, 16, 16))
    with pytest.raises(UsageError, match="depth"):
        models.build("vit-tiny-digits", "ln", 10, (1, 8, 8), depth=0)
    with pytest.raises(UsageError, match="no option 'widths'"):
        models.build("vit-tiny-digits", "ln", 10, (1, 8, 8), widths=[3])


def test_cli_refuses_a_method_without_token_form_before_writing(tmp_path):
    p = run_cli("--norm", "evonorm-s0", "--set", "model.name=vit-tiny-digits", "--set", "model.options={}",
                "--out", tmp_path / "out")
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "norm 'evonorm-s0' has no meaning in a transformer" in lines[0] and "dyt" in lines[0]
    assert not (tmp_path / "out").exists()


def test_small_vit_under_2_process_ddp_with_each_transformer_method(tmp_path):
    """gloo, 2 processes: DDP's weights are those of the per-process batches (bn's statistics are each
    process's own: not those of the global batch), and those of the global batch for every other method."""
    from .ddp_checks import run_check
    res = run_check("vit", tmp_path / "vit.json", ["ln", "rmsn", "dyt", "bn", "none"])
    for name, r in res.items():
        assert r["world"] == 2 and r["rank_spread"] < 1e-12 and r["per_process_diff"] < 1e-10, (name, r)
        assert r["batch_statistics"] == (name == "bn"), (name, r)
        if r["batch_statistics"]:
            assert r["global_batch_diff"] > 1e-6, (name, r)     # per-process statistics, not synced
        else:
            assert r["global_batch_diff"] < 1e-10, (name, r)
