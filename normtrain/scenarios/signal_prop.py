"""Signal propagation: unnormalized ResNet variance grows exponentially, BN's linearly per stage; NF mimics BN.

Hoedt, Hochreiter & Klambauer 2022 (blog, Fig. 4-5), after Brock et al. 2021a:
SPPs "visualize the squared mean and variance of the activations after each
skip connection, as well as the variance at the end of every residual branch",
computed by "propagating a white noise signal (e.g. torch.randn(1000, 3, 224,
224))". For a pre-activation ResNet-50, "BN transforms the exponential growth to
a linear increase" and "mean and variance are reduced after every sub-net"
(the pre-activation between stages); "NF-ResNets are effectively designed to
mimic the signal propagation due to BN layers in regular ResNets": "the
variance within sub-networks of an NF-ResNet will increase in the same way".
With scaled WS (our ``nf``) the blog notes the curves "do not overlap" (Fig. 5
right): NF mimics the *shape* (growth within a stage, reset at transitions),
not the level.

What runs: ``preact-resnet50`` with ``bn`` and with ``none`` and
``nf-resnet50`` (``nf`` with ``nf_skip_gain`` = 1, as for the blog's SPPs), at
initialisation, in training mode, fed white noise N(0, 1) of shape
(batch_size, 3, image_size, image_size) (or a batch of ``--data``), statistics
from `normtrain.models.signal.signal_prop` (per channel over N, H, W, averaged
over channels).

Verdict, three parts, all the blog's sentences: (1) ``exponential-without-bn``:
without normalization the variance grows exponentially: a least-squares line
through log(variance) over the blocks fits with R^2 >= 0.9, better than a line
through the variance itself, at a growth of at least ``min_factor`` per block;
(2) ``linear-with-bn``: with BN, within each stage the variance rises at every
block and a line fits it (R^2 >= 0.9 for stages of >= 3 blocks), and it drops at
every stage transition; (3) ``nf-mimics-bn``: the Pearson correlation of the
per-block *changes* of variance of NF and BN exceeds ``corr_threshold`` (0.9)
(the levels differ by design, so the raw curves' correlation is reported but not
tested).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import models, norms
from ..models.signal import signal_prop
from . import common
from . import spp
from .spp import diffs, log_r_squared, pearson, r_squared, shape_stats, stage_ids, stage_slices

USES_DATA = True

CLAIM = ("In a pre-activation ResNet-50 with BN the variance grows linearly within each stage and resets at stage "
         "transitions, an NF-ResNet-50 mimics this signal propagation, and without normalization the variance "
         "grows exponentially (Hoedt et al. 2022, Fig. 4-5; Brock et al. 2021a).")

CONFIGS = [("bn", "preact-resnet50", "bn"), ("none", "preact-resnet50", "none"), ("nf", "nf-resnet50", "nf")]

#: The paper's own setting, for `--scale paper`: Hoedt's white noise (the SPP scenarios share it).
PAPER = spp.PAPER


@dataclass
class Params(spp.Params):
    nf_skip_gain: float = 1.0
    """NF-ResNet skip gain (1 for SPPs; 0 = SkipInit would make every block an identity)."""
    nf_alpha: float = 0.2
    """NF-ResNet alpha (variance growth per block)."""
    corr_threshold: float = 0.9
    """NF mimics BN when the correlation of their per-block variance changes exceeds this."""
    min_factor: float = 1.1
    """'Exponential' growth without normalization: the log-linear fit must grow by at least this factor per block."""

    def check(self) -> None:
        super().check()
        for k in ("nf_alpha", "min_factor"):
            common.positive(k, getattr(self, k))
        if not -1 <= self.corr_threshold <= 1:
            raise ValueError("corr_threshold: must be in [-1, 1]")


def log_linear(var: list[float]) -> dict:
    """Least-squares lines through log(var) and through var over the blocks: exponential growth is a line in log(var).

    Returns {'factor': growth per block exp(slope of log var), 'r2_log', 'r2_linear'} (nan without positive values)."""
    if len(var) < 3 or not all(v is not None and math.isfinite(v) and v > 0 for v in var):
        return {"factor": float("nan"), "r2_log": float("nan"), "r2_linear": float("nan")}
    logs = [math.log(v) for v in var]
    n = len(var)
    mx = (n - 1) / 2
    slope = sum((i - mx) * (y - sum(logs) / n) for i, y in enumerate(logs)) / sum((i - mx) ** 2 for i in range(n))
    return {"factor": math.exp(slope), "r2_log": log_r_squared(var), "r2_linear": r_squared(var)}


def verdict(bn: list[float], nf: list[float], none: list[float], stages: list[int],
            corr_threshold: float = 0.9, min_factor: float = 1.1) -> dict:
    """Variance of each block's output for the three networks; stages[i] = stage id of block i."""
    if not all(math.isfinite(v) for v in bn + nf) or len({len(bn), len(nf), len(none), len(stages)}) != 1:
        return common.not_judged(CLAIM, "non-finite or mismatched variance curves")
    sb, sn = shape_stats(bn, stages), shape_stats(nf, stages)
    bn_ok = sb["rising_within_stages"] and all(r >= 0.9 for r in sb["stage_r2"]) and all(sb["drops_at_transitions"])
    dcorr = pearson(diffs(bn), diffs(nf))
    fit = log_linear(none)
    overflow = not all(math.isfinite(v) for v in none)
    none_ok = overflow or (fit["r2_log"] >= 0.9 and fit["r2_log"] > fit["r2_linear"]
                           and fit["factor"] >= min_factor)
    none_meas = ("non-finite variance (overflow)" if overflow else
                 f"log-linear fit: x{fit['factor']:.3g} per block, R^2 {fit['r2_log']:.3f} (a line through the "
                 f"variance itself: R^2 {fit['r2_linear']:.3f}); last/first {none[-1] / none[0]:.3g}")
    parts = [
        common.part("exponential-without-bn", "Without normalization the variance of a ResNet grows exponentially "
                    "with depth (Hoedt et al. 2022, Fig. 4 left).", "paper", none_ok, none_meas,
                    f"none: a line fits log(variance) over all blocks with R^2 >= 0.9, better than a line through the "
                    f"variance itself, at a growth >= {min_factor:g}x per block"),
        common.part("linear-with-bn", "BN turns it into a linear increase within each stage, reduced after every "
                    "sub-net by the pre-activation between stages (Fig. 4).", "paper", bn_ok,
                    f"BN: rises within stages {sb['rising_within_stages']}, stage R^2 "
                    f"{', '.join(f'{r:.3f}' for r in sb['stage_r2'])}, drops at "
                    f"{sum(sb['drops_at_transitions'])}/{len(sb['drops_at_transitions'])} transitions",
                    "BN: the variance rises at every block within each stage, a line fits each stage of >= 3 blocks "
                    "with R^2 >= 0.9, and it drops at every stage transition"),
        common.part("nf-mimics-bn", "An NF-ResNet's variance increases within the sub-networks in the same way as a "
                    "BN ResNet's: NF-ResNets mimic BN's signal propagation (Fig. 5).", "paper",
                    math.isfinite(dcorr) and dcorr > corr_threshold,
                    f"correlation of the per-block variance changes of NF and BN {dcorr:.3f} (raw curves "
                    f"{pearson(bn, nf):.3f}: the levels differ by design); NF drops at "
                    f"{sum(sn['drops_at_transitions'])}/{len(sn['drops_at_transitions'])} transitions",
                    f"the Pearson correlation of NF's and BN's per-block variance changes exceeds {corr_threshold:g}"),
    ]
    none_head = "none overflows" if overflow else f"none x{fit['factor']:.3g}/block (log-fit R^2 {fit['r2_log']:.3f})"
    headline = (f"{none_head}; BN stage R^2 >= {min(sb['stage_r2']) if sb['stage_r2'] else float('nan'):.3f}, resets "
                f"at {sum(sb['drops_at_transitions'])}/{len(sb['drops_at_transitions'])}; NF tracks BN's changes "
                f"(r = {dcorr:.3f})")
    return common.verdict_of(CLAIM, parts, headline)


