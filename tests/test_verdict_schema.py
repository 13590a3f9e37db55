"""The verdict schema and the statistics rule every scenario shares (DESIGN §5)."""
import math

import pytest

from normtrain.scenarios import common as c


def _p(state, source="paper"):
    return c.part("p", "claim", source, state, "measured", "criterion")


def test_overall_state_from_parts():
    R, N, I, NA = c.REPRODUCED, c.NOT_REPRODUCED, c.INCONCLUSIVE, c.NA
    assert c.overall_state([_p(R), _p(R, "added")]) == R
    assert c.overall_state([_p(R), _p(N, "added")]) == N          # the paper's claim held, a control did not
    assert c.overall_state([_p(I), _p(R, "added")]) == I
    assert c.overall_state([_p(N), _p(I, "added")]) == N
    assert c.overall_state([_p(NA), _p(R, "added")]) == NA        # a GPU claim on a CPU
    assert c.overall_state([_p(R), _p(NA, "added")]) == R
    assert c.overall_state([]) == NA
    v = c.verdict_of("claim", [_p(R), _p(N, "added")], "held; control failed")
    assert v["state"] == N and v["reproduced"] is False and v["headline"] == "held; control failed"
    assert [q["source"] for q in v["parts"]] == ["paper", "added"]


def test_part_rejects_unknown_state_and_source():
    with pytest.raises(ValueError):
        c.part("p", "c", "paper", "maybe", "m", "k")
    with pytest.raises(ValueError):
        c.part("p", "c", "ours", c.REPRODUCED, "m", "k")
    assert c.part("p", "c", "added", False, "m", "k")["state"] == c.NOT_REPRODUCED


def test_difference_needs_two_standard_errors_and_the_minimum_effect():
    a, b = [1.0, 1.1, 0.9, 1.05], [0.5, 0.6, 0.55, 0.45]
    d = c.difference(a, b, 0.1)
    se = math.sqrt(c.mean_std(a)[1] ** 2 / 4 + c.mean_std(b)[1] ** 2 / 4)
    assert d["gap"] == pytest.approx(0.4875) and d["se"] == pytest.approx(se)
    assert d["shown"] and c.state_greater(d) == c.REPRODUCED
    assert not c.difference(a, b, 0.6)["shown"]                        # below the minimum effect
    noisy = c.difference([1.0, 3.0], [0.0, 2.0], 0.1)                  # gap 1, se 1: under 2 se
    assert not noisy["shown"] and c.state_greater(noisy) == c.INCONCLUSIVE
    assert noisy["seeds_to_decide"] == 16                               # 2 sqrt(4/n) <= 1 needs n >= 16
    eq = c.difference([1.0, 1.01, 0.99], [1.0, 1.02, 0.98], 0.5)
    assert eq["equal"] and c.state_greater(eq) == c.NOT_REPRODUCED and c.state_not_less(eq) == c.REPRODUCED
    one = c.difference([1.0], [0.0], 0.1)                              # one seed: no standard error
    assert not one["shown"] and math.isnan(one["se"])


def test_accuracy_minimum_effect_and_the_seed_mean_curve():
    assert c.accuracy_min_effect(0.0, 360) == pytest.approx(500 / 360)  # 5 images of 360 > 0.5 points
    assert c.accuracy_min_effect(0.0, 10000) == 0.5                    # 5 images of 10k < 0.5 points
    assert c.accuracy_min_effect(2.0, 360) == 2.0 and c.accuracy_min_effect(0.0, 0) == 0.5
    runs = [{"losses": [2.0, 1.0], "diverged_at": None}, {"losses": [4.0, 3.0], "diverged_at": None},
            {"losses": [9.0, float("nan")], "diverged_at": 1}]          # a diverged seed is left out
    assert c.seed_mean_curve(runs) == [3.0, 2.0]
    assert c.seed_mean_curve(runs[2:]) == []


def test_plateau_and_weight_decay_rules():
    assert c.plateaued([2.0] * 10 + [1.0] * 10 + [0.5] * 80)
    assert not c.plateaued([1.0 / (i + 1) for i in range(50)])          # still falling fast
    assert not c.plateaued([1.0, 0.9])                                  # too short to tell
    assert c.decay_acts(0.1, 1e-3, 200) and not c.decay_acts(0.05, 5e-5, 1000)
