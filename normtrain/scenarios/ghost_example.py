"""GhostNorm paper §2.2 worked example: BN keeps the ranking order, GhostNorm(G_M=2) changes it.

Dimitriou & Arandjelović 2020 §2.2: "Consider as an example the tuple X with
(35, 39, 30, 4, 38, 26, 27, 19) values which can be thought as an input tensor
with (8, 1, 1) dimensions. Given to a BatchNorm layer, the output is ... (0.7,
1.1, 0.3, -2.2, 1.0, -0.1, -0.02, -0.8). Note how although the values have
changed, the ranking order of the activation values has remained the same ...
given X to a GhostNorm layer with G_M = 2, the output is (0.6, 0.9, 0.2, -1.7,
1.5, -0.2, -0.07, -1.2). Now, we observe that after normalization, the 2nd
value has become much smaller than the 5th value (0.9 < 1.5)."

What runs: the real ``bn`` and ``ghost`` (``norm.ghost_groups`` = G_M) layers of
normtrain.norms in training mode (batch statistics, gamma 1, beta 0) on X as an
(8, 1, 1, 1) tensor. A value "matches" when it equals the paper's number
rounded to the decimals the paper prints (|ours - paper| <= half a unit in the
last printed decimal). The ranking comparison lists every pair (i, j) with
x_i > x_j whose order flips after normalization (1-based positions).

Verdict: two parts, both the paper's: ``batchnorm`` (all 8 printed BN values
match and no pair flips) and ``ghostnorm`` (all 8 printed GhostNorm values match
and the 2nd output falls below the 5th); n/a for other values or G_M.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import torch

from .. import norms
from . import common

USES_DATA = False

X = [35.0, 39.0, 30.0, 4.0, 38.0, 26.0, 27.0, 19.0]
PAPER_BN = ["0.7", "1.1", "0.3", "-2.2", "1.0", "-0.1", "-0.02", "-0.8"]
PAPER_GHOST = ["0.6", "0.9", "0.2", "-1.7", "1.5", "-0.2", "-0.07", "-1.2"]

CLAIM = ("For X = (35, 39, 30, 4, 38, 26, 27, 19), BatchNorm gives (0.7, 1.1, 0.3, -2.2, 1.0, -0.1, -0.02, -0.8) "
         "and keeps the ranking order, while GhostNorm with G_M = 2 gives (0.6, 0.9, 0.2, -1.7, 1.5, -0.2, -0.07, "
         "-1.2), making the 2nd value smaller than the 5th (Dimitriou & Arandjelović 2020 §2.2).")


@dataclass
class Params(common.Params):
    values: list[float] = field(default_factory=lambda: list(X))
    """The input tuple (the paper's X by default; other values are compared with no paper numbers)."""
    ghost_groups: int = 2
    """G_M of the GhostNorm layer (the paper's example uses 2)."""
    eps: float = 1e-5
    """Variance epsilon of both layers (PyTorch's default)."""

    def check(self) -> None:
        super().check()
        common.positive("ghost_groups", self.ghost_groups)
        common.positive("eps", self.eps, allow_zero=True)
        if len(self.values) < 2 * self.ghost_groups or len(self.values) % self.ghost_groups:
            raise ValueError(f"values: {len(self.values)} values do not split into ghost_groups="
                             f"{self.ghost_groups} chunks of >= 2")


def normalize(method: str, values: list[float], ghost_groups: int = 2, eps: float = 1e-5) -> list[float]:
    """Outputs of the real normtrain `method` layer (train mode, gamma 1, beta 0) for an (N, 1, 1, 1) input."""
    layer = norms.get(method, ghost_groups=ghost_groups, eps=eps).norm(1, dims=2)
    layer.train()
    x = torch.tensor(values, dtype=torch.float64).view(-1, 1, 1, 1)
    with torch.no_grad():
        return layer.double()(x).flatten().tolist()


def matches(ours: list[float], paper: list[str]) -> list[bool]:
    """Each value equals the paper's number rounded to the decimals printed there."""
    out = []
    for v, s in zip(ours, paper):
        decimals = len(s.split(".")[1]) if "." in s else 0
        out.append(abs(v - float(s)) <= 0.5 * 10 ** -decimals + 1e-9)
    return out


def flipped_pairs(x: list[float], y: list[float]) -> list[tuple[int, int]]:
    """1-based (i, j) with x_i > x_j but y_i <= y_j, or x_i < x_j but y_i >= y_j."""
    out = []
    for i, j in combinations(range(len(x)), 2):
        if x[i] == x[j]:
            continue
        if (x[i] > x[j]) != (y[i] > y[j]) or y[i] == y[j]:
            out.append((i + 1, j + 1) if x[i] > x[j] else (j + 1, i + 1))
    return out


BN_CLAIM = ("BatchNorm maps X = (35, 39, 30, 4, 38, 26, 27, 19) to (0.7, 1.1, 0.3, -2.2, 1.0, -0.1, -0.02, -0.8), "
            "keeping the ranking order (Dimitriou & Arandjelović 2020 §2.2).")
GHOST_CLAIM = ("GhostNorm with G_M = 2 maps X to (0.6, 0.9, 0.2, -1.7, 1.5, -0.2, -0.07, -1.2): the 2nd value becomes "
               "smaller than the 5th (§2.2).")


def verdict(bn: list[float], ghost: list[float], x: list[float] = X, ghost_groups: int = 2) -> dict:
    """Two paper parts: BN's printed outputs and kept order; GhostNorm's printed outputs and the 2nd < 5th swap.

    n/a for other input values or another G_M (the paper prints numbers for its X and G_M = 2 only)."""
    if list(x) != X or ghost_groups != 2:
        why = "custom values" if list(x) != X else f"G_M = {ghost_groups}"
        return common.not_judged(CLAIM, f"{why}: the paper prints numbers for its X and G_M = 2 only")
    mb, mg = matches(bn, PAPER_BN), matches(ghost, PAPER_GHOST)
    fb, fg = flipped_pairs(x, bn), flipped_pairs(x, ghost)
    crit = "every output equals the paper's printed number at its printed precision (half a unit in the last decimal)"
    parts = [
        common.part("batchnorm", BN_CLAIM, "paper", all(mb) and not fb,
                    f"BN {', '.join(f'{v:.3f}' for v in bn)}: {sum(mb)}/8 match; flips {len(fb)} pairs",
                    crit + ", and no pair's order flips", {"value": PAPER_BN, "where": "§2.2"}),
        common.part("ghostnorm", GHOST_CLAIM, "paper", all(mg) and ghost[1] < ghost[4],
                    f"GhostNorm {', '.join(f'{v:.3f}' for v in ghost)}: {sum(mg)}/8 match; flips {len(fg)} pairs "
                    f"({', '.join(f'{a}>{b}' for a, b in fg)}); 2nd {ghost[1]:.3f} vs 5th {ghost[4]:.3f}",
                    crit + ", and the 2nd output is below the 5th", {"value": PAPER_GHOST, "where": "§2.2"}),
    ]
    headline = (f"{sum(mb) + sum(mg)}/16 printed values match; GhostNorm puts the 2nd value ({ghost[1]:.2f}) "
                f"{'below' if ghost[1] < ghost[4] else 'above'} the 5th ({ghost[4]:.2f}), BN flips {len(fb)} pairs")
    return common.verdict_of(CLAIM, parts, headline)


def spread(values: list[float], gap: float) -> list[tuple[int, float]]:
    """(index, label height) with labels at their values but at least `gap` apart (pushed upwards)."""
    out: list[tuple[int, float]] = []
    for i in sorted(range(len(values)), key=lambda k: values[k]):
        y = values[i] if not out or values[i] - out[-1][1] >= gap else out[-1][1] + gap
        out.append((i, y))
    return out


def plot(ctx, x, bn, ghost, g, v) -> None:
    n = len(x)
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, 2, panel=(6.5, 5.2))
        ax = axes[0][0]
        colors = plt.get_cmap("tab10")
        for i in range(n):
            ax.plot([0, 1], [bn[i], ghost[i]], "-o", color=colors(i // (n // g)), lw=1.5, ms=6)
        # One label per value on each side, spread apart where outputs are close (BN's 1.0 and 1.1).
        for side, vals, fmt in ((0, bn, lambda i: f"x{i + 1} = {x[i]:g}: {bn[i]:.2f}"),
                                (1, ghost, lambda i: f"{ghost[i]:.2f}")):
            for i, y in spread(vals, 0.19):
                ax.annotate(fmt(i), xy=(side, vals[i]), xytext=(side + (-0.07 if side == 0 else 0.07), y),
                            textcoords="data", ha="right" if side == 0 else "left", va="center", fontsize=10,
                            arrowprops=dict(arrowstyle="-", lw=0.5, color="gray"))
        ax.set_xticks([0, 1], ["BatchNorm", f"GhostNorm (G_M={g})"])
        ax.set_xlim(-0.85, 1.3)
        ax.set_ylabel("normalized value (gamma 1, beta 0)")
        ax.set_title("§2.2 example: each value's BN and GhostNorm output")
        from matplotlib.lines import Line2D
        ax.legend(handles=[Line2D([], [], color=colors(c), marker="o", label=f"ghost chunk {c + 1}")
                           for c in range(g)], loc="lower right")
        ax = axes[0][1]
        xs = list(range(1, n + 1))
        w = 0.38
        ax.bar([i - w / 2 for i in xs], bn, w, label="BatchNorm (ours)", color="tab:gray")
        ax.bar([i + w / 2 for i in xs], ghost, w, label=f"GhostNorm G_M={g} (ours)", color="tab:orange")
        if x == X:
            ax.plot([i - w / 2 for i in xs], [float(s) for s in PAPER_BN], "k_", ms=18, mew=2.5, label="paper")
            ax.plot([i + w / 2 for i in xs], [float(s) for s in PAPER_GHOST], "k_", ms=18, mew=2.5)
        ax.set_xticks(xs, [f"x{i}\n{x[i - 1]:g}" for i in xs])
        ax.set_xlabel("input position and value")
        ax.set_ylabel("normalized value")
        ax.set_title("ours vs the paper's printed numbers (black bars)")
        ax.axhline(0, color="k", lw=0.6)
        lo, hi = min(bn + ghost), max(bn + ghost)
        ax.set_ylim(lo - 0.45 * (hi - lo), hi + 0.1 * (hi - lo))  # room for the legend under the bars
        ax.legend(loc="lower right")
        ctx.savefig(fig, "ghost_example.png", v)


def run(ctx, p: Params) -> dict:
    x = list(p.values)
    bn = normalize("bn", x, p.ghost_groups, p.eps)
    ghost = normalize("ghost", x, p.ghost_groups, p.eps)
    v = verdict(bn, ghost, x, p.ghost_groups)
    rows = []
    is_paper = x == X
    for i in range(len(x)):
        rows.append([i + 1, x[i], f"{bn[i]:.4f}", PAPER_BN[i] if is_paper else "-", f"{ghost[i]:.4f}",
                     PAPER_GHOST[i] if is_paper else "-"])
    for i, r in enumerate(rows):
        ctx.scalar("bn/output", bn[i], i)
        ctx.scalar("ghost/output", ghost[i], i)
    plot(ctx, x, bn, ghost, p.ghost_groups, v)
    meas = {"x": x, "bn": bn, "ghost": ghost,
            "paper_bn": [float(s) for s in PAPER_BN] if is_paper else None,
            "paper_ghost": [float(s) for s in PAPER_GHOST] if is_paper else None,
            "bn_matches": matches(bn, PAPER_BN) if is_paper else None,
            "ghost_matches": matches(ghost, PAPER_GHOST) if is_paper else None,
            "bn_flipped_pairs": flipped_pairs(x, bn), "ghost_flipped_pairs": flipped_pairs(x, ghost)}
    summary = common.table(["i", "x", "bn", "paper bn", f"ghost(G_M={p.ghost_groups})", "paper ghost"], rows)
    return ctx.finish(meas, v, summary)
