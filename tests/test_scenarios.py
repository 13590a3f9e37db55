"""Research scenarios: each runs end to end at a smoke size; every verdict on constructed inputs, both ways."""
import json
import math
import struct

import pytest
import torch

from normtrain import config, scenarios
from normtrain.errors import UsageError
from normtrain.scenarios import (bn_cost, common, dyt_tanh_shape, ghost_equivalence, ghost_example, linear50_wn,
                                 loss_landscape, nf_ablation, normprop_residual, output_norms, signal_prop,
                                 wn_generalization, ws_curves, ws_gradients)

from .conftest import run_cli

QUIET = ["progress=false", "device=cpu", "threads=1"]

SMOKE = {
    "linear50-wn": ["methods=[wn, bn, none]", "lrs=[0.001, 1.0]", "steps=8", "depth=8", "record_every=4"],
    "normprop-residual": ["lrs=[0.01, 0.3]", "steps=3", "batch_size=16", "probe_size=16", "gamma_inits=[1.0]"],
    "output-norms": ["methods=[wn, bn]", "model=mlp", "recipe_set=[train.max_steps=6, data.batch_size=32]",
                     "log_every=2"],
    "signal-prop": ["image_size=32", "batch_size=4"],
    "loss-landscape": ["steps=4", "widths=[32]", "batch_size=32", "ghost_groups=4", "probe_lrs=[0.1, 0.4]"],
    "ghost-example": [],
    "ws-gradients": ["steps=4", "record_every=2", "batch_size=8", "random_draws=2"],
    "bn-cost": ["model=resnet18", "image_size=16", "batch_size=4", "methods=[bn, wn, none]", "warmup=1",
                "steps=1"],
    "wn-generalization": ["model=mlp", "steps=4", "seeds=2", "batch_size=16"],
    "ghost-equivalence": ["steps=2", "widths=[16]", "batch_size=16"],
    "ws-curves": ["steps=3", "seeds=2", "batch_size=8"],
    "nf-ablation": ["image_size=32", "batch_size=4"],
    "ws-hessian": ["width=4", "groups=2", "channels=2", "seeds=1", "train_steps=2", "batch_size=8"],
    "ws-micro-batch": ["epochs=0.02", "seeds=2", "batch_size=4", "per_image_images=16"],
    "ghost-ranking": ["epochs=0.1", "seeds=2", "batch_size=16", "ghost_batches=[8, 4]", "seq_ghost_batch=8"],
    "wn-small-net": ["epochs=0.01", "seeds=2", "batch_size=16", "width=0.0625"],
    "trelu-wn-instability": ["model=resnet8", "steps=6", "record_every=2", "batch_size=8"],
    "residual-scalings": ["image_size=32", "batch_size=4", "scalings=[sqrt2]"],
    "dyt-tanh-shape": ["steps=2", "seeds=2", "batch_size=8", "probe_images=4"],
}


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_every_scenario_has_a_smoke_test():
    assert sorted(SMOKE) == scenarios.names()


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_scenario_smoke(name, tmp_path):
    out = tmp_path / name
    res = scenarios.run(name, QUIET + SMOKE[name], out=str(out))
    saved = json.loads((out / "results.json").read_text())
    assert saved["scenario"] == name and res["scenario"] == name
    assert set(saved) >= {"scenario", "params", "measurements", "verdict"}
    assert set(saved["verdict"]) >= {"claim", "criterion", "measured", "reproduced", "headline"}
    assert isinstance(saved["verdict"]["reproduced"], bool)
    assert saved["verdict"]["claim"] and saved["verdict"]["measured"] and saved["verdict"]["headline"]
    assert saved["params"]["device"] == "cpu"
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert all(png_size(p)[0] >= 1200 for p in pngs)  # readable plots: at least 1200 px wide
    assert saved["plots"] and all((out / p).is_file() for p in saved["plots"])
    assert list((out / "tb").glob("events.out.tfevents.*"))


# -- command line ------------------------------------------------------------------------------

def test_cli_runs_a_scenario_and_lists_them(tmp_path):
    r = run_cli("scenario", "ghost-example", "--out", tmp_path / "g", "--set", "progress=false")
    assert r.returncode == 0, r.stderr
    assert "REPRODUCED" in r.stdout and "claim:" in r.stdout
    assert json.loads((tmp_path / "g/results.json").read_text())["verdict"]["reproduced"] is True
    r = run_cli("list", "scenarios")
    assert r.returncode == 0
    for name in SMOKE:
        assert name in r.stdout


