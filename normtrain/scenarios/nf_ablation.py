"""NF-ResNet pieces removed one at a time, and BN before vs after ReLU, in SPPs (Hoedt blog Fig. 4-5).

Hoedt, Hochreiter & Klambauer 2022 (blog, "Imitating Signal Propagation" and
"Performance", Fig. 4-5), after Brock et al. 2021a. Notation of Brock et al.
(DESIGN §3; the blog swaps the names): block h + alpha * f(h / beta), beta the
analytically tracked std of the block input ("computed analytically for every
skip connection"), alpha the variance-growth hyper-parameter.

- "a plain NF-ResNet [only the alpha and beta scaling, "NF, He Init"]
  effectively imitates the variance propagation of the baseline ResNet pretty
  accurately. The propagation of the squared mean in NF-ResNets, on the other
  hand, looks nothing like that from the BN model ... the variance of the
  residual branches ... is not particularly steady";
- with scaled weight standardization ("rescaled CWN") "both of these
  discrepancies can be resolved" (their Fig. 5 right: squared mean zero and
  residual variance steady);
- "their baseline ResNets use the (standard) BN -> ReLU order and not the
  ReLU -> BN order, which served as the model for the signal propagation of
  NF-ResNets".

What runs, at initialisation in training mode, on white noise N(0, 1) of shape
(batch_size, 3, image_size, image_size) (or a batch of ``--data``), the SPP
statistics of `normtrain.models.signal.signal_prop` (per block: variance and
squared mean of the block output, variance of the residual branch; per channel
over N, H, W, averaged over channels):

- ``bn-relu``: ``preact-resnet50`` with ``bn`` (BN -> ReLU, the blog's Fig. 4);
- ``relu-bn``: the same network with every norm-act pair as ReLU -> BN (a
  bundle whose ``norm`` is ReLU then BN and whose ``act`` is the identity);
- ``nf``: ``nf-resnet50`` with ``nf`` (scaled WS, gamma-ReLU, alpha/beta), skip gain 1;
- ``nf-no-sws``: scaled WS removed: plain convs with He (fan-in) init and plain
  ReLU (He init already accounts for the ReLU; gamma belongs to scaled WS) ("NF, He Init");
- ``nf-no-beta``: the beta bookkeeping removed: every block input divided by 1
  instead of its tracked std (alpha kept);
- ``he-only``: both removed, and alpha = 1: plain He-initialised pre-activation
  blocks h + f(h), nothing but the init.

Verdict, five parts (the blog's own sentences for 1, 2 and 5; our ablations for
3 and 4): (1) ``nf`` keeps BN's shape (variance rises at every block
within a stage and drops at every stage transition), its squared mean stays
<= ``mean_ratio`` x its variance at every block and its residual-branch
variance is steady (mean |relative change| between consecutive blocks <=
``steady``); (2) ``nf-no-sws`` keeps the variance shape, but its squared mean
exceeds ``mean_ratio`` x its variance somewhere and its residual-branch
variance is not steady; (3) ``nf-no-beta`` no longer resets: its variance
drops at fewer than half of the transitions; (4) ``he-only`` grows: its
last/first variance ratio exceeds ``growth_factor`` x that of ``bn-relu``;
(5) the BN order matters: ``nf``'s squared-mean curve is closer (mean
|log10 ratio| over the blocks) to ``relu-bn``'s than to ``bn-relu``'s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import models, norms
from ..models import nf_resnet
from ..models.signal import signal_prop
from ..norms.bn import BatchNorm
from ..norms.bundle import Normalizer
from ..norms.nf import NormalizerFree
from . import common
from . import spp
from .spp import he_init, shape_stats, stage_ids, stage_slices

USES_DATA = True

CLAIM = ("An NF-ResNet keeps a BN ResNet's variance propagation; without scaled WS its squared mean and "
         "residual-branch variance are off, without the beta bookkeeping the variance no longer resets, with He init "
         "alone it grows; and the NF-ResNet models the ReLU -> BN order, not BN -> ReLU (Hoedt et al. 2022, Fig. 4-5; "
         "Brock et al. 2021a).")

NAMES = ("bn-relu", "relu-bn", "nf", "nf-no-sws", "nf-no-beta", "he-only")
COLORS = {"bn-relu": "tab:gray", "relu-bn": "k", "nf": "tab:orange", "nf-no-sws": "tab:blue",
          "nf-no-beta": "tab:green", "he-only": "tab:red"}

#: The paper's own setting, for `--scale paper`: Hoedt's white noise (the SPP scenarios share it).
PAPER = spp.PAPER


@dataclass
class Params(spp.Params):
    nf_alpha: float = 0.2
    """NF-ResNet alpha (variance growth per block)."""
    mean_ratio: float = 0.1
    """'Squared mean about 0': mean^2 <= mean_ratio x variance at every block."""
    steady: float = 0.15
    """'Steady residual variance': mean |relative change| between consecutive blocks <= steady."""
    growth_factor: float = 10.0
    """he-only 'grows': its last/first variance ratio > growth_factor x bn-relu's."""

    def check(self) -> None:
        super().check()
        for k in ("nf_alpha", "mean_ratio", "steady", "growth_factor"):
            common.positive(k, getattr(self, k))