# -- run ---------------------------------------------------------------------------------------

def plot(ctx, p: Params, sp: dict, stages: list[int], v: dict) -> None:
    colors = {"bn": "tab:gray", "none": "tab:blue", "nf": "tab:orange"}
    labels = {"bn": "bn (preact-resnet50)", "none": "none (preact-resnet50)", "nf": "nf (nf-resnet50)"}
    xs = list(range(1, len(stages) + 1))
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, 2, panel=(6.5, 4.8))
        ax = axes[0][0]
        for key in ("bn", "none", "nf"):
            s = sp[key]
            ax.plot(xs, common.positive_or_nan(s["var"]), "-", color=colors[key], label=f"{labels[key]}: variance")
            ax.plot(xs, common.positive_or_nan(s["mean2"]), "--", color=colors[key], label=f"{key}: mean^2")
        ax.set_yscale("log")
        ax.set_title(f"SPP at init, log scale ({p.image_size}x{p.image_size} white noise)")
        ax.set_ylabel("channel variance / squared mean")
        ax.legend(fontsize=9, ncol=2, loc="upper left")
        ax = axes[0][1]
        for key in ("bn", "nf"):
            s = sp[key]
            ax.plot(xs, s["var"], "-o", ms=4, color=colors[key], label=f"{key}: variance")
            ax.plot(xs, s["mean2"], "--", color=colors[key], label=f"{key}: mean^2")
            ax.plot(xs, s["res_var"], ":", lw=2.4, color=colors[key], label=f"{key}: residual-branch variance")
        top = max(max(sp[k]["var"] + sp[k]["mean2"] + sp[k]["res_var"]) for k in ("bn", "nf"))
        ax.set_ylim(0, 1.55 * top)
        ax.set_title("BN vs NF-ResNet, linear scale")
        ax.set_ylabel("channel variance / squared mean")
        ax.legend(fontsize=9, ncol=2, loc="upper left")
        for ax in axes[0]:
            for a, _ in stage_slices(stages)[1:]:
                ax.axvline(a + 0.5, color="k", lw=0.6, ls=":")
            ax.set_xlabel("residual block (dotted: stage transitions)")
        ctx.savefig(fig, "spp.png", v)