@pytest.mark.parametrize("args, msg", [
    (["nope"], "unknown scenario 'nope'"),
    (["ghost-example", "--set", "nokey=1"], "unknown key 'nokey'"),
    (["ghost-example", "--set", "ghost_groups=two"], "expected an integer"),
    (["linear50-wn", "--set", "lrs=[0.1, x]"], "lrs[1]: expected a number"),
    (["linear50-wn", "--set", "methods=[wn, nonorm]"], "unknown norm 'nonorm'"),
    (["linear50-wn", "--set", "steps=0"], "steps"),
    (["linear50-wn", "--data", "/no/such/dir"], "does not exist"),
    (["ghost-example", "--data", "digits"], "takes no --data"),
    (["ghost-example", "--bogus"], "unrecognized arguments"),
])
def test_bad_input_is_a_usage_error_and_writes_nothing(tmp_path, args, msg):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=msg.replace("[", r"\[")):
        scenarios.main(args + ["--out", str(out)])
    assert not out.exists()


def test_apply_overrides_types_and_check():
    p = config.apply_overrides(linear50_wn.Params(), [("lrs", [1, 0.5]), ("steps", 3.0), ("progress", False)])
    assert p.lrs == [1.0, 0.5] and isinstance(p.lrs[0], float) and p.steps == 3 and p.progress is False
    with pytest.raises(UsageError, match="blowup"):
        config.apply_overrides(linear50_wn.Params(), [("blowup", -1.0)])


# -- linear50-wn ---------------------------------------------------------------------------------

GRID = [0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0]


def test_linear50_divergence_definition():
    assert linear50_wn.diverged_at([2.0, 1.5, 1.0], 1000) is None
    assert linear50_wn.diverged_at([2.0, 1.5, 2001.0], 1000) == 2
    assert linear50_wn.diverged_at([2.0, float("nan")], 1000) == 1
    assert linear50_wn.diverged_at([2.0, float("inf")], 1e9) == 1


def _runs(div, growth=5.0, rise=0.3):
    """Per-rate rows for linear50_wn.verdict: div(lr) -> diverged_at or None."""
    return [{"lr": lr, "diverged_at": div(lr), "gain_growth": growth, "coherence_rise": rise} for lr in GRID]


def test_linear50_verdict_reproduced():
    wn = _runs(lambda lr: None if lr < 0.01 else 5)
    bn = _runs(lambda lr: None)
    none = _runs(lambda lr: None if lr < 0.1 else 20)   # none stable or later at 0.01..1
    v = linear50_wn.verdict(wn, bn, none)
    assert v["reproduced"] is True and "5/7" in v["measured"], v["measured"]
    assert linear50_wn.verdict(wn, bn, none, same_start=wn)["reproduced"] is True


def test_linear50_verdict_not_reproduced():
    stable = _runs(lambda lr: None)
    wide = _runs(lambda lr: 3 if lr >= 0.01 else None)
    assert linear50_wn.verdict(stable, stable, stable)["reproduced"] is False        # WN never diverges
    narrow = _runs(lambda lr: 3 if lr >= 1.0 else None)
    assert linear50_wn.verdict(narrow, stable, stable)["reproduced"] is False        # one rate is not "wide"
    assert linear50_wn.verdict(wide, wide, stable)["reproduced"] is False            # BN diverges as well
    late = _runs(lambda lr: 150 if lr >= 0.01 else None)
    assert linear50_wn.verdict(late, stable, stable)["reproduced"] is False          # not within 100 iterations
    no_mech = _runs(lambda lr: 3 if lr >= 0.01 else None, growth=5.0, rise=0.0)
    assert linear50_wn.verdict(no_mech, stable, stable)["reproduced"] is False       # coherence did not rise
    flat_gain = _runs(lambda lr: 3 if lr >= 0.01 else None, growth=1.0, rise=0.3)
    assert linear50_wn.verdict(flat_gain, stable, stable)["reproduced"] is False     # norms kept before diverging
    # the control: none diverging at the same iterations as WN makes the divergence not WN's
    assert linear50_wn.verdict(wide, stable, stable)["reproduced"] is True
    assert linear50_wn.verdict(wide, stable, wide)["reproduced"] is False
    earlier = _runs(lambda lr: 2 if lr >= 0.01 else None)
    assert linear50_wn.verdict(wide, stable, earlier)["reproduced"] is False
    assert linear50_wn.verdict(wide, stable, [])["reproduced"] is False              # no control, no verdict


def test_linear50_mechanism_and_parting():
    recs = [{"step": s, "coherence": [0.4 + 0.1 * s, 0.4 + 0.1 * s, 0.9], "out_norms": [1.0, 2.0, 1.0 + s, 5.0]}
            for s in range(4)]
    m = linear50_wn.mechanism(recs, div=3)  # the last record before the divergence is step 2
    assert m["pre_step"] == 2 and m["gain_0"] == pytest.approx(1.0) and m["gain_pre"] == pytest.approx(3.0)
    assert m["gain_growth"] == pytest.approx(3.0) and m["coherence_rise"] == pytest.approx(0.2)
    assert linear50_wn.parting_step([1.0, 1.0, 1.5], [1.0, 1.001, 1.0], 0.01) == 2
    assert linear50_wn.parting_step([1.0, 2.0], [1.0, 2.0], 0.01) is None


