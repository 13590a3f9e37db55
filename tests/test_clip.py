"""Adaptive gradient clipping (Brock et al. 2021 §4.1) against a hand computation, and its use in the engine."""
import math

import pytest
import torch
from torch import nn

from normtrain import checkpoint, clip, config, dist, engine, norms
from normtrain.errors import UsageError


def _hand_agc(w: torch.Tensor, g: torch.Tensor, lam: float, eps: float = 1e-3) -> torch.Tensor:
    """The paper's rule, one unit at a time, in plain Python floats."""
    units = [(w.reshape(-1), g.reshape(-1))] if w.dim() <= 1 else list(zip(w.flatten(1), g.flatten(1)))
    out = []
    for wu, gu in units:
        wn = max(math.sqrt(sum(float(v) ** 2 for v in wu)), eps)
        gn = math.sqrt(sum(float(v) ** 2 for v in gu))
        factor = lam * wn / gn if gn / wn > lam else 1.0
        out.append([float(v) * factor for v in gu])
    return torch.tensor(out).reshape(g.shape)


def test_agc_matches_the_hand_computation_unit_by_unit():
    torch.manual_seed(0)
    bundle = norms.get("none")
    conv, hidden, last = bundle.conv(2, 3, 2), bundle.linear(12, 4), bundle.linear(4, 3, last=True)
    model = nn.Sequential(conv, nn.Flatten(), hidden, last)
    model(torch.randn(5, 2, 3, 3)).square().sum().backward()
    with torch.no_grad():
        hidden.weight[1].mul_(1e-5)  # a unit whose weight norm is under the 1e-3 floor
        conv.weight.grad[0].mul_(1e-4)  # a unit whose gradient-to-weight ratio stays under lambda
    lam = 0.05
    before = {n: (p.detach().clone(), p.grad.clone()) for n, p in model.named_parameters()}
    clip.adaptive_clip_(clip.agc_parameters(model), lam)
    clipped_units = 0
    for n, p in model.named_parameters():
        w, g = before[n]
        if n.startswith("3."):  # the classifier: not clipped (Brock et al. §4.1)
            assert torch.equal(p.grad, g), n
            continue
        expected = _hand_agc(w, g, lam)
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-8, msg=n)
        clipped_units += int((expected != g).flatten(1).any(1).sum()) if g.dim() > 1 else int(not torch.equal(expected, g))
    assert clipped_units >= 3
    # the unit under the floor is clipped against 1e-3, not against its tiny norm
    torch.testing.assert_close(hidden.weight.grad[1].norm(), torch.tensor(lam * 1e-3), rtol=1e-4, atol=0)
    # the large-weight unit is left alone
    torch.testing.assert_close(conv.weight.grad[0], before["0.weight"][1][0])


def test_unitwise_norm_shapes():
    w = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(clip.unitwise_norm(w).flatten(), w.flatten(1).norm(dim=1))
    b = torch.randn(7)
    torch.testing.assert_close(clip.unitwise_norm(b), b.norm())  # a vector is one unit


def test_engine_step_clips_hidden_units_not_the_classifier(tmp_path):
    """One SGD step (lr 1, no momentum or decay) under AGC moves each hidden unit by at most lambda of its norm."""
    lam = 1e-3
    r = config.load("digits-mlp", [("log.progress", False), ("log.tensorboard", False), ("run.device", "cpu"),
                                   ("run.out", str(tmp_path)), ("norm.name", "none"), ("optim.lr", 1.0),
                                   ("optim.momentum", 0.0), ("optim.weight_decay", 0.0), ("train.max_steps", 1),
                                   ("train.grad_clip_mode", "agc"), ("train.grad_clip", lam)])
    start = engine.setup_model(r, dist.Dist(device=torch.device("cpu")), 10, (1, 8, 8)).state_dict()
    res = engine.train(r)
    assert res["steps"] == 1
    end = checkpoint.load(tmp_path / "checkpoints/last.pt")["model"]
    for k in ("net.1.weight", "net.4.weight"):  # hidden linear layers: |dW_i| <= lambda max(|W_i|, 1e-3)
        step = (end[k] - start[k]).norm(dim=1)
        assert (step <= lam * start[k].norm(dim=1).clamp(min=1e-3) * (1 + 1e-4)).all(), k
        assert step.max() > 0.5 * lam * start[k].norm(dim=1).max()
    cls = (end["net.7.weight"] - start["net.7.weight"]).norm(dim=1)
    assert cls.max() > 10 * lam * start["net.7.weight"].norm(dim=1).max()  # the classifier is not clipped


def test_agc_mode_needs_a_lambda():
    with pytest.raises(UsageError, match="grad_clip_mode: agc needs grad_clip > 0"):
        config.load("digits-mlp", [("train.grad_clip_mode", "agc")])
    with pytest.raises(UsageError, match="grad_clip_mode: 'adaptive' is not one of: norm, agc"):
        config.load("digits-mlp", [("train.grad_clip_mode", "adaptive"), ("train.grad_clip", 0.01)])
