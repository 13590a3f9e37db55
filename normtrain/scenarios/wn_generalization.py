"""WN trains better than BN but tests worse; dropout or more weight decay does not close the gap (G&G §4.2).

Gitman & Ginsburg 2017 abstract and §4.2: "although WN achieves better
*training* accuracy, the final *test* accuracy is significantly lower (≈ 6%)
than that of BN. This result demonstrates the surprising strength of the BN
regularization effect which we were unable to compensate using standard
regularization techniques like dropout and weight decay" (ResNet-50 on
ImageNet, lr 0.1 decayed to 0 with a polynomial of power 2, weight decay 1e-4;
"Clearly, weight normalization suffers from overfitting which we were not able
to decrease by using dropout or increasing weight decay").

What runs, for ``seeds`` seeds (seed s: initial weights and data order, shared
by every configuration), on the built-in digits (or ``--data``): ``model``
(default ``mlp``, 512-300, which the CPU trains to convergence in seconds;
``resnet20``, or ``resnet50`` with ``--data``, for the paper's kind of network)
with ``bn`` (the control) and, for every WN-family method of ``methods``
(default ``wn``), the method alone, with the network's ``dropout``, and with
``wd_factor`` x the weight decay. Every run: ``steps`` SGD steps (momentum 0.9)
at ``lr`` (the paper's 0.1 for 256 images, scaled to the batch) decayed to 0 with
a polynomial of power 2 (the paper's schedule), weight decay ``weight_decay``.
Measured on the final weights in eval mode: the training loss and top-1 over the
whole training split (no dropout, BN with its running statistics) and the test
loss and top-1 over the evaluation split.

Verdict, in parts, all the paper's, for every method of ``methods``:
``trains-better`` (training top-1 above BN's), ``tests-worse`` (test top-1
below BN's), ``dropout-no-help`` and ``wd-no-help`` (still below BN's with
dropout, with more weight decay). The rules (`common.difference`): a gap of
means over the seeds is shown only at >= 2 standard errors and >= the minimum
effect, max(``min_images`` images, ``min_points`` points) of the split; shown
equal counts against the claim; anything else is inconclusive with the seeds
that would decide it. Accuracy parts are judged only when every run involved has
converged (its training loss plateaued, allowing for its noise: `measures.settled`); training accuracy
only when the two are not both at the ceiling (a network that memorizes the
training split cannot train "better"); the weight-decay part only when the
larger decay can act (lr * wd * steps >= 1% with the schedule's mean rate,
`common.decay_acts`); otherwise inconclusive, flagged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import models, norms
from . import common
from .paper import Paper, Run, Value
from .measures import settled

USES_DATA = True

CLAIM = ("Weight normalization reaches a better training accuracy than batch normalization but a lower test accuracy "
         "(73% vs 67% on ImageNet), and neither dropout nor more weight decay closes the test gap (Gitman & "
         "Ginsburg 2017 abstract, §4.2).")


#: The paper's own experiment, for `--scale paper` (`paper.Paper`): ResNet-50 on ImageNet through the
#: resnet50-imagenet recipe, BN and each WN-family method alone, with dropout and with more weight decay
#: (`paper_runs`).
PAPER = Paper(
    where="Gitman & Ginsburg 2017 §4.2, Fig. 3 (ResNet-50 on ImageNet, 120 epochs, batch 256 on 4 GPUs)",
    dataset="imagenet",
    gpus=4,
    params={"model": "resnet50", "steps": 600480, "batch_size": 256, "lr": 0.1, "weight_decay": 1.0e-4,
            "wd_factor": 10.0, "dropout": 0.5, "seeds": 2},
    recipes=("resnet50-imagenet",),
    values={"wn: tests-worse": Value({"bn": 73, "wn": 67}, "test top-1 % (\"approx.\")", "§4.2, Fig. 3"),
            "wn: trains-better": Value("WN reaches a higher final training accuracy than BN", "(a plot)",
                                       "Fig. 3 (a), (c)")},
    note="the paper names neither the dropout nor the larger weight decay it tried: dropout 0.5 before the "
         "classifier and 10x the weight decay (lr x wd x steps >> 1%, so it acts); one run each in the paper, 2 "
         "seeds here for a standard error; training accuracy is the last logging window's (train mode), as the "
         "paper's curves",
)


@dataclass
class Params(common.Params):
    model: str = "mlp"
    """Network (an MLP the CPU trains to convergence by default; resnet20, or resnet50 with --data, for a ResNet)."""
    methods: list[str] = field(default_factory=lambda: ["wn"])
    """WN-family methods compared with bn (e.g. [wn, normprop, trelu-wn])."""
    seeds: int = 3
    """Seeds per configuration (seed, seed + 1, ...)."""
    steps: int = 600
    """SGD steps per run (600 x 128 images: 53 epochs of the digits, to convergence)."""
    batch_size: int = 128
    """Mini-batch size."""
    lr: float = 0.05
    """Initial learning rate: the paper's 0.1 for 256 images scaled linearly to the batch; poly-2 decay to 0."""
    weight_decay: float = 1.0e-4
    """Weight decay of every run (the paper's)."""
    wd_factor: float = 50.0
    """The 'more weight decay' runs use weight_decay x this (50: 5e-3, which shrinks the weights ~5% over the run)."""
    dropout: float = 0.5
    """Dropout probability of the 'dropout' runs (the network's dropout option)."""
    min_images: int = 5
    """Minimum effect for an accuracy gap: this many images of the split ..."""
    min_points: float = 0.5
    """... or this many percentage points, whichever is larger."""
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
        common.positive("min_images", self.min_images, allow_zero=True)
        common.positive("min_points", self.min_points, allow_zero=True)
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