def test_linear50_matched_wn_starts_as_the_unnormalized_network(tmp_path):
    """WN with g = ||v|| + eps has the same effective weights as none at step 0: their first losses agree."""
    p = config.apply_overrides(linear50_wn.Params(), [("progress", False), ("device", "cpu"), ("steps", 2),
                                                      ("depth", 6)])
    ctx = common.Context("linear50-wn", p, tmp_path)
    ld = common.loader(ctx, p.batch_size)
    batches = common.take(ld, 3)
    w = linear50_wn.shared_weights(p, ld.num_classes, ld.in_shape)
    a = linear50_wn.train_one(ctx, p, linear50_wn.MATCHED, 0.001, batches, ld.in_shape, ld.num_classes, w)
    b = linear50_wn.train_one(ctx, p, "none", 0.001, batches, ld.in_shape, ld.num_classes, w)
    assert a["start_weight_distance_to_raw"] < 1e-6 and b["start_weight_distance_to_raw"] == 0
    assert a["losses"][0] == pytest.approx(b["losses"][0], rel=1e-5)
    c = linear50_wn.train_one(ctx, p, "wn", 0.001, batches, ld.in_shape, ld.num_classes, w)
    assert c["start_weight_distance_to_raw"] > 1e-3  # g = 1: unit rows, not v


def test_row_coherence():
    assert linear50_wn.row_coherence(torch.eye(4)) == pytest.approx(0.0)
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert linear50_wn.row_coherence(w) == pytest.approx(1 / math.sqrt(2))


# -- normprop-residual ------------------------------------------------------------------------------

def _np_runs(table):
    """table: {config: {lr: status or (status, final_loss)}} -> runs for normprop_residual.verdict."""
    runs = []
    for cfg, per in table.items():
        for lr, st in per.items():
            status, final = (st, 0.05) if isinstance(st, str) else st
            runs.append({"config": cfg, "lr": lr, "status": status, "diverged_at": 3 if status == "diverged" else None,
                         "final_loss": None if status == "diverged" else final})
    normprop_residual.mark_poor(runs, 3.0)
    return runs


def test_normprop_verdict():
    bn = {0.01: "trained", 0.1: "trained", 1.0: "trained"}
    ok = _np_runs({"with": {0.01: "trained", 0.1: "trained", 1.0: "diverged"},
                   "without": {0.01: "not trained", 0.1: "diverged", 1.0: "diverged"}, "bn": bn})
    assert normprop_residual.verdict(ok)["reproduced"] is True
    poor = _np_runs({"with": {0.01: "trained", 0.1: "trained", 1.0: ("trained", 0.5)},
                     "without": {0.01: "diverged", 0.1: "diverged", 1.0: "diverged"}, "bn": bn})
    assert normprop_residual.verdict(poor)["reproduced"] is True   # a poor minimum at the large rate
    trains_without = _np_runs({"with": {0.01: "trained", 0.1: "trained", 1.0: "diverged"},
                               "without": {0.01: "trained", 0.1: "diverged", 1.0: "diverged"}, "bn": bn})
    assert normprop_residual.verdict(trains_without)["reproduced"] is False
    fine_at_large = _np_runs({"with": {0.01: "trained", 0.1: "trained", 1.0: "trained"},
                              "without": {0.01: "diverged", 0.1: "diverged", 1.0: "diverged"}, "bn": bn})
    assert normprop_residual.verdict(fine_at_large)["reproduced"] is False
    never = _np_runs({"with": {0.01: "not trained", 0.1: "diverged", 1.0: "diverged"},
                      "without": {0.01: "diverged", 0.1: "diverged", 1.0: "diverged"}, "bn": bn})
    assert normprop_residual.verdict(never)["reproduced"] is False
    bn_fails = _np_runs({"with": {0.01: "trained", 0.1: "diverged", 1.0: "diverged"},
                         "without": {0.01: "diverged", 0.1: "diverged", 1.0: "diverged"},
                         "bn": {0.01: "trained", 0.1: "diverged", 1.0: "diverged"}})
    assert normprop_residual.verdict(bn_fails)["reproduced"] is False  # the control must train
    assert normprop_residual.verdict([])["reproduced"] is False


