"""GhostNorm direct = BN with accumulation = unsynced BN on G_M processes, not full-batch BN (Dimitriou §2.3).

Dimitriou & Arandjelović 2020 §2.3: besides the direct implementation (their
Figure 2), "GhostNorm can be effectively employed while using BatchNorm as the
underlying normalization technique": "Accumulating gradients with BatchNorm can
thus be thought as an alternative way of using GhostNorm with the number of
forward passes n_fp corresponding to the number of groups G_M" (their Figure 3),
and "Given n_g GPUs and M training examples, M/n_g examples are forwarded to
each GPU. If the BatchNorm statistics are not synchronized across the GPUs ...
then n_g corresponds to the number of groups G_M."

What runs, from the same initial weights on the same ``steps`` batches of M =
``batch_size`` samples (the built-in digits, or ``--data``), SGD (``lr``,
``momentum``), in ``dtype``:

- ``ghost``: normtrain's ``ghost`` method (G_M = ``ghost_groups`` contiguous
  chunks), one forward of M samples per step;
- ``accumulation``: ``bn``, G_M forward/backward passes of M/G_M samples with the
  loss divided by G_M, then one step (the paper's Figure 3);
- ``ddp``: ``bn`` on G_M processes (gloo, through `normtrain.dist.spawn` and DDP
  as the engine wraps it), process r taking the r-th M/G_M samples, BN
  statistics not synced;
- ``bn``: full-batch BN over all M samples (the control: what GhostNorm is not).

Compared: the weights (every parameter; running statistics are not compared,
since BN updates them once per micro-batch and GhostNorm once per step) after
each step, as the relative distance max_k ||W_k - W_k'||_inf / ||W_k'||_inf
over the parameter tensors k.

Verdict, in parts: the paper's ``accumulation`` (GhostNorm = BN with
accumulation) and ``multi-gpu`` (= unsynced BN on G_M processes), each within
``tol`` after ``steps`` steps; our control ``not-full-batch``: each differs from
full-batch BN by more than ``differ``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import dist, models, norms
from . import common

USES_DATA = True

CLAIM = ("Direct GhostNorm with G_M groups, BatchNorm under gradient accumulation over G_M micro-batches, and "
         "unsynchronised BatchNorm on G_M processes are the same computation (Dimitriou & Arandjelović 2020 §2.3), "
         "and not the same as full-batch BatchNorm.")

IMPLEMENTATIONS = ("ghost", "accumulation", "ddp", "bn")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class Params(common.Params):
    model: str = "mlp"
    """Network (mlp: linear -> norm -> ReLU per hidden layer, the paper's MNIST SimpleNet shape)."""
    widths: list[int] = field(default_factory=lambda: [128, 64])
    """Hidden widths of the mlp (ignored for other models)."""
    ghost_groups: int = 2
    """G_M: chunks of the direct GhostNorm = accumulation micro-batches = processes."""
    batch_size: int = 64
    """M, the samples of one step (each chunk, micro-batch or process gets M / G_M)."""
    steps: int = 20
    """SGD steps."""
    lr: float = 0.1
    """Learning rate."""
    momentum: float = 0.9
    """SGD momentum."""
    dtype: str = "float64"
    """float64 (the three agree to ~1e-15) or float32 (summation orders differ: ~4e-7 after 20 steps; raise tol)."""
    tol: float = 1e-8
    """'Same weights': pairwise relative distance of the three GhostNorm implementations <= tol."""
    differ: float = 1e-3
    """'Not full-batch BN': relative distance of each from full-batch BN > differ."""
    image_size: int = 0
    """With --data: resize to this size (0 = natural size)."""
    threads: int = 1
    """CPU threads of this process (each spawned process uses 1)."""

    def check(self) -> None:
        super().check()
        common.known(self.model)
        if self.ghost_groups < 2:
            raise ValueError("ghost_groups: must be >= 2 (G_M = 1 is plain BN)")
        if self.ghost_groups > 8:
            raise ValueError("ghost_groups: at most 8 (one process each)")
        if self.batch_size % self.ghost_groups or self.batch_size // self.ghost_groups < 2:
            raise ValueError(f"batch_size: must split into ghost_groups={self.ghost_groups} chunks of >= 2 samples")
        for k in ("steps", "lr", "tol", "differ"):
            common.positive(k, getattr(self, k))
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum: must be in [0, 1)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: '{self.dtype}' is not one of: {', '.join(DTYPES)}")
        common.positive("image_size", self.image_size, allow_zero=True)


# -- the four implementations -------------------------------------------------------------------

def build(spec: dict, method: str) -> torch.nn.Module:
    """The network of `spec` with `method`, loaded with the shared initial weights."""
    opts = {"widths": spec["widths"]} if spec["model"] == "mlp" else {}
    bundle = norms.get(method, ghost_groups=spec["ghost_groups"])
    model = models.build(spec["model"], bundle, spec["num_classes"], spec["in_shape"], **opts)
    model.load_state_dict(spec["init"])
    return model.to(DTYPES[spec["dtype"]])


def params_vector(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def chunks(x: torch.Tensor, g: int) -> list[torch.Tensor]:
    """The G_M contiguous chunks GhostNorm normalizes separately (its reshape to (G_M, M/G_M, ...))."""
    return list(x.chunk(g))


def train_local(spec: dict, impl: str) -> dict:
    """ghost, accumulation or bn in this process: per-step losses and parameter vectors."""
    g = spec["ghost_groups"]
    model = build(spec, "ghost" if impl == "ghost" else "bn")
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=spec["momentum"])
    losses, weights = [], [params_vector(model)]
    for x, y in spec["batches"]:
        opt.zero_grad(set_to_none=True)
        if impl == "accumulation":  # the paper's Figure 3: loss / n_fp per forward pass, one step
            total = 0.0
            for xc, yc in zip(chunks(x, g), chunks(y, g)):
                loss = F.cross_entropy(model(xc), yc) / g
                loss.backward()
                total += float(loss.detach())
            losses.append(total)
        else:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            losses.append(float(loss.detach()))
        opt.step()
        weights.append(params_vector(model))
    return {"losses": losses, "weights": weights}


def train_ddp_rank(d, spec: dict) -> dict:
    """One process of the unsynced-BN run (called by dist.spawn): its chunk of every batch, DDP-averaged grads."""
    g = spec["ghost_groups"]
    raw = build(spec, "bn")
    raw.train()
    model = dist.wrap(raw, d)  # DDP, BN statistics per process (not SyncBatchNorm)
    opt = torch.optim.SGD(raw.parameters(), lr=spec["lr"], momentum=spec["momentum"])
    losses, weights = [], [params_vector(raw)]
    for x, y in spec["batches"]:
        xc, yc = chunks(x, g)[d.rank], chunks(y, g)[d.rank]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xc), yc)
        loss.backward()
        t = loss.detach().clone()
        losses.append(float(dist.all_sum(t)) / d.world)  # the mean over processes = the mean over M
        opt.step()
        weights.append(params_vector(raw))
    return {"losses": losses, "weights": weights}


