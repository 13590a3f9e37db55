"""Research scenarios: every verdict on constructed inputs in each state it can reach, the measurements
behind them, and the command line. Every scenario also runs end to end at its defaults in
tests/test_scenario_rerun.py (compared with the committed docs/scenarios/verdicts.json)."""
import json
import math

import pytest
import torch

from normtrain import config, scenarios
from normtrain.errors import UsageError
from normtrain.scenarios import (bn_cost, common, dyt_tanh_shape, ghost_equivalence, ghost_example, linear50_wn,
                                 loss_landscape, nf_ablation, normprop_residual, output_norms, signal_prop,
                                 wn_generalization, ws_curves, ws_gradients)

from .conftest import run_cli

R, N, I, NA = common.REPRODUCED, common.NOT_REPRODUCED, common.INCONCLUSIVE, common.NA


def states(v: dict) -> dict:
    """{part name: state} of a verdict."""
    return {q["name"]: q["state"] for q in v["parts"]}


def schema_ok(v: dict) -> None:
    """The verdict schema (DESIGN §5): a state, parts with a source and a state, a headline; reproduced = state."""
    assert v["state"] in common.STATES and v["headline"] and v["claim"]
    assert v["parts"] and all(q["source"] in common.SOURCES and q["state"] in common.STATES for q in v["parts"])
    assert all(set(q) >= {"name", "claim", "source", "state", "measured", "criterion"} for q in v["parts"])
    assert v["state"] == common.overall_state(v["parts"]) and v["reproduced"] == (v["state"] == R)


# -- command line ------------------------------------------------------------------------------

def test_cli_runs_a_scenario_and_lists_them(tmp_path):
    r = run_cli("scenario", "ghost-example", "--out", tmp_path / "g", "--set", "progress=false")
    assert r.returncode == 0, r.stderr
    assert "REPRODUCED" in r.stdout and "claim:" in r.stdout and "[paper] ghostnorm: REPRODUCED" in r.stdout
    v = json.loads((tmp_path / "g/results.json").read_text())["verdict"]
    schema_ok(v)
    assert v["state"] == R
    r = run_cli("list", "scenarios")
    assert r.returncode == 0
    for name in scenarios.names():
        assert name in r.stdout