def test_normprop_status_and_probe():
    assert normprop_residual.status([2.3, 1.0, 0.1, 0.1], None, math.log(10), 0.5, 0.5)["status"] == "trained"
    assert normprop_residual.status([2.3, 2.2, 2.1, 2.0], None, math.log(10), 0.5, 0.5)["status"] == "not trained"
    assert normprop_residual.status([2.3, float("nan")], 1, math.log(10), 0.5, 0.5)["status"] == "diverged"
    # skewness of a rectified standard normal, against a large sample
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0)).relu()
    c = z - z.mean()
    assert normprop_residual.rectified_normal_skewness() == pytest.approx(float((c ** 3).mean() / c.var() ** 1.5),
                                                                           rel=0.01)
    from normtrain import models, norms
    torch.manual_seed(0)
    m = models.build("resnet20", norms.get("normprop", residual_scale=False), 10, (3, 8, 8))
    pr = normprop_residual.probe_blocks(m, torch.randn(64, 3, 8, 8))
    assert len(pr["var"]) == 9 and pr["projection"] == [False, False, False, True, False, False, True, False, False]
    # without the 1/sqrt(2) the variance grows from block to block
    assert normprop_residual.per_block_factor(pr["var"]) > 1.5
    assert all(g == pytest.approx(v / j) for g, v, j in zip(pr["act_gain"], pr["var"], pr["join_var"]))


# -- signal-prop ------------------------------------------------------------------------------------

STAGES = [0] * 3 + [1] * 4 + [2] * 6 + [3] * 3


def _bn_like(step=0.17, start=0.5):
    out, prev = [], None
    for s in STAGES:
        v = start if s != prev else out[-1] + step
        out.append(v)
        prev = s
    return out


def test_signal_prop_verdict():
    bn = _bn_like()
    nf = [1.0 + 0.25 * (v - 0.5) for v in bn]  # same shape, other level and slope (scaled WS)
    none = [0.04 * 1.8 ** i for i in range(len(STAGES))]
    v = signal_prop.verdict(bn, nf, none, STAGES)
    assert v["reproduced"] is True, v["measured"]
    flat = [1.0 + 0.01 * math.sin(i) for i in range(len(STAGES))]
    assert signal_prop.verdict(bn, flat, none, STAGES)["reproduced"] is False   # NF does not mimic
    assert signal_prop.verdict(bn, nf, bn, STAGES)["reproduced"] is False       # 'none' resets like BN
    no_reset = [0.5 + 0.1 * i for i in range(len(STAGES))]
    assert signal_prop.verdict(no_reset, no_reset, none, STAGES)["reproduced"] is False  # BN must reset


def test_signal_prop_stage_ids():
    names = ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer2.2"]
    assert signal_prop.stage_ids(names) == [0, 0, 1, 1, 1]
    assert signal_prop.stage_slices([0, 0, 1, 1, 1]) == [(0, 2), (2, 5)]


# -- loss-landscape ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["bn", "ghost"])
def test_loss_landscape_probes_leave_training_unchanged(tmp_path, method):
    """Probing moves the weights and runs extra forwards: afterwards weights AND running stats are bit-identical."""
    p = config.apply_overrides(loss_landscape.Params(), [("progress", False), ("device", "cpu"), ("steps", 5),
                                                         ("widths", [16]), ("batch_size", 16), ("ghost_groups", 4),
                                                         ("probe_lrs", [0.3, 0.8])])
    ctx = common.Context("loss-landscape", p, tmp_path)
    ld = common.loader(ctx, p.batch_size)
    batches = [b for _, b in zip(range(p.steps), common.forever(ld))]
    probed, m1 = loss_landscape.train_method(ctx, p, method, batches, ld.in_shape, ld.num_classes)
    p.probe_every = 0
    plain, m2 = loss_landscape.train_method(ctx, p, method, batches, ld.in_shape, ld.num_classes)
    assert len(probed["probes"]) == 5 and not plain["probes"]
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys() and any("running_mean" in k for k in s1)
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert probed["loss"] == plain["loss"]


def test_loss_landscape_probe_restores_buffers_exactly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model.train()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    params = list(model.parameters())
    g = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), params)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pr = loss_landscape.probe(model, params, x, y, g, [0.1, 1.0])
    assert pr["loss_max"] >= pr["loss_min"] and pr["grad_dist_max"] > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_loss_landscape_verdict():
    bn = {"loss_range": 0.2, "grad_dist_max": 1.5, "beta_eff": 6.0}
    ghost = {"loss_range": 1.0, "grad_dist_max": 6.0, "beta_eff": 10.0}
    assert loss_landscape.verdict(bn, ghost)["reproduced"] is True
    assert loss_landscape.verdict(ghost, bn)["reproduced"] is False
    assert loss_landscape.verdict(bn, None)["reproduced"] is False


# -- ghost-example ----------------------------------------------------------------------------------

def test_ghost_example_matches_paper_numbers():
    bn = ghost_example.normalize("bn", ghost_example.X)
    ghost = ghost_example.normalize("ghost", ghost_example.X, ghost_groups=2)
    assert all(ghost_example.matches(bn, ghost_example.PAPER_BN))
    assert all(ghost_example.matches(ghost, ghost_example.PAPER_GHOST))
    assert ghost_example.flipped_pairs(ghost_example.X, bn) == []
    assert ghost_example.flipped_pairs(ghost_example.X, ghost) == [(2, 5)]
    assert ghost[1] < ghost[4]
    assert ghost_example.verdict(bn, ghost)["reproduced"] is True
    assert ghost_example.verdict(ghost, bn)["reproduced"] is False
    assert ghost_example.matches([0.74], ["0.7"]) == [True] and ghost_example.matches([0.76], ["0.7"]) == [False]