# -- the ablated networks ------------------------------------------------------------------------

class ReluThenBN(BatchNorm):
    """BN placed after the ReLU: every norm-act pair of a network becomes ReLU -> BN."""

    name = "relu-bn"

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        return nn.Sequential(nn.ReLU(), super().norm(num_features, dims))

    def act(self, num_features: int) -> nn.Module:
        return nn.Identity()


class PlainNF(NormalizerFree):
    """The NF-ResNet bundle without scaled WS: plain conv/linear layers and a plain ReLU."""

    name = "nf-no-sws"

    def conv(self, *args, **kwargs):
        return Normalizer.conv(self, *args, **kwargs)

    def linear(self, *args, **kwargs):
        return Normalizer.linear(self, *args, **kwargs)

    def act(self, num_features: int) -> nn.Module:
        return nn.ReLU()


def drop_beta(model: nn.Module, alpha: float | None = None) -> None:
    """Every NF block divides its input by 1 instead of its tracked std (and, with `alpha`, scales its branch by it)."""
    for b in model.modules():
        if isinstance(b, nf_resnet.NFBottleneck):
            for s in b.modules():
                if isinstance(s, nf_resnet.Scale):
                    s.scale = 1.0
            b.beta = 1.0
            if alpha is not None:
                b.alpha = float(alpha)


def build(name: str, p: Params, shape) -> nn.Module:
    opts = norms.NormOptions(nf_alpha=p.nf_alpha, nf_skip_gain=1.0)
    torch.manual_seed(p.seed)
    if name == "bn-relu":
        return models.build("preact-resnet50", norms.get("bn"), 1000, shape)
    if name == "relu-bn":
        return models.build("preact-resnet50", ReluThenBN(opts), 1000, shape)
    if name == "nf":
        return models.build("nf-resnet50", norms.get("nf", nf_alpha=p.nf_alpha, nf_skip_gain=1.0), 1000, shape)
    if name == "nf-no-beta":
        m = models.build("nf-resnet50", norms.get("nf", nf_alpha=p.nf_alpha, nf_skip_gain=1.0), 1000, shape)
        drop_beta(m)
        return m
    m = models.build("nf-resnet50", PlainNF(opts), 1000, shape, init="default")
    he_init(m)
    if name == "he-only":
        drop_beta(m, alpha=1.0)
    return m


# -- statistics and verdict ---------------------------------------------------------------------------

def unsteadiness(values: list[float]) -> float:
    """Mean |v[i+1] / v[i] - 1| over consecutive blocks (inf if a value is not finite and positive)."""
    if len(values) < 2 or not all(math.isfinite(v) and v > 0 for v in values):
        return float("inf")
    return sum(abs(b / a - 1) for a, b in zip(values, values[1:])) / (len(values) - 1)


def max_mean_ratio(sp: dict) -> float:
    return max((m / v if v > 0 else float("inf")) for m, v in zip(sp["mean2"], sp["var"]))


def log_distance(a: list[float], b: list[float]) -> float:
    """Mean |log10(a_i / b_i)| over blocks (inf if a value is not positive)."""
    if not all(x > 0 for x in a + b):
        return float("inf")
    return sum(abs(math.log10(x / y)) for x, y in zip(a, b)) / len(a)


