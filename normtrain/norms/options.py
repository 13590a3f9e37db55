"""Knobs of the normalization methods: the `norm:` section of a recipe (minus `name`).

One dataclass serves every method; each method reads the fields it needs and the
others are ignored, so a recipe can switch `--norm` without editing its knobs.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError


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
    init: str = "unit"
    """WN initialisation: 'unit' (g = 1, b = 0, the paper's equation) or 'data' (Salimans & Kingma data-dependent init on the first batch)."""
    gamma_init: float = 1.0 / 1.21
    """NormProp gamma initial value (Arpit et al. use 1/1.21)."""
    residual_scale: bool = True
    """NormProp residual modification: residual block output (shortcut + branch) / sqrt(2)."""
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