# -- ws-gradients -----------------------------------------------------------------------------------

def test_ws_gradient_decomposition_is_exact():
    """||grad_W_hat||^2 = eq.8 term + eq.9 term + sigma^2 ||grad_W||^2 (WS eq. 11-15), in float64."""
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    var, mean = torch.var_mean(w, dim=(1, 2, 3), unbiased=False, keepdim=True)
    w_hat = (w - mean) / var.sqrt()
    w_hat.retain_grad()
    upstream = torch.randn_like(w_hat) + 0.3  # a non-zero mean makes the eq. 9 term matter
    (w_hat * upstream).sum().backward()
    t = ws_gradients.terms(w_hat, w_hat.grad, w, w.grad)
    assert t["residual"] < 1e-12
    assert t["eq8"] + t["eq9"] + t["rest"] == pytest.approx(1.0, abs=1e-12)
    assert t["eq9"] > 0.01


def test_ws_gradients_verdict():
    ok = [{"eq8": 0.005, "eq9": 0.2, "rest": 0.795, "residual": 1e-7}] * 3
    assert ws_gradients.verdict(ok)["reproduced"] is True
    big = [{"eq8": 0.05, "eq9": 0.2, "rest": 0.75, "residual": 1e-7}]
    assert ws_gradients.verdict(big)["reproduced"] is False
    inexact = [{"eq8": 0.005, "eq9": 0.2, "rest": 0.7, "residual": 0.1}]
    assert ws_gradients.verdict(inexact)["reproduced"] is False
    assert ws_gradients.verdict(inexact, exact=False)["reproduced"] is True
    # what a random gradient direction gives (eq. 8 and eq. 9 both ~1/I): small, but no verdict
    chance = [{"eq8": 0.007, "eq9": 0.0075, "rest": 0.9855, "residual": 1e-7}]
    assert ws_gradients.verdict(chance)["reproduced"] is False
    assert ws_gradients.verdict(chance, ratio=1.0)["reproduced"] is True


def test_ws_gradients_random_baseline_is_one_over_fan_in():
    """E[(1/I)<W_hat, g>^2 / ||g||^2] = E[(1/I)<1, g>^2 / ||g||^2] = 1/I for an isotropic g."""
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    w_hat = (w - w.mean((1, 2, 3), keepdim=True)) / w.std((1, 2, 3), unbiased=False, keepdim=True)
    r = ws_gradients.random_shares(w_hat, 4000, torch.Generator().manual_seed(1))
    assert r["chance"] == pytest.approx(1 / 36)
    assert r["eq8"] == pytest.approx(1 / 36, rel=0.05) and r["eq9"] == pytest.approx(1 / 36, rel=0.05)


# -- bn-cost ------------------------------------------------------------------------------------------

def test_bn_cost_attribution_counts_norm_forward_and_backward(tmp_path):
    p = config.apply_overrides(bn_cost.Params(), [("progress", False), ("device", "cpu"), ("model", "resnet18"),
                                                  ("image_size", 16), ("batch_size", 4), ("warmup", 1),
                                                  ("steps", 1)])
    ctx = common.Context("bn-cost", p, tmp_path)
    bn = bn_cost.profile_method(ctx, p, "bn")
    assert bn["norm_scopes"] == 20 and bn["forward_scopes"] == 20
    assert bn["backward_nodes"] == 20  # one NativeBatchNormBackward per BN layer
    assert 0 < bn["share"] < 1
    none = bn_cost.profile_method(ctx, p, "none")
    assert none["share"] == 0 and none["norm_scopes"] == 0


def test_bn_cost_verdict():
    assert bn_cost.verdict({"bn": 0.24, "none": 0.0})["reproduced"] is True
    assert bn_cost.verdict({"bn": 0.24, "wn": 0.05})["reproduced"] is True
    assert bn_cost.verdict({"bn": 0.24, "wn": 0.3})["reproduced"] is False  # WN costs more: the premise fails
    assert bn_cost.verdict({"bn": 0.05})["reproduced"] is False
    assert bn_cost.verdict({"wn": 0.2})["reproduced"] is False


# -- output-norms -------------------------------------------------------------------------------------

def test_output_norms_drift_and_verdict():
    d = output_norms.drift([1.0, 1.1, 1.2], [0.1, 0.3, 0.6])
    assert d["r_start"] == pytest.approx(0.1) and d["r_end"] == pytest.approx(0.5)
    assert d["ratio_change"] == pytest.approx(4.0)
    steady = output_norms.drift([1.0, 2.0], [3.0, 6.6])
    assert output_norms.verdict(d, steady)["reproduced"] is True
    assert output_norms.verdict(steady, steady)["reproduced"] is False   # WN keeps the ratio
    assert output_norms.verdict(d, d)["reproduced"] is False             # the BN control drifts too
    assert output_norms.verdict(d, None)["reproduced"] is False          # no control, no verdict
    assert output_norms.verdict(None, steady)["reproduced"] is False


