"""A 50-layer linear WN net diverges within 100 iterations at a wide range of rates (G&G §5); BN and none as controls.

Gitman & Ginsburg 2017 §5: "we trained a simple *linear* (with no bias) 50-layer
fully-connected network on ImageNet. Each layer except for the first and last
was 64 neurons. With a wide range of learning rates the network completely
diverged in less than a hundred iterations due to the broken orthogonality
assumptions." WN only keeps ||o|| ~ ||x|| while the rows of W stay nearly
orthogonal (their footnote 2: small row coherence max_{i!=j} |w_i.w_j| /
(||w_i|| ||w_j||)); "each gradient update increases correlations between
different neurons" and the error is "exponentially magnified throughout the
network".

What runs: the ``linear50`` network (49 bias-free 64-wide layers + a bias-free
classifier, no non-linearity) with each method of ``methods`` (default wn, bn
and none) and each learning rate of ``lrs`` (1e-5, 1e-4, then half a decade apart up
to 1), SGD with momentum 0.9 (the papers' optimizer) on the built-in digits
(64 input pixels, so every layer is 64 wide) or on ``--data`` flattened at
``image_size`` (``normalize=minus-one-one`` is the paper's [-1, 1] input,
footnote 4; ``--data synthetic --set classes=1000`` ImageNet-shaped noise with
ImageNet's class count). Batches are streamed from the loader, the same ones in
the same order for every run. Every method starts from the *same raw weights*
(one ``init`` draw, xavier: the unnormalized control needs a unit-gain init to
start finite), so BN and none see WN's v. With ``matched`` (default on) a fourth
run, ``wn (g=|v|)``, initialises WN's g to ||v|| + eps: at step 0 it is the very
same network as ``none``; the step where their losses part by more than
``part_tol`` is reported.

Divergence (stated in results.json): the training loss of a step is non-finite
or above ``blowup`` x the initial loss; the run stops there and the iteration
(number of updates done) is recorded; results.json's ``divergence_table`` and the
printout give every method's divergence iteration per rate. Every
``record_every`` iterations: the mean per-sample L2 norm of each layer's output
(after its norm layer, if any), the row coherence of each layer's effective
weight, and from them the *norm gain* G = ||last hidden output|| / ||first layer
output|| (1 if every layer kept the norm) and the mean row coherence of the
hidden layers, compared between step 0 and the last record before the divergence.

Verdict, in parts. The paper's sentence (``divergence``): WN diverges within
min(steps, 100) iterations at rates spanning at least ``wide`` (100x, two
decades: "a wide range"); inconclusive when the grid itself spans less, or
steps < 100 leave it open. Our parts: ``bn-control``, BN stays finite at more
than half of WN's diverging rates; ``specific-to-wn``, at more than half of them
``none`` started as the same network (the ``wn (g=|v|)`` run with ``matched``,
else ``wn``) stays finite or diverges later; ``mechanism``, the paper's
explanation measured our way: at >= half of them, before diverging, WN's norm
gain grew >= ``norm_growth`` x and its mean row coherence rose >=
``coherence_rise``. The headline says which held.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import models, norms
from . import common
from .measures import row_coherence, row_coherences  # noqa: F401 (row_coherence: the tests' reference)

USES_DATA = True
#: Input scalings offered (data.normalize); the paper's ImageNet input is [-1, 1] (G&G footnote 4).
NORMALIZE = ("auto", "minus-one-one", "per-pixel", "per-channel", "imagenet", "none")


def _default_lrs() -> list:
    """1e-5 and 1e-4, then half a decade apart from 1e-3 to 1 (where the divergences start)."""
    return [1e-5, 1e-4] + [float(f"{10 ** (-3 + 0.5 * i):.4g}") for i in range(7)]


@dataclass
class Params(common.Params):
    methods: list[str] = field(default_factory=lambda: ["wn", "bn", "none"])
    """Normalization methods to compare (normtrain list norms); the verdict needs wn, bn and none."""
    lrs: list[float] = field(default_factory=_default_lrs)
    """Learning-rate grid (default 1e-5, 1e-4, then half a decade apart from 1e-3 to 1)."""
    matched: bool = True
    """Also run WN with g initialised to ||v|| + eps: the same network as none at step 0."""
    steps: int = 100
    """Training iterations per (method, rate)."""
    batch_size: int = 128
    """Mini-batch size."""
    momentum: float = 0.9
    """SGD momentum (the papers use 0.9; 0 gives plain SGD)."""
    depth: int = 50
    """Number of linear layers."""
    width: int = 64
    """Width of the hidden layers."""
    init: str = "xavier"
    """Weight init of the shared raw weights (kaiming, xavier, caffe-xavier, default)."""
    blowup: float = 1000.0
    """Divergence bound: a loss above blowup x the initial loss (or non-finite) counts as divergence."""
    record_every: int = 1
    """Record per-layer output norms and row coherence every this many iterations."""
    norm_growth: float = 2.0
    """Mechanism: WN's norm gain G must grow by at least this factor before the divergence."""
    coherence_rise: float = 0.1
    """Mechanism: WN's mean row coherence (about 0.44 at init) must rise by at least this before the divergence."""
    wide: float = 100.0
    """'A wide range of learning rates': the rates at which WN diverged must span at least this factor."""
    part_tol: float = 0.01
    """wn (g=|v|) and none 'part' at the first step where their losses differ by more than this fraction."""
    plot_lr: float = 0.01
    """Learning rate (nearest grid value) whose per-layer output norms are plotted."""
    image_size: int = 0
    """With --data: resize images to this size before flattening (0 = the backend's natural size)."""
    normalize: str = "auto"
    """Input scaling (data.normalize): auto (the data's standard: per-pixel mean/std for the digits), or minus-one-one, the paper's ImageNet input ([-1, 1], G&G footnote 4; use it at the paper's size)."""
    classes: int = 0
    """With --data synthetic: the number of classes (e.g. 1000 for ImageNet's); 0 = the backend's default."""
    threads: int = 1
    """CPU threads (small layers: 1 is fastest)."""

    MODEL = "linear50"  # for common.check_memory (depth, width, batch_size)

    def check(self) -> None:
        super().check()
        if not self.methods or not self.lrs:
            raise ValueError("methods and lrs must not be empty")
        common.known(methods=self.methods)
        missing = [m for m in ("wn", "bn", "none") if m not in self.methods]
        if missing:
            raise ValueError(f"methods: the verdict compares wn with bn and none; add {', '.join(missing)}")
        for lr in self.lrs:
            common.positive("lrs", lr)
        for k in ("steps", "batch_size", "depth", "width", "record_every", "norm_growth", "part_tol", "wide"):
            common.positive(k, getattr(self, k))
        common.positive("blowup", self.blowup)
        common.positive("coherence_rise", self.coherence_rise, allow_zero=True)
        common.positive("image_size", self.image_size, allow_zero=True)
        common.positive("classes", self.classes, allow_zero=True)
        if self.normalize not in NORMALIZE:
            raise ValueError(f"normalize: '{self.normalize}' is not one of: {', '.join(NORMALIZE)}")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum: must be in [0, 1)")
        if self.init not in models.SCHEMES:
            raise ValueError(f"init: '{self.init}' is not one of: {', '.join(models.SCHEMES)}")


