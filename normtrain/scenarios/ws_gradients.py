"""WS gradient-norm reduction: eq. 8/9 term shares vs sigma^2 ||grad_W L||^2 (WS paper Fig. 4 right).

Qiao et al. 2019 §2.2-2.3. Per output channel c with I = fan-in, raw weights W,
centred weights W_dot = W - mean (eq. 5), standardized W_hat = W_dot / sigma
(eq. 6, sigma the biased std, eps = 0 "for convenience"), the backward pass is
eq. 8 (grad_{W_dot} = (grad_{W_hat} - <W_hat, grad_{W_hat}> W_hat / I) / sigma)
then eq. 9 (grad_W = grad_{W_dot} - 1 <1, grad_{W_dot}> / I). Since
||W_hat||^2 = I and <1, W_hat> = 0, eq. 11-15 give exactly

    ||grad_{W_hat} L||^2 = (1/I) <W_hat, grad_{W_hat} L>^2      (eq. 8's reduction)
                         + (1/I) <1, grad_{W_hat} L>^2          (eq. 9's reduction)
                         + sigma^2 ||grad_W L||^2               (what is left)

and the paper's Fig. 4 (right) shows "the average percentages" of the three
terms during GN+WS training of ResNet-50 on ImageNet (gradients and weights of
the first iteration of each epoch): "(1/I) <W_hat, grad_{W_hat} L>^2 is small
compared with other two components (< 0.02)".

What runs: ``ws-gn`` (GN+WS, ``groups`` groups) on ``resnet56`` and the
built-in digits (or ``--data``), with the WS layers' eps set to ``ws_eps`` (0,
the paper's convention, makes the decomposition exact; the residual
|sum - total| / total is reported as a check). Every ``record_every`` steps,
for every WS layer and output channel: the three terms divided by
||grad_{W_hat} L||^2 (grad_{W_hat} is the gradient w.r.t. the standardized
weight the conv applies, captured with retain_grad); averaged over channels,
then over layers.

Why the share is small, and the null arm. Under BN after a WS conv the loss is
invariant to scaling each channel's W_hat, so <W_hat_c, grad_c> = 0: eq. 8's
term is 0 by scale invariance, whatever the training. Under GN the loss is
invariant to scaling the channels of one group together, so only each group's
sum of <W_hat_c, grad_c> vanishes (measured: ``group_sum`` in the records). An
isotropic random direction gives 1/I for each of the two terms (so "< 0.02"
holds for any random gradient once I > 50), but it is not the right null: the
null is a network whose loss is not scale invariant. The ``null`` arm (default
``none``: the same network without any normalization; or ``ws``, WS without an
activation norm, which overflows in deep nets) trains on the same batches, and
its shares are measured the same way on its own conv gradients g = grad_W L
(W_hat its standardized weight, grad_W_hat = sigma g): cos^2(W_hat, g) and
cos^2(1, g).

Verdict, in parts: the paper's ``eq8-small``: at every recorded step the eq. 8
share is below ``small`` (the paper's 0.02) and below both other shares; ours,
``null-arm``: the null arm's eq. 8 share exceeds ``norm``'s by a gap shown at >=
2 standard errors over the recorded steps and >= ``min_effect`` (shown equal:
not reproduced, i.e. the small share is not WS's doing); ``decomposition``: with
ws_eps = 0 the three terms sum to the total (residual < 1e-4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import models, norms
from ..norms.ws import WSConv2d, WSLinear
from . import common

USES_DATA = True

CLAIM = ("During GN+WS training the gradient-norm reduction of eq. 8, (1/I)<W_hat, grad_W_hat L>^2, is small "
         "(< 0.02 of ||grad_W_hat L||^2) compared with eq. 9's (1/I)<1, grad_W_hat L>^2 and with "
         "sigma^2 ||grad_W L||^2 (Qiao et al. 2019 §2.3, Fig. 4 right); our control: a network without "
         "normalization, whose loss is not scale invariant, has a larger eq. 8 share.")


@dataclass
class Params(common.Params):
    model: str = "resnet56"
    """Network (its convs become WS convs)."""
    norm: str = "ws-gn"
    """WS method: ws-gn (the paper's GN+WS), ws-bn or ws."""
    groups: int = 8
    """GroupNorm groups (must divide every width: resnet56 has 16/32/64 channels)."""
    ws_eps: float = 0.0
    """eps of the WS layers (0 as in the paper's derivation: the three terms then sum exactly to the total)."""
    steps: int = 100
    """Training steps."""
    record_every: int = 10
    """Measure every this many steps (the paper: first iteration of each epoch)."""
    lr: float = 0.01
    """SGD learning rate (momentum 0.9); at 0.05 the default run's loss spikes (~46 at step 10) before it recovers."""
    batch_size: int = 32
    """Mini-batch size."""
    small: float = 0.02
    """The paper's bound on the eq. 8 share."""
    null: str = "none"
    """The non-invariant arm: the same network with this method (none, or ws: WS without an activation norm), whose loss is not scale invariant; its shares are measured the same way."""
    min_effect: float = 0.005
    """Smallest difference of eq. 8 shares that counts (a quarter of the paper's 0.02 bound)."""
    image_size: int = 0
    """With --data: resize to this size (0 = natural size)."""
    threads: int = 1
    """CPU threads (small layers: 1 is fastest)."""

    def check(self) -> None:
        super().check()
        common.known(self.model)
        if self.norm not in ("ws", "ws-gn", "ws-bn"):
            raise ValueError("norm: must be ws, ws-gn or ws-bn")
        for k in ("groups", "steps", "record_every", "lr", "batch_size", "small", "min_effect"):
            common.positive(k, getattr(self, k))
        if self.null not in ("none", "ws"):
            raise ValueError("null: must be none or ws (a network without an activation norm)")
        common.positive("ws_eps", self.ws_eps, allow_zero=True)
        common.positive("image_size", self.image_size, allow_zero=True)


def terms(w_hat: torch.Tensor, g_hat: torch.Tensor, w_raw: torch.Tensor, g_raw: torch.Tensor) -> dict:
    """Per-output-channel eq. 8 / eq. 9 terms (as fractions of ||grad_{W_hat} L||^2) and the identity residual."""
    w_hat, g_hat = w_hat.detach().double().flatten(1), g_hat.detach().double().flatten(1)
    w_raw, g_raw = w_raw.detach().double().flatten(1), g_raw.detach().double().flatten(1)
    n = w_hat.shape[1]
    total = g_hat.pow(2).sum(1)
    eq8 = (w_hat * g_hat).sum(1).pow(2) / n
    eq9 = g_hat.sum(1).pow(2) / n
    sigma2 = w_raw.var(1, unbiased=False)
    rest = sigma2 * g_raw.pow(2).sum(1)
    keep = total > 0
    t = total[keep]
    return {"eq8": (eq8[keep] / t).mean().item(), "eq9": (eq9[keep] / t).mean().item(),
            "rest": (rest[keep] / t).mean().item(),
            "residual": ((eq8 + eq9 + rest - total)[keep].abs() / t).max().item() if keep.any() else 0.0,
            "channels": int(keep.sum())}


def direction_shares(w: torch.Tensor, g: torch.Tensor) -> dict:
    """Eq. 8 / eq. 9 shares of a plain layer's gradient g = grad_W L, per output channel, averaged.

    With W = mean + sigma W_hat the weight the layer applies, grad_{W_hat} L = sigma g, so the shares
    (1/I) <W_hat, grad_W_hat L>^2 / ||grad_W_hat L||^2 and (1/I) <1, grad_W_hat L>^2 / ||grad_W_hat L||^2 are
    cos^2(W_hat, g) and cos^2(1, g): what the two terms would be for this network's own gradients (the null arm).
    1/I each for an isotropic random g."""
    w, g = w.detach().double().flatten(1), g.detach().double().flatten(1)
    n = w.shape[1]
    w_hat = (w - w.mean(1, keepdim=True)) / w.std(1, unbiased=False, keepdim=True).clamp_min(1e-30)
    total = g.pow(2).sum(1)
    keep = total > 0
    if not keep.any():
        return {}
    t = total[keep]
    return {"eq8": ((w_hat * g).sum(1).pow(2)[keep] / n / t).mean().item(),
            "eq9": (g.sum(1).pow(2)[keep] / n / t).mean().item(), "chance": 1.0 / n, "channels": int(keep.sum())}


def group_sum_share(w_hat: torch.Tensor, g_hat: torch.Tensor, groups: int) -> float:
    """|sum over a GroupNorm group of <W_hat_c, grad_c>| / sum of |<W_hat_c, grad_c>|, the max over groups.

    Scaling every channel of one group together leaves GN's output unchanged, so each group's sum is 0 (while the
    single channels' are not); under BN (one channel per 'group') every <W_hat_c, grad_c> is 0: eq. 8 vanishes."""
    w_hat, g_hat = w_hat.detach().double().flatten(1), g_hat.detach().double().flatten(1)
    c = w_hat.shape[0]
    if groups < 1 or c % groups:
        return float("nan")
    dots = (w_hat * g_hat).sum(1).view(groups, c // groups)
    denom = dots.abs().sum(1)
    keep = denom > 0
    return (dots.sum(1).abs()[keep] / denom[keep]).max().item() if keep.any() else 0.0


def ws_layers(model) -> list:
    return [m for m in model.modules() if isinstance(m, (WSConv2d, WSLinear))]


def capture(layers, ws_eps: float) -> dict:
    """Make each WS layer keep its standardized weight (with .grad retained) at each forward; returns the store."""
    store = {}
    for m in layers:
        m.eps = float(ws_eps)
        orig = m.effective_weight

        def wrapped(orig=orig, m=m):
            w = orig()
            if torch.is_grad_enabled() and w.requires_grad:
                w.retain_grad()
                store[m] = w
            return w
        m.effective_weight = wrapped
    return store


def measure(layers, store, groups: int = 0) -> dict:
    """Mean shares over the WS layers for one backward pass (with `groups`: the GN group-sum check of the convs)."""
    per = []
    for m in layers:
        if m in store and store[m].grad is not None and m.weight.grad is not None:
            r = terms(store[m], store[m].grad, m.weight, m.weight.grad)
            r["chance"] = 1.0 / store[m][0].numel()
            if groups and isinstance(m, WSConv2d):
                r["group_sum"] = group_sum_share(store[m], store[m].grad, groups)
            per.append(r)
    if not per:
        return {}
    k = len(per)
    out = {"eq8": sum(r["eq8"] for r in per) / k, "eq9": sum(r["eq9"] for r in per) / k,
           "rest": sum(r["rest"] for r in per) / k, "residual": max(r["residual"] for r in per),
           "chance": sum(r["chance"] for r in per) / k, "layers": k, "per_layer": per}
    sums = [r["group_sum"] for r in per if "group_sum" in r and math.isfinite(r["group_sum"])]
    if sums:
        out["group_sum"] = max(sums)
    return out


def measure_plain(model) -> dict:
    """The null arm's shares (`direction_shares`) averaged over its conv layers, for one backward pass."""
    per = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.grad is not None:
            r = direction_shares(common.effective_weight(m), m.weight.grad)
            if r:
                per.append(r)
    if not per:
        return {}
    k = len(per)
    return {"eq8": sum(r["eq8"] for r in per) / k, "eq9": sum(r["eq9"] for r in per) / k,
            "chance": sum(r["chance"] for r in per) / k, "layers": k}


PAPER_CLAIM = ("(1/I)<W_hat, grad_W_hat L>^2 (eq. 8's reduction) is small compared with the other two components, "
               "(1/I)<1, grad_W_hat L>^2 (eq. 9's) and sigma^2 ||grad_W L||^2 (< 0.02) (Qiao et al. 2019 §2.3, "
               "Fig. 4 right).")


def verdict(records: list[dict], null: list[dict] | None = None, small: float = 0.02, exact: bool = True,
            min_effect: float = 0.005, norm: str = "ws-gn", null_name: str = "none") -> dict:
    """records: `measure` outputs at the recorded steps; null: `measure_plain` outputs of the non-invariant arm."""
    recs = [r for r in records if r]
    if not recs:
        return common.not_judged(CLAIM, "nothing recorded")
    mean = {k: sum(r[k] for r in recs) / len(recs) for k in ("eq8", "eq9", "rest", "chance")}
    ok = all(r["eq8"] < small and r["eq8"] < r["rest"] and r["eq8"] < r["eq9"] for r in recs)
    parts = [common.part(
        "eq8-small", PAPER_CLAIM, "paper", ok,
        f"over {len(recs)} recorded steps, mean shares of ||grad_W_hat L||^2: eq. 8 {mean['eq8']:.3g} (max "
        f"{max(r['eq8'] for r in recs):.3g}), eq. 9 {mean['eq9']:.3g}, sigma^2||grad_W L||^2 {mean['rest']:.3g}; "
        f"a random direction gives 1/I = {mean['chance']:.3g} for each of the first two",
        f"at every recorded step the eq. 8 share is < {small:g} and below both other shares",
        {"value": "< 0.02", "where": "§2.3, Fig. 4 right"})]
    nulls = [r for r in (null or []) if r]
    gsum = [r["group_sum"] for r in recs if "group_sum" in r]
    why = ("under BN the loss is invariant to scaling each channel's W_hat, so eq. 8 is 0 for every channel; under "
           "GN it is invariant to scaling a group's channels together, so only each group's sum vanishes"
           + (f" (measured: max |group sum| / sum |terms| {max(gsum):.1e})" if gsum else ""))
    claim_null = (f"The small eq. 8 share is a property of {norm} training, not of any network's gradients: in the "
                  f"same network without activation normalization ({null_name}, whose loss is not scale invariant) "
                  f"the share is larger (our control; {why}).")
    crit_null = (f"{null_name}'s eq. 8 share (cos^2 of its gradient with its standardized weight) exceeds {norm}'s by a "
                 f"gap shown at >= 2 standard errors over the recorded steps and >= {min_effect:g}; shown equal (the "
                 f"2-SE interval inside +-{min_effect:g}): not reproduced")
    if nulls:
        d = common.difference([r["eq8"] for r in nulls], [r["eq8"] for r in recs], min_effect)
        null_eq8 = common.mean_std([r["eq8"] for r in nulls])[0]
        meas_null = (f"{null_name}: eq. 8 share {null_eq8:.3g} (eq. 9 {common.mean_std([r['eq9'] for r in nulls])[0]:.3g}) "
                     f"vs {norm} {mean['eq8']:.3g}: gap {d['gap']:+.3g} ± {d['se']:.2g} (s.e.)"
                     + (", shown equal" if d["equal"] else ", shown" if d["shown"] else ", not shown"))
        parts.append(common.part("null-arm", claim_null, "added", common.state_greater(d), meas_null, crit_null))
    else:
        null_eq8 = float("nan")
        parts.append(common.part("null-arm", claim_null, "added", common.NA, f"{null_name} recorded nothing "
                                 "(diverged at once?)", crit_null))
    if exact:
        resid = max(r["residual"] for r in recs)
        parts.append(common.part("decomposition", "The three terms add up to ||grad_W_hat L||^2 (eq. 11-15 with "
                                 "eps = 0; our check of the measurement).", "added", resid < 1e-4,
                                 f"max relative residual {resid:.1e}", "residual < 1e-4"))
    headline = (f"eq. 8 share {mean['eq8']:.3g} (< {small:g}; eq. 9 {mean['eq9']:.3g}, 1/I {mean['chance']:.3g}); "
                f"without normalization ({null_name}) {null_eq8:.3g}")
    return common.verdict_of(CLAIM, parts, headline)


def plot(ctx, recs: list[dict], null: list[dict], v: dict, p: Params) -> None:
    labels = {"eq8": ("(1/I)<W_hat, grad>^2  (eq. 8)", "tab:blue"),
              "eq9": ("(1/I)<1, grad>^2  (eq. 9)", "tab:orange"),
              "rest": ("sigma^2 ||grad_W L||^2", "tab:green")}
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, 2, panel=(6.5, 4.8))
        ax = axes[0][0]
        steps = [r["step"] for r in recs]
        for k, (lab, c) in labels.items():
            ax.plot(steps, [max(r[k], 1e-12) for r in recs], "-o", ms=4, color=c, label=f"{p.norm}: {lab}")
        if null:
            ax.plot([r["step"] for r in null], [max(r["eq8"], 1e-12) for r in null], "--s", ms=4, color="tab:blue",
                    label=f"{p.null} (no norm): eq. 8 share")
            ax.plot([r["step"] for r in null], [max(r["eq9"], 1e-12) for r in null], ":s", ms=4, color="tab:orange",
                    lw=2.5, label=f"{p.null} (no norm): eq. 9 share")
        ax.plot(steps, [r["chance"] for r in recs], "-", color="gray", lw=1, label="1/I (random direction)")
        ax.axhline(p.small, color="k", lw=1, ls="-.", label=f"paper's bound {p.small:g}")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("share of ||grad_W_hat L||^2 (mean over channels, layers)")
        ax.set_title(f"{p.norm} {p.model}: gradient-norm terms")
        ax.legend(fontsize=9)
        ax = axes[0][1]
        last = recs[-1]["per_layer"]
        xs = range(1, len(last) + 1)
        for k, (lab, c) in labels.items():
            ax.plot(xs, [max(r[k], 1e-12) for r in last], color=c, label=lab)
        ax.plot(xs, [r["chance"] for r in last], "--", color="gray", label="1/I (random direction)")
        ax.set_yscale("log")
        ax.set_xlabel("WS layer (forward order)")
        ax.set_ylabel("share of ||grad_W_hat L||^2")
        ax.set_title(f"per layer at step {recs[-1]['step']}")
        ax.legend(fontsize=9)
        ctx.savefig(fig, "ws_gradients.png", v)


def train_arm(ctx, p: Params, method: str, ld) -> dict:
    """`steps` SGD steps of `method` on the loader's stream, recording the shares every `record_every` steps."""
    torch.manual_seed(p.seed)
    model = models.build(p.model, norms.get(method, groups=p.groups), ld.num_classes, ld.in_shape).to(ctx.device)
    model.train()
    layers = ws_layers(model)
    store = capture(layers, p.ws_eps) if layers else None
    groups = p.groups if method == "ws-gn" else 0
    opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=0.9)
    it = common.forever(ld)
    recs, losses, diverged = [], [], None
    for step in ctx.progress(range(p.steps + 1), desc=f"ws-gradients {method}"):
        x, y = next(it)
        if store is not None:
            store.clear()
        loss = F.cross_entropy(model(x).float(), y)
        value = float(loss.detach())
        losses.append(value)
        if not math.isfinite(value):
            diverged = step
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step % p.record_every == 0 or step == p.steps:
            r = measure(layers, store, groups) if layers else measure_plain(model)
            if r:
                r["step"] = step
                r["loss"] = value
                recs.append(r)
                ctx.scalars(f"share/{method}", {k: r[k] for k in ("eq8", "eq9", "rest") if k in r}, step)
        ctx.scalar(f"{method}/train_loss", value, step)
        if step < p.steps:
            opt.step()
    return {"method": method, "ws_layers": len(layers), "records": recs, "losses": losses, "diverged_at": diverged}