# -- wn-generalization --------------------------------------------------------------------------------

def _wng(wn_train, wn_test, drop_test, wd_test):
    bn = {"train_loss": [0.10, 0.11, 0.12], "test_top1": [96.0, 96.5, 97.0]}
    return {"bn": bn, "wn": {"train_loss": wn_train, "test_top1": wn_test},
            "wn+dropout": {"train_loss": [0.3] * 3, "test_top1": drop_test},
            "wn+wd": {"train_loss": [0.05] * 3, "test_top1": wd_test}}


def test_wn_generalization_verdict():
    low, worse = [0.02, 0.03, 0.025], [90.0, 91.0, 90.5]
    assert wn_generalization.verdict(_wng(low, worse, worse, worse), ["wn"])["reproduced"] is True
    assert wn_generalization.verdict(_wng([0.3, 0.31, 0.32], worse, worse, worse), ["wn"])["reproduced"] is False
    same = [96.0, 96.5, 97.0]
    assert wn_generalization.verdict(_wng(low, same, worse, worse), ["wn"])["reproduced"] is False  # no test gap
    assert wn_generalization.verdict(_wng(low, worse, same, worse), ["wn"])["reproduced"] is False  # dropout closes it
    assert wn_generalization.verdict(_wng(low, worse, worse, [97.0, 97.5, 97.2]), ["wn"])["reproduced"] is False
    noisy = [80.0, 97.5, 97.9]  # lower on average, inside the seeds' noise
    assert wn_generalization.verdict(_wng(low, noisy, worse, worse), ["wn"])["reproduced"] is False
    assert wn_generalization.verdict({"wn": {}}, ["wn"])["reproduced"] is False


def test_wn_generalization_configs():
    p = config.apply_overrides(wn_generalization.Params(), [("methods", ["wn", "trelu-wn"])])
    names = [c[0] for c in wn_generalization.configs(p)]
    assert names == ["bn", "wn", "wn+dropout", "wn+wd", "trelu-wn", "trelu-wn+dropout", "trelu-wn+wd"]
    cfg = {c[0]: c for c in wn_generalization.configs(p)}
    assert cfg["wn+dropout"][2] == p.dropout and cfg["wn+wd"][3] == pytest.approx(p.weight_decay * p.wd_factor)
    with pytest.raises(UsageError, match="control"):
        config.apply_overrides(wn_generalization.Params(), [("methods", ["bn", "wn"])])


# -- ghost-equivalence -------------------------------------------------------------------------------------

def test_ghost_equivalence_verdict():
    same = {"ghost~accumulation": 1e-15, "ghost~ddp": 2e-15, "accumulation~ddp": 0.0}
    other = {"ghost~bn": 0.3, "accumulation~bn": 0.3, "ddp~bn": 0.3}
    assert ghost_equivalence.verdict({**same, **other})["reproduced"] is True
    assert ghost_equivalence.verdict({**same, "ghost~ddp": 1e-3, **other})["reproduced"] is False  # they differ
    assert ghost_equivalence.verdict({**same, **other, "ddp~bn": 1e-9})["reproduced"] is False   # = full-batch BN
    assert ghost_equivalence.verdict(same)["reproduced"] is False


def test_ghost_equivalence_local_implementations_agree(tmp_path):
    """Direct GhostNorm = BN with accumulation in float64, and both differ from full-batch BN (no processes)."""
    p = config.apply_overrides(ghost_equivalence.Params(), [("progress", False), ("device", "cpu"), ("steps", 3),
                                                            ("widths", [16]), ("batch_size", 16)])
    ctx = common.Context("ghost-equivalence", p, tmp_path)
    ld = common.loader(ctx, p.batch_size)
    from normtrain import models
    torch.manual_seed(0)
    init = models.build("mlp", "bn", ld.num_classes, ld.in_shape, widths=[16]).state_dict()
    spec = {"model": "mlp", "widths": [16], "ghost_groups": 2, "num_classes": ld.num_classes,
            "in_shape": tuple(ld.in_shape), "init": init, "dtype": "float64", "lr": 0.1, "momentum": 0.9,
            "batches": [(x.double(), y) for x, y in common.take(ld, 3)]}
    runs = {k: ghost_equivalence.train_local(spec, k) for k in ("ghost", "accumulation", "bn")}
    sizes = [t.numel() for t in ghost_equivalence.build(spec, "bn").parameters()]
    last = {k: r["weights"][-1] for k, r in runs.items()}
    assert ghost_equivalence.relative_distance(last["accumulation"], last["ghost"], sizes) < 1e-12
    assert ghost_equivalence.relative_distance(last["bn"], last["ghost"], sizes) > 1e-3
    assert runs["ghost"]["losses"] == pytest.approx(runs["accumulation"]["losses"], rel=1e-12)