def verdict(sp: dict, stages: list[int], mean_ratio: float = 0.1, steady: float = 0.15,
            growth_factor: float = 10.0) -> dict:
    """sp[name] = {'var', 'mean2', 'res_var'} per block for the six NAMES; stages[i] = stage of block i."""
    if any(k not in sp for k in NAMES):
        return common.not_judged(CLAIM, "needs all six configurations")
    finite = {k: all(math.isfinite(v) for v in sp[k]["var"] + sp[k]["mean2"] + sp[k]["res_var"]) for k in NAMES}
    if not all(finite[k] for k in ("bn-relu", "relu-bn", "nf", "nf-no-sws", "nf-no-beta")):
        return common.not_judged(CLAIM, "non-finite statistics")
    shape = {k: shape_stats(sp[k]["var"], stages) for k in NAMES if finite[k]}

    def bn_shape(k):
        return shape[k]["rising_within_stages"] and all(shape[k]["drops_at_transitions"])
    nf_mean, nf_steady = max_mean_ratio(sp["nf"]), unsteadiness(sp["nf"]["res_var"])
    sws_mean, sws_steady = max_mean_ratio(sp["nf-no-sws"]), unsteadiness(sp["nf-no-sws"]["res_var"])
    drops = shape["nf-no-beta"]["drops_at_transitions"]
    bn_growth = shape["bn-relu"]["growth"]
    he_growth = shape["he-only"]["growth"] if finite["he-only"] else float("inf")
    d_relu_bn = log_distance(sp["nf"]["mean2"], sp["relu-bn"]["mean2"])
    d_bn_relu = log_distance(sp["nf"]["mean2"], sp["bn-relu"]["mean2"])
    shape_text = "variance rises within every stage and drops at every transition"
    parts = [
        common.part("nf", "With scaled WS (the blog's rescaled CWN) an NF-ResNet keeps BN's variance shape, its "
                    "squared mean is zero and its residual-branch variance steady (Hoedt et al. 2022, Fig. 5 right).",
                    "paper", bn_shape("nf") and nf_mean <= mean_ratio and nf_steady <= steady,
                    f"BN-like shape {bn_shape('nf')}, max mean^2/var {nf_mean:.3g}, residual-variance change "
                    f"{nf_steady:.3g}/block",
                    f"nf: {shape_text}, mean^2 <= {mean_ratio:g} x variance at every block, residual variance steady "
                    f"(mean |relative change| <= {steady:g})"),
        common.part("nf-no-sws", "A plain NF-ResNet (alpha/beta scaling, He init, no scaled WS) imitates BN's variance "
                    "propagation, but its squared mean looks nothing like BN's and its residual-branch variance is not "
                    "steady (Fig. 5 left).", "paper",
                    bn_shape("nf-no-sws") and sws_mean > mean_ratio and sws_steady > steady,
                    f"BN-like shape {bn_shape('nf-no-sws')}, max mean^2/var {sws_mean:.3g}, residual-variance change "
                    f"{sws_steady:.3g}/block",
                    f"nf-no-sws: {shape_text}, but mean^2 > {mean_ratio:g} x variance somewhere and residual variance "
                    f"not steady"),
        common.part("nf-no-beta", "Without the beta bookkeeping (block inputs not divided by their tracked std) the "
                    "variance no longer resets at stage transitions (our ablation).", "added",
                    sum(drops) < len(drops) / 2, f"drops at {sum(drops)}/{len(drops)} transitions",
                    "nf-no-beta: the variance drops at fewer than half of the transitions"),
        common.part("he-only", "With He init alone (no scaled WS, no beta, alpha = 1) the variance grows far beyond "
                    "BN's (our ablation; the blog: the scaling 'gets rid of the exponential variance increase').",
                    "added", he_growth > growth_factor * bn_growth,
                    f"last/first variance {he_growth:.3g} vs bn-relu {bn_growth:.3g}",
                    f"he-only: last/first variance > {growth_factor:g} x bn-relu's"),
        common.part("relu-bn-order", "The NF-ResNet models the ReLU -> BN order, not the standard BN -> ReLU of "
                    "Brock et al.'s baselines (the blog's 'Performance' section).", "paper", d_relu_bn < d_bn_relu,
                    f"nf's mean^2 is {d_relu_bn:.3g} decades from relu-bn's and {d_bn_relu:.3g} from bn-relu's",
                    "nf's squared-mean curve is closer to relu-bn's than to bn-relu's (mean |log10 ratio| over blocks)"),
    ]
    held = sum(q["state"] == common.REPRODUCED for q in parts)
    headline = (f"{held}/5 parts hold: nf mean^2/var <= {nf_mean:.2g}, no-sws {sws_mean:.2g}; no-beta resets at "
                f"{sum(drops)}/{len(drops)}; he-only grows {he_growth:.3g}x")
    return common.verdict_of(CLAIM, parts, headline)


