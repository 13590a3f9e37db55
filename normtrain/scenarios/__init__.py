"""Research scenarios: the papers' experiments, one command each, ending in a verdict.

    normtrain scenario NAME [--data PATH] [--set key=value ...] [--out DIR]
    normtrain scenario NAME --help          # its parameters, defaults and docs

Each writes <out>/results.json (scenario, params, measurements, verdict: a
state and its parts, each the paper's sentence or a control we add, see
`common`), PNG plots and TensorBoard scalars (<out>/tb), and prints a short
table and the verdict. Default out: runs/scenario-NAME. A verdict that does not
reproduce the paper is a result, not an error: the exit code is 0 either way
(2 for bad input, nothing written).

Adding a scenario: one module here with a docstring, ``Params`` (a dataclass
deriving from `common.Params`), ``USES_DATA`` and ``run(ctx, params)``, and one
line ``"name": "module"`` in ``SCENARIOS``. See `common` for the contract.
``--help`` and the checks of ``--set`` read the module's docstring and Params
without importing torch (`normtrain.static.light`): keep Params free of torch
at definition time (defaults and types from the standard library).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from .. import config, outputs, static
from ..errors import EnvError, UsageError, readable
from ..registry import Registry

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
        epilog = params_help(module, name)
    p = _Parser(prog=f"normtrain scenario {name or 'NAME'}", description=desc, epilog=epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset path or built-in name (default: the scenario's built-in data)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario parameter (repeatable; see the list below)")
    p.add_argument("--out", help="output directory (default: runs/scenario-NAME)")
    return p


def resolve(name: str, sets: list[str], data: str | None = None):
    """(module, params) for scenario `name` with `--set` overrides; UsageError on bad input.

    The input is checked on the light module first, so bad input is reported without loading torch.
    """
    overrides = check_light(name, sets, data)
    module = SCENARIOS[name]
    return module, config.apply_overrides(module.Params(), overrides, f"scenario {name} --set")


def check_light(name: str, sets: list[str], data: str | None = None) -> list:
    """The `--set` overrides of scenario `name`, checked as far as possible without torch (UsageError)."""
    overrides = [config.parse_set(s) for s in sets]
    module = light(name)
    try:
        config.apply_overrides(module.Params(), overrides, f"scenario {name} --set")
    except UsageError:
        raise
    except Exception:  # noqa: BLE001 - a check() that needs a left-out name: the real module checks it
        pass
    if data is not None:
        if not module.USES_DATA:
            raise UsageError(f"scenario {name} takes no --data (it uses generated inputs)")
        from .. import data as _data
        _data.resolve(config.DataConfig(source=data))  # unknown or missing path -> UsageError
    return overrides


def run(name: str, sets: list[str] = (), data: str | None = None, out: str | None = None) -> dict:
    """Run scenario `name` in this process and return its results dict (also written to <out>/results.json).

    Before any work: the parameters (`resolve`), the output folder (`outputs.check_dir`: a file in
    the way, below a file, read-only: exit 5) and the memory its networks need (`common.check_memory`,
    the training check's lower bound: exit 2). A write that fails later is one line, exit 5."""
    out = out or f"runs/scenario-{name}"
    check_light(name, list(sets), data)  # bad input first (exit 2), then the output folder (exit 5)
    outputs.check_dir(out)
    module, params = resolve(name, list(sets), data)
    from . import common
    ctx = common.Context(name, params, out, data)
    common.check_memory(ctx, params)
    try:
        with common.torch_threads(params.threads):
            return module.run(ctx, params)
    except OSError as e:
        where = f" ({readable(e.filename)})" if getattr(e, "filename", None) else ""
        raise EnvError(f"scenario {name}: {outputs.cause(e)}{where}; its outputs in {readable(out)} are "
                       "incomplete: fix it and rerun") from None


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            parser().print_help()
            return 0
        raise UsageError(f"normtrain scenario NAME: choose NAME from: {', '.join(names())}")
    name, rest = argv[0], argv[1:]
    SCENARIOS.require(name)  # unknown name -> UsageError listing the scenarios
    args = parser(name).parse_args(rest)
    run(name, args.sets, args.data, args.out)
    return 0
