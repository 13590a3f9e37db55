#!/usr/bin/env python3
"""The README's scenario table, regenerated from the scenarios' own results.json (never typed).

    python tools/scenario_table.py --run          # run every scenario at its defaults, then update (the one command)
    python tools/scenario_table.py                # update from runs/scenario-NAME/results.json as they are
    python tools/scenario_table.py --check        # exit 1 if the README table differs from docs/scenarios/verdicts.json

``--run`` runs every registered scenario at its defaults (their own fixed seeds) as
``python -m normtrain scenario NAME`` subprocesses, ``--jobs`` (default 2) at a time,
each with one thread (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, the scenarios' threads=1), the longest first,
so that the numbers do not depend on the machine's core count or load; each one's
output goes to runs/scenario-NAME.log. Updating copies each scenario's plots to
docs/scenarios/ (the first as NAME.png, the others as NAME-<plot>.png), writes
docs/scenarios/verdicts.json (per scenario: the verdict's state, its parts' names,
sources and states, the headline and claim, the parameters that differ from the
defaults, runtime, device, torch version, plots) and rewrites the README between the
markers ``<!-- scenario-table:start -->`` and ``<!-- scenario-table:end -->`` from
that file. tests/test_scenario_rerun.py reruns every scenario the same way and fails
when a state, a part's state or a headline number differs from verdicts.json beyond
`TOLERANCE` (`differences`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START, END = "<!-- scenario-table:start -->", "<!-- scenario-table:end -->"
DOCS = Path("docs/scenarios")
#: Parameters that change how a run looks, not what it measures.
DISPLAY_PARAMS = ("progress", "device")
#: Headline numbers of a rerun match the committed ones when |a - b| <= REL * max(|a|, |b|) + ABS: 5% covers the
#: last printed digit and small float differences between machines; ABS absorbs float noise (1e-16 distances).
TOLERANCE = {"rel": 0.05, "abs": 1e-6}
#: One thread per scenario, whatever the machine.
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def plot_names(name: str, plots: list[str]) -> list[str]:
    """docs file names of a scenario's plots: the first NAME.png, the others NAME-<stem>.png."""
    out = []
    for i, p in enumerate(plots):
        stem = Path(p).stem.replace("_", "-")
        out.append(f"{name}.png" if i == 0 else f"{name}-{stem}.png")
    return out


def non_default(name: str, params: dict) -> dict:
    """The parameters of a result that differ from the scenario's defaults (display-only ones left out)."""
    import dataclasses

    from normtrain import scenarios
    defaults = dataclasses.asdict(scenarios.SCENARIOS[name].Params())
    return {k: v for k, v in params.items() if k not in DISPLAY_PARAMS and defaults.get(k, v) != v}


def state_of(v: dict) -> str:
    """A verdict's state (old results without one: from `reproduced`)."""
    return v.get("state") or ("reproduced" if v.get("reproduced") else "not reproduced")


def entry(name: str, res: dict) -> dict:
    """What verdicts.json keeps of one results.json."""
    v = res["verdict"]
    try:
        import torch
        version = torch.__version__
    except ImportError:  # pragma: no cover - the scenarios need torch anyway
        version = None
    return {"state": state_of(v), "reproduced": state_of(v) == "reproduced",
            "parts": [{"name": q["name"], "source": q["source"], "state": q["state"]} for q in v.get("parts", [])],
            "headline": v.get("headline") or v["measured"], "claim": v["claim"],
            "criterion": v["criterion"], "non_default_params": non_default(name, res["params"]),
            "runtime_s": res.get("runtime_s"), "cpu_s": res.get("cpu_s"), "device": res.get("device"),
            "torch": version, "plots": [str(DOCS / p) for p in plot_names(name, res.get("plots", []))]}


# -- the rerun check ------------------------------------------------------------------------------------------

NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def headline_numbers(text: str) -> list[float]:
    """Every number in a headline, in order ('5/7' -> 5, 7; '1e-5' -> 1e-05; '+699%' -> 699)."""
    return [float(m) for m in NUMBER.findall(text.replace("..", " "))]


def close(a: float, b: float, tol: dict = TOLERANCE) -> bool:
    return abs(a - b) <= tol["rel"] * max(abs(a), abs(b)) + tol["abs"]