def verdict(res: dict, methods: list[str], effect_test: float = 1.39, effect_train: float = 0.5,
            wd_acts: bool = True, wd_text: str = "") -> dict:
    """res[config] = {'train_top1', 'test_top1', 'train_loss': [per seed], 'converged': [per seed]} for bn and each
    method's configs; effect_*: minimum accuracy gaps (points); wd_acts: whether the larger weight decay can act."""
    if "bn" not in res or any(f"{m}{s}" not in res for m in methods for s in ("", "+dropout", "+wd")):
        return common.not_judged(CLAIM, "needs bn and every method's three configurations")
    bn = res["bn"]
    rule = "shown at >= 2 standard errors over the seeds and >= {:.2g} points; else inconclusive"
    parts, heads = [], []

    def converged(*names):
        return all(all(res[n].get("converged", [True])) for n in names)

    def judged(d, names, extra_ok=True, why=""):
        if not converged(*names):
            return common.INCONCLUSIVE, "; not converged (training loss still falling): more steps decide it"
        if not extra_ok:
            return common.INCONCLUSIVE, why
        st = common.state_greater(d)
        if st == common.INCONCLUSIVE and abs(d["gap"]) < d["min_effect"]:
            return st, ("; a gap under the minimum effect (5 images of this split): a larger test split decides it "
                        "(on 10,000 images the minimum effect is 0.5 points)")
        return st, ""
    for m in methods:
        tr = common.difference(res[m]["train_top1"], bn["train_top1"], effect_train)
        ceiling = min(common.mean_std(res[m]["train_top1"])[0], common.mean_std(bn["train_top1"])[0]) >= \
            100.0 - effect_train
        st, note = judged(tr, ["bn", m], not ceiling, "; both at the ceiling (the training split is memorized): "
                          "a dataset the network cannot memorize (ImageNet) decides it")
        parts.append(common.part(
            f"{m}: trains-better", f"{m} reaches a better training accuracy than BN (abstract, Fig. 3).", "paper",
            st, f"train top-1 {common.pm(res[m]['train_top1'])} vs BN {common.pm(bn['train_top1'])}: "
                f"{common.shown_text(tr)}; train loss {common.pm(res[m]['train_loss'])} vs BN "
                f"{common.pm(bn['train_loss'])}" + note,
            f"{m}'s training top-1 (whole split, eval mode) above BN's, " + rule.format(effect_train)))
        te = common.difference(bn["test_top1"], res[m]["test_top1"], effect_test)
        st, note = judged(te, ["bn", m])
        parts.append(common.part(
            f"{m}: tests-worse", f"{m}'s test accuracy is lower than BN's (§4.2: 73% vs 67%).", "paper", st,
            f"test top-1 {common.pm(res[m]['test_top1'])} vs BN {common.pm(bn['test_top1'])}: BN ahead by "
            f"{common.shown_text(te)}" + note, f"BN's test top-1 above {m}'s, " + rule.format(effect_test),
            {"value": 6.0, "where": "§4.2, Fig. 3 (points of top-1)"}))
        tails = []
        for reg, what, ok, why in (("dropout", "dropout", True, ""),
                                   ("wd", "more weight decay", wd_acts,
                                    f"; the larger weight decay cannot act at this size ({wd_text}): flagged, not "
                                    f"compared; more steps or a larger wd_factor decide it")):
            name = f"{m}+{reg}"
            d = common.difference(bn["test_top1"], res[name]["test_top1"], effect_test)
            st, note = judged(d, ["bn", name], ok, why)
            parts.append(common.part(
                f"{m}: {reg}-no-help", f"{what.capitalize()} does not close {m}'s test gap (§4.2).", "paper", st,
                f"{name} test top-1 {common.pm(res[name]['test_top1'])} vs BN {common.pm(bn['test_top1'])}: BN ahead "
                f"by {common.shown_text(d)}" + note,
                f"BN's test top-1 above {name}'s, " + rule.format(effect_test)))
            tails.append(f"{d['gap']:+.2g}")
        heads.append(f"{m}: train top-1 {tr['gap']:+.2g} points vs BN ({_word(parts[-4]['state'])}); BN tests "
                     f"{te['gap']:+.2g} points better ({_word(parts[-3]['state'])}), with dropout / more weight decay "
                     f"{tails[0]} / {tails[1]} ({_word(parts[-2]['state'])} / {_word(parts[-1]['state'])})")
    return common.verdict_of(CLAIM, parts, "; ".join(heads))