# -- ws-curves -------------------------------------------------------------------------------------------------

def test_ws_curves_verdict():
    ordered = {"gn": [1.0, 1.05, 0.95], "gn+eq6": [0.8, 0.82, 0.78], "gn+eq5": [0.3, 0.32, 0.28],
               "gn+ws": [0.2, 0.21, 0.19]}
    assert ws_curves.verdict(ordered)["reproduced"] is True
    no_eq6 = {**ordered, "gn+eq6": [1.0, 1.05, 0.95]}
    assert ws_curves.verdict(no_eq6)["reproduced"] is False        # eq. 6 does not help without eq. 5
    eq6_major = {**ordered, "gn+eq6": [0.25, 0.26, 0.24]}
    assert ws_curves.verdict(eq6_major)["reproduced"] is False     # eq. 6 helps more than eq. 5
    noisy = {**ordered, "gn+ws": [0.01, 0.5, 0.25]}
    assert ws_curves.verdict(noisy)["reproduced"] is False         # below on average, inside the noise
    assert ws_curves.verdict({"gn": [1.0]})["reproduced"] is False
    assert ws_curves.final_loss([5.0, 4.0, 2.0, 1.0], 0.5) == pytest.approx(1.5)


# -- nf-ablation ------------------------------------------------------------------------------------------------

def _spp(var, mean2, res):
    return {"var": var, "mean2": mean2, "res_var": res}


def _nf_ok():
    stages = [0] * 3 + [1] * 4
    bn_like = [0.5, 0.7, 0.9, 0.5, 0.7, 0.9, 1.1]
    sp = {"bn-relu": _spp(bn_like, [0.3] * 7, [0.2] * 7),
          "relu-bn": _spp([1.0, 1.5, 2.0, 1.5, 2.0, 2.5, 3.0], [0.002] * 7, [0.5] * 7),
          "nf": _spp([1.0, 1.04, 1.08, 1.0, 1.04, 1.08, 1.12], [0.003] * 7, [1.0, 0.98, 0.97, 0.95, 0.95, 0.94, 0.93]),
          "nf-no-sws": _spp([1.5, 1.6, 1.7, 1.4, 1.5, 1.6, 1.7], [7.0] * 7, [1.5, 2.1, 1.2, 2.2, 1.5, 2.0, 1.3]),
          "nf-no-beta": _spp([1.0, 1.04, 1.08, 1.12, 1.16, 1.2, 1.24], [0.003] * 7, [1.0] * 7),
          "he-only": _spp([3.0 * 2 ** i for i in range(7)], [10.0 * 2 ** i for i in range(7)], [2.0 ** i for i in range(7)])}
    return sp, stages


def test_nf_ablation_verdict():
    sp, stages = _nf_ok()
    assert nf_ablation.verdict(sp, stages)["reproduced"] is True, nf_ablation.verdict(sp, stages)["measured"]
    bad = dict(sp, nf=_spp(sp["nf"]["var"], [0.5] * 7, sp["nf"]["res_var"]))
    assert nf_ablation.verdict(bad, stages)["reproduced"] is False   # scaled WS does not zero the mean
    bad = dict(sp, **{"nf-no-sws": sp["nf"]})
    assert nf_ablation.verdict(bad, stages)["reproduced"] is False   # removing scaled WS changes nothing
    bad = dict(sp, **{"nf-no-beta": sp["nf"]})
    assert nf_ablation.verdict(bad, stages)["reproduced"] is False   # still resets without beta
    bad = dict(sp, **{"he-only": sp["bn-relu"]})
    assert nf_ablation.verdict(bad, stages)["reproduced"] is False   # He init alone does not grow
    bad = dict(sp, **{"relu-bn": sp["bn-relu"], "bn-relu": sp["relu-bn"]})
    assert nf_ablation.verdict(bad, stages)["reproduced"] is False   # NF closer to BN -> ReLU
    assert nf_ablation.verdict({"nf": sp["nf"]}, stages)["reproduced"] is False