def differences(name: str, expected: dict | None, res: dict, timed: bool = False, tol: dict = TOLERANCE) -> list[str]:
    """What differs between a committed verdicts.json entry and a fresh results.json: the state, each part's
    state (by name), and, unless the scenario is `timed` (its headline numbers are timings), the headline numbers
    (each within `tol`). Empty when they match."""
    if expected is None:
        return [f"{name}: no entry in docs/scenarios/verdicts.json (run tools/scenario_table.py --run)"]
    v = res["verdict"]
    out = []
    if state_of(v) != expected["state"]:
        out.append(f"{name}: state {state_of(v)!r}, committed {expected['state']!r}")
    got = {q["name"]: q["state"] for q in v.get("parts", [])}
    want = {q["name"]: q["state"] for q in expected.get("parts", [])}
    if got != want:
        changed = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        out.append(f"{name}: parts differ: " + ", ".join(f"{k}: {got.get(k)!r} (committed {want.get(k)!r})"
                                                          for k in changed))
    if not timed:
        a, b = headline_numbers(v.get("headline", "")), headline_numbers(expected["headline"])
        if len(a) != len(b) or not all(close(x, y, tol) for x, y in zip(a, b)):
            out.append(f"{name}: headline numbers differ beyond {tol['rel']:.0%}:\n    now:       "
                       f"{v.get('headline')}\n    committed: {expected['headline']}")
    return out


# -- the table ------------------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _state_cell(state: str) -> str:
    return state if state == "reproduced" else f"**{state}**"


def render(verdicts: dict, summaries: dict) -> str:
    """The markdown between the markers: one table row per scenario, in `summaries` order, then plot links."""
    lines = ["| scenario | what it checks | state | headline at default size | CPU time (wall) |",
             "|---|---|---|---|---|"]
    links = []
    for name, summary in summaries.items():
        e = verdicts.get(name)
        if e is None:
            lines.append(f"| `{name}` | {_cell(summary)} | not run yet | | |")
            continue
        extra = ""
        if e["non_default_params"]:
            extra = " (at " + ", ".join(f"`{k}={v}`" for k, v in sorted(e["non_default_params"].items())) + ")"
        runtime = ""
        if e.get("runtime_s") is not None:
            cpu = f"{e['cpu_s']:.0f} s " if e.get("cpu_s") is not None else ""
            runtime = f"{cpu}({e['runtime_s']:.0f} s wall, {e['device']})"
        lines.append(f"| `{name}` | {_cell(summary)} | {_state_cell(state_of(e))} | {_cell(e['headline'])}{extra} | "
                     f"{runtime} |")
        links += [f"[{Path(p).stem}]({p})" for p in e["plots"]]
    return "\n".join(lines) + "\n\nPlots: " + ", ".join(links) + "."


def summaries() -> dict:
    from normtrain import scenarios
    return {n: scenarios.SCENARIOS.summary(n) for n in scenarios.names()}


def readme_block(text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"README has no {START} ... {END} block")
    return text[text.index(START) + len(START):text.index(END)].strip("\n")


def write_readme(readme: Path, block: str) -> None:
    text = readme.read_text()
    readme_block(text)
    head, tail = text[:text.index(START) + len(START)], text[text.index(END):]
    readme.write_text(f"{head}\n{block}\n{tail}")


# -- running ----------------------------------------------------------------------------------------------------

def committed_costs() -> dict:
    """{scenario: CPU seconds} of the committed results (docs/scenarios/verdicts.json), {} if none."""
    path = ROOT / DOCS / "verdicts.json"
    if not path.is_file():
        return {}
    return {n: e.get("cpu_s") for n, e in json.loads(path.read_text()).items() if e.get("cpu_s") is not None}