def relative_distance(a: torch.Tensor, b: torch.Tensor, sizes: list[int]) -> float:
    """max over parameter tensors k of ||a_k - b_k||_inf / ||b_k||_inf (flattened vectors split by `sizes`)."""
    out = 0.0
    for pa, pb in zip(a.split(sizes), b.split(sizes)):
        scale = float(pb.abs().max())
        out = max(out, float((pa - pb).abs().max()) / (scale if scale > 0 else 1.0))
    return out


# -- verdict ------------------------------------------------------------------------------------

def verdict(dist_final: dict, tol: float = 1e-8, differ: float = 1e-3, groups: int = 2) -> dict:
    """dist_final: relative weight distances after the last step for the pairs
    'ghost~accumulation', 'ghost~ddp', 'accumulation~ddp', 'ghost~bn', 'accumulation~bn', 'ddp~bn'."""
    keys = ["ghost~accumulation", "ghost~ddp", "accumulation~ddp", "ghost~bn", "accumulation~bn", "ddp~bn"]
    if any(dist_final.get(k) is None for k in keys):
        return common.not_judged(CLAIM, "missing or non-finite distances")
    d = dist_final
    same = f"agree within a relative weight distance of {tol:g} after the last step"
    parts = [
        common.part("accumulation", f"BatchNorm with gradient accumulation over G_M = {groups} forward passes is "
                    f"GhostNorm with G_M = {groups} (§2.3, Figure 3).", "paper", d["ghost~accumulation"] <= tol,
                    f"distance {d['ghost~accumulation']:.2e}", f"GhostNorm and BN with {groups}-step accumulation {same}"),
        common.part("multi-gpu", f"BatchNorm unsynchronised over {groups} processes is GhostNorm with G_M = {groups} "
                    f"(§2.3).", "paper", max(d["ghost~ddp"], d["accumulation~ddp"]) <= tol,
                    f"distance to GhostNorm {d['ghost~ddp']:.2e}, to accumulation {d['accumulation~ddp']:.2e}",
                    f"unsynced BN on {groups} processes and both others {same}"),
        common.part("not-full-batch", "None of the three is full-batch BatchNorm (our control: the equivalence is "
                    "not a trivial one).", "added", min(d[k] for k in keys[3:]) > differ,
                    ", ".join(f"{k.replace('~bn', '')} {d[k]:.2e}" for k in keys[3:]) + " from full-batch BN",
                    f"each is farther than {differ:g} from full-batch BN"),
    ]
    worst_same = max(d[k] for k in keys[:3])
    least_other = min(d[k] for k in keys[3:])
    headline = f"the three agree to {worst_same:.1e}; full-batch BN is {least_other:.1e} away"
    return common.verdict_of(CLAIM, parts, headline)


# -- plots --------------------------------------------------------------------------------------

