"""WS headline: GN+WS at 1 image per step (iteration size B) matches BN at batch B; BN at 1 image falls behind.

Qiao et al. 2019, abstract and §3.1 (Tables 1-2, Fig. 1): "when used with Group
Normalization and trained with 1 image/GPU, WS is able to match or outperform the
performances of BN trained with large batch sizes"; "small batch sizes are not
enough for training networks with Batch Normalization"; "In micro-batch
training, WS significantly outperforms other normalization methods". Their runs:
ResNet-50 on ImageNet, 90 epochs, lr 0.1 x0.1 every 30 epochs, weight decay
1e-4, momentum 0.9; BN at 64 images per GPU (256 on 4 GPUs), every other method
at 1 image per GPU with "iteration size" 64, "the gradients are averaged across
every 64 iterations and then one step is taken", so that "the total numbers of
parameter updates are the same". Table 2 top-1 error: GN+WS 23.72, BN 24.30,
GN 24.81.

What runs (CPU size): ``model`` (default ``resnet8``) on the built-in digits (or
``--data``), for ``seeds`` seeds (seed s: initial weights and data order), three
arms that see the same global batches of ``batch_size`` images per optimizer
step, in the same order, for ``epochs`` epochs:

- ``bn@B``: BN, the whole batch in one forward (the paper's large-batch BN);
- ``bn@1``: BN at ``micro_batch`` images per forward, gradients accumulated over
  B / micro_batch forwards (BN's statistics from one image);
- ``gn+ws@1``: ``ws-gn`` (GN + WS, ``groups`` groups) at the same micro-batch and
  iteration size, the WS recipe's setting (``resnet50-imagenet-ws``: 1 image per
  GPU, iteration size derived; `normtrain.batching.plan` gives the split and
  `normtrain.norms.micro_batches` computes the standardized weights once per step,
  as the engine does);
- with ``with_gn``, ``gn@1`` (GN alone, Table 1's GN column) too.

SGD with momentum 0.9, lr ``lr`` multiplied by 0.1 after 1/3 and 2/3 of the steps
(the paper's 30/60 of 90 epochs), weight decay ``weight_decay``. Measured: the
training loss of every step (mean over its micro-batches) and the top-1 of the
final weights on the evaluation split in eval mode (BN with its running
statistics); for ``bn@1`` also with per-image statistics (train-mode BN at
batch 1 on each test image, running statistics untouched), which separates a
network that did not learn from statistics that do not transfer.

Verdict, on test top-1 over the seeds (a gap is shown at >= 2 standard errors
and >= ``min_effect`` points, default max(5 test images, 0.5 points)), each
part judged only when the arms' seed-mean training-loss curves have plateaued
(`measures.settled`: `common.plateaued` allowing for the curve's noise, with a
window of 1/6: the two halves of the last third of the steps, which runs at the
final rate), else inconclusive: (1, paper) gn+ws@1 matches or beats
bn@B; (2, paper) bn@1 is below bn@B; (3, paper) gn+ws@1 beats bn@1; (4, added)
the iteration size makes GN+WS's update batch-independent: at initialisation the
accumulated gradient over the micro-batches equals the whole batch's gradient
(relative difference <= 1e-5, float32 round-off), while BN's differs (> 1e-3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import batching, models, norms
from . import common
from .measures import settled
from .paper import Paper, Run, Value

USES_DATA = True

CLAIM = ("GN + WS trained with 1 image per GPU (gradients averaged over an iteration size that restores the large "
         "batch per update) matches or outperforms BN trained with large batches, while BN at the same micro-batch "
         "falls behind (Qiao et al. 2019 abstract, §3.1, Tables 1-2).")

#: The paper's own experiment, for `--scale paper` (`paper.Paper`): ResNet-50 on ImageNet through the
#: resnet50-imagenet-ws recipe, one training run per arm and seed (`paper_runs`).
PAPER = Paper(
    where="Qiao et al. 2019 §3.1, Tables 1-2, Fig. 1",
    dataset="imagenet",
    gpus=4,
    params={"model": "resnet50", "batch_size": 256, "micro_batch": 1, "epochs": 90.0, "lr": 0.1,
            "weight_decay": 1.0e-4, "groups": 32, "seeds": 2},
    recipes=("resnet50-imagenet-ws",),
    values={
        "gn+ws@1 vs bn@B": Value({"gn+ws@1": 23.72, "bn@64": 24.30}, "top-1 error %",
                                 "Table 2 (Table 1: the same runs)"),
        "gn+ws@1 vs bn@1": Value({"gn+ws@1": 23.72, "gn@1": 24.81}, "top-1 error %",
                                 "Table 2 (no BN run at 1 image; GN is the paper's micro-batch baseline)"),
    },
    note="the paper reports one run per setting; 2 seeds are the fewest that give the standard error the verdict "
         "rule needs (--set seeds=1 halves the cost and leaves every part inconclusive). bn@B's statistics are per "
         "process (64 images on the paper's 4 GPUs); the iteration-size part is measured at CPU size only",
)


@dataclass
class Params(common.Params):
    model: str = "resnet8"
    """Network (a residual CNN; every conv becomes a WS conv in the gn+ws arm)."""
    batch_size: int = 32
    """Images per optimizer step for every arm (BN's large batch; the micro arms' micro_batch x iteration size)."""
    micro_batch: int = 1
    """Images per forward of the micro-batch arms (the paper: 1 per GPU)."""
    epochs: float = 1.5
    """Training epochs (optimizer steps = epochs x training images / batch_size)."""
    lr: float = 0.1
    """SGD learning rate (the paper's 0.1; x0.1 after 1/3 and 2/3 of the steps), momentum 0.9."""
    weight_decay: float = 1.0e-4
    """SGD weight decay (the paper's)."""
    groups: int = 8
    """GroupNorm groups of the gn+ws (and gn) arm (must divide every width: resnet8 has 16/32/64)."""
    with_gn: bool = False
    """Also run GN alone at the micro-batch (Table 1's GN column)."""
    seeds: int = 3
    """Seeds per arm (seed, seed + 1, ...): initial weights and data order."""
    min_effect: float = 0.0
    """Smallest test top-1 gap (points) that counts; 0 = max(5 test images, 0.5 points)."""
    per_image_images: int = 0
    """Test images for bn@1's per-image-statistics evaluation (one forward each; 0 = the whole split)."""
    image_size: int = 0
    """With --data: resize to this size (0 = natural size)."""
    threads: int = 1
    """CPU threads (small layers: 1 is fastest)."""

    def check(self) -> None:
        super().check()
        common.known(self.model)
        for k in ("batch_size", "micro_batch", "epochs", "lr", "groups", "seeds"):
            common.positive(k, getattr(self, k))
        common.positive("weight_decay", self.weight_decay, allow_zero=True)
        common.positive("min_effect", self.min_effect, allow_zero=True)
        common.positive("per_image_images", self.per_image_images, allow_zero=True)
        common.positive("image_size", self.image_size, allow_zero=True)
        if self.batch_size % self.micro_batch:
            raise ValueError(f"micro_batch: {self.micro_batch} does not divide batch_size {self.batch_size}")
        if self.micro_batch >= self.batch_size:
            raise ValueError("micro_batch: must be smaller than batch_size (the micro-batch arms accumulate)")


def arms(p: Params) -> list[tuple[str, str, object]]:
    """(name, method, batch plan): BN at the whole batch, then the micro-batch arms (`batching.plan`, 1 process)."""
    big = batching.plan(p.batch_size, 1)
    micro = batching.plan(p.batch_size, 1, accum_steps=0, micro_batch=p.micro_batch)
    out = [("bn@B", "bn", big), ("bn@1", "bn", micro), ("gn+ws@1", "ws-gn", micro)]
    if p.with_gn:
        out.append(("gn@1", "gn", micro))
    return out


# -- training --------------------------------------------------------------------------------------

def step(model, opt, x, y, plan) -> float:
    """One optimizer step over `plan.accum` micro-batches of `plan.micro` images (loss / accum each, so the
    gradient is the batch mean, as the engine's accumulation); returns the step's mean loss."""
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for i in norms.micro_batches(model, plan.accum):
        xb, yb = x[i * plan.micro:(i + 1) * plan.micro], y[i * plan.micro:(i + 1) * plan.micro]
        loss = F.cross_entropy(model(xb).float(), yb)
        (loss / plan.accum).backward()
        total += float(loss.detach()) / plan.accum
    opt.step()
    return total


def accumulated_gap(method: str, p: Params, x, y, num_classes: int, in_shape) -> float:
    """Relative difference between the gradient accumulated over micro-batches and the whole batch's, at init."""
    grads = []
    micro = batching.plan(p.batch_size, 1, accum_steps=0, micro_batch=p.micro_batch)
    for plan in (batching.plan(p.batch_size, 1), micro):
        torch.manual_seed(p.seed)
        model = models.build(p.model, norms.get(method, groups=p.groups), num_classes, in_shape).to(x.device)
        model.train()
        for i in norms.micro_batches(model, plan.accum):
            xb, yb = x[i * plan.micro:(i + 1) * plan.micro], y[i * plan.micro:(i + 1) * plan.micro]
            (F.cross_entropy(model(xb).float(), yb) / plan.accum).backward()
        grads.append(torch.cat([q.grad.flatten() for q in model.parameters() if q.grad is not None]))
    return float((grads[0] - grads[1]).norm() / grads[0].norm().clamp_min(1e-30))


@torch.no_grad()
def per_image_top1(model, batches, limit: int = 0) -> float:
    """Top-1 with BN normalizing each test image by its own statistics (train mode, batch 1), over the first
    `limit` images (0: all); buffers restored."""
    snap = common.buffers_snapshot(model)
    model.train()
    correct = n = 0
    for x, y in batches:
        for i in range(len(y)):
            if limit and n >= limit:
                break
            correct += int(model(x[i:i + 1]).argmax(1).item() == int(y[i]))
            n += 1
    common.buffers_restore(model, snap)
    model.eval()
    return 100.0 * correct / max(n, 1)


# -- verdict -----------------------------------------------------------------------------------------

#: `common.plateaued`'s window for these runs: the last third of the steps runs at the final rate, so the
#: rule compares its two halves (the last sixth of the steps with the sixth before it).
PLATEAU_WINDOW = 1 / 6


def converged(curve: list[float]) -> bool:
    return settled(curve, window=PLATEAU_WINDOW)


def verdict(top1: dict, curves: dict, min_effect: float, grad_gap: dict | None = None) -> dict:
    """top1[arm] = per-seed test top-1 (%); curves[arm] = the arm's seed-mean training-loss curve;
    grad_gap[method] = `accumulated_gap` (ws-gn, bn) or None."""
    need = ("bn@B", "bn@1", "gn+ws@1")
    if any(not top1.get(a) for a in need):
        parts = [common.part("gn+ws@1 vs bn@B", "GN+WS at 1 image matches or beats BN at the large batch", "paper",
                             common.INCONCLUSIVE, "needs the bn@B, bn@1 and gn+ws@1 runs", "")]
        return common.verdict_of(CLAIM, parts, "no result")
    conv = {a: converged(curves.get(a, [])) for a in need}

    def judge(a, b, rule):
        d = common.difference(top1[a], top1[b], min_effect)
        if not (conv[a] and conv[b]):
            return common.INCONCLUSIVE, d, f" (not judged: {', '.join(x for x in (a, b) if not conv[x])} not plateaued)"
        return rule(d), d, ""

    def text(a, b, d, note):
        more = ""
        if not d["shown"] and not d["equal"]:
            more = (f"; detectable gap {d['detectable']:.2g}" +
                    (f", about {d['seeds_to_decide']} seeds per arm would decide it" if d["seeds_to_decide"] else ""))
        return (f"{a} {common.pm(top1[a])} vs {b} {common.pm(top1[b])} %: gap {d['gap']:+.2f} ± {d['se']:.2g} "
                f"({'shown' if d['shown'] else 'shown equal' if d['equal'] else 'not shown'}){more}{note}")

    crit = f"test top-1 gap over the seeds at >= 2 standard errors and >= {min_effect:.2g} points, after the loss plateaued"
    s1, d1, n1 = judge("gn+ws@1", "bn@B", common.state_not_less)
    s2, d2, n2 = judge("bn@B", "bn@1", common.state_greater)
    s3, d3, n3 = judge("gn+ws@1", "bn@1", common.state_greater)
    pv = {k: x.as_dict() for k, x in PAPER.values.items()}
    parts = [
        common.part("gn+ws@1 vs bn@B", "GN + WS at 1 image per step (iteration size B) matches or outperforms BN at "
                    "batch B", "paper", s1, text("gn+ws@1", "bn@B", d1, n1),
                    "reproduced when gn+ws@1 is shown above or shown equal to bn@B; " + crit,
                    paper_value=pv["gn+ws@1 vs bn@B"]),
        common.part("bn@1 vs bn@B", "BN at the same micro-batch falls below BN at batch B (\"small batch sizes are "
                    "not enough for training networks with BN\")", "paper", s2, text("bn@B", "bn@1", d2, n2),
                    "reproduced when bn@B is shown above bn@1; " + crit),
        common.part("gn+ws@1 vs bn@1", "in micro-batch training GN + WS outperforms BN", "paper", s3,
                    text("gn+ws@1", "bn@1", d3, n3), "reproduced when gn+ws@1 is shown above bn@1; " + crit,
                    paper_value=pv["gn+ws@1 vs bn@1"])]
    if grad_gap:
        ws, bn = grad_gap.get("ws-gn", float("nan")), grad_gap.get("bn", float("nan"))
        parts.append(common.part(
            "iteration size", "accumulating micro-batch gradients gives GN + WS the large-batch update exactly "
            "(batch-independent), and BN a different one", "added", ws <= 1e-5 and bn > 1e-3,
            f"|accumulated - whole-batch gradient| / |whole-batch gradient| at init: gn+ws {ws:.1e}, bn {bn:.2g}",
            "gn+ws <= 1e-5 (float32 round-off) and bn > 1e-3"))
    m = {a: common.mean_std(top1[a])[0] for a in top1}
    states = {q["name"]: q["state"] for q in parts}
    headline = (f"test top-1 gn+ws@1 {m['gn+ws@1']:.1f}% vs bn@B {m['bn@B']:.1f}%: matches or beats "
                f"{states['gn+ws@1 vs bn@B']}; bn@1 {m['bn@1']:.1f}%: falls behind {states['bn@1 vs bn@B']}")
    return common.verdict_of(CLAIM, parts, headline)


# -- the paper's size: training runs of the resnet50-imagenet-ws recipe ----------------------------------

def paper_runs(p: Params) -> list[Run]:
    """One run of the WS recipe per arm and seed: BN at the whole batch (the recipe's per_norm: the batch split
    over the processes, no accumulation), then BN, GN+WS (and GN) at `micro_batch` images per process with the
    iteration size derived (train.accum_steps 0). The lr falls x0.1 after 1/3 and 2/3 of the epochs (the paper's
    30 and 60 of 90)."""
    common_sets = (("model.name", p.model), ("data.batch_size", p.batch_size), ("train.epochs", p.epochs),
                   ("optim.lr", p.lr), ("optim.weight_decay", p.weight_decay), ("norm.groups", p.groups),
                   ("schedule.milestones", [p.epochs / 3, 2 * p.epochs / 3]))
    micro = (("train.micro_batch", p.micro_batch), ("train.accum_steps", 0))
    arms_ = [("bn@B", "bn", ()), ("bn@1", "bn", micro), ("gn+ws@1", "ws-gn", micro)]
    if p.with_gn:
        arms_.append(("gn@1", "gn", micro))
    return [Run(f"{arm.replace('@', '-at-').replace('+', '-')}-seed{s}", arm, s, "resnet50-imagenet-ws",
                (("norm.name", method), *common_sets, *extra))
            for s in range(p.seed, p.seed + p.seeds) for arm, method, extra in arms_]


def paper_judge(ctx, p: Params, done) -> dict:
    """The verdict of the paper-scale runs (`paper_runs.Finished`): `verdict` on their test top-1 and seed-mean
    training-loss curves (one point per logging window), without the iteration-size part (a CPU-size check)."""
    from . import paper_runs as pr
    arms_ = pr.by_arm(done)
    top1 = {a: [f.top1() for f in fs] for a, fs in arms_.items()}
    curves = {a: pr.seed_mean(fs)[1] for a, fs in arms_.items()}
    v = verdict(top1, curves, pr.min_effect(ctx, p.min_effect))
    pr.plot(ctx, done, v, "ws_micro_batch.png")
    meas = {"model": p.model, "seeds": list(range(p.seed, p.seed + p.seeds)),
            "min_effect_points": pr.min_effect(ctx, p.min_effect), "test_top1": top1,
            "plateaued": {a: converged(c) for a, c in curves.items()}, "runs": [f.summary() for f in done]}
    return ctx.finish(meas, v, pr.table(done))


# -- plot and run ------------------------------------------------------------------------------------

COLORS = {"bn@B": "tab:gray", "bn@1": "tab:red", "gn+ws@1": "tab:blue", "gn@1": "tab:green"}


def plot(ctx, p: Params, names: list[str], curves: dict, top1: dict, per_image: list, v: dict) -> None:
    import numpy as np
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, 2, panel=(6.5, 4.8))
        ax = axes[0][0]
        k = max(1, len(next(iter(curves.values()))) // 15)
        for n in names:
            c = np.array(curves[n], dtype=float)
            if len(c) >= k:
                sm = np.convolve(c, np.ones(k) / k, mode="valid")
                ax.plot(range(k, len(c) + 1), sm, color=COLORS.get(n), label=n)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step (each: the same batch of images for every arm)")
        ax.set_ylabel("training loss (mean of seeds)")
        ax.set_title(f"{p.model}: training loss ({k}-step mean; lr x0.1 at 1/3, 2/3)")
        ax.legend()
        ax = axes[0][1]
        labels = list(names) + ["bn@1, per-image stats"]
        data = [top1[n] for n in names] + [per_image]
        for i, vals in enumerate(data):
            mean, sd = common.mean_std(vals)
            ax.bar(i, mean, yerr=sd, capsize=6, alpha=0.6, color=COLORS.get(labels[i], "tab:red"),
                   hatch="//" if i == len(names) else None)
            ax.plot([i] * len(vals), vals, "ko", ms=5)
        ax.set_xticks(range(len(labels)), labels, rotation=12)
        ax.set_ylabel("test top-1 (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"final test top-1, eval mode (bars: mean ± std of {p.seeds} seeds; dots: seeds)")
        ctx.savefig(fig, "ws_micro_batch.png", v)


def run(ctx, p: Params) -> dict:
    names_plans = arms(p)
    names = [a[0] for a in names_plans]
    test = common.epoch_batches(common.loader(ctx, 256, "val", p.image_size))
    runs = {n: [] for n in names}
    per_image = []
    bar = ctx.progress(total=len(names) * p.seeds, desc="ws-micro-batch")
    grad_gap = None
    for s in range(p.seed, p.seed + p.seeds):
        ld = common.loader(ctx, p.batch_size, "train", p.image_size, seed=s)
        steps = max(3, int(round(p.epochs * len(ld))))
        batches = common.take(ld, steps)
        if grad_gap is None:
            x0, y0 = batches[0]
            grad_gap = {m: accumulated_gap(m, p, x0, y0, ld.num_classes, ld.in_shape) for m in ("ws-gn", "bn")}
        for name, method, plan in names_plans:
            torch.manual_seed(s)
            model = models.build(p.model, norms.get(method, groups=p.groups), ld.num_classes, ld.in_shape)
            model = model.to(ctx.device)
            opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=0.9, weight_decay=p.weight_decay)
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, [steps // 3, 2 * steps // 3], 0.1)
            model.train()
            losses, div = [], None
            for i, (x, y) in enumerate(batches):
                loss = step(model, opt, x, y, plan)
                sched.step()
                losses.append(loss)
                ctx.scalar(f"{name}/seed{s}/train_loss", loss, i)
                if not math.isfinite(loss):
                    div = i
                    break
            ev = common.evaluate(model, test)
            r = {"seed": s, "losses": losses, "diverged_at": div, "test_top1": ev["top1"], "test_loss": ev["loss"],
                 "steps": steps, "micro_batch": plan.micro, "iteration_size": plan.accum}
            if name == "bn@1":
                r["test_top1_per_image_stats"] = per_image_top1(model, test, p.per_image_images)
                per_image.append(r["test_top1_per_image_stats"])
            runs[name].append(r)
            bar.update(1)
    bar.close()
    top1 = {n: [r["test_top1"] for r in rs] for n, rs in runs.items()}
    curves = {n: common.seed_mean_curve(rs) for n, rs in runs.items()}
    n_test = sum(len(y) for _, y in test)
    min_effect = common.accuracy_min_effect(p.min_effect, n_test)
    v = verdict(top1, curves, min_effect, grad_gap)
    plot(ctx, p, names, curves, top1, per_image, v)
    rows = [[n, plan.micro, plan.accum, common.pm(top1[n]), common.pm([r["test_loss"] for r in runs[n]]),
             converged(curves[n]), sum(r["diverged_at"] is not None for r in runs[n])]
            for n, _, plan in names_plans]
    summary = common.table(["arm", "images/forward", "iteration size", "test top-1 %", "test loss", "plateaued",
                            "diverged"], rows)
    summary += f"\nbn@1 evaluated with per-image statistics: {common.pm(per_image)} % top-1"
    meas = {"model": p.model, "seeds": list(range(p.seed, p.seed + p.seeds)), "test_images": n_test,
            "min_effect_points": min_effect, "arms": {n: {"method": m, "micro_batch": plan.micro,
                                                          "iteration_size": plan.accum} for n, m, plan in names_plans},
            "schedule": f"lr {p.lr:g}, x0.1 after 1/3 and 2/3 of the steps, momentum 0.9, wd {p.weight_decay:g}",
            "weight_decay_acts": common.decay_acts(p.lr, p.weight_decay, runs[names[0]][0]["steps"]),
            "test_top1": top1, "bn@1_per_image_stats_top1": per_image, "seed_mean_train_loss": curves,
            "plateaued": {n: converged(c) for n, c in curves.items()},
            "plateau_rule": "common.plateaued on the seed-mean training-loss curve, window 1/6 (the two halves of the "
                            "final-rate third), with measures.plateau_tolerance (a decline within the curve's noise "
                            "does not count)",
            "accumulated_vs_whole_batch_gradient": grad_gap, "per_seed": runs}
    return ctx.finish(meas, v, summary)