def run_all(names: list[str], runs: Path, jobs: int = 2, echo: bool = True, costs: dict | None = None) -> dict:
    """Run each scenario at its defaults as a subprocess, `jobs` at a time, one thread each.

    The longest go first (by `costs`, default the committed CPU seconds; scenarios without one first of all), so
    that the last to finish is a short one. Output of each goes to runs/scenario-NAME.log; returns {name: wall
    seconds}. Raises RuntimeError naming every scenario that failed, with the end of its log."""
    runs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **ENV)
    costs = committed_costs() if costs is None else costs
    order = sorted(names, key=lambda n: -costs.get(n, float("inf")))
    pending, active, walls, failed = order, {}, {}, []
    t_all = time.perf_counter()
    while pending or active:
        while pending and len(active) < max(1, jobs):
            n = pending.pop(0)
            out = runs / f"scenario-{n}"
            if out.exists():
                shutil.rmtree(out)  # a stale result must not pass for a fresh one
            log = open(runs / f"scenario-{n}.log", "w")
            cmd = [sys.executable, "-m", "normtrain", "scenario", n, "--out", str(out), "--set", "progress=false"]
            active[n] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log,
                         time.perf_counter())
            if echo:
                print(f"== {n}: started", flush=True)
        time.sleep(0.2)
        for n, (proc, log, t0) in list(active.items()):
            if proc.poll() is None:
                continue
            log.close()
            walls[n] = time.perf_counter() - t0
            del active[n]
            if proc.returncode != 0:
                tail = (runs / f"scenario-{n}.log").read_text()[-2000:]
                failed.append(f"scenario {n} failed (exit {proc.returncode}):\n{tail}")
            if echo:
                print(f"== {n}: {walls[n]:.1f}s{' FAILED' if proc.returncode else ''}", flush=True)
    if echo:
        print(f"== all {len(names)} scenarios: {time.perf_counter() - t_all:.1f}s with {jobs} at a time", flush=True)
    if failed:
        raise RuntimeError("\n\n".join(failed))
    return walls


def own_plots(docs: Path, name: str, order: list[str]) -> list[Path]:
    """docs/NAME.png and docs/NAME-*.png, except those of another scenario whose name starts with NAME-."""
    others = [m for m in order if m != name and m.startswith(f"{name}-")]
    return [f for f in docs.glob(f"{name}*.png") if f.stem == name or (
        f.stem.startswith(f"{name}-") and not any(f.stem == m or f.stem.startswith(f"{m}-") for m in others))]


def update(runs: Path, docs: Path, names: list[str], order: list[str]) -> dict:
    """Refresh the entries of `names` from their results.json (others are kept); returns verdicts in `order`."""
    path = docs / "verdicts.json"
    verdicts = json.loads(path.read_text()) if path.is_file() else {}
    for n in names:
        src = runs / f"scenario-{n}" / "results.json"
        if not src.is_file():
            print(f"{n}: no {src}, kept as it was", file=sys.stderr)
            continue
        res = json.loads(src.read_text())
        for old in own_plots(docs, n, order):
            old.unlink()  # a plot the scenario no longer makes must not stay linked
        for plot, dst in zip(res.get("plots", []), plot_names(n, res.get("plots", []))):
            shutil.copyfile(src.parent / plot, docs / dst)
        verdicts[n] = entry(n, res)
    verdicts = {n: verdicts[n] for n in order if n in verdicts}
    path.write_text(json.dumps(verdicts, indent=1) + "\n")
    return verdicts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="run every scenario at its defaults first")
    ap.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    ap.add_argument("--jobs", type=int, default=2, help="scenarios run at a time with --run (default 2)")
    ap.add_argument("--runs", default="runs", help="folder holding scenario-NAME/results.json (default: runs)")
    ap.add_argument("--check", action="store_true", help="only compare the README with docs/scenarios/verdicts.json")
    args = ap.parse_args(argv)
    sums = summaries()
    readme, docs = ROOT / "README.md", ROOT / DOCS
    if args.check:
        verdicts = json.loads((docs / "verdicts.json").read_text())
        if readme_block(readme.read_text()) != render(verdicts, sums):
            print("README scenario table differs from docs/scenarios/verdicts.json: run tools/scenario_table.py",
                  file=sys.stderr)
            return 1
        return 0
    names = [n for n in (args.only.split(",") if args.only else sums) if n]
    unknown = sorted(set(names) - set(sums))
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}")
    runs = Path(args.runs) if Path(args.runs).is_absolute() else ROOT / args.runs
    if args.run:
        try:
            run_all(names, runs, args.jobs)
        except RuntimeError as e:
            raise SystemExit(str(e)) from None
    docs.mkdir(parents=True, exist_ok=True)
    verdicts = update(runs, docs, names, list(sums))
    write_readme(readme, render(verdicts, sums))
    print(f"updated {docs / 'verdicts.json'} and the README table ({len(verdicts)} scenarios)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