def run(ctx, p: Params) -> dict:
    g = torch.Generator().manual_seed(p.seed)
    if ctx.data:
        ld = common.loader(ctx, p.batch_size, "val", p.image_size)
        x = next(iter(ld.epoch(0)))[0]
        if x.shape[1] != 3:
            x = x[:, :1].expand(-1, 3, -1, -1).contiguous()
    else:
        x = torch.randn(p.batch_size, 3, p.image_size, p.image_size, generator=g).to(ctx.device)
    sp = {}
    for key, model_name, norm in ctx.progress(CONFIGS, desc="signal-prop"):
        torch.manual_seed(p.seed)
        opts = {"nf_skip_gain": p.nf_skip_gain, "nf_alpha": p.nf_alpha} if norm == "nf" else {}
        model = models.build(model_name, norms.get(norm, **opts), 1000, tuple(x.shape[1:])).to(ctx.device)
        model.train()  # BN normalizes with the batch statistics, as in the blog's plots
        sp[key] = signal_prop(model, x)
        sp[key]["model"] = model_name
        for i, (v, m2, rv) in enumerate(zip(sp[key]["var"], sp[key]["mean2"], sp[key]["res_var"])):
            ctx.scalars(key, {"variance": v, "mean2": m2, "residual_variance": rv}, i + 1)
        del model
    stages = stage_ids(sp["bn"]["names"])
    v = verdict(sp["bn"]["var"], sp["nf"]["var"], sp["none"]["var"], stages, p.corr_threshold, p.min_factor)
    plot(ctx, p, sp, stages, v)
    rows = [[i + 1, sp["bn"]["names"][i], stages[i] + 1, sp["bn"]["var"][i], sp["nf"]["var"][i],
             sp["none"]["var"][i], sp["bn"]["res_var"][i], sp["nf"]["res_var"][i]] for i in range(len(stages))]
    summary = common.table(["block", "name", "stage", "var bn", "var nf", "var none", "res_var bn", "res_var nf"],
                           rows)
    meas = {"input": "data batch" if ctx.data else f"white noise {p.batch_size}x3x{p.image_size}x{p.image_size}",
            "stages": stages, "spp": sp,
            "bn_shape": shape_stats(sp["bn"]["var"], stages), "nf_shape": shape_stats(sp["nf"]["var"], stages),
            "corr_var_changes_nf_bn": pearson(diffs(sp["bn"]["var"]), diffs(sp["nf"]["var"])),
            "none_log_linear_fit": log_linear(sp["none"]["var"]),
            "corr_var_nf_bn": pearson(sp["bn"]["var"], sp["nf"]["var"])}
    return ctx.finish(meas, v, summary)
