"""SPPs of the residual scalings (sqrt2, rescale, depth, skipinit) beside BN and NF: which grow, which stay flat.

Hoedt, Hochreiter & Klambauer 2022 (blog), "Moment Control" and "Imitating Signal
Propagation" (Fig. 4-5): with plain additive skip connections "the variance can
not remain constant ... the output variance must be greater than the input
variance"; "BN transforms the exponential growth to a linear increase" and
"mean and variance are reduced after every sub-net"; NF-ResNets "mimic the
signal propagation due to BN layers" (the variance within sub-networks
"will increase in the same way"). The counter-measures of the blog's "Moment
Control", the choices of ``norm.residual`` (`normtrain.norms.residual`):

- ``sqrt2``: y = (x + f(x)) / sqrt(2) (Balduzzi et al. 2017): "Assuming that the
  residual branch approximately preserves the variance, the variances of y and x
  should be roughly the same";
- ``rescale``: a x + b f(x), a^2 + b^2 = 1, b^2 = 1/(l + c) (Shao et al. 2020);
- ``depth``: x + f(x) / L: "beta = L^-1 provides stable variance propagation"
  (Arpit et al. 2019);
- ``skipinit``: x + g f(x), g learnable, initialised at 0 (De & Smith 2020): "learning
  the scaling factor beta ... can also make it possible to keep the variance under
  control".

What runs: SPPs (`normtrain.models.signal.signal_prop`: per residual block, the
variance and squared mean of the block output and the residual-branch
variance) at initialisation in training mode, on white noise N(0, 1) of shape
(``batch_size``, 3, ``image_size``, ``image_size``) (or a batch of ``--data``), for
``preact-resnet50`` with ``bn`` (the torchvision-style init), ``nf-resnet50`` (``nf``,
skip gain 1), and the unnormalized ``preact-resnet50`` (``none``) with He fan-in
init, whose residual branches roughly preserve the variance (the scalings'
premise), with each scaling of ``scalings`` and without; and ``bn`` with each scaling.

Each variance curve is described within stages (`normtrain.scenarios.spp`): it
*grows linearly* when it rises at every block with constant increments (the
geometric mean of successive increments' ratios, `spp.increment_ratio`, within
1/``linear_tol``..``linear_tol``) and *exponentially* when they grow faster; it is
*stable* when every block-to-block ratio within a stage lies in
[1/(1 + ``stable_tol``), 1 + ``stable_tol``] and every stage's last/first ratio is
below ``grow_factor``; it *resets* when it drops at every stage transition.

Verdict: (1, paper) bn grows linearly, not stable, and resets at every
transition; (2, paper) nf grows linearly and resets, as bn (at its own level,
alpha^2 per block); (3, paper) none without a scaling grows exponentially; (4-7,
paper) none with each of sqrt2, rescale, depth, skipinit (those of ``scalings``) is stable; (8, added)
under bn every scaling is stable too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import models, norms
from ..models.signal import signal_prop
from . import common
from . import spp
from .spp import he_init, increment_ratio, input_batch, shape_stats, stage_growth, stage_ids, stage_slices

USES_DATA = True

CLAIM = ("In ResNet SPPs, BN turns the unnormalized network's exponential variance growth into a linear increase "
         "within stages that resets at every transition, an NF-ResNet mimics it, and the residual scalings "
         "(1/sqrt(2), RescaleNet, 1/L, SkipInit) keep the variance of an unnormalized ResNet flat (Hoedt et al. "
         "2022, \"Moment Control\", Fig. 4-5).")

SCALINGS = ("sqrt2", "rescale", "depth", "skipinit")
#: The paper's own setting, for `--scale paper`: Hoedt's white noise (the SPP scenarios share it).
PAPER = spp.PAPER


@dataclass
class Params(spp.Params):
    scalings: list[str] = field(default_factory=lambda: list(SCALINGS))
    """norm.residual scalings to compare (each without normalization and with bn)."""
    depth_power: float = 1.0
    """norm.residual_depth_power of the 'depth' scaling (1: 1/L, Arpit et al.; 0.5: 1/sqrt(L))."""
    grow_factor: float = 1.25
    """A stage 'grows' when its last/first variance ratio is at least this."""
    linear_tol: float = 1.25
    """Growth is linear when the within-stage increments grow by at most this factor per block (geometric mean)."""
    stable_tol: float = 0.25
    """'Stable': every block-to-block variance ratio within a stage lies in [1/(1 + tol), 1 + tol]."""
    threads: int = 1
    """CPU threads."""

    def check(self) -> None:
        super().check()
        if not self.scalings or any(sc not in SCALINGS for sc in self.scalings):
            raise ValueError(f"scalings: {self.scalings} must be a non-empty list of: {', '.join(SCALINGS)}")
        common.positive("depth_power", self.depth_power)
        for k in ("grow_factor", "linear_tol"):
            if getattr(self, k) <= 1:
                raise ValueError(f"{k}: must be > 1")
        common.positive("stable_tol", self.stable_tol)


def configs(scalings=SCALINGS) -> list[tuple[str, str, str, str, bool]]:
    """(name, network, method, norm.residual, He fan-in init)."""
    out = [("bn", "preact-resnet50", "bn", "none", False), ("nf", "nf-resnet50", "nf", "none", False),
           ("none", "preact-resnet50", "none", "none", True)]
    out += [(f"none+{s}", "preact-resnet50", "none", s, True) for s in scalings]
    out += [(f"bn+{s}", "preact-resnet50", "bn", s, False) for s in scalings]
    return out


# -- classification and verdict ---------------------------------------------------------------------------

def classify(var: list[float], stages: list[int], grow_factor: float = 1.25, linear_tol: float = 1.25,
             stable_tol: float = 0.25) -> dict:
    """How a variance curve behaves within stages: its growth ('linear', 'exponential' or 'none'), whether it is
    stable (block to block), and whether it resets (drops at every stage transition)."""
    if not var or not all(math.isfinite(v) and v > 0 for v in var):
        return {"growth": "none", "stable": False, "resets": False, "label": "non-finite",
                "why": "non-finite or non-positive variance"}
    st = shape_stats(var, stages)
    sl = stage_slices(stages)
    ratios = [var[b - 1] / var[a] for a, b in sl if b - a >= 2]
    steps = [var[i + 1] / var[i] for a, b in sl for i in range(a, b - 1)]
    inc = increment_ratio(var, stages)
    if st["rising_within_stages"] and steps:
        growth = "linear" if math.isfinite(inc) and 1 / linear_tol <= inc <= linear_tol else "exponential"
    else:
        growth = "none"
    stable = bool(steps) and all(1 / (1 + stable_tol) <= r <= 1 + stable_tol for r in steps) and \
        all(r < grow_factor for r in ratios)
    drops = st["drops_at_transitions"]
    resets = bool(drops) and all(drops)
    label = ", ".join(x for x in ((f"{growth} growth" if growth != "none" else ""), ("stable" if stable else ""),
                                  ("resets" if resets else "")) if x) or "irregular"
    return {"growth": growth, "stable": stable, "resets": resets, "label": label, "drops": sum(drops),
            "transitions": len(drops), "stage_last_over_first": ratios, "increment_ratio": inc,
            "block_ratio_range": [min(steps), max(steps)] if steps else None,
            "stage_max_over_min": stage_growth(var, stages), "rising_within_stages": st["rising_within_stages"]}


def _desc(name: str, c: dict) -> str:
    if "stage_last_over_first" not in c:
        return f"{name}: {c['label']} ({c.get('why', '')})"
    lo, hi = c["block_ratio_range"] or (float("nan"), float("nan"))
    return (f"{name}: {c['label']} (stage last/first {', '.join(f'{r:.2f}' for r in c['stage_last_over_first'])}; "
            f"block-to-block ratio {lo:.2f}-{hi:.2f}; increment ratio {c['increment_ratio']:.2f}; drops at "
            f"{c['drops']}/{c['transitions']} transitions)")


def verdict(shapes: dict, grow_factor: float = 1.25, stable_tol: float = 0.25, scalings=SCALINGS) -> dict:
    """shapes[config] = `classify` output for the `configs(scalings)` names."""
    need = [c[0] for c in configs(scalings)]
    if not shapes or any(n not in shapes for n in need):
        return common.verdict_of(CLAIM, [common.part("bn", "BN: linear growth, resets", "paper", common.INCONCLUSIVE,
                                                     "missing configurations", "")], "no result")
    stable_crit = (f"stable: every block-to-block variance ratio within a stage in [1/{1 + stable_tol:g}, "
                   f"{1 + stable_tol:g}] and every stage's last/first < {grow_factor:g}")
    bn, nf, none = shapes["bn"], shapes["nf"], shapes["none"]
    parts = [
        common.part("bn", "with BN the variance increases linearly within stages and resets at every transition",
                    "paper", bn["growth"] == "linear" and bn["resets"] and not bn["stable"], _desc("bn", bn),
                    "rises at every block with constant increments (increment ratio within 1/x..x of 1, x = "
                    "linear_tol), not stable, drops at every transition"),
        common.part("nf", "an NF-ResNet mimics it: linear increase within stages, reset at every transition "
                    "(the level differs by design: alpha^2 per block)", "paper",
                    nf["growth"] == "linear" and nf["resets"], _desc("nf", nf),
                    "rises at every block with constant increments, drops at every transition"),
        common.part("none", "without normalization (or a scaling) the variance grows exponentially", "paper",
                    none["growth"] == "exponential", _desc("none", none),
                    "rises at every block with growing increments (increment ratio > linear_tol)")]
    who = {"sqrt2": "Balduzzi et al. 2017", "rescale": "Shao et al. 2020", "depth": "Arpit et al. 2019",
           "skipinit": "De & Smith 2020"}
    for sc in scalings:
        c = shapes[f"none+{sc}"]
        parts.append(common.part(f"none+{sc}", f"the {sc} scaling ({who[sc]}) keeps the unnormalized network's "
                                 "variance stable", "paper", c["stable"], _desc(f"none+{sc}", c), stable_crit))
    flat_bn = [sc for sc in scalings if shapes[f"bn+{sc}"]["stable"]]
    parts.append(common.part("bn+scalings", "under BN too every scaling replaces the linear increase by a stable "
                             "profile", "added", len(flat_bn) == len(scalings),
                             "; ".join(_desc(f"bn+{sc}", shapes[f"bn+{sc}"]) for sc in scalings), stable_crit))
    flat_none = [sc for sc in scalings if shapes[f"none+{sc}"]["stable"]]
    headline = (f"bn: {bn['label']}; nf: {nf['label']}; none: {none['label']}; stable without norm: "
                f"{', '.join(flat_none) or 'no scaling'}; with BN: {len(flat_bn)}/{len(scalings)}")
    return common.verdict_of(CLAIM, parts, headline)


# -- plot and run --------------------------------------------------------------------------------------------

COLORS = {"bn": "tab:gray", "nf": "tab:orange", "none": "k", "sqrt2": "tab:blue", "rescale": "tab:green",
          "depth": "tab:purple", "skipinit": "tab:red"}


def plot(ctx, p: Params, sp: dict, stages: list[int], shapes: dict, v: dict) -> None:
    xs = list(range(1, len(stages) + 1))
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, 3, panel=(5.2, 4.8))
        panels = [(axes[0][0], "BN vs NF vs none (He init): variance", ["bn", "nf", "none"], "var", True),
                  (axes[0][1], "no norm (He init) with each scaling", ["none"] + [f"none+{s}" for s in p.scalings],
                   "var", True),
                  (axes[0][2], "BN with each scaling", ["bn"] + [f"bn+{s}" for s in p.scalings], "var", False)]
        for ax, title, names, key, log in panels:
            for n in names:
                color = COLORS.get(n.split("+")[-1] if "+" in n else n)
                ls = {"depth": "--", "skipinit": ":"}.get(n.split("+")[-1], "-")  # depth and skipinit nearly overlap
                ax.plot(xs, common.positive_or_nan(sp[n][key]), ls, marker="o", ms=3, color=color,
                        label=f"{n}: {shapes[n]['label']}")
            for a, _ in stage_slices(stages)[1:]:
                ax.axvline(a + 0.5, color="k", lw=0.6, ls=":")
            if log:
                ax.set_yscale("log")
            else:
                common.log_if_wide(ax, [x for n in names for x in sp[n][key]])
            ax.set_title(title)
            ax.set_xlabel("residual block (dotted: stage transitions)")
            ax.set_ylabel("channel variance of the block output")
            ax.legend(fontsize=8.5)
        ctx.savefig(fig, "residual_scalings.png", v, f"SPPs at init, {p.image_size}x{p.image_size} white noise")


def run(ctx, p: Params) -> dict:
    x = input_batch(ctx, p.batch_size, p.image_size, p.seed)
    sp = {}
    for name, net, method, residual, he in ctx.progress(configs(p.scalings), desc="residual-scalings"):
        torch.manual_seed(p.seed)
        opts = {"residual": residual, "residual_depth_power": p.depth_power}
        if method == "nf":
            opts["nf_skip_gain"] = 1.0
        model = models.build(net, norms.get(method, **opts), 1000, tuple(x.shape[1:])).to(ctx.device)
        if he:
            he_init(model)
        model.train()  # BN normalizes with the batch statistics, as in the blog's plots
        sp[name] = signal_prop(model, x)
        for i, (a, b, c) in enumerate(zip(sp[name]["var"], sp[name]["mean2"], sp[name]["res_var"])):
            ctx.scalars(name, {"variance": a, "mean2": b, "residual_variance": c}, i + 1)
        del model
    stages = stage_ids(sp["bn"]["names"])
    shapes = {n: classify(sp[n]["var"], stages, p.grow_factor, p.linear_tol, p.stable_tol) for n in sp}
    v = verdict(shapes, p.grow_factor, p.stable_tol, p.scalings)
    plot(ctx, p, sp, stages, shapes, v)
    rows = [[n, net, method, residual, "he fan-in" if he else "default", shapes[n]["label"],
             f"{shapes[n].get('drops', 0)}/{shapes[n].get('transitions', 0)}", sp[n]["var"][0], sp[n]["var"][-1],
             shapes[n].get("increment_ratio")] for n, net, method, residual, he in configs(p.scalings)]
    summary = common.table(["config", "network", "method", "norm.residual", "init", "behaviour", "drops", "var first",
                            "var last", "increment ratio"], rows)
    meas = {"input": "data batch" if ctx.data else f"white noise {p.batch_size}x3x{p.image_size}x{p.image_size}",
            "stages": stages, "configs": {n: {"network": net, "method": m, "residual": r,
                                              "init": "he fan-in" if he else "default"}
                        for n, net, m, r, he in configs(p.scalings)},
            "shapes": shapes, "spp": sp}
    return ctx.finish(meas, v, summary)