def test_nf_ablation_networks():
    """The ablated networks are what they claim: no scaled WS, beta = 1, ReLU before BN."""
    from torch import nn
    from normtrain.models import nf_resnet
    from normtrain.norms.nf import ScaledWSConv2d
    p = nf_ablation.Params()
    shape = (3, 32, 32)
    assert any(isinstance(m, ScaledWSConv2d) for m in nf_ablation.build("nf", p, shape).modules())
    plain = nf_ablation.build("nf-no-sws", p, shape)
    assert not any(isinstance(m, ScaledWSConv2d) for m in plain.modules())
    conv = next(m for m in plain.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    fan_in = conv.weight[0].numel()
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)  # He fan-in
    nobeta = nf_ablation.build("nf-no-beta", p, shape)
    scales = [m.scale for m in nobeta.modules() if isinstance(m, nf_resnet.Scale)]
    assert scales and all(s == 1.0 for s in scales)
    full = nf_ablation.build("nf", p, shape)
    assert any(m.scale != 1.0 for m in full.modules() if isinstance(m, nf_resnet.Scale))
    he = nf_ablation.build("he-only", p, shape)
    assert all(b.alpha == 1.0 for b in he.modules() if isinstance(b, nf_resnet.NFBottleneck))
    rb = nf_ablation.build("relu-bn", p, shape)
    seq = next(m for m in rb.modules() if isinstance(m, nn.Sequential) and len(m) == 2
               and isinstance(m[0], nn.ReLU) and isinstance(m[1], nn.BatchNorm2d))
    assert seq is not None


# -- shared helpers ------------------------------------------------------------------------------------------------

def test_common_below_and_mean_std():
    assert common.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert common.below([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])["shown"] is True
    assert common.below([1.0, 3.0, -1.0], [1.5, 1.6, 1.4])["shown"] is False   # inside the noise
    assert common.below([2.0], [1.0])["shown"] is False
    v = common.verdict("c", "k", "first part; second", True)
    assert v["headline"] == "first part"


# -- dyt-tanh-shape -----------------------------------------------------------------------------------------

def _r2(tanh_rows, line_rows):
    return {"tanh": tanh_rows, "line": line_rows}


def _layers(early, mid, deep, jitter=(0.001, -0.001, 0.0)):
    """Per-seed R^2 rows over 6 LN layers (earliest two at `early`, two at `mid`, deepest two at `deep`), each seed's
    row shifted by its `jitter`."""
    return [[v + j for v in [early] * 2 + [mid] * 2 + [deep] * 2] for j in jitter]


def test_dyt_tanh_shape_fits_recover_a_tanh_and_a_line():
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    t = dyt_tanh_shape.fit_tanh(x, 1.5 * torch.tanh(0.7 * x))
    assert t["r2"] > 1 - 1e-9 and t["a"] == pytest.approx(1.5, rel=1e-3) and t["b"] == pytest.approx(0.7, rel=1e-3)
    line = dyt_tanh_shape.fit_line(x, 2 * x + 1)
    assert (line["k"], line["c"], line["r2"]) == pytest.approx((2.0, 1.0, 1.0))
    straight = dyt_tanh_shape.fit_tanh(x, 0.3 * x)           # a line through 0: the tanh's linear limit
    assert straight["r2"] > 0.999


def test_dyt_tanh_shape_verdict_states():
    R, N, I = common.REPRODUCED, common.NOT_REPRODUCED, common.INCONCLUSIVE
    v = dyt_tanh_shape.verdict
    states = lambda res: {q["name"]: q["state"] for q in res["parts"]}  # noqa: E731
    flat = _r2(_layers(0.95, 0.95, 0.95), _layers(0.95, 0.95, 0.95, (0.0, 0.001, -0.001)))
    paper = _r2(_layers(0.97, 0.97, 0.99), _layers(0.97, 0.95, 0.90, (0.0, 0.001, -0.001)))  # the figure: S deep
    res = v(paper, flat, 0.02)
    assert states(res) == {"deep-tanh": R, "early-linear": R, "learned": R} and res["state"] == R
    ours = _r2(_layers(0.85, 0.96, 0.966), _layers(0.80, 0.95, 0.961, (0.0, 0.001, -0.001)))  # at the CPU size
    res = v(ours, ours, 0.02)
    assert states(res) == {"deep-tanh": N, "early-linear": N, "learned": N} and res["state"] == N
    noisy = _r2(_layers(0.9, 0.9, 0.95, (0.05, -0.05, 0.0)), _layers(0.9, 0.9, 0.92, (0.0, 0.05, -0.05)))  # noise
    res = v(noisy, flat, 0.02)
    assert states(res) == {"deep-tanh": I, "early-linear": I, "learned": I} and res["state"] == I
    learned_only_at_init = v(paper, paper, 0.02)                                          # present before training
    assert states(learned_only_at_init)["learned"] == N and learned_only_at_init["state"] == N
    one_seed = v(_r2(_layers(0.9, 0.9, 0.9, (0.0,)), _layers(0.9, 0.9, 0.9, (0.0,))), flat, 0.02)
    assert one_seed["state"] == I
    assert all(q["source"] == ("added" if q["name"] == "learned" else "paper") for q in res["parts"])


def test_dyt_tanh_shape_paper_plan_is_data():
    p = dyt_tanh_shape.PAPER
    assert set(p) >= {"where", "dataset", "gpus", "params", "recipes", "paper_values"}
    from normtrain import models
    assert p["params"]["model"] in models.names() and set(p["params"]) <= set(vars(dyt_tanh_shape.Params()))
    json.dumps(p)
