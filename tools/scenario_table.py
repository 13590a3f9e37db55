#!/usr/bin/env python3
"""The README's scenario table, regenerated from the scenarios' own results.json (never typed).

    python tools/scenario_table.py --run          # run every scenario at its defaults, then update
    python tools/scenario_table.py                # update from runs/scenario-NAME/results.json as they are
    python tools/scenario_table.py --check        # exit 1 if the README table differs from docs/scenarios/verdicts.json

Updating copies each scenario's plots to docs/scenarios/ (the first as NAME.png,
the others as NAME-<plot>.png), writes docs/scenarios/verdicts.json (per
scenario: the verdict, the parameters that differ from the defaults, runtime,
device, plots) and rewrites the README between the markers
``<!-- scenario-table:start -->`` and ``<!-- scenario-table:end -->`` from that
file. The table's verdict column is each result's verdict headline; a result
produced at non-default parameters says so.
"""
from __future__ import annotations

import argparse
import json
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


def entry(name: str, res: dict) -> dict:
    """What verdicts.json keeps of one results.json."""
    v = res["verdict"]
    return {"reproduced": v["reproduced"], "state": v.get("state") or ("reproduced" if v["reproduced"] else
                                                                     "not reproduced"),
            "headline": v.get("headline") or v["measured"], "claim": v["claim"],
            "criterion": v["criterion"], "non_default_params": non_default(name, res["params"]),
            "runtime_s": res.get("runtime_s"), "cpu_s": res.get("cpu_s"), "device": res.get("device"),
            "plots": [str(DOCS / p) for p in plot_names(name, res.get("plots", []))]}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(verdicts: dict, summaries: dict) -> str:
    """The markdown between the markers: one table row per scenario, in `summaries` order, then plot links."""
    lines = ["| scenario | what it checks | verdict at default size | CPU time (wall) |", "|---|---|---|---|"]
    links = []
    for name, summary in summaries.items():
        e = verdicts.get(name)
        if e is None:
            lines.append(f"| `{name}` | {_cell(summary)} | not run yet | |")
            continue
        state = e.get("state") or ("reproduced" if e["reproduced"] else "not reproduced")
        mark = state if state == "reproduced" else f"**{state}**"  # inconclusive and n/a are not "not reproduced"
        extra = ""
        if e["non_default_params"]:
            extra = " (at " + ", ".join(f"`{k}={v}`" for k, v in sorted(e["non_default_params"].items())) + ")"
        runtime = ""
        if e.get("runtime_s") is not None:
            cpu = f"{e['cpu_s']:.0f} s " if e.get("cpu_s") is not None else ""
            runtime = f"{cpu}({e['runtime_s']:.0f} s wall, {e['device']})"
        lines.append(f"| `{name}` | {_cell(summary)} | {mark}: {_cell(e['headline'])}{extra} | {runtime} |")
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


def run_all(names: list[str], runs: Path) -> None:
    for n in names:
        t0 = time.perf_counter()
        print(f"== {n}", flush=True)
        p = subprocess.run([sys.executable, "-m", "normtrain", "scenario", n, "--out", str(runs / f"scenario-{n}"),
                            "--set", "progress=false"], cwd=ROOT)
        if p.returncode != 0:
            raise SystemExit(f"scenario {n} failed (exit {p.returncode})")
        print(f"== {n}: {time.perf_counter() - t0:.1f}s", flush=True)


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
        run_all(names, runs)
    docs.mkdir(parents=True, exist_ok=True)
    verdicts = update(runs, docs, names, list(sums))
    write_readme(readme, render(verdicts, sums))
    print(f"updated {docs / 'verdicts.json'} and the README table ({len(verdicts)} scenarios)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