# -- the paper's size: training runs of the resnet50-imagenet recipe -----------------------------------------

def paper_runs(p: Params) -> list[Run]:
    """One run of the resnet50-imagenet recipe (poly-2 from `lr` over its 120 epochs, capped at `steps`) per
    configuration of `configs` and seed: dropout through model.dropout, the larger weight decay through
    optim.weight_decay."""
    sets = (("model.name", p.model), ("data.batch_size", p.batch_size), ("optim.lr", p.lr),
            ("train.max_steps", p.steps))
    return [Run(f"{name.replace('+', '-')}-seed{s}", name, s, "resnet50-imagenet",
                (("norm.name", method), ("model.dropout", dropout), ("optim.weight_decay", wd), *sets))
            for s in range(p.seed, p.seed + p.seeds) for name, method, dropout, wd in configs(p)]


def paper_judge(ctx, p: Params, done) -> dict:
    """`verdict` on the runs: training top-1 and loss of the last logging window (train mode, as the paper's
    training curves), test top-1 on ImageNet's validation set, converged when the logged training loss has
    settled (`measures.settled`)."""
    from . import paper_runs as pr
    arms = pr.by_arm(done)
    res = {a: {"train_top1": [f.final.get("train/top1") for f in fs], "test_top1": [f.top1() for f in fs],
               "train_loss": [f.final.get("train/loss") for f in fs],
               "converged": [not f.diverged and settled(f.series("train/loss")[1]) for f in fs]}
           for a, fs in arms.items()}
    steps = min(p.steps, done[0].results.get("total_steps") or p.steps)
    mean_lr = p.lr / 3  # the mean of lr (1 - t)^2 over the run
    wd_acts = common.decay_acts(mean_lr, p.weight_decay * p.wd_factor, steps)
    wd_text = f"mean lr x wd x steps = {mean_lr * p.weight_decay * p.wd_factor * steps:.2%}"
    n_test, n_train = pr.test_images(ctx), 1_281_167
    v = verdict(res, p.methods, common.accuracy_min_effect(0.0, n_test, p.min_images, p.min_points),
                common.accuracy_min_effect(0.0, n_train, p.min_images, p.min_points), wd_acts, wd_text)
    pr.plot(ctx, done, v, "wn_generalization.png")
    meas = {"model": p.model, "seeds": list(range(p.seed, p.seed + p.seeds)), "summary": res,
            "weight_decay_acts": wd_acts, "runs": [f.summary() for f in done]}
    return ctx.finish(meas, v, pr.table(done))


