"""The committed results match the code: every registered scenario rerun at its defaults gives the verdict
recorded in docs/scenarios/verdicts.json (and the README table made from it).

One test runs them all, as `tools/scenario_table.py --run` does: subprocesses two at a time, one thread each
(OMP_NUM_THREADS=1), fixed seeds (the scenarios' defaults). It fails when a scenario's state, a part's state or a
headline number differs from verdicts.json beyond `scenario_table.TOLERANCE` (5% relative; `TIMED` scenarios,
whose headline numbers are timings, compare states only), and checks each result's files (schema, plots at least
1200 px wide, TensorBoard events). A new scenario needs a committed result: run `python tools/scenario_table.py
--run` and commit docs/scenarios and the README. About 6 minutes on a 2-core machine.
"""
import importlib.util
import json
import struct

import pytest

from normtrain import scenarios
from normtrain.scenarios import common

from .conftest import ROOT


def _tool():
    spec = importlib.util.spec_from_file_location("scenario_table", ROOT / "tools/scenario_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def files_ok(name: str, out) -> list[str]:
    """Problems with one run's outputs: results.json schema, plots, TensorBoard events."""
    res = json.loads((out / "results.json").read_text())
    v = res["verdict"]
    problems = []
    if res["scenario"] != name or not {"params", "measurements", "verdict", "runtime_s", "cpu_s"} <= set(res):
        problems.append(f"{name}: results.json lacks its keys")
    if v.get("state") not in common.STATES or not v.get("parts") or not v.get("headline") or \
            v.get("reproduced") != (v.get("state") == common.REPRODUCED) or \
            v.get("state") != common.overall_state(v["parts"]):
        problems.append(f"{name}: verdict does not follow the schema: {v.get('state')!r}")
    for q in v.get("parts", []):
        if q.get("source") not in common.SOURCES or q.get("state") not in common.STATES or not q.get("claim"):
            problems.append(f"{name}: part {q.get('name')!r} does not follow the schema")
    if not res["plots"] or not all((out / p).is_file() and png_size(out / p)[0] >= 1200 for p in res["plots"]):
        problems.append(f"{name}: plots missing or narrower than 1200 px")
    if not list((out / "tb").glob("events.out.tfevents.*")):
        problems.append(f"{name}: no TensorBoard events")
    return problems


def test_differences_compares_states_parts_and_headline_numbers():
    tool = _tool()
    committed = {"state": "not reproduced", "headline": "WN diverged at 5/7 rates; ratio +699%",
                 "parts": [{"name": "a", "source": "paper", "state": "reproduced"},
                           {"name": "b", "source": "added", "state": "not reproduced"}]}
    res = {"verdict": {"state": "not reproduced", "headline": "WN diverged at 5/7 rates; ratio +710%",
                       "parts": [{"name": "a", "state": "reproduced"}, {"name": "b", "state": "not reproduced"}]}}
    assert tool.differences("x", committed, res) == []          # 699 -> 710: within 5%
    res["verdict"]["headline"] = "WN diverged at 5/7 rates; ratio +771%"
    assert "headline numbers" in tool.differences("x", committed, res)[0]
    assert tool.differences("x", committed, res, timed=True) == []
    res["verdict"]["headline"] = "WN diverged at 4/7 rates; ratio +699%"
    assert tool.differences("x", committed, res)                  # a count changed
    res["verdict"].update(headline=committed["headline"], state="reproduced")
    res["verdict"]["parts"][1]["state"] = "reproduced"
    d = tool.differences("x", committed, res)
    assert any("state 'reproduced'" in x for x in d) and any("b: 'reproduced'" in x for x in d)
    assert tool.differences("x", None, res)[0].startswith("x: no entry")
    assert tool.headline_numbers("1e-05..1, 6.1e-16; -0.002 ± 0.006, x2.05/block") == \
        [1e-05, 1.0, 6.1e-16, -0.002, 0.006, 2.05]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_scenario_reruns_to_its_committed_verdict(tmp_path):
    tool = _tool()
    committed = json.loads((ROOT / "docs/scenarios/verdicts.json").read_text())
    names = scenarios.names()
    tool.run_all(names, tmp_path, jobs=2, echo=False)
    problems = []
    for name in names:
        out = tmp_path / f"scenario-{name}"
        res = json.loads((out / "results.json").read_text())
        timed = bool(getattr(scenarios.SCENARIOS[name], "TIMED", False))
        problems += tool.differences(name, committed.get(name), res, timed)
        problems += files_ok(name, out)
    assert not problems, ("the committed results do not match the code; if the change is meant, run "
                          "`python tools/scenario_table.py --run` and commit docs/scenarios and the README:\n"
                          + "\n".join(problems))