@pytest.mark.parametrize("args, msg", [
    (["nope"], "unknown scenario 'nope'"),
    (["ghost-example", "--set", "nokey=1"], "unknown key 'nokey'"),
    (["ghost-example", "--set", "ghost_groups=two"], "expected an integer"),
    (["linear50-wn", "--set", "lrs=[0.1, x]"], "lrs[1]: expected a number"),
    (["linear50-wn", "--set", "methods=[wn, nonorm]"], "unknown norm 'nonorm'"),
    (["linear50-wn", "--set", "steps=0"], "steps"),
    (["linear50-wn", "--data", "/no/such/dir"], "does not exist"),
    (["linear50-wn", "--set", "classes=7"], "only with --data synthetic"),
    (["linear50-wn", "--set", "normalize=sideways"], "normalize"),
    (["ws-gradients", "--set", "null=bn"], "null"),
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


def test_linear50_verdict_every_state():
    wn = _runs(lambda lr: None if lr < 0.01 else 5)
    bn = _runs(lambda lr: None)
    none = _runs(lambda lr: None if lr < 0.1 else 20)   # none stable or later at 0.01..1
    v = linear50_wn.verdict(wn, bn, none)
    schema_ok(v)
    assert v["state"] == R and states(v) == {"divergence": R, "bn-control": R, "specific-to-wn": R, "mechanism": R}
    assert [q["source"] for q in v["parts"]] == ["paper", "added", "added", "added"]
    assert linear50_wn.verdict(wn, bn, none, same_start=wn)["state"] == R
    # the defaults' finding: the paper's sentence holds, our controls do not
    earlier = _runs(lambda lr: None if lr < 0.01 else 4)
    flat = _runs(lambda lr: None if lr < 0.01 else 5, growth=5.0, rise=0.0)
    v = linear50_wn.verdict(flat, bn, earlier)
    assert v["state"] == N and states(v) == {"divergence": R, "bn-control": R, "specific-to-wn": N, "mechanism": N}
    assert v["headline"].startswith("divergence reproduced") and "not specific to WN" in v["headline"]
    assert "mechanism not seen" in v["headline"]
    # a narrow range of diverging rates: the paper's part fails
    narrow = _runs(lambda lr: 3 if lr >= 0.316 else None)
    assert states(linear50_wn.verdict(narrow, bn, bn))["divergence"] == N
    stable = _runs(lambda lr: None)
    v = linear50_wn.verdict(stable, stable, stable)                 # WN never diverges: nothing to control
    assert v["state"] == N and states(v)["bn-control"] == NA
    late = _runs(lambda lr: 150 if lr >= 0.01 else None)
    assert states(linear50_wn.verdict(late, bn, bn))["divergence"] == N     # not within 100 iterations
    # a grid too narrow to show a 100x range, or fewer than 100 steps: inconclusive
    short = [r for r in narrow if r["lr"] >= 0.1]
    assert states(linear50_wn.verdict(short, short, short))["divergence"] == I
    all_short = [r for r in _runs(lambda lr: 3) if r["lr"] >= 0.1]   # WN diverges at every rate of a 10x grid
    v = linear50_wn.verdict(all_short, [r for r in stable if r["lr"] >= 0.1], [r for r in stable if r["lr"] >= 0.1])
    assert v["state"] == I and "inconclusive" in v["headline"] and "decides it" in v["parts"][0]["measured"]
    assert states(linear50_wn.verdict(narrow, bn, bn, horizon=50))["divergence"] == I
    # controls: BN diverging too, none diverging as early
    wide = _runs(lambda lr: 3 if lr >= 0.01 else None)
    assert states(linear50_wn.verdict(wide, wide, stable))["bn-control"] == N
    assert states(linear50_wn.verdict(wide, stable, wide))["specific-to-wn"] == N
    flat_gain = _runs(lambda lr: 3 if lr >= 0.01 else None, growth=1.0, rise=0.3)
    assert states(linear50_wn.verdict(flat_gain, stable, stable))["mechanism"] == N
    v = linear50_wn.verdict(wide, stable, [])                       # no control, no verdict
    assert v["state"] == NA and "wn, bn and none" in v["headline"]


def test_linear50_divergence_table_and_data_options(tmp_path):
    runs = [{"method": m, "lr": lr, "diverged_at": d} for m, lr, d in
            (("wn", 0.1, 3), ("wn", 1.0, 2), ("bn", 0.1, None), ("bn", 1.0, 9))]
    t = linear50_wn.divergence_table(runs, ["wn", "bn"], [0.1, 1.0])
    assert t["diverged_at"] == {"wn": [3, 2], "bn": [None, 9]} and t["lrs"] == [0.1, 1.0]
    p = config.apply_overrides(linear50_wn.Params(), [("classes", 7), ("steps", 2), ("depth", 4),
                                                      ("lrs", [0.01]), ("methods", ["wn", "bn", "none"]),
                                                      ("progress", False), ("device", "cpu")])
    ctx = common.Context("linear50-wn", p, tmp_path / "synthetic", data="synthetic")
    opts = linear50_wn.data_options(ctx, p)
    assert opts["synthetic_classes"] == 7
    ld = common.loader(ctx, 4, "train", 8, **opts)
    assert ld.num_classes == 7 and tuple(ld.in_shape) == (3, 8, 8)
    p.normalize = "minus-one-one"
    with pytest.raises(UsageError, match="generated noise"):
        linear50_wn.data_options(ctx, p)
    p.classes = 0
    digits = common.Context("linear50-wn", p, tmp_path / "digits")
    x, _ = next(iter(common.loader(digits, 64, **linear50_wn.data_options(digits, p)).epoch(0)))
    assert float(x.min()) == -1.0 and float(x.max()) <= 1.0   # the paper's [-1, 1] input (G&G footnote 4)


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
    torch.manual_seed(0)
    ws = [torch.randn(8, 8) for _ in range(3)] + [torch.randn(3, 8), torch.randn(1, 8), w]
    assert linear50_wn.row_coherences(ws) == pytest.approx([linear50_wn.row_coherence(x) for x in ws], rel=1e-6)


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


def test_normprop_verdict_every_state():
    bn = {0.01: "trained", 0.1: "trained", 1.0: "trained"}
    good = {"with": 0.7, "without": 2.0}
    ok = _np_runs({"with": {0.01: "trained", 0.1: "trained", 1.0: "diverged"},
                   "without": {0.01: "not trained", 0.1: "diverged", 1.0: "diverged"}, "bn": bn})
    v = normprop_residual.verdict(ok, paper_lr=0.0125, factors=good)
    schema_ok(v)
    assert v["state"] == R and states(v) == {"needs-modification": R, "large-rate": R, "bn-control": R,
                                             "variance": R}
    assert "our reading" in v["claim"] or "ours" in v["claim"]
    poor = _np_runs({"with": {0.01: "trained", 0.1: "trained", 1.0: ("trained", 0.5)},
                     "without": {0.01: "diverged", 0.1: "diverged", 1.0: "diverged"}, "bn": bn})
    assert normprop_residual.verdict(poor, paper_lr=0.01)["state"] == R      # a poor minimum at the large rate
    # judged at the paper-equivalent rate: training without it at a smaller one does not count against the paper
    trains_without = _np_runs({"with": {0.01: "trained", 0.1: "trained", 1.0: "diverged"},
                               "without": {0.01: "trained", 0.1: "diverged", 1.0: "diverged"}, "bn": bn})
    assert states(normprop_residual.verdict(trains_without, paper_lr=0.1))["needs-modification"] == R
    assert states(normprop_residual.verdict(trains_without, paper_lr=0.01))["needs-modification"] == N
    without_poor = _np_runs({"with": {0.01: "trained", 0.1: "trained", 1.0: "diverged"},
                             "without": {0.01: ("trained", 0.5), 0.1: "diverged", 1.0: "diverged"}, "bn": bn})
    assert states(normprop_residual.verdict(without_poor, paper_lr=0.01))["needs-modification"] == R
    fine_at_large = _np_runs({"with": {0.01: "trained", 0.1: "trained", 1.0: "trained"},
                              "without": {0.01: "diverged", 0.1: "diverged", 1.0: "diverged"}, "bn": bn})
    assert states(normprop_residual.verdict(fine_at_large, paper_lr=0.01))["large-rate"] == N
    never = _np_runs({"with": {0.01: "not trained", 0.1: "diverged", 1.0: "diverged"},
                      "without": {0.01: "diverged", 0.1: "diverged", 1.0: "diverged"}, "bn": bn})
    assert states(normprop_residual.verdict(never, paper_lr=0.01))["needs-modification"] == N
    bn_fails = _np_runs({"with": {0.01: "trained", 0.1: "diverged", 1.0: "diverged"},
                         "without": {0.01: "diverged", 0.1: "diverged", 1.0: "diverged"},
                         "bn": {0.01: "trained", 0.1: "diverged", 1.0: "diverged"}})
    v = normprop_residual.verdict(bn_fails, paper_lr=0.01)
    assert states(v)["bn-control"] == N and states(v)["large-rate"] == I   # no larger rate where BN trains
    assert v["state"] == N
    assert states(normprop_residual.verdict(ok, paper_lr=0.01, factors={"with": 3.0, "without": 2.0}))["variance"] == N
    small_grid = _np_runs({"with": {0.01: "trained", 0.1: "trained"}, "without": {0.01: "diverged", 0.1: "diverged"},
                           "bn": {0.01: "trained", 0.1: "diverged"}})
    v = normprop_residual.verdict(small_grid, paper_lr=0.01)    # no larger rate at which BN trains
    assert v["state"] == I and states(v)["large-rate"] == I
    beside = {"resnet56": [{"config": "with", "status": "diverged"}, {"config": "without", "status": "diverged"}]}
    assert "resnet56: with it trains at 0/1 (diverged at 1)" in normprop_residual.verdict(ok, beside=beside)["headline"]
    assert normprop_residual.verdict([])["state"] == NA
    assert normprop_residual.paper_rate([0.0125, 0.04, 0.125], 0.1 * 32 / 256) == 0.0125


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


def test_signal_prop_verdict_every_state():
    bn = _bn_like()
    nf = [1.0 + 0.25 * (v - 0.5) for v in bn]  # same shape, other level and slope (scaled WS)
    none = [0.04 * 1.8 ** i for i in range(len(STAGES))]
    v = signal_prop.verdict(bn, nf, none, STAGES)
    schema_ok(v)
    assert v["state"] == R, v["measured"]
    assert states(v) == {"exponential-without-bn": R, "linear-with-bn": R, "nf-mimics-bn": R}
    assert all(q["source"] == "paper" for q in v["parts"]) and "x1.8/block" in v["headline"]
    flat = [1.0 + 0.01 * math.sin(i) for i in range(len(STAGES))]
    assert states(signal_prop.verdict(bn, flat, none, STAGES))["nf-mimics-bn"] == N    # NF does not mimic
    linear = [1.0 + 0.5 * i for i in range(len(STAGES))]     # grows, but linearly: not exponential
    fit = signal_prop.log_linear(linear)
    assert fit["r2_linear"] == pytest.approx(1.0) and fit["r2_log"] < fit["r2_linear"]
    assert states(signal_prop.verdict(bn, nf, linear, STAGES))["exponential-without-bn"] == N
    slow = [1.02 ** i for i in range(len(STAGES))]           # exponential but below the minimum growth
    assert states(signal_prop.verdict(bn, nf, slow, STAGES))["exponential-without-bn"] == N
    assert signal_prop.log_linear(none)["factor"] == pytest.approx(1.8)
    no_reset = [0.5 + 0.1 * i for i in range(len(STAGES))]
    assert states(signal_prop.verdict(no_reset, no_reset, none, STAGES))["linear-with-bn"] == N  # BN must reset
    assert states(signal_prop.verdict(bn, nf, [float("inf")] * len(STAGES), STAGES))["exponential-without-bn"] == R
    assert signal_prop.verdict(bn, nf[:-1], none, STAGES)["state"] == NA


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


def test_loss_landscape_verdict_every_state():
    bn = {"loss_range": 0.2, "grad_dist_max": 1.5, "beta_eff": 6.0}
    ghost = {"loss_range": 1.0, "grad_dist_max": 6.0, "beta_eff": 10.0}
    none = {"loss_range": 1.5, "grad_dist_max": 9.0, "beta_eff": 12.0}
    v = loss_landscape.verdict(bn, ghost, none)
    schema_ok(v)
    assert v["state"] == R and states(v) == {"less-smooth": R, "like-baseline": R, "gradient-predictiveness": R}
    assert [q["source"] for q in v["parts"]] == ["paper", "paper", "added"]
    v = loss_landscape.verdict(ghost, bn, none)                     # GhostNorm smoother: refuted
    assert states(v)["less-smooth"] == N and states(v)["gradient-predictiveness"] == N and v["state"] == N
    close = {"loss_range": 0.22, "grad_dist_max": 1.6, "beta_eff": 6.0}   # 1.1x: under the minimum effect
    v = loss_landscape.verdict(bn, close)
    assert states(v)["less-smooth"] == I and v["state"] == I
    assert states(loss_landscape.verdict(bn, ghost, {"loss_range": 0.1, "grad_dist_max": 2.0,
                                                     "beta_eff": 6.0}))["like-baseline"] == N
    assert states(loss_landscape.verdict(bn, ghost, None))["like-baseline"] == NA
    assert states(loss_landscape.verdict(bn, ghost, {"loss_range": float("nan")}))["like-baseline"] == I
    assert loss_landscape.verdict(bn, None)["state"] == NA


# -- ghost-example ----------------------------------------------------------------------------------

def test_ghost_example_matches_paper_numbers():
    bn = ghost_example.normalize("bn", ghost_example.X)
    ghost = ghost_example.normalize("ghost", ghost_example.X, ghost_groups=2)
    assert all(ghost_example.matches(bn, ghost_example.PAPER_BN))
    assert all(ghost_example.matches(ghost, ghost_example.PAPER_GHOST))
    assert ghost_example.flipped_pairs(ghost_example.X, bn) == []
    assert ghost_example.flipped_pairs(ghost_example.X, ghost) == [(2, 5)]
    assert ghost[1] < ghost[4]
    v = ghost_example.verdict(bn, ghost)
    schema_ok(v)
    assert v["state"] == R and states(v) == {"batchnorm": R, "ghostnorm": R}
    assert states(ghost_example.verdict(ghost, bn)) == {"batchnorm": N, "ghostnorm": N}
    assert ghost_example.verdict(bn, ghost, [1.0] * 8)["state"] == NA                      # custom values
    assert ghost_example.verdict(bn, ghost, ghost_groups=4)["state"] == NA
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


def _ws_recs(eq8, eq9=0.2, rest=None, residual=1e-7, n=4):
    return [{"eq8": eq8 + 0.0001 * i, "eq9": eq9, "rest": rest if rest is not None else 1 - eq8 - eq9,
             "residual": residual, "chance": 0.007} for i in range(n)]


def test_ws_gradients_verdict_every_state():
    ok, null = _ws_recs(0.002), [{"eq8": 0.02 + 0.001 * i, "eq9": 0.1} for i in range(4)]
    v = ws_gradients.verdict(ok, null)
    schema_ok(v)
    assert v["state"] == R and states(v) == {"eq8-small": R, "null-arm": R, "decomposition": R}
    assert [q["source"] for q in v["parts"]] == ["paper", "added", "added"]
    assert "invariant to scaling" in v["parts"][1]["claim"]
    assert states(ws_gradients.verdict(_ws_recs(0.05), null))["eq8-small"] == N        # above the paper's bound
    assert states(ws_gradients.verdict(_ws_recs(0.005, eq9=0.004), null))["eq8-small"] == N  # not below eq. 9's
    # the null arm's share as small as WS's (the 2-SE interval inside the minimum effect): not WS's doing
    same = [{"eq8": r["eq8"] + 0.0005, "eq9": 0.1} for r in ok]
    v = ws_gradients.verdict(ok, same)
    assert states(v)["null-arm"] == N and states(v)["eq8-small"] == R and v["state"] == N
    noisy = [{"eq8": x, "eq9": 0.1} for x in (0.0, 0.05, 0.001, 0.04)]
    v = ws_gradients.verdict(ok, noisy)
    assert states(v)["null-arm"] == I and v["state"] == I
    assert states(ws_gradients.verdict(ok, []))["null-arm"] == NA
    inexact = _ws_recs(0.002, residual=0.1)
    assert states(ws_gradients.verdict(inexact, null))["decomposition"] == N
    assert "decomposition" not in states(ws_gradients.verdict(inexact, null, exact=False))
    assert ws_gradients.verdict([], null)["state"] == NA


def test_ws_gradients_null_shares_and_group_sums():
    """The null arm's shares are cos^2(W_hat, g) and cos^2(1, g): 1/I on average for random g; under GN + WS the
    group sums of <W_hat_c, grad_c> vanish (scale invariance of a group), single channels' do not."""
    torch.manual_seed(0)
    w = torch.randn(64, 4, 3, 3, dtype=torch.float64)
    r = ws_gradients.direction_shares(w, torch.randn(64, 4, 3, 3, dtype=torch.float64))
    assert r["chance"] == pytest.approx(1 / 36) and r["eq8"] == pytest.approx(1 / 36, rel=0.35)
    assert ws_gradients.direction_shares(w, w)["eq8"] == pytest.approx(1.0 - 0.0, abs=0.05)  # g along W
    from normtrain import norms
    conv = norms.get("ws-gn", groups=2).conv(3, 8, 3, padding=1).double()
    conv.eps = 0.0
    gn = torch.nn.GroupNorm(2, 8, eps=0.0).double()  # exact invariance (eps 1e-5 leaves ~1e-7)
    store = ws_gradients.capture([conv], 0.0)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    (gn(conv(x)) * torch.randn(4, 8, 6, 6, dtype=torch.float64)).sum().backward()
    w_hat, g_hat = store[conv], store[conv].grad
    assert ws_gradients.group_sum_share(w_hat, g_hat, 2) < 1e-10
    dots = (w_hat.detach() * g_hat).flatten(1).sum(1)
    assert float(dots.abs().max()) > 1e-3                                  # single channels: not zero
    assert ws_gradients.group_sum_share(w_hat, g_hat, 8) > 0.5             # one channel per group: no invariance


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


def test_bn_cost_verdict_every_state():
    v = bn_cost.verdict({"bn": 0.24, "wn": 0.05}, device="cpu", model="resnet18", size=32, batch=32)
    schema_ok(v)
    assert v["state"] == NA and states(v) == {"bn-quarter": NA, "wn-cheaper": NA}       # a GPU claim on a CPU
    assert bn_cost.GPU_COMMAND in v["headline"] and bn_cost.GPU_COMMAND in v["parts"][0]["measured"]
    assert "--set device=cuda" in bn_cost.GPU_COMMAND and "model=resnet50" in bn_cost.GPU_COMMAND
    paper = dict(device="cuda", model="resnet50", size=224, batch=64)
    assert bn_cost.verdict({"bn": 0.24, "wn": 0.05}, **paper)["state"] == R
    assert states(bn_cost.verdict({"bn": 0.24, "wn": 0.3}, **paper))["wn-cheaper"] == N  # WN costs more
    assert bn_cost.verdict({"bn": 0.05}, **paper)["state"] == N
    small = bn_cost.verdict({"bn": 0.24, "wn": 0.05}, device="cuda", model="resnet18", size=32, batch=32)
    assert small["state"] == I and bn_cost.GPU_COMMAND in small["parts"][0]["measured"]   # another size
    assert bn_cost.verdict({"wn": 0.2})["state"] == NA


# -- output-norms -------------------------------------------------------------------------------------

def test_output_norms_drift_and_verdict():
    d = output_norms.drift([1.0, 1.1, 1.2], [0.1, 0.3, 0.6])
    assert d["r_start"] == pytest.approx(0.1) and d["r_end"] == pytest.approx(0.5)
    assert d["ratio_change"] == pytest.approx(4.0)
    steady = output_norms.drift([1.0, 2.0], [3.0, 6.6])
    v = output_norms.verdict(d, steady)
    schema_ok(v)
    assert v["state"] == R and states(v) == {"wn-drift": R, "bn-control": R}
    assert states(output_norms.verdict(steady, steady)) == {"wn-drift": N, "bn-control": R}  # WN keeps the ratio
    assert states(output_norms.verdict(d, d)) == {"wn-drift": R, "bn-control": N}            # the control drifts
    assert output_norms.verdict(d, None)["state"] == NA                                     # no control, no verdict
    assert output_norms.verdict(None, steady)["state"] == NA


# -- wn-generalization --------------------------------------------------------------------------------

def _wng(wn_train, wn_test, drop_test, wd_test, converged=True, bn_train=(96.0, 96.5, 97.0)):
    conv = [converged] * 3
    bn = {"train_top1": list(bn_train), "train_loss": [0.1] * 3, "test_top1": [96.0, 96.5, 97.0], "converged": conv}
    return {"bn": bn, "wn": {"train_top1": wn_train, "train_loss": [0.05] * 3, "test_top1": wn_test,
                             "converged": conv},
            "wn+dropout": {"train_top1": [90.0] * 3, "train_loss": [0.3] * 3, "test_top1": drop_test,
                           "converged": conv},
            "wn+wd": {"train_top1": [97.0] * 3, "train_loss": [0.05] * 3, "test_top1": wd_test, "converged": conv}}


def test_wn_generalization_verdict_every_state():
    better, worse = [99.0, 99.2, 99.1], [90.0, 91.0, 90.5]
    v = wn_generalization.verdict(_wng(better, worse, worse, worse), ["wn"])
    schema_ok(v)
    assert v["state"] == R and all(q["source"] == "paper" for q in v["parts"])
    assert states(v) == {"wn: trains-better": R, "wn: tests-worse": R, "wn: dropout-no-help": R, "wn: wd-no-help": R}
    same = [96.0, 96.5, 97.0]
    assert states(wn_generalization.verdict(_wng(better, same, worse, worse), ["wn"]))["wn: tests-worse"] == N
    assert states(wn_generalization.verdict(_wng(better, worse, same, worse), ["wn"]))["wn: dropout-no-help"] == N
    assert states(wn_generalization.verdict(_wng(better, worse, worse, [99.0, 99.5, 99.2]),
                                            ["wn"]))["wn: wd-no-help"] == N              # weight decay closes it
    noisy = [80.0, 97.5, 97.9]  # lower on average, inside the seeds' noise
    v = wn_generalization.verdict(_wng(better, noisy, worse, worse), ["wn"])
    assert states(v)["wn: tests-worse"] == I and "detectable" in v["parts"][1]["measured"]
    # a weight decay that cannot act at this size is flagged, not compared
    v = wn_generalization.verdict(_wng(better, worse, worse, worse), ["wn"], wd_acts=False, wd_text="0.2%")
    assert states(v)["wn: wd-no-help"] == I and "cannot act" in v["parts"][3]["measured"]
    # not converged: every accuracy part is inconclusive
    v = wn_generalization.verdict(_wng(better, worse, worse, worse, converged=False), ["wn"])
    assert set(states(v).values()) == {I} and "not converged" in v["parts"][1]["measured"]
    # both at the ceiling of the training split: "trains better" cannot be decided
    top = [100.0] * 3
    v = wn_generalization.verdict(_wng(top, worse, worse, worse, bn_train=top), ["wn"])
    assert states(v)["wn: trains-better"] == I and "memorized" in v["parts"][0]["measured"]
    assert states(wn_generalization.verdict(_wng([90.0, 90.5, 91.0], worse, worse, worse),
                                            ["wn"]))["wn: trains-better"] == N
    assert wn_generalization.verdict({"wn": {}}, ["wn"])["state"] == NA
    assert common.accuracy_min_effect(0.0, 360, 5, 0.5) == pytest.approx(500 / 360)
    assert common.accuracy_min_effect(0.0, 10000, 5, 0.5) == 0.5


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
    v = ghost_equivalence.verdict({**same, **other})
    schema_ok(v)
    assert v["state"] == R and states(v) == {"accumulation": R, "multi-gpu": R, "not-full-batch": R}
    assert states(ghost_equivalence.verdict({**same, "ghost~ddp": 1e-3, **other}))["multi-gpu"] == N  # they differ
    assert states(ghost_equivalence.verdict({**same, "ghost~accumulation": 1e-3, **other}))["accumulation"] == N
    assert states(ghost_equivalence.verdict({**same, **other, "ddp~bn": 1e-9}))["not-full-batch"] == N  # = full BN
    assert ghost_equivalence.verdict(same)["state"] == NA


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

def test_ws_curves_verdict_every_state():
    ordered = {"gn": [1.0, 1.05, 0.95], "gn+eq6": [0.8, 0.86, 0.74], "gn+eq5": [0.3, 0.33, 0.28],
               "gn+ws": [0.2, 0.22, 0.19]}
    v = ws_curves.verdict(ordered)
    schema_ok(v)
    assert v["state"] == R and states(v) == {"eq6-without-eq5": R, "eq6-with-eq5": R, "eq5-major": R}
    assert "detect gaps >=" in v["headline"]
    no_eq6 = {**ordered, "gn+eq6": [1.001, 1.051, 0.949]}             # shown equal: eq. 6 does not help
    assert states(ws_curves.verdict(no_eq6))["eq6-without-eq5"] == N
    eq6_major = {**ordered, "gn+eq6": [0.25, 0.26, 0.24]}
    assert states(ws_curves.verdict(eq6_major))["eq5-major"] == N       # eq. 6 helps more than eq. 5
    noisy = {**ordered, "gn+ws": [0.01, 0.5, 0.25]}                     # paired gaps +0.29, -0.17, +0.03
    v = ws_curves.verdict(noisy)
    assert states(v)["eq6-with-eq5"] == I and v["state"] == I
    assert "detectable" in v["parts"][1]["measured"]
    assert ws_curves.verdict({"gn": [1.0]})["state"] == NA
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


def test_nf_ablation_verdict_every_state():
    sp, stages = _nf_ok()
    v = nf_ablation.verdict(sp, stages)
    schema_ok(v)
    assert v["state"] == R, v["measured"]
    assert [q["source"] for q in v["parts"]] == ["paper", "paper", "added", "added", "paper"]
    bad = dict(sp, nf=_spp(sp["nf"]["var"], [0.5] * 7, sp["nf"]["res_var"]))
    assert states(nf_ablation.verdict(bad, stages))["nf"] == N            # scaled WS does not zero the mean
    bad = dict(sp, **{"nf-no-sws": sp["nf"]})
    assert states(nf_ablation.verdict(bad, stages))["nf-no-sws"] == N     # removing scaled WS changes nothing
    bad = dict(sp, **{"nf-no-beta": sp["nf"]})
    assert states(nf_ablation.verdict(bad, stages))["nf-no-beta"] == N    # still resets without beta
    bad = dict(sp, **{"he-only": sp["bn-relu"]})
    assert states(nf_ablation.verdict(bad, stages))["he-only"] == N       # He init alone does not grow
    bad = dict(sp, **{"relu-bn": sp["bn-relu"], "bn-relu": sp["relu-bn"]})
    v = nf_ablation.verdict(bad, stages)
    assert states(v)["relu-bn-order"] == N and v["state"] == N           # NF closer to BN -> ReLU
    assert nf_ablation.verdict({"nf": sp["nf"]}, stages)["state"] == NA


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

def test_common_mean_std_paired_difference_and_not_judged():
    assert common.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    # the same per-seed offset is shown paired, while unpaired the seeds' spread hides it
    a, b = [1.0, 2.0, 3.0], [1.1, 2.1, 3.1]
    assert not common.difference(b, a, 0.05)["shown"] and common.paired_difference(b, a, 0.05)["shown"]
    d = common.paired_difference([1.0, 1.5, 0.5], [0.0, 0.0, 0.0], 0.1)
    assert d["gap"] == pytest.approx(1.0) and d["se"] == pytest.approx(0.5 / math.sqrt(3))
    assert "(shown)" in common.shown_text(common.paired_difference(b, a, 0.05))
    assert "not shown: detectable" in common.shown_text(common.difference([1.0, 3.0], [0.0, 2.0], 0.1))
    v = common.not_judged("claim", "why")
    schema_ok(v)
    assert v["state"] == NA and v["headline"] == "not judged: why"


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
    from normtrain import models
    assert p.dataset == "imagenet" and p.recipes == ("deit-b-imagenet",)
    assert p.params["model"] in models.names() and set(p.params) <= set(vars(dyt_tanh_shape.Params()))
    json.dumps({k: v.as_dict() for k, v in p.values.items()})
