"""Knobs of the normalization methods: the `norm:` section of a recipe (minus `name`).

One dataclass serves every method; each method reads the fields it needs and the
others are ignored, so a recipe can switch `--norm` without editing its knobs.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

#: Values of ``norm.residual`` (defined in norms/residual.py).
RESIDUAL_SCALINGS = ("none", "sqrt2", "rescale", "depth", "skipinit")


class NormShapeError(UsageError, ValueError):
    """A layer or batch shape that a method's knobs cannot handle (channels not divisible by
    ``groups``, per-process batch not divisible by ``ghost_groups``...). A ValueError for
    library callers and a UsageError (one line, exit 2) at the command line."""


@dataclass
class NormOptions:
    eps: float = 1e-5
    """Numerical epsilon: BN/GN variance eps, WN/WS denominator eps (added to ||v|| or std)."""
    momentum: float = 0.1
    """Running-statistics momentum of BN-style layers (PyTorch convention)."""
    groups: int = 32
    """GroupNorm groups (gn, ws-gn; the G_C of seqnorm). ln = 1 group, in = one per channel."""
    ghost_groups: int = 4
    """GhostNorm G_M: number of contiguous chunks the per-process batch is split into (ghost, seqnorm)."""
    ghost_batch: int = 0
    """GhostNorm samples per chunk (the papers' 'ghost batch size'); when > 0 it sets ghost_groups = per-process micro-batch / ghost_batch, so a recipe keeps its statistics whatever the process count."""
    init: str = "unit"
    """WN initialisation: 'unit' (g = 1, b = 0, the paper's equation) or 'data' (Salimans & Kingma data-dependent init on the first batch)."""
    gamma_init: float = 1.0 / 1.21
    """NormProp gamma initial value (Arpit et al. use 1/1.21)."""
    residual_scale: bool = True
    """NormProp residual modification: residual block output (shortcut + branch) / sqrt(2) (normprop only; norm.residual scales the branches of any method)."""
    ws_center: bool = True
    """WS: subtract the per-output-channel weight mean (WS eq. 5 when used alone)."""
    ws_scale: bool = True
    """WS: divide by the per-output-channel root mean square of the (centred) weight + eps (WS eq. 6); with centering this is the biased std (eq. 2), alone it is the RMS of the raw weight."""
    ws_affine: bool = False
    """WS '+AF': learnable per-channel gain and bias on the standardized weight (WS Table 2, harmful)."""
    trelu_join: str = "add"
    """trelu-wn residual join: 'add' (plain sum) or 'weighted' (Xiang & Li's L2-normalised weighted addition, init: the shortcut alone)."""
    nf_alpha: float = 0.2
    """NF-ResNet alpha: rate at which the expected variance grows per residual block."""
    nf_skip_gain: float = 0.0
    """NF-ResNet initial learnable gain on each residual branch (0 = SkipInit; 1 for signal-propagation plots)."""
    residual: str = "none"
    """Residual-branch scaling of every residual block, for any method, around the method's own join (so it composes with normprop's residual_scale): none; sqrt2 ((x + f)/sqrt(2), Balduzzi et al. 2017); rescale (a x + b f with a^2 + b^2 = 1, depth-dependent, Shao et al. 2020); depth (x + L^-p f, see residual_depth_power); skipinit (x + g f, learnable scalar g init 0: SkipInit / ReZero). Networks without residual blocks refuse anything but none."""
    residual_depth_power: float = 1.0
    """residual=depth: the branch is scaled by L^-p over the network's L residual blocks (1 = 1/L; 0.5 = 1/sqrt(L), Hayou et al. 2021)."""
    brn_r_max: float = 3.0
    """Batch Renormalization: final bound r_max on r = sigma_B / sigma (Ioffe 2017 §4: 3)."""
    brn_d_max: float = 5.0
    """Batch Renormalization: final bound d_max on d = (mu_B - mu) / sigma (Ioffe 2017 §4: 5)."""
    brn_relax_start: int = 5000
    """Batch Renormalization: training forwards with r_max = 1, d_max = 0 (plain BN) before the bounds are relaxed (Ioffe 2017 §4: 5000 steps). Counted per layer in training-mode forwards, i.e. optimizer steps x train.accum_steps."""
    brn_r_max_at: int = 40000
    """Batch Renormalization: training forward at which r_max reaches brn_r_max, rising linearly from 1 after brn_relax_start (Ioffe 2017 §4: 40k)."""
    brn_d_max_at: int = 25000
    """Batch Renormalization: training forward at which d_max reaches brn_d_max, rising linearly from 0 after brn_relax_start (Ioffe 2017 §4: 25k)."""
    frn_learn_eps: bool = False
    """FRN: learn the epsilon, eps = norm.eps + |eps_l| with eps_l a learnable scalar per layer, init 1e-4 (Singh & Krishnan 2020, for 1x1 activation maps and fully connected layers)."""
    dyt_alpha: float = 0.5
    """DyT: initial value alpha_0 of each layer's learnable scalar alpha in gamma tanh(alpha x) + beta (Zhu et al. 2025: 0.5, their default and every vision model's)."""

    def check(self) -> None:
        """Raise ValueError naming the first out-of-range field."""
        if self.eps < 0:
            raise ValueError("eps must be >= 0")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError("momentum must be in [0, 1]")
        if self.groups < 1:
            raise ValueError("groups must be >= 1")
        if self.ghost_groups < 1:
            raise ValueError("ghost_groups must be >= 1")
        if self.ghost_batch < 0 or self.ghost_batch == 1:
            raise ValueError("ghost_batch must be 0 (use ghost_groups) or >= 2 samples per chunk")
        if self.init not in ("unit", "data"):
            raise ValueError("init must be 'unit' or 'data'")
        if self.gamma_init <= 0:
            raise ValueError("gamma_init must be > 0")
        if self.trelu_join not in ("add", "weighted"):
            raise ValueError("trelu_join must be 'add' or 'weighted'")
        if not (self.ws_center or self.ws_scale):
            raise ValueError("ws_center and ws_scale cannot both be false")
        if self.nf_alpha <= 0:
            raise ValueError("nf_alpha must be > 0")
        if self.residual not in RESIDUAL_SCALINGS:
            raise ValueError(f"residual: '{self.residual}' is not one of: {', '.join(RESIDUAL_SCALINGS)}")
        if self.residual_depth_power <= 0:
            raise ValueError("residual_depth_power must be > 0")
        if self.dyt_alpha <= 0:
            raise ValueError("dyt_alpha must be > 0")
        if self.brn_r_max < 1:
            raise ValueError("brn_r_max must be >= 1")
        if self.brn_d_max < 0:
            raise ValueError("brn_d_max must be >= 0")
        if self.brn_relax_start < 0:
            raise ValueError("brn_relax_start must be >= 0")
        if self.brn_r_max_at < self.brn_relax_start or self.brn_d_max_at < self.brn_relax_start:
            raise ValueError("brn_r_max_at and brn_d_max_at must be >= brn_relax_start")
