"""Scenarios ws-hessian, ws-micro-batch, ghost-ranking, wn-small-net, trelu-wn-instability, residual-scalings:
each verdict in every state it can reach, on constructed inputs, and the pieces they measure with
(Hessian identities, gradient accumulation, SPP shapes, plateau with noise, block norms). Their end-to-end
runs, at their defaults, are in test_scenario_rerun.py (compared with docs/scenarios/verdicts.json)."""
import math

import pytest
import torch

from normtrain import models, norms
from normtrain.scenarios import (common, ghost_ranking, measures, residual_scalings, spp, trelu_wn_instability,
                                 wn_small_net, ws_hessian, ws_micro_batch)

R, N, I = common.REPRODUCED, common.NOT_REPRODUCED, common.INCONCLUSIVE
MODULES = (ws_hessian, ws_micro_batch, ghost_ranking, wn_small_net, trelu_wn_instability, residual_scalings)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_paper_plan_is_data_naming_real_parameters(module):
    """PAPER (for --scale paper) overrides only real Params fields, with values that pass Params.check,
    and names the recipes that exist; every paper value says where it comes from."""
    import dataclasses

    from normtrain import config
    plan = module.PAPER
    assert plan["where"] and plan["dataset"] in (None, "imagenet", "cifar10", "cifar100", "mnist")
    fields = {f.name for f in dataclasses.fields(module.Params)}
    assert set(plan["params"]) <= fields, set(plan["params"]) - fields
    dataclasses.replace(module.Params(), **plan["params"]).check()
    for r in plan["recipes"]:
        config.load(r)
    assert all(v["where"] for v in plan["paper_values"].values())


def states(v):
    return {q["name"]: q["state"] for q in v["parts"]}


FLAT = [1.0] * 40                         # a converged (flat) loss curve
FALLING = [2.0 - 0.04 * i for i in range(40)]  # still going down: not converged


# -- measures ---------------------------------------------------------------------------------------------

def test_settled_allows_for_noise_but_not_for_a_decline():
    noisy = [1.0] * 80 + [1.3, 0.9] * 5 + [1.2, 0.8] * 5    # flat but noisy: the last window 9% below the one before
    assert not common.plateaued(noisy)                      # the plain 5% rule reads the noise as a decline
    assert measures.settled(noisy)                          # 2 standard errors of the window means are ~16%
    assert not measures.settled(FALLING) and not measures.settled([2.0 - 0.01 * i for i in range(100)])
    assert measures.settled(FLAT) and measures.plateau_tolerance(FLAT) == 0.05


def test_row_coherence_and_block_norms():
    assert measures.row_coherence(torch.eye(4)) == pytest.approx(0.0)
    assert measures.row_coherence(torch.tensor([[1.0, 0.0], [1.0, 1.0]])) == pytest.approx(1 / math.sqrt(2))
    torch.manual_seed(0)
    m = models.build("resnet8", "bn", 10, (1, 8, 8)).eval()
    probe = measures.BlockNorms(m)
    x = torch.randn(3, 1, 8, 8)
    probe.active = True
    with torch.no_grad():
        out = m(x)
    assert probe.names == ["first", "layer1.0", "layer2.0", "layer3.0"]
    with torch.no_grad():
        first = m.bn1(m.conv1(x)).flatten(1).norm(dim=1).mean()         # after the norm that follows conv1
        last = m.layer3(m.layer2(m.layer1(m.relu(m.bn1(m.conv1(x)))))).flatten(1).norm(dim=1).mean()
    assert probe.values["first"] == pytest.approx(float(first), rel=1e-5)
    assert probe.values["layer3.0"] == pytest.approx(float(last), rel=1e-5)
    probe.values, probe.active = {}, False
    with torch.no_grad():
        m(x)                                                             # inactive: nothing recorded
    assert probe.values == {}
    probe.remove()
    torch.manual_seed(0)
    m = models.build("resnet8", "none", 10, (1, 8, 8)).eval()             # no norm: the conv's own output,
    probe = measures.BlockNorms(m)                                        # before the in-place ReLU
    probe.active = True
    with torch.no_grad():
        m(x)
        first = m.conv1(x).flatten(1).norm(dim=1).mean()
    assert probe.values["first"] == pytest.approx(float(first), rel=1e-5)


# -- ws-hessian -------------------------------------------------------------------------------------------