STYLE = {"ghost": ("tab:blue", "-", "o", "direct GhostNorm"),
         "accumulation": ("tab:orange", "--", "s", "BN + gradient accumulation"),
         "ddp": ("tab:green", ":", "^", "unsynced BN on G_M processes (DDP)"),
         "bn": ("tab:red", "-", None, "full-batch BN (control)")}


def plot(ctx, p: Params, runs: dict, dists: dict, v: dict) -> None:
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, 2)
        ax = axes[0][0]
        for impl in IMPLEMENTATIONS:
            color, ls, marker, label = STYLE[impl]
            ax.plot(range(1, len(runs[impl]["losses"]) + 1), runs[impl]["losses"], ls, color=color, marker=marker,
                    ms=5, label=label, alpha=0.9)
        ax.set_title(f"training loss (G_M = {p.ghost_groups}, M = {p.batch_size})")
        common.integer_x(ax)
        ax.set_xlabel("SGD step")
        ax.set_ylabel("cross-entropy (mean over the M samples)")
        ax.legend()
        ax = axes[0][1]
        for impl in ("accumulation", "ddp", "bn"):
            color, ls, marker, label = STYLE[impl]
            ax.plot(range(len(dists[impl])), common.positive_or_nan(dists[impl]), ls, color=color, marker=marker,
                    ms=5, label=label)
        ax.axhline(p.tol, color="k", lw=1, ls="--", label=f"tol = {p.tol:g}")
        ax.axhline(p.differ, color="gray", lw=1, ls="-.", label=f"differ = {p.differ:g}")
        ax.set_yscale("log")
        ax.set_title(f"weights: distance to direct GhostNorm ({p.dtype})")
        common.integer_x(ax)
        ax.set_xlabel("SGD step")
        ax.set_ylabel("max_k ||W_k - W_k(ghost)||_inf / ||W_k(ghost)||_inf")
        ax.legend(loc="center right")
        ctx.savefig(fig, "ghost_equivalence.png", v)


# -- run ----------------------------------------------------------------------------------------------

def run(ctx, p: Params) -> dict:
    ld = common.loader(ctx, p.batch_size, "train", p.image_size)
    dtype = DTYPES[p.dtype]
    batches = [(x.cpu().to(dtype), y.cpu()) for x, y in common.take(ld, p.steps)]
    torch.manual_seed(p.seed)
    opts = {"widths": p.widths} if p.model == "mlp" else {}
    init = models.build(p.model, "bn", ld.num_classes, ld.in_shape, **opts).state_dict()
    spec = {"model": p.model, "widths": list(p.widths), "ghost_groups": p.ghost_groups, "num_classes": ld.num_classes,
            "in_shape": tuple(ld.in_shape), "init": init, "dtype": p.dtype, "lr": p.lr, "momentum": p.momentum,
            "batches": batches}
    runs = {}
    for impl in ctx.progress(("ghost", "accumulation", "bn"), desc="ghost-equivalence"):
        runs[impl] = train_local(spec, impl)
    ctx.log(f"ghost-equivalence: {p.ghost_groups} gloo processes for the DDP run ...")
    runs["ddp"] = dist.spawn(train_ddp_rank, p.ghost_groups, (spec,))[0]
    sizes = [t.numel() for t in build(spec, "bn").parameters()]
    ref = runs["ghost"]["weights"]
    dists = {impl: [relative_distance(w, r, sizes) for w, r in zip(runs[impl]["weights"], ref)]
             for impl in ("accumulation", "ddp", "bn")}
    last = {impl: runs[impl]["weights"][-1] for impl in IMPLEMENTATIONS}
    final = {f"{a}~{b}": relative_distance(last[a], last[b], sizes)
             for a, b in (("ghost", "accumulation"), ("ghost", "ddp"), ("accumulation", "ddp"),
                          ("ghost", "bn"), ("accumulation", "bn"), ("ddp", "bn"))}
    v = verdict(final, p.tol, p.differ, p.ghost_groups)
    for impl in IMPLEMENTATIONS:
        for i, value in enumerate(runs[impl]["losses"]):
            ctx.scalar(f"{impl}/train_loss", value, i + 1)
    for impl, ds in dists.items():
        for i, value in enumerate(ds):
            ctx.scalar(f"{impl}/distance_to_ghost", value, i)
    plot(ctx, p, runs, dists, v)
    rows = [[k.replace("~", " vs "), d] for k, d in final.items()]
    summary = common.table(["pair", "relative weight distance"], rows)
    meas = {"parameters": sum(sizes), "samples_per_chunk": p.batch_size // p.ghost_groups,
            "distance_definition": "max over parameter tensors k of ||W_k - W_k'||_inf / ||W_k'||_inf",
            "final_distances": final, "distance_to_ghost_per_step": dists,
            "losses": {impl: runs[impl]["losses"] for impl in IMPLEMENTATIONS}}
    return ctx.finish(meas, v, summary)