def run(ctx, p: Params) -> dict:
    ld = common.loader(ctx, p.batch_size, "train", p.image_size)
    arm = train_arm(ctx, p, p.norm, ld)
    null = train_arm(ctx, p, p.null, ld)
    recs = arm["records"]
    v = verdict(recs, null["records"], p.small, exact=p.ws_eps == 0, min_effect=p.min_effect, norm=p.norm,
                null_name=p.null)
    if recs:
        plot(ctx, recs, null["records"], v, p)
    nulls = {r["step"]: r for r in null["records"]}
    rows = [[r["step"], r["loss"], r["eq8"], r["eq9"], r["rest"], r["eq8"] + r["eq9"] + r["rest"], r["residual"],
             r["chance"], nulls.get(r["step"], {}).get("eq8"), nulls.get(r["step"], {}).get("eq9")] for r in recs]
    summary = common.table(["step", "loss", "eq8 share", "eq9 share", "sigma2|gW|2 share", "sum", "residual", "1/I",
                            f"{p.null} eq8", f"{p.null} eq9"], rows)
    meas = {"model": p.model, "norm": p.norm, "ws_layers": arm["ws_layers"], "records": recs, "losses": arm["losses"],
            "diverged_at": arm["diverged_at"],
            "null_arm": {"method": p.null, "definition": "shares of the arm's own conv gradients g = grad_W L: "
                         "cos^2(W_hat, g) (eq. 8) and cos^2(1, g) (eq. 9), W_hat the standardized weight",
                         "records": null["records"], "losses": null["losses"], "diverged_at": null["diverged_at"]}}
    return ctx.finish(meas, v, summary)