def _sym(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a + a.T + 0.5  # a non-zero grand sum S


def test_ws_hessian_analyse_on_constructed_hessians():
    hd = _sym(6)
    p = torch.eye(6, dtype=torch.float64) - 1.0 / 6
    good = ws_hessian.analyse(p @ hd @ p, hd)                       # eq. 17 holds exactly
    assert good["eq17_error"] < 1e-12 and good["eq18_sum"] < 1e-12 and good["eq19_identity_error"] < 1e-12
    assert good["bound_slack"] >= 0 and good["shrink"] < 1
    bad = ws_hessian.analyse(hd, hd)                                # no centering: H = Ḣ
    assert bad["eq17_error"] > 1e-3 and bad["bound_slack"] < 0
    assert ws_hessian.control(hd)["bound_slack"] < 0 and ws_hessian.control(p @ hd @ p)["share"] < 1e-20


def test_ws_hessian_identities_hold_on_the_network():
    """The autograd Hessians of the ws-gn network and of its centred twin satisfy eq. 17-19; the twin computes
    the same loss."""
    torch.manual_seed(0)
    model = ws_hessian.build(norms.get("ws-gn", groups=2), 4, 1, 3).double()
    twin = ws_hessian.centred_twin(model, 4, 2, 1, 3)
    x, y = torch.randn(5, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    import torch.nn.functional as F
    assert float(F.cross_entropy(model(x), y)) == pytest.approx(float(F.cross_entropy(twin(x), y)), abs=1e-12)
    h = ws_hessian.hessian(model, "3", 1, model[3].weight[1], x, y)
    hd = ws_hessian.hessian(twin, "3", 1, twin[3].weight[1], x, y)
    a = ws_hessian.analyse(h, hd)
    assert a["I"] == 36 and a["eq17_error"] < 1e-9 and a["eq18_sum"] < 1e-9 and a["bound_slack"] > -1e-9


def _checks(n=4, err=1e-15, slack=0.05):
    return [{"I": 9, "eq17_error": err, "eq18_sum": 1e-17, "eq19_identity_error": 1e-16, "bound_slack": slack,
             "shrink": 0.7, "fro2_h": 1.0, "fro2_hdot": 2.0, "bound": 1.2, "when": "init"} for _ in range(n)]


def _controls(n=4, share=0.2):
    return [{"I": 9, "fro2": 1.0, "s2_over_i2": share, "share": share, "bound_slack": -share} for _ in range(n)]


def test_ws_hessian_verdict_states():
    v = ws_hessian.verdict(_checks(), _controls(), 1e-9)
    assert v["state"] == R and all(s == R for s in states(v).values())
    v = ws_hessian.verdict(_checks(err=1e-3), _controls(), 1e-9)               # eq. 17 broken
    assert v["state"] == N and states(v)["eq. 17"] == N
    v = ws_hessian.verdict(_checks(slack=-0.01), _controls(), 1e-9)            # eq. 19's bound broken
    assert states(v)["eq. 19"] == N
    v = ws_hessian.verdict(_checks(), _controls(share=0.0), 1e-9)              # S = 0: the bound is vacuous
    assert states(v)["control: no eq. 5"] == N and v["state"] == N
    assert ws_hessian.verdict([], [], 1e-9)["state"] == I


# -- ws-micro-batch ----------------------------------------------------------------------------------------

def test_ws_micro_batch_accumulation_is_exact_for_ws_gn_not_for_bn():
    p = ws_micro_batch.Params(batch_size=4, groups=8)
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    assert ws_micro_batch.accumulated_gap("ws-gn", p, x, y, 10, (1, 8, 8)) < 1e-5
    assert ws_micro_batch.accumulated_gap("bn", p, x, y, 10, (1, 8, 8)) > 1e-3
    names = [a[0] for a in ws_micro_batch.arms(p)]
    assert names == ["bn@B", "bn@1", "gn+ws@1"]
    assert [(a[2].micro, a[2].accum) for a in ws_micro_batch.arms(p)] == [(4, 1), (1, 4), (1, 4)]


def test_ws_micro_batch_verdict_states():
    curves = {a: FLAT for a in ("bn@B", "bn@1", "gn+ws@1")}
    gaps = {"ws-gn": 1e-7, "bn": 0.5}
    top = {"bn@B": [95.0, 95.2, 94.9], "bn@1": [60.0, 65.0, 62.0], "gn+ws@1": [95.1, 95.0, 95.2]}
    v = ws_micro_batch.verdict(top, curves, 1.4, gaps)
    assert v["state"] == R and states(v)["gn+ws@1 vs bn@B"] == R                # shown equal: "matches"
    assert v["parts"][0]["paper_value"]["value"]["gn+ws@1"] == 23.72
    low = dict(top, **{"gn+ws@1": [90.0, 90.5, 89.8]})
    assert states(ws_micro_batch.verdict(low, curves, 1.4, gaps))["gn+ws@1 vs bn@B"] == N
    noisy = dict(top, **{"gn+ws@1": [90.0, 97.0, 94.0]})
    assert states(ws_micro_batch.verdict(noisy, curves, 1.4, gaps))["gn+ws@1 vs bn@B"] == I
    v = ws_micro_batch.verdict(top, dict(curves, **{"bn@1": FALLING}), 1.4, gaps)   # bn@1 still training
    assert states(v)["bn@1 vs bn@B"] == I and states(v)["gn+ws@1 vs bn@B"] == R
    assert states(ws_micro_batch.verdict(top, curves, 1.4, {"ws-gn": 1e-2, "bn": 0.5}))["iteration size"] == N
    assert ws_micro_batch.verdict({}, {}, 1.4)["state"] == I


# -- ghost-ranking ------------------------------------------------------------------------------------------

def _ghost(top):
    curves = {k: FLAT for k in top}
    return ghost_ranking.verdict(top, curves, "bn", "g8", "seq", ["g2", "g8"], 1.4)


def test_ghost_ranking_verdict_states():
    up = {"bn": [90.0, 90.2, 89.9], "g2": [92.0, 92.1, 92.2], "g8": [93.0, 93.2, 92.9], "seq": [95.0, 95.1, 94.9]}
    v = _ghost(up)
    assert v["state"] == R and set(states(v).values()) == {R}
    down = dict(up, g8=[88.0, 88.1, 87.9])
    v = _ghost(down)
    assert states(v)["ghost vs bn"] == N and states(v)["G_M sweep"] == N and v["state"] == N
    same = dict(up, g8=[90.0, 90.1, 90.0], g2=[90.1, 90.0, 89.9])
    assert states(_ghost(same))["ghost vs bn"] == I          # shown equal within 1.4 points: inconclusive here
    v = ghost_ranking.verdict(up, dict({k: FLAT for k in up}, g8=FALLING), "bn", "g8", "seq", ["g2", "g8"], 1.4)
    assert states(v)["ghost vs bn"] == I and states(v)["seqnorm vs bn"] == R
    assert ghost_ranking.verdict({}, {}, "bn", "g8", "seq", ["g8"], 1.4)["state"] == I


def test_ghost_ranking_arms_follow_the_paper_sweep():
    p = ghost_ranking.Params()
    arms = ghost_ranking.arms(p)
    assert [a[0] for a in arms] == ["bn", "ghost G_M=2", "ghost G_M=4", "ghost G_M=8", "ghost G_M=16",
                                    "seqnorm G_C=4,G_M=8"]
    assert arms[-1][2] == {"groups": 4, "ghost_groups": 8}
    with pytest.raises(ValueError, match="divide"):
        ghost_ranking.Params(ghost_batches=[3]).check()


# -- wn-small-net --------------------------------------------------------------------------------------------

def _wn_inputs():
    loss = {"bn": [1.0, 1.02, 0.98], "wn": [0.5, 0.52, 0.49], "normprop": [0.4, 0.41, 0.42],
            "trelu-wn": [0.6, 0.61, 0.59], "none": [1.5, 1.48, 1.52]}
    top = {"bn": [90.0, 90.2, 90.1], "wn": [85.0, 85.2, 85.1], "normprop": [93.0, 93.2, 93.1],
           "trelu-wn": [92.0, 92.3, 92.1], "none": [90.1, 90.0, 90.2]}
    return loss, top, {m: True for m in loss}


def test_wn_small_net_verdict_states():
    loss, top, conv = _wn_inputs()
    v = wn_small_net.verdict(loss, top, conv, 0.05, 1.4)
    assert v["state"] == R and set(states(v).values()) == {R}
    v = wn_small_net.verdict(loss, dict(top, wn=[95.0, 95.1, 95.2]), conv, 0.05, 1.4)   # WN beats BN: not the paper's
    assert states(v)["WN exception"] == N
    v = wn_small_net.verdict(dict(loss, wn=[1.5, 1.6, 1.55]), top, conv, 0.05, 1.4)    # WN trains slower
    assert states(v)["training curves"] == N
    v = wn_small_net.verdict(loss, dict(top, none=[70.0, 71.0, 70.5]), conv, 0.05, 1.4)
    assert states(v)["no normalization"] == N
    v = wn_small_net.verdict(loss, top, dict(conv, bn=False), 0.05, 1.4)              # BN not converged
    assert v["state"] == I and set(states(v).values()) == {I} and "not converged" in v["headline"]
    assert wn_small_net.verdict({}, {}, {}, 0.05, 1.4)["state"] == I


def test_wn_small_net_uses_the_recipe_per_method():
    assert wn_small_net.recipe_for("wn").schedule.final_lr == pytest.approx(1e-4)
    assert wn_small_net.recipe_for("normprop").schedule.name == "poly"
    assert wn_small_net.recipe_for("bn").optim.weight_decay == pytest.approx(0.002)


# -- trelu-wn-instability --------------------------------------------------------------------------------------

def _summary(div=None, loss_before=0.1, r0=0.2, r1=1.5, c0=0.27, c1=0.35, steps=400):
    return {"diverged_at": div, "steps": steps, "initial_loss": 2.3, "loss_before": loss_before, "last_step": 390,
            "ratio_start": r0, "ratio_end": r1, "coherence_start": c0, "coherence_end": c1,
            "growth_start": {"step": 30, "layer": "layer3.0", "depth_index": 7, "factor": 2.1}}


def test_trelu_wn_instability_verdict_states():
    p = trelu_wn_instability.Params()
    ctrl = _summary(r0=2.0, r1=0.2)
    v = trelu_wn_instability.verdict(_summary(), ctrl, p)
    assert states(v) == {"sudden divergence": I, "norm grows with depth": R, "coherence rises": R,
                         "control: bn": R} and v["state"] == I and "250k steps" in v["parts"][0]["measured"]
    v = trelu_wn_instability.verdict(_summary(div=300), ctrl, p)
    assert states(v)["sudden divergence"] == R and v["state"] == R
    assert states(trelu_wn_instability.verdict(_summary(div=20), ctrl, p))["sudden divergence"] == N   # too early
    gradual = _summary(div=300, loss_before=5.0)                                                   # not sudden
    assert states(trelu_wn_instability.verdict(gradual, ctrl, p))["sudden divergence"] == N
    v = trelu_wn_instability.verdict(_summary(r1=0.3, c1=0.28), _summary(r0=0.2, r1=1.5), p)
    assert states(v)["norm grows with depth"] == N and states(v)["coherence rises"] == N
    assert states(v)["control: bn"] == N


def test_trelu_wn_growth_start_finds_the_first_and_shallowest_layer():
    recs = [{"step": 0, "norms": [1.0, 1.0, 1.0]}, {"step": 10, "norms": [1.1, 1.5, 1.9]},
            {"step": 20, "norms": [1.2, 2.5, 3.0]}]
    g = trelu_wn_instability.growth_start(recs, ["first", "a", "b"], 2.0)
    assert g["step"] == 20 and g["layer"] == "a"
    assert trelu_wn_instability.growth_start(recs[:2], ["first", "a", "b"], 2.0) is None


# -- residual-scalings ----------------------------------------------------------------------------------------

STAGES = [0, 0, 0, 1, 1, 1, 1]


def test_spp_increment_ratio_and_classify():
    linear = [1.0, 1.2, 1.4, 1.0, 1.2, 1.4, 1.6]
    expo = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    flat = [1.0, 1.01, 0.99, 1.0, 1.02, 1.0, 0.98]
    assert spp.increment_ratio(linear, STAGES) == pytest.approx(1.0)
    assert spp.increment_ratio(expo, STAGES) == pytest.approx(2.0)
    c = residual_scalings.classify
    assert (c(linear, STAGES)["growth"], c(linear, STAGES)["resets"], c(linear, STAGES)["stable"]) == \
        ("linear", True, False)
    assert c(expo, STAGES)["growth"] == "exponential" and not c(expo, STAGES)["resets"]
    assert c(flat, STAGES)["stable"] and c(flat, STAGES)["growth"] == "none"
    assert c([1.0, float("nan")] + flat[2:], STAGES)["label"] == "non-finite"


def _shapes(**over):
    lin = residual_scalings.classify([1.0, 1.2, 1.4, 1.0, 1.2, 1.4, 1.6], STAGES)
    exp_ = residual_scalings.classify([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0], STAGES)
    flat = residual_scalings.classify([1.0, 1.01, 0.99, 1.0, 1.02, 1.0, 0.98], STAGES)
    shapes = {n: flat for n, *_ in residual_scalings.configs()}
    shapes.update(bn=lin, nf=lin, none=exp_)
    shapes.update(over)
    return shapes


def test_residual_scalings_verdict_states():
    v = residual_scalings.verdict(_shapes())
    assert v["state"] == R and set(states(v).values()) == {R}
    grow = residual_scalings.classify([1.0, 1.5, 2.0, 1.0, 1.5, 2.0, 2.5], STAGES)
    v = residual_scalings.verdict(_shapes(**{"none+sqrt2": grow}))
    assert states(v)["none+sqrt2"] == N and v["state"] == N
    v = residual_scalings.verdict(_shapes(**{"bn+depth": grow}))
    assert states(v)["bn+scalings"] == N
    v = residual_scalings.verdict(_shapes(nf=_shapes()["none"]))
    assert states(v)["nf"] == N
    assert residual_scalings.verdict({})["state"] == I
