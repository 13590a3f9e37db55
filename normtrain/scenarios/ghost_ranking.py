"""GhostNorm paper Tables 1-2: test accuracy SeqNorm > GhostNorm > BN, and GhostNorm over BN across the G_M sweep.

Dimitriou & Arandjelović 2020 §3.2 (WRN-28-10, batch 512 on 8 GPUs, so BN
normalizes over 64 images; G_M counts chunks per GPU of 64): "Both GhostNorm and
SeqNorm improve upon the baseline by a large margin (0.7% and 1.7%
respectively)" (CIFAR-100, Table 1: test 82.1 BN, 82.8 GhostNorm G_M = 8, 83.8
SeqNorm G_C = 4, G_M = 8; CIFAR-10, Table 2: 97.1, 97.3, 97.4); "SeqNorm not only
surpasses the performances of BatchNorm and GhostNorm" (§4). Table 1's G_M sweep
(validation accuracy): BN 80.6, G_M = 2, 4, 8: 80.9, 81.2, 81.4, G_M = 16 (4
samples per chunk): 80.3. (§3.1 says GhostNorm generalized better "even at the
extremes wherein G_M is set to 128, i.e. only 4 samples per group", which Table 1's
G_M = 16 row does not show: that setting is reported, not judged.)

What runs (CPU size): ``model`` (default ``resnet8``) on the built-in digits (or
``--data``), batch ``batch_size`` (64, the paper's per-GPU batch: BN normalizes
over all of it), for ``seeds`` seeds (seed s: initial weights and data order,
the same batches for every arm): ``bn``; ``ghost`` with chunks of each size in
``ghost_batches`` (32, 16, 8, 4 samples: G_M = 2, 4, 8, 16 of 64, Table 1's
sweep); ``seqnorm`` with G_C = ``seq_groups`` and chunks of ``seq_ghost_batch``
(Table 1's best: G_C = 4, G_M = 8, i.e. 8 samples). SGD with Nesterov momentum
0.9, lr ``lr`` with a cosine decay to 0 over ``epochs`` epochs, weight decay
``weight_decay`` (the wrn28-10-cifar100 recipe's optimizer, without its warm-up).
Measured: test top-1 of the final weights in eval mode (running statistics),
and every step's training loss.

Verdict, on test top-1 over the seeds (a gap is shown at >= 2 standard errors
and >= ``min_effect`` points, default max(5 test images, 0.5 points); a gap not
shown either way is inconclusive, also when the two are "shown equal", since the
paper's gaps of 0.2-1.7 points fit inside that band on a small test set), judged
only when the compared arms' seed-mean training loss has plateaued
(`measures.settled`: `common.plateaued` allowing for the curve's noise), else
inconclusive: (1) GhostNorm at ``judge_ghost_batch`` samples per chunk (the
paper's G_M = 8) beats BN; (2) SeqNorm beats GhostNorm; (3) SeqNorm beats BN;
(4) GhostNorm beats BN at every sweep setting with >= 8 samples per chunk
(Table 1's G_M = 2, 4, 8). All four are the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import models, norms
from . import common
from .measures import settled
from .paper import Paper, Run, Value

USES_DATA = True

CLAIM = ("Test accuracy: SeqNorm > GhostNorm > BatchNorm, and GhostNorm improves on BatchNorm for G_M = 2, 4 and 8 "
         "chunks of a 64-image batch (Dimitriou & Arandjelović 2020 §3.2, Tables 1-2).")

#: The paper's own experiment, for `--scale paper` (`paper.Paper`): WRN-28-10 on CIFAR-100 through the
#: wrn28-10-cifar100 recipe (batch 512, 64 per GPU on 8 GPUs), one run per arm and seed (`paper_runs`).
PAPER = Paper(
    where="Dimitriou & Arandjelović 2020 §3.2, Tables 1-2",
    dataset="cifar100",
    gpus=8,
    # batch_size stays the BN statistics' 64 (the paper's per-GPU batch); the runs' global batch is the recipe's 512.
    params={"model": "wrn28-10", "batch_size": 64, "epochs": 200.0, "lr": 0.4, "weight_decay": 5.0e-4,
            "ghost_batches": [32, 16, 8, 4], "seq_groups": 4, "seq_ghost_batch": 8, "seeds": 2},
    recipes=("wrn28-10-cifar100",),
    values={
        "ghost vs bn": Value({"ghost G_M=8": 82.8, "bn": 82.1}, "test top-1 %",
                             "Table 1 (CIFAR-100; CIFAR-10, Table 2: 97.3 with G_M = 4 vs 97.1)"),
        "seqnorm vs ghost": Value({"seqnorm G_C=4 G_M=8": 83.8, "ghost G_M=8": 82.8}, "test top-1 %",
                                  "Table 1 (CIFAR-10, Table 2: 97.4 vs 97.3)"),
        "seqnorm vs bn": Value({"seqnorm": 83.8, "bn": 82.1}, "test top-1 %", "Table 1"),
        "G_M sweep": Value({"bn": 80.6, "G_M=2": 80.9, "G_M=4": 81.2, "G_M=8": 81.4, "G_M=16": 80.3},
                           "validation top-1 %", "Table 1"),
    },
    note="each arm normalizes over chunks of a fixed number of samples whatever the GPU count (bn: GhostNorm with "
         "chunks of batch_size = 64, the paper's per-GPU BatchNorm); both tables average two runs",
)


@dataclass
class Params(common.Params):
    model: str = "resnet8"
    """Network."""
    batch_size: int = 64
    """Images per step (the paper's per-GPU 64: BN's statistics come from all of them)."""
    ghost_batches: list[int] = field(default_factory=lambda: [32, 16, 8, 4])
    """GhostNorm samples per chunk to sweep (G_M = batch_size / each)."""
    judge_ghost_batch: int = 8
    """The GhostNorm arm compared with BN and SeqNorm (8 = the paper's G_M = 8 of 64)."""
    seq_groups: int = 4
    """SeqNorm's GroupNorm groups G_C (must divide every width)."""
    seq_ghost_batch: int = 8
    """SeqNorm's samples per GhostNorm chunk."""
    epochs: float = 4.0
    """Training epochs (cosine decay over them)."""
    lr: float = 0.1
    """Initial learning rate (Nesterov momentum 0.9, cosine to 0)."""
    weight_decay: float = 5.0e-4
    """Weight decay (the recipe's, Cubuk et al.'s)."""
    seeds: int = 3
    """Seeds per arm."""
    min_effect: float = 0.0
    """Smallest test top-1 gap (points) that counts; 0 = max(5 test images, 0.5 points)."""
    image_size: int = 0
    """With --data: resize to this size (0 = natural size)."""
    threads: int = 1
    """CPU threads (small layers: 1 is fastest)."""

    def check(self) -> None:
        super().check()
        common.known(self.model)
        for k in ("batch_size", "judge_ghost_batch", "seq_groups", "seq_ghost_batch", "epochs", "lr", "seeds"):
            common.positive(k, getattr(self, k))
        common.positive("weight_decay", self.weight_decay, allow_zero=True)
        common.positive("min_effect", self.min_effect, allow_zero=True)
        common.positive("image_size", self.image_size, allow_zero=True)
        if not self.ghost_batches:
            raise ValueError("ghost_batches: must not be empty")
        for b in list(self.ghost_batches) + [self.seq_ghost_batch]:
            if b < 2 or self.batch_size % b:
                raise ValueError(f"ghost_batches / seq_ghost_batch: {b} must be >= 2 and divide batch_size "
                                 f"{self.batch_size}")
        if self.judge_ghost_batch not in self.ghost_batches:
            raise ValueError(f"judge_ghost_batch: {self.judge_ghost_batch} is not in ghost_batches "
                             f"{self.ghost_batches}")


def ghost_name(p: Params, b: int) -> str:
    return f"ghost G_M={p.batch_size // b}"


def arms(p: Params) -> list[tuple[str, str, dict]]:
    """(name, method, norm options): bn, the GhostNorm sweep, seqnorm."""
    out = [("bn", "bn", {})]
    out += [(ghost_name(p, b), "ghost", {"ghost_groups": p.batch_size // b}) for b in p.ghost_batches]
    out.append((f"seqnorm G_C={p.seq_groups},G_M={p.batch_size // p.seq_ghost_batch}", "seqnorm",
                {"groups": p.seq_groups, "ghost_groups": p.batch_size // p.seq_ghost_batch}))
    return out


# -- verdict -----------------------------------------------------------------------------------------

def greater(d: dict) -> str:
    """State of "a > b" from `common.difference`: reproduced / not reproduced when a gap is shown either way,
    else inconclusive. Unlike `common.state_greater`, "shown equal" is inconclusive too: the paper's gaps
    (0.2 to 1.7 points) lie inside the band that a small test set calls equal (5 of 360 digits = 1.4 points),
    so equality there does not contradict them."""
    if d["shown"]:
        return common.REPRODUCED if d["gap"] > 0 else common.NOT_REPRODUCED
    return common.INCONCLUSIVE


def verdict(top1: dict, curves: dict, bn: str, ghost: str, seq: str, sweep: list[str], min_effect: float) -> dict:
    """top1[arm] = per-seed test top-1 (%); curves[arm] = seed-mean training loss; bn, ghost, seq: the
    arms of parts 1-3; sweep: the GhostNorm arms of part 4 (chunks of >= 8 samples)."""
    crit = (f"test top-1 gap over the seeds at >= 2 standard errors and >= {min_effect:.2g} points (else "
            f"inconclusive), after the training loss plateaued")
    pv = {k: x.as_dict() for k, x in PAPER.values.items()}
    if any(not top1.get(a) for a in [bn, ghost, seq] + list(sweep)):
        return common.verdict_of(CLAIM, [common.part("ghost vs bn", "GhostNorm beats BN", "paper",
                                                     common.INCONCLUSIVE, "missing runs", crit)], "no result")

    def cmp(a, b):
        d = common.difference(top1[a], top1[b], min_effect)
        waiting = [x for x in (a, b) if not settled(curves.get(x, []))]
        state = common.INCONCLUSIVE if waiting else greater(d)
        txt = (f"{a} {common.pm(top1[a])} vs {b} {common.pm(top1[b])} %: gap {d['gap']:+.2f} ± {d['se']:.2g} "
               f"({'shown' if d['shown'] else 'shown equal' if d['equal'] else 'not shown'}")
        if not d["shown"] and not d["equal"]:
            txt += f"; detectable {d['detectable']:.2g}"
            if d["seeds_to_decide"]:
                txt += f", ~{d['seeds_to_decide']} seeds per arm would decide it"
        if d["equal"]:
            txt += f": within ±{min_effect:.2g} points, a band that holds the paper's gaps"
        txt += ")" + (f" (not judged: {', '.join(waiting)} not plateaued)" if waiting else "")
        return state, txt, d

    s1, t1, d1 = cmp(ghost, bn)
    s2, t2, d2 = cmp(seq, ghost)
    s3, t3, d3 = cmp(seq, bn)
    sweep_res = [cmp(g, bn) for g in sweep]
    states = [r[0] for r in sweep_res]
    s4 = (common.NOT_REPRODUCED if common.NOT_REPRODUCED in states else
          common.INCONCLUSIVE if common.INCONCLUSIVE in states else common.REPRODUCED)
    parts = [
        common.part("ghost vs bn", "GhostNorm improves upon BatchNorm", "paper", s1, t1,
                    f"reproduced when {ghost} is shown above bn; {crit}", paper_value=pv["ghost vs bn"]),
        common.part("seqnorm vs ghost", "SeqNorm surpasses GhostNorm", "paper", s2, t2,
                    f"reproduced when {seq} is shown above {ghost}; {crit}", paper_value=pv["seqnorm vs ghost"]),
        common.part("seqnorm vs bn", "SeqNorm improves upon BatchNorm", "paper", s3, t3,
                    f"reproduced when {seq} is shown above bn; {crit}", paper_value=pv["seqnorm vs bn"]),
        common.part("G_M sweep", "GhostNorm beats BatchNorm at G_M = 2, 4 and 8 (chunks of >= 8 of 64 samples)",
                    "paper", s4, "; ".join(r[1] for r in sweep_res),
                    f"reproduced when every one of {', '.join(sweep)} is shown above bn, not reproduced when one is "
                    f"shown below; {crit}", paper_value=pv["G_M sweep"])]
    m = {a: common.mean_std(v)[0] for a, v in top1.items()}
    headline = (f"test top-1 seqnorm {m[seq]:.1f}, ghost {m[ghost]:.1f}, bn {m[bn]:.1f}%; ghost > bn "
                f"{s1}, seqnorm > ghost {s2}, sweep {s4}")
    if common.INCONCLUSIVE in (s1, s2, s3, s4):
        headline += (f" (gaps under {min_effect:.2g} points are not resolved here; the paper's 0.2-1.7 point gaps "
                     f"need its 10,000-image CIFAR test sets)")
    return common.verdict_of(CLAIM, parts, headline)


# -- the paper's size: training runs of the wrn28-10-cifar100 recipe ----------------------------------------

def paper_arms(p: Params) -> list[tuple[str, str, tuple]]:
    """(arm, method, norm sets) at paper scale: each normalizes over a fixed number of samples per chunk, so the
    arms mean the same on any number of GPUs (bn: chunks of batch_size, the paper's per-GPU BatchNorm)."""
    out = [("bn", "ghost", (("norm.ghost_batch", p.batch_size),))]
    out += [(ghost_name(p, b), "ghost", (("norm.ghost_batch", b),)) for b in p.ghost_batches]
    out.append((f"seqnorm G_C={p.seq_groups},G_M={p.batch_size // p.seq_ghost_batch}", "seqnorm",
                (("norm.groups", p.seq_groups), ("norm.ghost_batch", p.seq_ghost_batch))))
    return out


def paper_runs(p: Params) -> list[Run]:
    """One run of the wrn28-10-cifar100 recipe (its warm-up, cosine decay, augmentation and 45k/5k split) per
    arm and seed, with the scenario's epochs, peak lr and weight decay."""
    sets = (("model.name", p.model), ("train.epochs", p.epochs), ("optim.lr", p.lr),
            ("optim.weight_decay", p.weight_decay))
    return [Run(f"{arm.replace(' ', '-').replace('=', '').replace(',', '-')}-seed{s}", arm, s, "wrn28-10-cifar100",
                (("norm.name", method), *norm_sets, *sets))
            for s in range(p.seed, p.seed + p.seeds) for arm, method, norm_sets in paper_arms(p)]


def paper_judge(ctx, p: Params, done) -> dict:
    """`verdict` on the runs' test top-1 (CIFAR-100's test set, held apart from the 5k validation split) and
    seed-mean training-loss curves."""
    from . import paper_runs as pr
    arms_ = pr.by_arm(done)
    top1 = {a: [f.top1() for f in fs] for a, fs in arms_.items()}
    curves = {a: pr.seed_mean(fs)[1] for a, fs in arms_.items()}
    names = [a for a, _, _ in paper_arms(p)]
    me = pr.min_effect(ctx, p.min_effect)
    v = verdict(top1, curves, "bn", ghost_name(p, p.judge_ghost_batch), names[-1],
                [ghost_name(p, b) for b in p.ghost_batches if b >= 8], me)
    pr.plot(ctx, done, v, "ghost_ranking.png")
    meas = {"model": p.model, "seeds": list(range(p.seed, p.seed + p.seeds)), "min_effect_points": me,
            "test_top1": top1, "plateaued": {a: settled(c) for a, c in curves.items()},
            "runs": [f.summary() for f in done]}
    return ctx.finish(meas, v, pr.table(done))


# -- plot and run ----------------------------------------------------------------------------------------

def plot(ctx, p: Params, names: list[str], curves: dict, top1: dict, v: dict) -> None:
    import numpy as np
    blues = ["#9ecae1", "#6baed6", "#3182bd", "#08519c", "#08306b"]
    colors = {n: "tab:gray" if i == 0 else "tab:orange" if i == len(names) - 1 else blues[min(i - 1, len(blues) - 1)]
              for i, n in enumerate(names)}
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, 2, panel=(6.5, 4.8))
        ax = axes[0][0]
        k = max(1, len(next(iter(curves.values()))) // 15)
        for n in names:
            c = np.array(curves[n], dtype=float)
            if len(c) >= k:
                ax.plot(range(k, len(c) + 1), np.convolve(c, np.ones(k) / k, mode="valid"), color=colors[n], label=n)
        ax.set_yscale("log")
        ax.set_xlabel("SGD step")
        ax.set_ylabel("training loss (mean of seeds)")
        ax.set_title(f"{p.model}, batch {p.batch_size}: training loss ({k}-step mean)")
        ax.legend(fontsize=9)
        ax = axes[0][1]
        for i, n in enumerate(names):
            vals = top1[n]
            mean, sd = common.mean_std(vals)
            ax.bar(i, mean, yerr=sd, capsize=6, alpha=0.7, color=colors[n])
            ax.plot([i] * len(vals), vals, "ko", ms=5)
        lo = min(min(top1[n]) for n in names)
        ax.set_ylim(max(0.0, lo - 5), 100)
        ax.set_xticks(range(len(names)), [n.replace(",", ",\n") for n in names], rotation=15, fontsize=9)
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"test top-1 of the final weights (mean ± std of {p.seeds} seeds; dots: seeds)")
        ctx.savefig(fig, "ghost_ranking.png", v)


def run(ctx, p: Params) -> dict:
    spec = arms(p)
    names = [a[0] for a in spec]
    test = common.epoch_batches(common.loader(ctx, 256, "val", p.image_size))
    runs = {n: [] for n in names}
    bar = ctx.progress(total=len(spec) * p.seeds, desc="ghost-ranking")
    for s in range(p.seed, p.seed + p.seeds):
        ld = common.loader(ctx, p.batch_size, "train", p.image_size, seed=s)
        steps = max(2, int(round(p.epochs * len(ld))))
        batches = common.take(ld, steps)
        for name, method, opts in spec:
            torch.manual_seed(s)
            model = models.build(p.model, norms.get(method, **opts), ld.num_classes, ld.in_shape).to(ctx.device)
            opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=0.9, nesterov=True,
                                  weight_decay=p.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.0)
            r = common.train_steps(model, opt, batches, steps, scheduler=sched,
                                   on_step=lambda i, x, name=name, s=s: ctx.scalar(f"{name}/seed{s}/train_loss", x, i))
            ev = common.evaluate(model, test)
            runs[name].append({"seed": s, "losses": r["losses"], "diverged_at": r["diverged_at"],
                               "test_top1": ev["top1"], "test_loss": ev["loss"], "steps": steps})
            bar.update(1)
    bar.close()
    top1 = {n: [r["test_top1"] for r in rs] for n, rs in runs.items()}
    curves = {n: common.seed_mean_curve(rs) for n, rs in runs.items()}
    n_test = sum(len(y) for _, y in test)
    min_effect = common.accuracy_min_effect(p.min_effect, n_test)
    ghost = ghost_name(p, p.judge_ghost_batch)
    sweep = [ghost_name(p, b) for b in p.ghost_batches if b >= 8]
    v = verdict(top1, curves, "bn", ghost, names[-1], sweep, min_effect)
    plot(ctx, p, names, curves, top1, v)
    rows = [[n, m, opts.get("ghost_groups", "-"), (p.batch_size // opts["ghost_groups"]) if "ghost_groups" in opts
             else p.batch_size, common.pm(top1[n]), common.pm([r["test_loss"] for r in runs[n]]),
             settled(curves[n]), sum(r["diverged_at"] is not None for r in runs[n])] for n, m, opts in spec]
    summary = common.table(["arm", "method", "G_M", "samples/statistic", "test top-1 %", "test loss", "plateaued",
                            "diverged"], rows)
    meas = {"model": p.model, "batch_size": p.batch_size, "seeds": list(range(p.seed, p.seed + p.seeds)),
            "test_images": n_test, "min_effect_points": min_effect,
            "arms": {n: {"method": m, "options": o} for n, m, o in spec}, "judged": {"ghost": ghost, "sweep": sweep},
            "schedule": f"lr {p.lr:g} cosine to 0, Nesterov momentum 0.9, wd {p.weight_decay:g}",
            "weight_decay_acts": common.decay_acts(p.lr, p.weight_decay, runs[names[0]][0]["steps"]),
            "test_top1": top1, "seed_mean_train_loss": curves,
            "plateaued": {n: settled(c) for n, c in curves.items()},
            "plateau_rule": "common.plateaued on the seed-mean training-loss curve (window 0.1) with measures."
                            "plateau_tolerance: a decline within the curve's step-to-step noise does not count",
            "per_seed": runs}
    return ctx.finish(meas, v, summary)