def _word(state: str) -> str:
    return {common.REPRODUCED: "shown", common.NOT_REPRODUCED: "refuted",
            common.INCONCLUSIVE: "inconclusive", common.NA: "n/a"}[state]


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
    n_test = sum(len(y) for _, y in test)
    bar = ctx.progress(total=len(cfgs) * p.seeds, desc="wn-generalization")
    n_train = 0
    for s in range(p.seed, p.seed + p.seeds):
        ld = common.loader(ctx, p.batch_size, "train", p.image_size, seed=s)
        train_eval = common.epoch_batches(common.loader(ctx, 256, "train", p.image_size, seed=s))
        n_train = sum(len(y) for _, y in train_eval)
        for name, method, dropout, wd in cfgs:
            torch.manual_seed(s)
            model = models.build(p.model, norms.get(method), ld.num_classes, ld.in_shape,
                                 dropout=dropout).to(ctx.device)
            opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=0.9, weight_decay=wd)
            sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=p.steps, power=2.0)
            # the same batches in the same order for every configuration of this seed, streamed
            r = common.train_steps(model, opt, common.forever(ld), p.steps, scheduler=sched,
                                   on_step=lambda i, x, name=name, s=s: ctx.scalar(f"{name}/seed{s}/train_loss", x, i))
            tr, te = common.evaluate(model, train_eval), common.evaluate(model, test)
            per_seed[name].append({"seed": s, "diverged_at": r["diverged_at"], "train_loss": tr["loss"],
                                   "train_top1": tr["top1"], "test_loss": te["loss"], "test_top1": te["top1"],
                                   "converged": r["diverged_at"] is None and settled(r["losses"])})
            curves[name].append(r["losses"])
            bar.update(1)
    bar.close()
    res = {n: {k: [x[k] for x in per_seed[n]] for k in ("train_loss", "train_top1", "test_loss", "test_top1",
                                                        "converged")} for n in names}
    mean_lr = p.lr / 3  # the mean of lr (1 - t)^2 over the run
    shrink = mean_lr * p.weight_decay * p.wd_factor * p.steps
    wd_acts = common.decay_acts(mean_lr, p.weight_decay * p.wd_factor, p.steps)
    wd_text = f"mean lr x wd x steps = {shrink:.2%}"
    effect_test = common.accuracy_min_effect(0.0, n_test, p.min_images, p.min_points)
    effect_train = common.accuracy_min_effect(0.0, n_train, p.min_images, p.min_points)
    v = verdict(res, p.methods, effect_test, effect_train, wd_acts, wd_text)
    plot(ctx, p, names, res, curves, v)
    rows = [[n, common.pm(res[n]["train_loss"]), common.pm(res[n]["train_top1"]), common.pm(res[n]["test_loss"]),
             common.pm(res[n]["test_top1"]), f"{sum(res[n]['converged'])}/{len(res[n]['converged'])}",
             sum(x["diverged_at"] is not None for x in per_seed[n])] for n in names]
    summary = common.table(["config", "train loss", "train top-1 %", "test loss", "test top-1 %", "converged",
                            "diverged"], rows)
    if not wd_acts:
        summary += f"\n\nflag: the +wd arms cannot act at this size ({wd_text} < 1%)"
    meas = {"model": p.model, "seeds": list(range(p.seed, p.seed + p.seeds)),
            "configs": {n: {"method": m, "dropout": d, "weight_decay": wd} for n, m, d, wd in cfgs},
            "schedule": f"lr {p.lr:g} x (1 - step/{p.steps})^2, momentum 0.9",
            "test_images": n_test, "train_images": n_train,
            "min_effect_points": {"test": effect_test, "train": effect_train},
            "weight_decay_acts": {"acts": wd_acts, "shrink": shrink, "rule": "mean lr x wd x steps >= 1%"},
            "convergence_rule": "training loss plateaued: the mean of its last 10% of steps is < 5%, or < 2 standard "
                                "errors of the steps' noise, below the mean of the 10% before (measures.settled)",
            "summary": res, "per_seed": per_seed, "train_curves": curves}
    return ctx.finish(meas, v, summary)