# -- plot and run ----------------------------------------------------------------------------------------

def plot(ctx, p: Params, sp: dict, stages: list[int], v: dict) -> None:
    xs = list(range(1, len(stages) + 1))
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 2, 3, panel=(5.0, 4.2))
        rows = (("bn-relu", "relu-bn", "nf"), ("nf", "nf-no-sws", "nf-no-beta", "he-only"))
        what = (("var", "variance of the block output"), ("mean2", "squared mean of the block output"),
                ("res_var", "residual-branch variance"))
        for r, group in enumerate(rows):
            for c, (key, title) in enumerate(what):
                ax = axes[r][c]
                for name in group:
                    ax.plot(xs, common.positive_or_nan(sp[name][key]), "-o", ms=3, color=COLORS[name], label=name)
                for a, _ in stage_slices(stages)[1:]:
                    ax.axvline(a + 0.5, color="k", lw=0.5, ls=":")
                ax.set_yscale("log")
                ax.set_title(("BN orders vs NF: " if r == 0 else "NF ablations: ") + title)
                ax.set_xlabel("residual block (dotted: stage transitions)")
                ax.set_ylabel({"var": "channel variance", "mean2": "squared channel mean",
                               "res_var": "channel variance"}[key])
                ax.legend(fontsize=9)
        ctx.savefig(fig, "nf_ablation.png", v, f"SPPs at init, {p.image_size}x{p.image_size} white noise")


def run(ctx, p: Params) -> dict:
    g = torch.Generator().manual_seed(p.seed)
    if ctx.data:
        x = next(iter(common.loader(ctx, p.batch_size, "val", p.image_size).epoch(0)))[0]
        if x.shape[1] != 3:
            x = x[:, :1].expand(-1, 3, -1, -1).contiguous()
    else:
        x = torch.randn(p.batch_size, 3, p.image_size, p.image_size, generator=g).to(ctx.device)
    sp = {}
    for name in ctx.progress(NAMES, desc="nf-ablation"):
        model = build(name, p, tuple(x.shape[1:])).to(ctx.device)
        model.train()  # BN normalizes with the batch statistics, as in the blog's plots
        sp[name] = signal_prop(model, x)
        for i, (a, b, c) in enumerate(zip(sp[name]["var"], sp[name]["mean2"], sp[name]["res_var"])):
            ctx.scalars(name, {"variance": a, "mean2": b, "residual_variance": c}, i + 1)
        del model
    stages = stage_ids(sp["nf"]["names"])
    v = verdict(sp, stages, p.mean_ratio, p.steady, p.growth_factor)
    plot(ctx, p, sp, stages, v)
    rows = [[n, sp[n]["var"][0], sp[n]["var"][-1], max_mean_ratio(sp[n]), unsteadiness(sp[n]["res_var"]),
             sum(shape_stats(sp[n]["var"], stages)["drops_at_transitions"])] for n in NAMES]
    summary = common.table(["config", "var first", "var last", "max mean2/var", "res-var change/block",
                            "drops at transitions"], rows)
    meas = {"input": "data batch" if ctx.data else f"white noise {p.batch_size}x3x{p.image_size}x{p.image_size}",
            "stages": stages, "spp": sp,
            "shape": {n: shape_stats(sp[n]["var"], stages) for n in NAMES},
            "max_mean2_over_var": {n: max_mean_ratio(sp[n]) for n in NAMES},
            "residual_variance_change_per_block": {n: unsteadiness(sp[n]["res_var"]) for n in NAMES},
            "note": "the residual-branch variance falls in the last stages at small resolutions: a 3x3 conv with "
                    "zero padding on a 2x2 (4x4) map sees 4/9 (about 0.69) of its window inside the map"}
    return ctx.finish(meas, v, summary)
