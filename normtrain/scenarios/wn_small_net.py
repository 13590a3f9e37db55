"""G&G Fig. 2: on the small cifar10-nv net the WN family trains faster than BN and NormProp/TReLU-WN test better.

Gitman & Ginsburg 2017 §4.1 and Fig. 2 (cifar10-nv on CIFAR-10, SGD momentum
0.9, 256 epochs, batch 128, per-method schedules and weight decay of their
footnote 3, the ``cifar10-nv`` recipe): "With these results we again confirm that
WN algorithms outperform BN for a moderately small networks and datasets. We
can see that WN algorithms have both better training curves (they converge
faster) as well as higher final test accuracy (with the exception of the
original weight normalization). However, ... with this network size even if
training is done with no normalization the final accuracy is comparable to that
of a normalized network." This is the paper's positive control for its
ResNet-50 results. Fig. 2 gives curves, not numbers.

What runs (CPU size, so labelled): the cifar10-nv architecture (Table 2, with
its Caffe pooling, the ReLU after conv9 and Caffe "xavier" init) at ``width`` x
its channels (default 1/8: 16/32/40), on the built-in 8x8 digits upsampled
(bilinear) to ``image_size`` (default 12: 12 -> 6 -> 3 -> conv7 -> 1x1; the paper's
28 -> 14 -> 7 -> 5), or on ``--data`` resized the same way. Each method of
``methods`` (default bn, wn, normprop, trelu-wn and none) trains with the
``cifar10-nv`` recipe's settings for that method (its ``per_norm``: lr 0.01
times ``lr_scale``, BN/none linear decay to 1e-5, WN linear to 1e-4,
NormProp/TReLU-WN polynomial power 2 to 1e-5, their weight decays) compressed
into ``epochs`` epochs at batch ``batch_size``, for ``seeds`` seeds (seed s: the
initial weights and the data order, the same batches for every method). The
recipe's weight decays cannot act in so few steps (lr x wd x steps < 1%); the
output says so.

Verdict, over the seeds (a gap is shown at >= 2 standard errors and >= a
minimum effect: ``min_loss_effect`` nats for the training curve, max(5 test
images, 0.5 points) for accuracy): (1, paper) WN, NormProp and TReLU-WN train
faster than BN: lower mean training loss over the whole run (the area under the
curve); (2, paper) NormProp and TReLU-WN reach a higher final test top-1 than
BN; (3, paper) WN does not (its top-1 is shown below or equal to BN's); (4,
paper) without normalization the final top-1 is comparable to BN's (shown
equal). All four are judged only for runs that converged (seed-mean training-loss curve plateaued, `measures.settled`, AND
final training loss <= ``max_final_loss``, since an annealed learning rate
flattens the curve of an under-trained net too), else inconclusive.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import config, models, norms
from ..schedule import lr_at
from . import common
from .measures import settled
from .paper import Paper, Run

USES_DATA = True

CLAIM = ("On the small cifar10-nv network the WN algorithms (WN, NormProp, TReLU-WN) train faster than BN, and "
         "NormProp and TReLU-WN reach a higher final test accuracy (WN does not), while no normalization ends "
         "comparable (Gitman & Ginsburg 2017 §4.1, Fig. 2).")

WN_FAMILY = ("wn", "normprop", "trelu-wn")

#: The paper's own experiment, for `--scale paper` (`paper.Paper`): the cifar10-nv recipe on CIFAR-10 at full
#: width, 28x28 crops, 256 epochs, one run per method and seed (`paper_runs`).
PAPER = Paper(
    where="Gitman & Ginsburg 2017 §4.1, Fig. 2, Table 2, footnote 3",
    dataset="cifar10",
    gpus=1,
    params={"width": 1.0, "image_size": 28, "batch_size": 128, "epochs": 256.0, "lr_scale": 1.0, "seeds": 3},
    recipes=("cifar10-nv",),
    values={},   # Fig. 2 gives curves only
    note="trained on all 50,000 training images and evaluated on the test set every epoch, as the paper's Fig. 2 "
         "(the recipe's 45k/5k split is turned off: data.val_split=0)",
)


@dataclass
class Params(common.Params):
    methods: list[str] = field(default_factory=lambda: ["bn", "wn", "normprop", "trelu-wn", "none"])
    """Methods to train (the verdict needs bn, wn, normprop, trelu-wn and none)."""
    width: float = 0.125
    """cifar10-nv's channels x this (1 = the paper's 128/256/320)."""
    image_size: int = 12
    """Input size after bilinear resizing (the paper's crops are 28; >= 12 keeps conv7's output non-empty)."""
    batch_size: int = 32
    """Mini-batch size (the paper's 128)."""
    epochs: float = 3.0
    """Training epochs (the paper's 256); each method's schedule is compressed into them."""
    lr_scale: float = 1.0
    """Multiplies every method's recipe learning rate (1 = the paper's 0.01)."""
    seeds: int = 3
    """Seeds per method (seed, seed + 1, ...)."""
    min_loss_effect: float = 0.05
    """Smallest gap in mean training loss (nats) that counts for 'trains faster'."""
    min_effect: float = 0.0
    """Smallest test top-1 gap (points) that counts; 0 = max(5 test images, 0.5 points)."""
    max_final_loss: float = 0.2
    """A run counts as converged only if its final training loss (last 10% of the steps) is at most this."""
    threads: int = 1
    """CPU threads (small layers: 1 is fastest)."""

    def check(self) -> None:
        super().check()
        common.known(methods=self.methods)
        for k in ("width", "batch_size", "epochs", "lr_scale", "seeds", "min_loss_effect", "max_final_loss"):
            common.positive(k, getattr(self, k))
        common.positive("min_effect", self.min_effect, allow_zero=True)
        if self.image_size < 12:
            raise ValueError(f"image_size: {self.image_size} < 12 leaves nothing after cifar10-nv's unpadded conv7")


def recipe_for(method: str):
    """The cifar10-nv recipe with `method`'s per_norm settings (lr, weight decay, schedule)."""
    return config.load("cifar10-nv", [("norm.name", method)])


# -- verdict -----------------------------------------------------------------------------------------

def _combine(states: list[str]) -> str:
    if common.NOT_REPRODUCED in states:
        return common.NOT_REPRODUCED
    return common.INCONCLUSIVE if common.INCONCLUSIVE in states else common.REPRODUCED


def _desc(a, b, d, unit, vals) -> str:
    txt = (f"{a} {common.pm(vals[a])} vs {b} {common.pm(vals[b])}{unit}: gap {d['gap']:+.3g} ± {d['se']:.2g} "
           f"({'shown' if d['shown'] else 'shown equal' if d['equal'] else 'not shown'}")
    if not d["shown"] and not d["equal"] and d["seeds_to_decide"]:
        txt += f"; ~{d['seeds_to_decide']} seeds per method would decide it"
    return txt + ")"


def verdict(mean_loss: dict, top1: dict, converged: dict, min_loss_effect: float, min_effect: float) -> dict:
    """mean_loss[m], top1[m]: per-seed mean training loss over the run and final test top-1 (%);
    converged[m]: whether method m's runs converged (see the module docstring)."""
    need = ("bn",) + WN_FAMILY + ("none",)
    if any(not top1.get(m) or not mean_loss.get(m) for m in need):
        return common.verdict_of(CLAIM, [common.part("training curves", "WN algorithms train faster than BN",
                                                     "paper", common.INCONCLUSIVE,
                                                     "needs bn, wn, normprop, trelu-wn and none", "")], "no result")
    # (1) faster training: BN's mean loss above each WN-family method's, over runs that converged.
    fast = {m: common.difference(mean_loss["bn"], mean_loss[m], min_loss_effect) for m in WN_FAMILY}
    fast_states = [common.state_greater(d) if converged.get(m) and converged.get("bn") else common.INCONCLUSIVE
                   for m, d in fast.items()]
    s1 = _combine(fast_states)
    t1 = "; ".join(_desc("bn", m, d, " nats", mean_loss) + (
        "" if converged.get(m) and converged.get("bn") else " (not judged: not converged)") for m, d in fast.items())

    def final(m, rule):
        d = common.difference(top1[m], top1["bn"], min_effect)
        wait = [x for x in (m, "bn") if not converged.get(x)]
        return (common.INCONCLUSIVE if wait else rule(d)), _desc(m, "bn", d, " %", top1) + (
            f" (not judged: {', '.join(wait)} not converged)" if wait else "")

    better = {m: final(m, common.state_greater) for m in ("normprop", "trelu-wn")}
    s2 = _combine([s for s, _ in better.values()])

    def not_above(d):  # "WN does not outperform BN"
        if d["shown"]:
            return common.NOT_REPRODUCED if d["gap"] > 0 else common.REPRODUCED
        return common.REPRODUCED if d["equal"] else common.INCONCLUSIVE

    def equal(d):  # "comparable"
        if d["equal"]:
            return common.REPRODUCED
        return common.NOT_REPRODUCED if d["shown"] else common.INCONCLUSIVE

    s3, t3 = final("wn", not_above)
    s4, t4 = final("none", equal)
    crit_acc = (f"final test top-1 over the seeds, a gap shown at >= 2 standard errors and >= {min_effect:.2g} points, "
                f"shown equal when the 2-SE interval lies within ±{min_effect:.2g}; only for converged runs")
    parts = [
        common.part("training curves", "WN, NormProp and TReLU-WN have better training curves than BN (converge "
                    "faster)", "paper", s1, t1,
                    f"each method's mean training loss over the run shown below BN's (>= 2 standard errors and >= "
                    f"{min_loss_effect:g} nats); only for converged runs (how fast a run converges needs it to)"),
        common.part("final accuracy", "NormProp and TReLU-WN reach a higher final test accuracy than BN", "paper",
                    s2, "; ".join(t for _, t in better.values()), "each shown above bn; " + crit_acc),
        common.part("WN exception", "the original WN does not reach a higher final test accuracy than BN", "paper",
                    s3, t3, "wn shown below or equal to bn; " + crit_acc),
        common.part("no normalization", "with no normalization the final accuracy is comparable to a normalized "
                    "network's", "paper", s4, t4, "none shown equal to bn; " + crit_acc)]
    m = {k: common.mean_std(v)[0] for k, v in top1.items()}
    waiting = [x for x in need if not converged.get(x)]
    headline = (f"test top-1 bn {m['bn']:.1f}, wn {m['wn']:.1f}, normprop {m['normprop']:.1f}, trelu-wn "
                f"{m['trelu-wn']:.1f}, none {m['none']:.1f}%; " +
                (f"not converged at this size: {', '.join(waiting)} (the paper's 256 epochs would decide it)"
                 if waiting else f"faster than BN: {s1}, NormProp/TReLU-WN higher: {s2}"))
    return common.verdict_of(CLAIM, parts, headline)


# -- the paper's size: training runs of the cifar10-nv recipe ----------------------------------------------

def paper_runs(p: Params) -> list[Run]:
    """One run of the cifar10-nv recipe (its per-method schedule and weight decay, footnote 3) per method and seed,
    at the scenario's width, crop size, batch and epochs, on all 50,000 training images (data.val_split 0)."""
    sets = [("data.batch_size", p.batch_size), ("train.epochs", p.epochs), ("data.image_size", p.image_size),
            ("data.val_split", 0)]
    if p.width != 1.0:
        sets.append(("model.options", {"width": p.width}))
    if p.lr_scale != 1.0:
        sets.append(("optim.lr", 0.01 * p.lr_scale))  # footnote 3: 0.01 for every method
    return [Run(f"{m}-seed{s}", m, s, "cifar10-nv", (("norm.name", m), *sets))
            for s in range(p.seed, p.seed + p.seeds) for m in p.methods]


def paper_judge(ctx, p: Params, done) -> dict:
    """`verdict` on the runs: mean training loss over each run (the mean of its logged windows, all of equal
    length), final test top-1, converged as at CPU size (the seed-mean curve plateaued and its last 10% at most
    max_final_loss)."""
    from . import paper_runs as pr
    arms_ = pr.by_arm(done)
    top1 = {m: [f.top1() for f in fs] for m, fs in arms_.items()}
    mean_loss = {m: [(sum(ys) / len(ys) if ys and not f.diverged else float("nan"))
                     for f in fs for ys in [f.series("train/loss")[1]]] for m, fs in arms_.items()}
    curves = {m: pr.seed_mean(fs)[1] for m, fs in arms_.items()}
    final_loss = {m: (sum(c[-max(1, len(c) // 10):]) / max(1, len(c) // 10) if c else float("nan"))
                  for m, c in curves.items()}
    converged = {m: bool(c) and settled(c) and final_loss[m] <= p.max_final_loss for m, c in curves.items()}
    me = pr.min_effect(ctx, p.min_effect)
    v = verdict(mean_loss, top1, converged, p.min_loss_effect, me)
    pr.plot(ctx, done, v, "wn_small_net.png")
    meas = {"seeds": list(range(p.seed, p.seed + p.seeds)), "min_effect_points": me, "test_top1": top1,
            "mean_train_loss": mean_loss, "final_train_loss": final_loss, "converged": converged,
            "runs": [f.summary() for f in done]}
    return ctx.finish(meas, v, pr.table(done))


# -- plot and run -------------------------------------------------------------------------------------

COLORS = {"bn": "tab:gray", "wn": "tab:blue", "normprop": "tab:green", "trelu-wn": "tab:orange", "none": "k"}


def plot(ctx, p: Params, curves: dict, evals: dict, top1: dict, v: dict) -> None:
    import numpy as np
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, 3, panel=(5.2, 4.8))
        ax = axes[0][0]
        for m, c in curves.items():
            c = np.array(c, dtype=float)
            k = max(1, len(c) // 15)
            if len(c) >= k:
                ax.plot(range(k, len(c) + 1), np.convolve(c, np.ones(k) / k, mode="valid"), color=COLORS.get(m),
                        label=m)
        ax.set_yscale("log")
        ax.set_xlabel("SGD step")
        ax.set_ylabel("training loss (mean of seeds)")
        ax.set_title("training curves (Fig. 2 left)")
        ax.legend()
        ax = axes[0][1]
        for m, pts in evals.items():
            steps = [q[0] for q in pts[0]]
            acc = np.array([[q[1] for q in run] for run in pts]).mean(0)
            ax.plot(steps, acc, "-o", ms=3, color=COLORS.get(m), label=m)
        ax.set_xlabel("SGD step")
        ax.set_ylabel("test top-1 (%), mean of seeds")
        ax.set_title("test accuracy during training (Fig. 2 right)")
        ax.set_ylim(0, 100)
        ax.legend()
        ax = axes[0][2]
        for i, m in enumerate(top1):
            vals = top1[m]
            mean, sd = common.mean_std(vals)
            ax.bar(i, mean, yerr=sd, capsize=6, alpha=0.6, color=COLORS.get(m))
            ax.plot([i] * len(vals), vals, "ko", ms=5)
        ax.set_xticks(range(len(top1)), list(top1))
        ax.set_ylim(0, 100)
        ax.set_ylabel("final test top-1 (%)")
        ax.set_title(f"final weights (mean ± std, {p.seeds} seeds)")
        ctx.savefig(fig, "wn_small_net.png", v, f"cifar10-nv x{p.width:g} width, {p.image_size}px")


def run(ctx, p: Params) -> dict:
    recipes = {m: recipe_for(m) for m in p.methods}
    size = (p.image_size, p.image_size)

    def resize(batches):
        return [(F.interpolate(x, size=size, mode="bilinear", align_corners=False), y) for x, y in batches]
    test = resize(common.epoch_batches(common.loader(ctx, 256, "val")))
    runs = {m: [] for m in p.methods}
    bar = ctx.progress(total=len(p.methods) * p.seeds, desc="wn-small-net")
    for s in range(p.seed, p.seed + p.seeds):
        ld = common.loader(ctx, p.batch_size, "train", seed=s)
        steps = max(10, int(round(p.epochs * len(ld))))
        batches = resize(common.take(ld, steps))
        shape = (ld.in_shape[0], p.image_size, p.image_size)
        every = -(-steps // 6)  # about six evaluations during training, and one at the end
        for m in p.methods:
            r = recipes[m]
            torch.manual_seed(s)
            model = models.build("cifar10-nv", norms.get(m), ld.num_classes, shape, init=r.model.init,
                                 width=p.width).to(ctx.device)
            lr = r.optim.lr * p.lr_scale
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=r.optim.momentum,
                                  weight_decay=r.optim.weight_decay)
            losses, evals, div = [], [], None
            for i, (x, y) in enumerate(batches):
                if i % every == 0:
                    evals.append((i, common.evaluate(model, test)["top1"]))
                    model.train()
                for g in opt.param_groups:
                    g["lr"] = lr_at(i, steps, len(ld), r.schedule, lr)
                loss = F.cross_entropy(model(x).float(), y)
                losses.append(float(loss.detach()))
                ctx.scalar(f"{m}/seed{s}/train_loss", losses[-1], i)
                if common.diverged_at(losses) is not None:
                    div = i
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            ev = common.evaluate(model, test)
            evals.append((steps, ev["top1"]))
            k = max(1, steps // 10)
            runs[m].append({"seed": s, "losses": losses, "diverged_at": div, "evals": evals, "steps": steps,
                            "test_top1": ev["top1"], "test_loss": ev["loss"],
                            "mean_train_loss": sum(losses) / len(losses) if div is None else float("nan"),
                            "final_train_loss": sum(losses[-k:]) / k if div is None else float("nan")})
            bar.update(1)
    bar.close()
    curves = {m: common.seed_mean_curve(rs) for m, rs in runs.items()}
    k = max(1, len(next(iter(curves.values()))) // 10)
    final_loss = {m: (sum(c[-k:]) / k if c else float("nan")) for m, c in curves.items()}
    converged = {m: bool(c) and settled(c) and final_loss[m] <= p.max_final_loss for m, c in curves.items()}
    top1 = {m: [r["test_top1"] for r in rs] for m, rs in runs.items()}
    mean_loss = {m: [r["mean_train_loss"] for r in rs] for m, rs in runs.items()}
    n_test = sum(len(y) for _, y in test)
    min_effect = common.accuracy_min_effect(p.min_effect, n_test)
    v = verdict(mean_loss, top1, converged, p.min_loss_effect, min_effect)
    plot(ctx, p, curves, {m: [r["evals"] for r in rs] for m, rs in runs.items()}, top1, v)
    steps = runs[p.methods[0]][0]["steps"]
    decay = {m: {"lr_x_wd_x_steps": recipes[m].optim.lr * p.lr_scale * recipes[m].optim.weight_decay * steps,
                 "acts": common.decay_acts(recipes[m].optim.lr * p.lr_scale, recipes[m].optim.weight_decay, steps)}
             for m in p.methods}
    rows = [[m, f"{recipes[m].optim.lr * p.lr_scale:g}", f"{recipes[m].schedule.name}->{recipes[m].schedule.final_lr:g}",
             recipes[m].optim.weight_decay, common.pm(mean_loss[m]), final_loss[m], converged[m], common.pm(top1[m]),
             sum(r["diverged_at"] is not None for r in runs[m])] for m in p.methods]
    summary = common.table(["method", "lr", "schedule", "wd", "mean train loss", "final train loss", "converged",
                            "test top-1 %", "diverged"], rows)
    idle = [m for m in p.methods if recipes[m].optim.weight_decay > 0 and not decay[m]["acts"]]
    if idle:
        summary += (f"\nweight decay cannot act at this size (lr x wd x steps < 1%): {', '.join(idle)}; the per-method "
                    f"decays of footnote 3 are in effect only at the paper's length")
    meas = {"network": f"cifar10-nv, width x{p.width:g}", "input": f"{'--data' if ctx.data else 'digits'} resized "
            f"bilinear to {p.image_size}x{p.image_size}", "steps": steps, "seeds": list(range(p.seed, p.seed + p.seeds)),
            "test_images": n_test, "min_effect_points": min_effect,
            "recipe_settings": {m: {"lr": recipes[m].optim.lr * p.lr_scale, "weight_decay": recipes[m].optim.weight_decay,
                                    "schedule": recipes[m].schedule.name, "final_lr": recipes[m].schedule.final_lr,
                                    "power": recipes[m].schedule.power, "init": recipes[m].model.init}
                                for m in p.methods},
            "weight_decay": decay, "converged": converged, "final_train_loss": final_loss, "mean_train_loss": mean_loss,
            "test_top1": top1, "seed_mean_train_loss": curves, "per_seed": runs}
    return ctx.finish(meas, v, summary)
