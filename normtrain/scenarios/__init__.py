"""Research scenarios: the papers' experiments, one command each, ending in a verdict.

    normtrain scenario NAME [--data PATH] [--set key=value ...] [--out DIR]
    normtrain scenario NAME --help          # its parameters, defaults and docs

Each writes <out>/results.json (scenario, params, measurements, verdict with
claim / criterion / measured / reproduced), PNG plots and TensorBoard scalars
(<out>/tb), and prints a short table and the verdict. Default out:
runs/scenario-NAME. A verdict that does not reproduce the paper is a result,
not an error: the exit code is 0 either way (2 for bad input, nothing written).

Adding a scenario: one module here with a docstring, ``Params`` (a dataclass
deriving from `common.Params`), ``USES_DATA`` and ``run(ctx, params)``, and one
line in ``SCENARIOS``. See `common` for the contract.
"""
from __future__ import annotations

import argparse

from .. import config
from ..errors import UsageError
from ..registry import Registry
from . import (bn_cost, common, ghost_equivalence, ghost_example, linear50_wn, loss_landscape, nf_ablation,
               normprop_residual, output_norms, signal_prop, wn_generalization, ws_curves, ws_gradients)

SCENARIOS = Registry("scenario", {
    "linear50-wn": linear50_wn,
    "normprop-residual": normprop_residual,
    "output-norms": output_norms,
    "signal-prop": signal_prop,
    "loss-landscape": loss_landscape,
    "ghost-example": ghost_example,
    "ws-gradients": ws_gradients,
    "bn-cost": bn_cost,
    "wn-generalization": wn_generalization,
    "ghost-equivalence": ghost_equivalence,
    "ws-curves": ws_curves,
    "nf-ablation": nf_ablation,
})


def names() -> list[str]:
    return SCENARIOS.names()


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _summary(module) -> str:
    doc = (module.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def params_help(module) -> str:
    """The parameter table of a scenario: key, type, default, doc."""
    cls = module.Params
    docs = config.dataclass_docs(cls)
    hints = config._hints(cls)
    obj = cls()
    lines = ["parameters (--set key=value):"]
    for f in config.dataclasses.fields(cls):
        typ = hints[f.name]
        tname = getattr(typ, "__name__", str(typ)) if not config.typing.get_args(typ) else str(typ)
        lines.append(f"  {f.name:18s} {tname:12s} {getattr(obj, f.name)!r:20s} {docs.get(f.name, '')}")
    return "\n".join(lines)


def parser(name: str | None = None) -> argparse.ArgumentParser:
    if name is None:
        desc = "Run a paper experiment and get a verdict. Scenarios:\n" + "\n".join(
            f"  {n:18s} {_summary(m)}" for n, m in SCENARIOS.items())
        epilog = None
    else:
        module = SCENARIOS[name]
        desc = (module.__doc__ or "").strip()
        epilog = params_help(module)
    p = _Parser(prog=f"normtrain scenario {name or 'NAME'}", description=desc, epilog=epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset path or built-in name (default: the scenario's built-in data)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario parameter (repeatable; see the list below)")
    p.add_argument("--out", help="output directory (default: runs/scenario-NAME)")
    return p


def resolve(name: str, sets: list[str], data: str | None = None):
    """(module, params) for scenario `name` with `--set` overrides; UsageError on bad input."""
    module = SCENARIOS[name]
    params = config.apply_overrides(module.Params(), [config.parse_set(s) for s in sets], f"scenario {name} --set")
    if data is not None:
        if not module.USES_DATA:
            raise UsageError(f"scenario {name} takes no --data (it uses generated inputs)")
        from .. import data as _data
        _data.resolve(common.data_config(data, 1))  # unknown or missing path -> UsageError
    return module, params


def run(name: str, sets: list[str] = (), data: str | None = None, out: str | None = None) -> dict:
    """Run scenario `name` in this process and return its results dict (also written to <out>/results.json)."""
    module, params = resolve(name, list(sets), data)
    ctx = common.Context(name, params, out or f"runs/scenario-{name}", data)
    with common.torch_threads(params.threads):
        return module.run(ctx, params)


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            parser().print_help()
            return 0
        raise UsageError(f"normtrain scenario NAME: choose NAME from: {', '.join(names())}")
    name, rest = argv[0], argv[1:]
    SCENARIOS[name]  # unknown name -> UsageError listing the scenarios
    args = parser(name).parse_args(rest)
    run(name, args.sets, args.data, args.out)
    return 0
