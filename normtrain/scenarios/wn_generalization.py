"""WN trains lower than BN but tests worse; dropout or more weight decay does not close the gap (G&G §4.2).

Gitman & Ginsburg 2017 abstract and §4.2: "although WN achieves better
*training* accuracy, the final *test* accuracy is significantly lower (≈ 6%)
than that of BN. This result demonstrates the surprising strength of the BN
regularization effect which we were unable to compensate using standard
regularization techniques like dropout and weight decay" (ResNet-50 on
ImageNet, lr 0.1 decayed to 0 with a polynomial of power 2, weight decay 1e-4;
"Clearly, weight normalization suffers from overfitting which we were not able
to decrease by using dropout or increasing weight decay").

What runs, for ``seeds`` seeds (seed s: initial weights and data order), on
the built-in digits (or ``--data``): ``model`` (default ``resnet20``, a small
CNN) with ``bn`` (the control) and, for every WN-family method of ``methods``
(default ``wn``), the method alone, with ``dropout`` on the pooled features
before the classifier, and with ``wd_factor`` x the weight decay. Every run:
``steps`` SGD steps (momentum 0.9) at ``lr`` decayed to 0 with a polynomial of
power 2 (the paper's schedule), weight decay ``weight_decay``. Measured on the
final weights in eval mode: the training loss and top-1 over the whole
training split (no dropout, BN with its running statistics) and the test loss
and top-1 over the evaluation split.

Verdict, for every method of ``methods``: (1) its final training loss is below
BN's; (2) its test top-1 is below BN's; (3) with dropout and with more weight
decay its test top-1 is still below BN's. Each comparison of means over the
seeds must exceed its standard error (a gap inside the seeds' noise does not
count). False if WN does not train better, if it tests as well as BN, or if a
regularizer closes the gap.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import models, norms
from . import common

USES_DATA = True

CLAIM = ("Weight normalization reaches a lower training loss than batch normalization but a lower test accuracy, and "
         "neither dropout nor more weight decay closes the test gap (Gitman & Ginsburg 2017 abstract, §4.2).")


@dataclass
class Params(common.Params):
    model: str = "resnet20"
    """Network (a small CNN by default; resnet50 with --data for the paper's setting)."""
    methods: list[str] = field(default_factory=lambda: ["wn"])
    """WN-family methods compared with bn (e.g. [wn, normprop, trelu-wn])."""
    seeds: int = 3
    """Seeds per configuration (seed, seed + 1, ...)."""
    steps: int = 200
    """SGD steps per run."""
    batch_size: int = 32
    """Mini-batch size."""
    lr: float = 0.0125
    """Initial learning rate: the paper's 0.1 for 256 images scaled linearly to the batch of 32; poly-2 decay to 0."""
    weight_decay: float = 1.0e-4
    """Weight decay of every run (the paper's)."""
    wd_factor: float = 10.0
    """The 'more weight decay' runs use weight_decay x this."""
    dropout: float = 0.5
    """Dropout probability of the 'dropout' runs (on the pooled features before the classifier)."""
    image_size: int = 0
    """With --data: resize to this size (0 = natural size)."""
    threads: int = 1
    """CPU threads (small layers: 1 is fastest)."""

    def check(self) -> None:
        super().check()
        common.known(self.model, self.methods)
        if not self.methods:
            raise ValueError("methods: must not be empty")
        if "bn" in self.methods:
            raise ValueError("methods: bn is the control; list the WN-family methods only")
        for k in ("seeds", "steps", "batch_size", "lr", "wd_factor"):
            common.positive(k, getattr(self, k))
        common.positive("weight_decay", self.weight_decay, allow_zero=True)
        if not 0 < self.dropout < 1:
            raise ValueError("dropout: must be in (0, 1)")
        common.positive("image_size", self.image_size, allow_zero=True)


def configs(p: Params) -> list[tuple[str, str, float, float]]:
    """(name, method, dropout, weight decay): bn, then each method plain, with dropout, with more weight decay."""
    out = [("bn", "bn", 0.0, p.weight_decay)]
    for m in p.methods:
        out += [(m, m, 0.0, p.weight_decay), (f"{m}+dropout", m, p.dropout, p.weight_decay),
                (f"{m}+wd", m, 0.0, p.weight_decay * p.wd_factor)]
    return out


def verdict(res: dict, methods: list[str]) -> dict:
    """res[config] = {'train_loss': [per seed], 'test_top1': [per seed]} for bn and each method's configs."""
    criterion = ("for each WN-family method: its final training loss is below BN's, its test top-1 is below BN's, and "
                 "with dropout and with more weight decay its test top-1 is still below BN's; each gap of means over "
                 "the seeds larger than its standard error")
    if "bn" not in res or any(f"{m}{s}" not in res for m in methods for s in ("", "+dropout", "+wd")):
        return common.verdict(CLAIM, criterion, "needs bn and every method's three configurations", False, "no result")
    bn = res["bn"]
    parts, texts, heads = [], [], []
    for m in methods:
        tr = common.below(res[m]["train_loss"], bn["train_loss"])
        te = common.below(res[m]["test_top1"], bn["test_top1"])
        regs = {s: common.below(res[f"{m}+{s}"]["test_top1"], bn["test_top1"]) for s in ("dropout", "wd")}
        ok = [tr["shown"], te["shown"], regs["dropout"]["shown"], regs["wd"]["shown"]]
        parts += ok
        yes = lambda b: "yes" if b else "no"  # noqa: E731
        texts.append(
            f"{m}: train loss {common.pm(res[m]['train_loss'])} vs BN {common.pm(bn['train_loss'])} "
            f"(lower: {yes(ok[0])}); test top-1 {common.pm(res[m]['test_top1'])} vs BN {common.pm(bn['test_top1'])} "
            f"(lower: {yes(ok[1])}); with dropout {common.pm(res[m + '+dropout']['test_top1'])} (still lower: "
            f"{yes(ok[2])}); with more weight decay {common.pm(res[m + '+wd']['test_top1'])} (still lower: "
            f"{yes(ok[3])})")
        heads.append(f"{m} train loss {common.mean_std(res[m]['train_loss'])[0]:.3g} vs BN's "
                     f"{common.mean_std(bn['train_loss'])[0]:.3g} ({'lower' if ok[0] else 'not lower'}); test top-1 "
                     f"{te['gap']:.2g} points below BN's ({'shown' if ok[1] else 'not shown'}), still below with "
                     f"dropout / more weight decay: {yes(ok[2])} / {yes(ok[3])}")
    return common.verdict(CLAIM, criterion, "; ".join(texts) + ".", all(parts), "; ".join(heads))


def plot(ctx, p: Params, names: list[str], res: dict, curves: dict, v: dict) -> None:
    import numpy as np
    colors = {n: c for n, c in zip(names, ("tab:gray", "tab:blue", "tab:cyan", "tab:purple", "tab:orange",
                                            "tab:olive", "tab:brown", "tab:pink", "tab:red", "tab:green"))}
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, 3, panel=(5.2, 4.8))
        ax = axes[0][0]
        for n in names:
            cs = np.array([c for c in curves[n] if len(c) == p.steps])
            if len(cs):
                k = max(1, p.steps // 15)
                sm = np.array([np.convolve(c, np.ones(k) / k, mode="valid") for c in cs])
                ax.plot(range(k, p.steps + 1), sm.mean(0), color=colors[n], label=n)
        ax.set_yscale("log")
        ax.set_title(f"{p.model}: training loss (mean of seeds, smoothed)")
        ax.set_xlabel("SGD step")
        ax.set_ylabel("cross-entropy (training batches)")
        ax.legend()
        for ax, key, title, ylab in ((axes[0][1], "train_loss", "final training loss (whole split, eval mode)",
                                      "cross-entropy"),
                                     (axes[0][2], "test_top1", "test top-1 of the final weights", "top-1 (%)")):
            for i, n in enumerate(names):
                vals = [x for x in res[n][key] if x == x]
                mean, sd = common.mean_std(vals)
                ax.bar(i, mean, yerr=sd, color=colors[n], alpha=0.6, capsize=6)
                ax.plot([i] * len(vals), vals, "o", color="k", ms=5)
            ax.set_xticks(range(len(names)), names, rotation=20)
            ax.set_title(title)
            ax.set_ylabel(ylab)
            ax.set_xlabel("configuration (bars: mean ± std, dots: seeds)")
        lo = min(min(res[n]["test_top1"]) for n in names)
        axes[0][2].set_ylim(max(0.0, lo - 5), 100)
        ctx.savefig(fig, "wn_generalization.png", v)


def run(ctx, p: Params) -> dict:
    cfgs = configs(p)
    names = [c[0] for c in cfgs]
    per_seed = {n: [] for n in names}
    curves = {n: [] for n in names}
    test = common.epoch_batches(common.loader(ctx, 256, "val", p.image_size))
    bar = ctx.progress(total=len(cfgs) * p.seeds, desc="wn-generalization")
    for s in range(p.seed, p.seed + p.seeds):
        ld = common.loader(ctx, p.batch_size, "train", p.image_size, seed=s)
        batches = common.take(ld, p.steps)
        train_eval = common.epoch_batches(common.loader(ctx, 256, "train", p.image_size, seed=s))
        for name, method, dropout, wd in cfgs:
            torch.manual_seed(s)
            model = models.build(p.model, norms.get(method), ld.num_classes, ld.in_shape,
                                 dropout=dropout).to(ctx.device)
            opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=0.9, weight_decay=wd)
            sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=p.steps, power=2.0)
            r = common.train_steps(model, opt, batches, p.steps, scheduler=sched,
                                   on_step=lambda i, x, name=name, s=s: ctx.scalar(f"{name}/seed{s}/train_loss", x, i))
            tr, te = common.evaluate(model, train_eval), common.evaluate(model, test)
            per_seed[name].append({"seed": s, "diverged_at": r["diverged_at"], "train_loss": tr["loss"],
                                   "train_top1": tr["top1"], "test_loss": te["loss"], "test_top1": te["top1"]})
            curves[name].append(r["losses"])
            bar.update(1)
    bar.close()
    res = {n: {k: [x[k] for x in per_seed[n]] for k in ("train_loss", "train_top1", "test_loss", "test_top1")}
           for n in names}
    v = verdict(res, p.methods)
    plot(ctx, p, names, res, curves, v)
    rows = [[n, common.pm(res[n]["train_loss"]), common.pm(res[n]["train_top1"]), common.pm(res[n]["test_loss"]),
             common.pm(res[n]["test_top1"]), sum(x["diverged_at"] is not None for x in per_seed[n])] for n in names]
    summary = common.table(["config", "train loss", "train top-1 %", "test loss", "test top-1 %", "diverged"], rows)
    meas = {"model": p.model, "seeds": list(range(p.seed, p.seed + p.seeds)),
            "configs": {n: {"method": m, "dropout": d, "weight_decay": wd} for n, m, d, wd in cfgs},
            "schedule": f"lr {p.lr:g} x (1 - step/{p.steps})^2, momentum 0.9",
            "summary": res, "per_seed": per_seed, "train_curves": curves}
    return ctx.finish(meas, v, summary)