CLAIM = ("A 50-layer linear bias-free 64-wide network with weight normalization diverges in less than 100 iterations "
         "over a wide range of learning rates, due to broken orthogonality (Gitman & Ginsburg 2017 §5); our controls: "
         "BN and no normalization from the same weights, and the coherence and norm growth before the divergence.")

MATCHED = "wn (g=|v|)"


# -- measurements -----------------------------------------------------------------------

def layer_units(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(linear layer, module whose output is that layer's output) for each layer, in order.

    The output is taken after the layer's norm module when the network puts one right after it.
    """
    seq = [m for m in model.modules() if isinstance(m, nn.Sequential)][0]
    children = list(seq.children())
    units = []
    for i, m in enumerate(children):
        if isinstance(m, nn.Linear):
            nxt = children[i + 1] if i + 1 < len(children) else None
            out = nxt if nxt is not None and not isinstance(nxt, (nn.Linear, nn.Identity)) else m
            units.append((m, out))
    return units


def diverged_at(losses: list[float], blowup: float) -> int | None:
    """Index of the first loss that is non-finite or above blowup x losses[0], else None."""
    return common.diverged_at(losses, blowup) if losses else None


def mean_coherence(records: list[dict]) -> list[float]:
    """Per record: the mean over hidden layers of the row coherence (the classifier is left out)."""
    return [sum(r["coherence"][:-1]) / max(len(r["coherence"]) - 1, 1) for r in records]


def norm_gain(records: list[dict]) -> list[float]:
    """Per record: G = ||last hidden layer output|| / ||first layer output|| (nan if not finite)."""
    out = []
    for r in records:
        n = r["out_norms"]
        a, b = (n[0], n[-2]) if len(n) > 1 else (n[0], n[0])
        out.append(b / a if a and math.isfinite(a) and math.isfinite(b) and a > 0 else float("nan"))
    return out


def mechanism(records: list[dict], div: int | None) -> dict:
    """Norm-gain growth and coherence rise between step 0 and the last record before the divergence (or the end)."""
    if not records:
        return {"pre_step": None, "gain_0": None, "gain_pre": None, "gain_growth": None, "coherence_0": None,
                "coherence_pre": None, "coherence_rise": None}
    pre = [i for i, r in enumerate(records) if div is None or r["step"] < div]
    i = pre[-1] if pre else 0
    g, c = norm_gain(records), mean_coherence(records)
    growth = g[i] / g[0] if math.isfinite(g[i]) and math.isfinite(g[0]) and g[0] > 0 else float("nan")
    return {"pre_step": records[i]["step"], "gain_0": g[0], "gain_pre": g[i], "gain_growth": growth,
            "coherence_0": c[0], "coherence_pre": c[i], "coherence_rise": c[i] - c[0]}


def parting_step(a: list[float], b: list[float], tol: float) -> int | None:
    """First step where |a - b| > tol |b| (or one of them is non-finite), over their common length."""
    for i, (x, y) in enumerate(zip(a, b)):
        if not (math.isfinite(x) and math.isfinite(y)) or abs(x - y) > tol * abs(y):
            return i
    return None


def shared_weights(p: Params, num_classes: int, in_shape) -> list[torch.Tensor]:
    """One draw of raw weights for every run: the linear layers of an unnormalized linear50, seeded."""
    torch.manual_seed(p.seed)
    ref = models.build("linear50", norms.get("none"), num_classes, in_shape, init=p.init, depth=p.depth,
                       width=p.width)
    return [m.weight.detach().clone() for m in ref.modules() if isinstance(m, nn.Linear)]


def train_one(ctx, p: Params, method: str, lr: float, batches, in_shape, num_classes, weights) -> dict:
    """One (method, rate) run; `batches`: a list (cycled) or a function returning a fresh iterator of batches."""
    torch.manual_seed(p.seed)
    it = batches() if callable(batches) else itertools.cycle(batches)
    base = "wn" if method == MATCHED else method
    model = models.build("linear50", norms.get(base), num_classes, in_shape, init=p.init,
                         depth=p.depth, width=p.width)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, w in zip(linears, weights):
            lin.weight.copy_(w)
            if method == MATCHED:  # g = ||v|| + eps: effective weight g v / (||v|| + eps) = v
                lin.gain.copy_(w.norm(dim=1) + lin.eps)
    model.to(ctx.device)
    start_distance = max(float((common.effective_weight(lin).detach().cpu() - w).abs().max())
                         for lin, w in zip(linears, weights))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=p.momentum)
    units = layer_units(model)
    outs: dict[int, torch.Tensor] = {}

    def hook(i):
        def fn(mod, inputs, output):
            outs[i] = output.detach().float().flatten(1).norm(dim=1).mean()  # no sync: read when recorded
        return fn

    handles = [out.register_forward_hook(hook(i)) for i, (_, out) in enumerate(units)]
    losses, records, div = [], [], None
    try:
        for step in range(p.steps + 1):
            x, y = next(it)
            outs.clear()
            loss = F.cross_entropy(model(x).float(), y)
            value = float(loss.detach())
            losses.append(value)
            div = diverged_at(losses, p.blowup)
            if step % p.record_every == 0 or step == p.steps or div is not None:
                with torch.no_grad():
                    coh = row_coherences([common.effective_weight(lin) for lin, _ in units])
                records.append({"step": step, "coherence": coh,
                                "out_norms": [float(outs[i]) if i in outs else float("nan")
                                              for i in range(len(units))]})
            if div is not None or step == p.steps:
                break  # the loss after `steps` updates is measured, not trained on
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for h in handles:
            h.remove()
    return {"method": method, "lr": lr, "diverged_at": div, "initial_loss": losses[0],
            "final_loss": losses[-1], "start_weight_distance_to_raw": start_distance, "losses": losses,
            "mechanism": mechanism(records, div), "records": records}


# -- verdict ------------------------------------------------------------------------------

PAPER_CLAIM = ("With weight normalization, a linear bias-free 50-layer network, 64 wide, diverges in less than a "
               "hundred iterations over a wide range of learning rates (Gitman & Ginsburg 2017 §5).")


def _fmt_lrs(lrs) -> str:
    return ", ".join(f"{lr:g}" for lr in lrs) or "none"


def verdict(wn: list[dict], bn: list[dict], none: list[dict], same_start: list[dict] | None = None,
            horizon: int = 100, norm_growth: float = 2.0, coherence_rise: float = 0.1, wide: float = 100.0) -> dict:
    """Per grid rate and method: {'lr', 'diverged_at', 'gain_growth', 'coherence_rise'} (the last two for wn).

    `horizon`: iterations run (the paper's 100, or fewer); `wide`: the factor the rates at which WN diverged must
    span to be "a wide range". `same_start`: the WN run that starts as the same network as none (wn with
    g = ||v||), for the "specific to WN" part; without it that part compares none with `wn`.
    """
    if not wn or not bn or not none:
        return common.not_judged(CLAIM, "methods must include wn, bn and none")
    def by(runs):
        return {r["lr"]: r for r in runs}
    W, B, N = by(wn), by(bn), by(none)
    S = by(same_start) if same_start else W
    grid = sorted(W)
    rates = sorted(lr for lr, r in W.items() if r["diverged_at"] is not None and r["diverged_at"] <= horizon)
    span = max(rates) / min(rates) if rates else 0.0
    grid_span = grid[-1] / grid[0]

    # (paper) divergence within 100 iterations over a wide range of rates
    crit = (f"WN diverges (a non-finite loss, or one above blowup x the initial loss) within 100 iterations at "
            f"rates spanning >= {wide:g}x (a 'wide range'), on a grid spanning >= {wide:g}x")
    meas = (f"WN diverged within {horizon} iterations at {len(rates)}/{len(grid)} rates ({_fmt_lrs(rates)}), "
            f"spanning {span:.3g}x; grid {grid[0]:g}..{grid[-1]:g} ({grid_span:.3g}x)")
    if rates and span >= wide * (1 - 1e-9):
        st = common.REPRODUCED
    elif grid_span < wide * (1 - 1e-9):
        st, meas = common.INCONCLUSIVE, meas + f"; a grid spanning >= {wide:g}x decides it"
    elif horizon < 100:
        st, meas = common.INCONCLUSIVE, meas + "; 100 iterations (steps=100) decide it"
    else:
        st = common.NOT_REPRODUCED
    parts = [common.part("divergence", PAPER_CLAIM, "paper", st, meas, crit,
                         {"value": "< 100 iterations, a wide range of rates", "where": "§5"})]

    # (added) the BN control stays finite where WN diverges
    bn_ok = [lr for lr in rates if lr in B and B[lr]["diverged_at"] is None]
    claim_bn = "BN, started from the same raw weights, does not diverge where WN does (our control)."
    crit_bn = "BN stays finite at more than half of the rates at which WN diverged"
    meas_bn = f"BN stayed finite at {len(bn_ok)}/{len(rates)} of them"
    parts.append(common.part("bn-control", claim_bn, "added",
                             (len(bn_ok) > len(rates) / 2) if rates else common.NA, meas_bn, crit_bn))

    # (added) the divergence is WN's: none, started as the same network, lasts longer
    def later(lr):
        n, w = N.get(lr), S.get(lr)
        if n is None or w is None:
            return False
        return n["diverged_at"] is None or (w["diverged_at"] is not None and n["diverged_at"] > w["diverged_at"])
    none_ok = [lr for lr in rates if later(lr)]
    ref = MATCHED if same_start else "wn"
    def at(runs, lr):
        d = runs.get(lr, {}).get("diverged_at")
        return "-" if d is None else str(d)
    claim_none = ("The divergence is WN's: the unnormalized network started from the same effective weights "
                  "stays finite or diverges later (our control; the paper's explanation is WN's broken orthogonality).")
    crit_none = (f"at more than half of WN's diverging rates, none stays finite or diverges at a later iteration "
                 f"than {ref} (which starts as the same network)")
    meas_none = (f"none later or never at {len(none_ok)}/{len(rates)} (lr@iteration none vs {ref}: "
                 + (", ".join(f"{lr:g}@{at(N, lr)} vs {at(S, lr)}" for lr in rates) or "-") + ")")
    parts.append(common.part("specific-to-wn", claim_none, "added",
                             (len(none_ok) > len(rates) / 2) if rates else common.NA, meas_none, crit_none))

    # (added) the mechanism the paper names, as we measure it
    mech = [lr for lr in rates if (W[lr].get("gain_growth") or 0) >= norm_growth
            and (W[lr].get("coherence_rise") or 0) >= coherence_rise]
    def num(lr, key):
        v = W[lr].get(key)
        return float("nan") if v is None else v
    claim_mech = ("The divergence comes with broken orthogonality: before it, WN's rows grow coherent and the "
                  "output norm grows through the layers (the paper's explanation, measured our way).")
    crit_mech = (f"at >= half of WN's diverging rates, before diverging, the norm gain G = ||last hidden|| / "
                 f"||first layer output|| grew >= {norm_growth:g}x and the mean row coherence rose >= "
                 f"{coherence_rise:g}")
    meas_mech = (f"at {len(mech)}/{len(rates)}: norm gain grew "
                 + (", ".join(f"{num(lr, 'gain_growth'):.3g}x" for lr in rates) or "-")
                 + "; coherence rose " + (", ".join(f"{num(lr, 'coherence_rise'):+.3f}" for lr in rates) or "-"))
    parts.append(common.part("mechanism", claim_mech, "added",
                             (len(mech) >= len(rates) / 2) if rates else common.NA, meas_mech, crit_mech))

    say = {p["name"]: p["state"] for p in parts}
    R = common.REPRODUCED
    words = [{R: f"divergence reproduced (WN diverged within {horizon} iterations at {len(rates)}/{len(grid)} "
                 f"rates, {_span_text(rates)})",
              common.NOT_REPRODUCED: f"divergence not reproduced (WN diverged at {len(rates)}/{len(grid)} rates, "
                                     f"{_span_text(rates)})",
              common.INCONCLUSIVE: f"divergence inconclusive at this size (WN diverged at {len(rates)}/{len(grid)} "
                                   f"rates, {_span_text(rates)})"}.get(say["divergence"], "divergence not judged")]
    if rates:
        words.append(f"BN stayed finite at {len(bn_ok)}/{len(rates)}" if say["bn-control"] == R
                     else f"BN diverged too at {len(rates) - len(bn_ok)}/{len(rates)}")
        words.append(f"specific to WN (none later or never at {len(none_ok)}/{len(rates)})"
                     if say["specific-to-wn"] == R else
                     f"not specific to WN (none diverged as early or earlier at {len(rates) - len(none_ok)}/"
                     f"{len(rates)})")
        words.append(f"the orthogonality mechanism seen at {len(mech)}/{len(rates)}" if say["mechanism"] == R else
                     f"the orthogonality mechanism not seen (gain and coherence rose at {len(mech)}/{len(rates)})")
    return common.verdict_of(CLAIM, parts, "; ".join(words))


def _span_text(rates) -> str:
    return f"lr {min(rates):g}..{max(rates):g}" if rates else "no rate"


def divergence_table(runs: list[dict], methods: list[str], lrs: list[float]) -> dict:
    """Each method's divergence iteration per rate (None: stayed finite), rates in grid order."""
    at = {(r["method"], r["lr"]): r["diverged_at"] for r in runs}
    return {"lrs": list(lrs), "methods": list(methods),
            "diverged_at": {m: [at.get((m, lr)) for lr in lrs] for m in methods}}


# -- plots ---------------------------------------------------------------------------------

def _lr_colors(plt, lrs):
    cmap = plt.get_cmap("viridis")
    return {lr: cmap(k / max(len(lrs) - 1, 1)) for k, lr in enumerate(sorted(lrs))}


def plot(ctx, p: Params, runs: list[dict], plot_lr: float, v: dict) -> None:
    methods = list(dict.fromkeys(r["method"] for r in runs))
    with common.plotting() as plt:
        colors = _lr_colors(plt, p.lrs)
        cols = min(len(methods), 4)
        rows = math.ceil(len(methods) / cols)
        fig, axes = common.figure(plt, rows, cols, panel=(4.6, 4.2), sharey=True)
        for k, m in enumerate(methods):
            ax = axes[k // cols][k % cols]
            for r in (r for r in runs if r["method"] == m):
                ls = common.positive_or_nan(r["losses"])
                c = colors[r["lr"]]
                ax.plot(range(len(ls)), ls, color=c, lw=1.6, label=f"lr {r['lr']:g}")
                if r["diverged_at"] is not None:
                    finite = [x for x in ls if math.isfinite(x)]
                    ax.plot([r["diverged_at"]], [min(finite[-1], 1e6) if finite else 1e6], "x", color=c, ms=10,
                            mew=2)
            ax.set_yscale("log")
            ax.set_ylim(top=3e6)
            ax.set_title(f"{m}: training loss (x = diverged)")
            ax.set_xlabel("iteration")
            ax.set_ylabel("cross-entropy")
            ax.legend(loc="upper right", ncol=2, fontsize=9)
        for k in range(len(methods), rows * cols):
            axes[k // cols][k % cols].set_visible(False)
        ctx.savefig(fig, "loss_curves.png", v, f"linear{p.depth}, loss per learning rate")

        fig, axes = common.figure(plt, 2, len(methods), panel=(4.6, 4.3))
        at_lr = {m: next(r for r in runs if r["method"] == m and r["lr"] == plot_lr) for m in methods}
        cmap = common.truncated_cmap(plt, "magma_r", 0.15, 1.0)  # no near-white lines
        for j, m in enumerate(methods):
            ax = axes[0][j]
            recs = at_lr[m]["records"]
            last = max(rec["step"] for rec in recs) or 1
            for rec in recs:
                ax.plot(range(1, len(rec["out_norms"]) + 1), common.positive_or_nan(rec["out_norms"]),
                        color=cmap(rec["step"] / last), lw=1)
            ax.set_yscale("log")
            ax.set_title(f"{m}, lr {plot_lr:g}: output norm by layer")
            ax.set_xlabel("layer")
            ax.set_ylabel("mean per-sample ||output||")
            sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, last))
            fig.colorbar(sm, ax=ax, label="iteration", pad=0.01)
        bottom = axes[1]
        # none and wn (g=|v|) start as the same network: dashed and solid so that both stay visible
        styles = dict(zip(methods, (("tab:blue", "-", 2.0), ("tab:purple", "-", 2.0), ("tab:green", "--", 3.0),
                                    ("tab:red", "-", 1.4), ("tab:orange", ":", 2.0))))
        for m in methods:
            r = at_lr[m]
            color, ls, lw = styles[m]
            kw = dict(color=color, ls=ls, lw=lw, label=m)
            steps = [rec["step"] for rec in r["records"]]
            bottom[0].plot(steps, common.positive_or_nan(norm_gain(r["records"])), **kw)
            bottom[1].plot(steps, mean_coherence(r["records"]), **kw)
            if len(bottom) > 2:
                bottom[2].plot(range(len(r["losses"])), common.positive_or_nan(r["losses"]), **kw)
        bottom[0].set_yscale("log")
        bottom[0].set_title(f"norm gain G = ||last hidden|| / ||first|| (lr {plot_lr:g})")
        bottom[0].set_ylabel("G (1 = norms kept)")
        bottom[1].set_title(f"mean row coherence of the hidden layers (lr {plot_lr:g})")
        bottom[1].set_ylabel("mean over layers of max |cos(w_i, w_j)|")
        bottom[1].set_ylim(0, 1.05)
        if len(bottom) > 2:
            bottom[2].set_yscale("log")
            bottom[2].set_title(f"training loss at lr {plot_lr:g}: where the paths part")
            bottom[2].set_ylabel("cross-entropy")
        for ax in bottom[:3]:
            ax.set_xlabel("iteration")
            ax.legend()
        for ax in bottom[3:]:
            ax.set_visible(False)
        ctx.savefig(fig, "output_norms.png", v, f"per-layer output norms and row coherence at lr {plot_lr:g}")


# -- run ----------------------------------------------------------------------------------------

def data_options(ctx, p: Params) -> dict:
    """The `data:` keys of `normalize` and `classes`; UsageError where they do not apply."""
    from ..errors import UsageError
    synthetic = (ctx.data or "digits") == "synthetic"
    if p.classes and not synthetic:
        raise UsageError("scenario linear50-wn --set classes: only with --data synthetic (real data has its own classes)")
    if synthetic and p.normalize != "auto":
        raise UsageError("scenario linear50-wn --set normalize: --data synthetic is generated noise; "
                         "input scaling applies to image data")
    out = {"normalize": p.normalize}
    if p.classes:
        out["synthetic_classes"] = p.classes
    return out


def run(ctx, p: Params) -> dict:
    ld = common.loader(ctx, p.batch_size, "train", p.image_size, **data_options(ctx, p))
    # Every run streams the same batches in the same order from the loader (nothing is kept on the device:
    # 101 ImageNet batches of 128 would be 7.8 GB).
    def batches():
        return common.forever(ld)
    weights = shared_weights(p, ld.num_classes, ld.in_shape)
    plot_lr = min(p.lrs, key=lambda lr: abs(math.log(lr) - math.log(p.plot_lr)))
    methods = list(p.methods) + ([MATCHED] if p.matched and "wn" in p.methods else [])
    runs = []
    bar = ctx.progress(total=len(methods) * len(p.lrs), desc="linear50-wn")
    for m in methods:
        for lr in p.lrs:
            r = train_one(ctx, p, m, lr, batches, ld.in_shape, ld.num_classes, weights)
            runs.append(r)
            for i, value in enumerate(r["losses"]):
                ctx.scalar(f"{m}/lr_{lr:g}/loss", value, i)
            bar.update(1)
            bar.set_postfix({"method": m, "lr": f"{lr:g}"})
    bar.close()
    horizon = min(p.steps, 100)

    def rows_of(m):
        return [{"lr": r["lr"], "diverged_at": r["diverged_at"], **{k: r["mechanism"][k] for k in
                ("gain_growth", "coherence_rise")}} for r in runs if r["method"] == m]
    v = verdict(rows_of("wn"), rows_of("bn"), rows_of("none"), rows_of(MATCHED) or None, horizon, p.norm_growth,
                p.coherence_rise, p.wide)
    plot(ctx, p, runs, plot_lr, v)
    parting = {}
    if MATCHED in methods and "none" in methods:
        for lr in p.lrs:
            a = next(r for r in runs if r["method"] == MATCHED and r["lr"] == lr)
            b = next(r for r in runs if r["method"] == "none" and r["lr"] == lr)
            parting[f"{lr:g}"] = {"parting_step": parting_step(a["losses"], b["losses"], p.part_tol),
                                  "wn_g_v_diverged_at": a["diverged_at"], "none_diverged_at": b["diverged_at"],
                                  "start_weight_distance": a["start_weight_distance_to_raw"]}
    table = divergence_table(runs, methods, p.lrs)

    def cell(d):
        return "-" if d is None else d
    rows = [[lr] + [cell(table["diverged_at"][m][i]) for m in methods]
            + ([cell(parting[f"{lr:g}"]["parting_step"])] if parting else []) for i, lr in enumerate(p.lrs)]
    summary = ("divergence iteration per rate ('-': stayed finite for all steps):\n"
               + common.table(["lr"] + methods + (["wn (g=|v|) and none part at"] if parting else []), rows))
    wn_runs = [r for r in runs if r["method"] == "wn"]
    if wn_runs:
        summary += "\n\nWN before diverging (G = norm gain, coh = mean row coherence):\n" + common.table(
            ["lr", "loss0", "loss_end", "G0", "G_pre", "coh0", "coh_pre"],
            [[r["lr"], r["initial_loss"], r["final_loss"], r["mechanism"]["gain_0"], r["mechanism"]["gain_pre"],
              r["mechanism"]["coherence_0"], r["mechanism"]["coherence_pre"]] for r in wn_runs])
    per_method = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        per_method[m] = {"diverged_lrs": [r["lr"] for r in rs if r["diverged_at"] is not None],
                         "diverged_at": {f"{r['lr']:g}": r["diverged_at"] for r in rs},
                         "mechanism": {f"{r['lr']:g}": r["mechanism"] for r in rs},
                         "final_loss": {f"{r['lr']:g}": r["final_loss"] for r in rs if r["diverged_at"] is None}}
    meas = {"divergence_definition": f"loss non-finite or > {p.blowup:g} x the initial loss; "
                                     f"'diverged_at' = number of updates done when it happened",
            "mechanism_definition": "norm gain G = ||last hidden layer output|| / ||first layer output||; coherence = "
                                    "mean over hidden layers of max_{i!=j} |cos(w_i, w_j)|; compared at step 0 and "
                                    "at the last record before the divergence",
            "shared_raw_weights": f"one {p.init} draw (seed {p.seed}) copied into every run",
            "data_in_shape": list(ld.in_shape), "num_classes": ld.num_classes, "normalize": p.normalize,
            "plot_lr": plot_lr, "divergence_table": table, "per_method": per_method,
            "matched_vs_none": parting, "runs": runs}
    return ctx.finish(meas, v, summary)
