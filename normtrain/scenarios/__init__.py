"""Research scenarios: the papers' experiments, one command each, ending in a verdict.

    normtrain scenario NAME [--data PATH] [--set key=value ...] [--out DIR]
    normtrain scenario NAME --help          # its parameters, defaults and docs
    normtrain scenario NAME --scale paper --data PATH [--nproc-per-node N ...]   # the paper's own size
    normtrain scenario NAME --scale paper --dry-run   # its plan: runs, steps, batches, GPU-hours

``--scale cpu`` (the default) is a size that runs in about a minute on one CPU core;
``--scale paper`` applies the module's ``PAPER`` (`paper.Paper`: the paper's network,
dataset, batches, epochs, seeds) to its parameters (a ``--set`` still wins). A scenario
whose paper experiment is a set of training runs (``paper_runs``) starts them through the
training launcher, one run folder each under <out>/runs/, reused once finished
(`paper_runs`); the others run in this process with the larger parameters. The dataset
is checked up front (`paper.check_dataset`). results.json records the scale, and each
verdict part the paper's value beside ours (``paper_value``).

Each writes <out>/results.json (scenario, params, measurements, verdict: a
state and its parts, each the paper's sentence or a control we add, see
`common`), PNG plots and TensorBoard scalars (<out>/tb), and prints a short
table and the verdict. Default out: runs/scenario-NAME. A verdict that does not
reproduce the paper is a result, not an error: the exit code is 0 either way
(2 for bad input, nothing written).

Adding a scenario: one module here with a docstring, ``Params`` (a dataclass
deriving from `common.Params`), ``USES_DATA`` and ``run(ctx, params)``, and one
line ``"name": "module"`` in ``SCENARIOS``, and its ``PAPER``. See `common` for the contract.
``--help`` and the checks of ``--set`` read the module's docstring and Params
without importing torch (`normtrain.static.light`): keep Params free of torch
at definition time (defaults and types from the standard library).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from .. import config, outputs, recipe_runs, static
from ..errors import EXIT_INTERRUPTED, EnvError, UsageError, readable
from ..registry import Registry
from . import paper

# name -> module in this folder, imported on first use (the scenarios import torch).
SCENARIOS = Registry("scenario", {
    "linear50-wn": "linear50_wn",
    "normprop-residual": "normprop_residual",
    "output-norms": "output_norms",
    "signal-prop": "signal_prop",
    "loss-landscape": "loss_landscape",
    "ghost-example": "ghost_example",
    "ws-gradients": "ws_gradients",
    "bn-cost": "bn_cost",
    "wn-generalization": "wn_generalization",
    "ghost-equivalence": "ghost_equivalence",
    "ws-curves": "ws_curves",
    "nf-ablation": "nf_ablation",
    "ws-hessian": "ws_hessian",
    "ws-micro-batch": "ws_micro_batch",
    "ghost-ranking": "ghost_ranking",
    "wn-small-net": "wn_small_net",
    "trelu-wn-instability": "trelu_wn_instability",
    "residual-scalings": "residual_scalings",
    "dyt-tanh-shape": "dyt_tanh_shape",
}, __name__)


def names() -> list[str]:
    return SCENARIOS.names()


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def light(name: str):
    """Scenario `name`'s module as far as it can be read without torch (docstring, Params,
    USES_DATA; `normtrain.static.light`), or the module itself when its Params needs more."""
    module = static.light(SCENARIOS.source(name)[0])
    try:
        module.Params(), module.USES_DATA  # defaults that need a left-out name fail here
    except Exception:  # noqa: BLE001 - then read the real module (imports torch, same answers)
        return SCENARIOS[name]
    return module


def params_help(module, name: str = "NAME") -> str:
    """The parameter table of a scenario: key, type, default, doc."""
    cls = module.Params
    docs = config.dataclass_docs(cls)
    hints = config._hints(cls)
    obj = cls()
    rows = []
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        tname = getattr(typ, "__name__", str(typ)) if not typing.get_args(typ) else str(typ)
        rows.append((f.name, tname, repr(getattr(obj, f.name)), docs.get(f.name, "")))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(["parameters (--set key=value):"] + [
        f"  {k:{widths[0]}s}  {t:{widths[1]}s}  {d:{widths[2]}s}  {doc}" for k, t, d, doc in rows]
        + ["", "example (a list takes a comma list, key=v1,v2, or a YAML list):", f"  {example(module, name)}"])


def example(module, name: str) -> str:
    """A command line for the scenario with a list parameter given as a comma list and a number, from
    the defaults: e.g. ``normtrain scenario linear50-wn --set lrs=0.001,0.01 --set steps=100``."""
    cls = module.Params
    obj = cls()
    hints = config._hints(cls)
    sets = []
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if (typing.get_origin(hints[f.name]) or hints[f.name]) is list and value and not sets:
            for part in (value[:2], value):  # two values where the scenario accepts them, else its defaults
                text = ",".join(config_text(v) for v in part)
                try:
                    config.apply_overrides(cls(), [(f.name, text)])
                except Exception:  # noqa: BLE001 - rejected (or a check that needs torch): try the next
                    continue
                sets.append(f"--set {f.name}={text}")
                break
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if hints[f.name] is int and not isinstance(value, bool) and f.name not in ("seed", "threads"):
            sets.append(f"--set {f.name}={value}")
            break
    return " ".join([f"normtrain scenario {name}", *sets, f"--out runs/scenario-{name}"])


def config_text(v) -> str:
    """One list element as --set text (numbers as Python prints them, strings as they are)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def parser(name: str | None = None) -> argparse.ArgumentParser:
    if name is None:
        width = max(map(len, names()))
        desc = "Run a paper experiment and get a verdict. Scenarios:\n" + "\n".join(
            f"  {n:{width}s}  {SCENARIOS.summary(n)}" for n in names())
        epilog = None
    else:
        module = light(name)
        desc = (module.__doc__ or "").strip()
        epilog = scale_help(module, name) + "\n\n" + params_help(module, name)  # ends with the example
    p = _Parser(prog=f"normtrain scenario {name or 'NAME'}", description=desc, epilog=epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset path or built-in name (default: the scenario's built-in data; "
                                  "--scale paper: the paper's dataset, see below)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario parameter (repeatable; see the list below)")
    p.add_argument("--out", help="output directory (default: runs/scenario-NAME)")
    p.add_argument("--scale", choices=paper.SCALES, default="cpu",
                   help="cpu (default): a size that runs in about a minute on one CPU core; paper: the paper's own "
                        "experiment (its network, dataset, batches, epochs and seeds; see below)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (runs, steps, batch per process, GPU-hours where a step time is measured) "
                        "and exit; nothing is run or written")
    p.add_argument("--timing", action="append", default=[], metavar="FILE",
                   help="doctor.json or tools/bench.py --json file with step times measured on a GPU, for the "
                        "plan's GPU-hours (default: ./doctor.json if present)")
    p.add_argument("--recipe-set", dest="recipe_sets", action="append", default=[], metavar="KEY=VALUE",
                   help="--scale paper training runs: a recipe override for every run (e.g. data.workers=16, "
                        "train.max_steps=100 for a trial)")
    recipe_runs.add_launch_args(p, nproc_default="auto")
    return p


def scale_help(module, name: str) -> str:
    """What --scale paper means for this scenario (its --help): the paper's experiment, data, and plan kind."""
    pp = getattr(module, "PAPER", None)
    if pp is None:
        return "--scale paper: not available for this scenario."
    lines = [f"--scale paper: {pp.where}; the paper used {pp.gpus} GPU(s)."]
    if pp.params:
        lines.append("  parameters at paper scale: " + ", ".join(f"{k}={v!r}" for k, v in pp.params.items()))
    lines.append("  dataset: " + (paper.needs(pp) + " (--data PATH; checked before anything starts)" if pp.dataset
                                  else "none (generated inputs)"))
    if paper.kind(module) == paper.TRAINING:
        lines.append("  runs: full training runs of " + ", ".join(pp.recipes) + ", each a run folder under "
                     "<out>/runs/ started through the training launcher (--nproc-per-node auto: every GPU here; "
                     "--nnodes/--node-rank/--rdzv-endpoint for several nodes, the command run on each node with "
                     "<out> on a shared filesystem); a finished run is reused, an interrupted one resumes")
    else:
        lines.append("  runs: in this process, on one GPU")
    lines.append(f"  plan: {paper.paper_command(name, pp, module)} --dry-run")
    return "\n".join(lines)


def paper_of(module, name: str):
    """The module's `paper.Paper`, or UsageError when the scenario has no paper scale."""
    pp = getattr(module, "PAPER", None)
    if pp is None:
        raise UsageError(f"scenario {name} has no --scale paper")
    return pp


def light_params(name: str, sets: list[str], data: str | None = None, scale: str = "cpu"):
    """(module, params, overrides) of scenario `name` at `scale`, checked without torch where the module's
    light reading allows (`light`; the real module otherwise). At paper scale the module's PAPER.params come
    first and the `--set` overrides win, and a given `data` is checked against the paper's dataset."""
    overrides = [config.parse_set(s) for s in sets]
    where = f"scenario {name} --set"
    module = light(name)
    if scale == "paper":
        overrides = list(paper_of(module, name).params.items()) + overrides
    try:
        params = config.apply_overrides(module.Params(), overrides, where)
    except UsageError:
        raise
    except Exception:  # noqa: BLE001 - a check() that needs a left-out name: the real module checks it
        module = SCENARIOS[name]
        params = config.apply_overrides(module.Params(), overrides, where)
    if data is not None and not module.USES_DATA:
        raise UsageError(f"scenario {name} takes no --data (it uses generated inputs)")
    if scale == "paper" and data is not None:
        paper.check_dataset(name, paper_of(module, name), data)
    return module, params, overrides


def check_light(name: str, sets: list[str], data: str | None = None, scale: str = "cpu") -> list:
    """The overrides of scenario `name` at `scale`, checked (UsageError) before anything is written: the
    parameters, the data (at paper scale the paper's dataset in its layout, `paper.check_dataset`)."""
    module, _, overrides = light_params(name, sets, data, scale)
    if scale == "paper":
        paper.check_dataset(name, paper_of(module, name), data)
    if data is not None and not (scale == "paper" and data == paper.SYNTHETIC):
        from .. import data as _data
        _data.resolve(config.DataConfig(source=data))  # unknown or missing path -> UsageError
    return overrides


def resolve(name: str, sets: list[str], data: str | None = None, scale: str = "cpu"):
    """(module, params) for scenario `name` at `scale` with `--set` overrides; UsageError on bad input.

    The input is checked on the light module first (`check_light`), so bad input is reported without
    loading torch.
    """
    overrides = check_light(name, sets, data, scale)
    module = SCENARIOS[name]
    return module, config.apply_overrides(module.Params(), overrides, f"scenario {name} --set")


def run(name: str, sets: list[str] = (), data: str | None = None, out: str | None = None, scale: str = "cpu",
        recipe_sets: list[str] = (), launch: "recipe_runs.LaunchOptions | None" = None) -> dict:
    """Run scenario `name` and return its results dict (also written to <out>/results.json).

    In this process, except a training scenario at paper scale: its runs go through the training launcher
    (`launch`, default: every GPU here) and this process judges them (`paper_runs`).

    Before any work: the parameters and data (`check_light`), the options that do not apply, the output
    folder (`outputs.check_dir`: a file in the way, below a file, read-only: exit 5) and, for a run in this
    process, the memory its networks need (`common.check_memory`, the training check's lower bound: exit 2).
    A write that fails later is one line, exit 5."""
    out = out or f"runs/scenario-{name}"
    check_light(name, list(sets), data, scale)  # bad input first (exit 2), then the output folder (exit 5)
    training = scale == "paper" and paper.kind(light(name)) == paper.TRAINING
    if recipe_sets and not training:
        raise UsageError(f"scenario {name}: --recipe-set applies to the training runs of a --scale paper plan; "
                         f"{'this scenario runs in one process' if scale == 'paper' else 'use --set'}")
    if not training and launch is not None and (launch.nproc_per_node not in ("auto", "1") or launch.multi_node):
        raise UsageError(f"scenario {name} runs in one process at --scale {scale}: --nproc-per-node and --nnodes "
                         f"apply to scenarios whose paper scale is a set of training runs")
    outputs.check_dir(out)
    module, params = resolve(name, list(sets), data, scale)
    if training:
        from . import paper_runs
        return paper_runs.run(name, module, params, out, data, [config.parse_set(s) for s in recipe_sets],
                              launch or recipe_runs.LaunchOptions())
    from . import common
    ctx = common.Context(name, params, out, data, scale=scale, paper=getattr(module, "PAPER", None))
    common.check_memory(ctx, params)
    try:
        with common.torch_threads(params.threads):
            return module.run(ctx, params)
    except OSError as e:
        where = f" ({readable(e.filename)})" if getattr(e, "filename", None) else ""
        raise EnvError(f"scenario {name}: {outputs.cause(e)}{where}; its outputs in {readable(out)} are "
                       "incomplete: fix it and rerun") from None


def dry_run(name: str, sets: list[str], data: str | None, scale: str, recipe_sets: list[str],
            launch: "recipe_runs.LaunchOptions", timing: list[str]) -> str:
    """The plan of a scenario run (printed by --dry-run): nothing is run or written, torch is not imported."""
    module, params, _ = light_params(name, list(sets), data, scale)
    cpu_params = module.Params()
    pp = paper_of(module, name)
    world, note = paper.world_size(launch.nproc_per_node, launch.nodes(), pp.gpus)
    plans, sources = None, []
    if scale == "paper" and paper.kind(module) == paper.TRAINING:
        files = [Path(t) for t in timing] or paper.default_timing_files()
        sources = [str(f) for f in files]
        rows = paper.timing_rows(files)
        plans = paper.plan(module.paper_runs(params), world, pp.dataset, data,
                           [config.parse_set(s) for s in recipe_sets], rows)
    cmd = paper.paper_command(name, pp, module) if scale == "paper" else f"normtrain scenario {name}"
    return paper.describe(name, module, pp, params, cpu_params, scale=scale, data=data, world=world,
                          world_note=note, plans=plans, timing_sources=sources, command=cmd)


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            parser().print_help()
            return 0
        raise UsageError(f"normtrain scenario NAME: choose NAME from: {', '.join(names())}")
    name, rest = argv[0], argv[1:]
    SCENARIOS.require(name)  # unknown name -> UsageError listing the scenarios
    args = parser(name).parse_args(rest)
    launch = recipe_runs.launch_options(args)
    if args.dry_run:
        print(dry_run(name, args.sets, args.data, args.scale, args.recipe_sets, launch, args.timing))
        return 0
    try:
        run(name, args.sets, args.data, args.out, args.scale, args.recipe_sets, launch)
    except recipe_runs.RunInterrupted as e:
        import sys
        print(f"normtrain scenario {name}: interrupted during run {e}; its checkpoint is saved: rerun the same "
              f"command to resume (finished runs are reused)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
