"""`brn`: Batch Renormalization (Ioffe 2017, arXiv 1702.03275, Algorithm 1):

    mu_B = 1/m sum x_i,   sigma_B = sqrt(1/m sum (x_i - mu_B)^2 + eps)
    r = stop_gradient(clip(sigma_B / sigma, 1/r_max, r_max))
    d = stop_gradient(clip((mu_B - mu) / sigma, -d_max, d_max))
    x_hat = (x - mu_B) / sigma_B * r + d,   y = gamma x_hat + beta
    mu += alpha (mu_B - mu),   sigma += alpha (sigma_B - sigma)
    inference: y = gamma (x - mu) / sigma + beta

per channel over the (N, H, W) positions of the per-process batch, with the
moving averages ``mu`` and ``sigma`` (the moving *standard deviation*, not a
variance, as in Algorithm 1) used for r and d *before* this step's update.
alpha is ``norm.momentum``, eps ``norm.eps``. Gradients flow through mu_B and
sigma_B exactly as in BN; r and d are constants (r_max = 1, d_max = 0 is BN).
The batch variance is the biased one of Algorithm 1, also for the moving sigma
(PyTorch's BN stores an unbiased running variance instead); statistics are
computed in fp32.

Schedule (Ioffe 2017 §4, the ImageNet experiments; the paper text was not in
this project's library, the values are as the paper reports them and as its
summaries quote them, "initially constrain them to 1 and 0, respectively, and
then are gradually relaxed"): r_max = 1 and d_max = 0, i.e. plain BN, for the
first 5000 training steps, then relaxed gradually to reach r_max = 3 at 40k
steps and d_max = 5 at 25k steps. "Gradually" is taken as linear: r_max(t) = 1 + (r_max - 1) * ramp,
d_max(t) = d_max * ramp, ramp rising from 0 at ``norm.brn_relax_start`` to 1 at
``norm.brn_r_max_at`` / ``norm.brn_d_max_at``. t is the layer's count of
training-mode forwards (the ``num_batches_tracked`` buffer, saved in
checkpoints), i.e. optimizer steps x ``train.accum_steps``: scale the step knobs
by the accumulation when using it. The paper's step counts belong to its
ImageNet Inception training; much shorter runs should scale them too.

DDP: statistics are those of each process's own batch, like ``bn``; DDP broadcasts rank 0's moving mu and sigma
with the weights at each forward, as it does BN's running statistics.

How it runs: with r and d constants, y = gamma ((x - mu_B) / sigma_B r + d) + beta is
batch normalization of x with the affine (gamma r, gamma d + beta), so a training
forward computes the batch statistics (fp32, without gradient) for r and d and the
moving averages, and then calls ``F.batch_norm`` with that affine: the gradient with
respect to x, gamma and beta is then exactly Algorithm 1's (BN's backward, with r and d
as constants), autograd keeps what ``bn`` keeps (the input in its own dtype and the
per-channel statistics) and the layer runs BN's kernels. The bounds (r_max, d_max)
come from a Python copy of the step counter (counted on the host from 0, or from one read
of the buffer after loading a state_dict), so they cost no kernel; under torch.compile they are
computed on the device (`_bounds_tensor`), which compiles once instead of recompiling
at every step. `brn_reference` is Algorithm 1 as tensor ops, which tests compare with.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .bundle import Normalizer


@dataclass
class Options:
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

    def check(self) -> None:
        if self.brn_r_max < 1:
            raise ValueError("brn_r_max must be >= 1")
        if self.brn_d_max < 0:
            raise ValueError("brn_d_max must be >= 0")
        if self.brn_relax_start < 0:
            raise ValueError("brn_relax_start must be >= 0")
        if self.brn_r_max_at < self.brn_relax_start or self.brn_d_max_at < self.brn_relax_start:
            raise ValueError("brn_r_max_at and brn_d_max_at must be >= brn_relax_start")


def bounds(step: int, r_max: float, d_max: float, relax_start: int, r_max_at: int, d_max_at: int) -> tuple[float, float]:
    """(r_max, d_max) in force at training step `step`: (1, 0) until `relax_start`, then linear ramps."""
    def ramp(end: int) -> float:
        if end <= relax_start:  # no ramp: the final bound from relax_start on
            return 1.0 if step >= relax_start else 0.0
        return min(1.0, max(0.0, (step - relax_start) / (end - relax_start)))
    return 1.0 + (r_max - 1.0) * ramp(r_max_at), d_max * ramp(d_max_at)


def brn_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor,
                  running_std: torch.Tensor, r_max: float, d_max: float, eps: float) -> torch.Tensor:
    """Algorithm 1's training output as tensor ops (r and d detached), statistics in fp32."""
    dims = (0,) + tuple(range(2, x.dim()))
    view = (1, -1) + (1,) * (x.dim() - 2)
    xf = x.float()
    var, mean = torch.var_mean(xf, dim=dims, correction=0)
    std = torch.sqrt(var + eps)
    r = (std / running_std).clamp(1.0 / r_max, r_max).detach()
    d = ((mean - running_mean) / running_std).clamp(-d_max, d_max).detach()
    x_hat = (xf - mean.view(view)) / std.view(view) * r.view(view) + d.view(view)
    return (weight.view(view) * x_hat + bias.view(view)).to(x.dtype)


class BatchRenorm(nn.Module):
    """Batch Renormalization for (N, C) or (N, C, *) input (Ioffe 2017, Algorithm 1)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, r_max: float = 3.0,
                 d_max: float = 5.0, relax_start: int = 5000, r_max_at: int = 40000, d_max_at: int = 25000):
        super().__init__()
        self.num_features = num_features
        self.eps, self.momentum = float(eps), float(momentum)
        self.r_max, self.d_max = float(r_max), float(d_max)
        self.relax_start, self.r_max_at, self.d_max_at = int(relax_start), int(r_max_at), int(d_max_at)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_std", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self._steps: int | None = 0  # host copy of num_batches_tracked (None: read it at the next forward)

    def current_bounds(self) -> tuple[float, float]:
        return bounds(int(self.num_batches_tracked), self.r_max, self.d_max, self.relax_start,
                      self.r_max_at, self.d_max_at)

    def _bounds_tensor(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`bounds` computed on the device from the step buffer: no host sync, nothing for torch.compile to guard."""
        t = self.num_batches_tracked.float()

        def ramp(end: int) -> torch.Tensor:
            if end <= self.relax_start:
                return (t >= self.relax_start).float()
            return ((t - self.relax_start) / (end - self.relax_start)).clamp(0.0, 1.0)
        return 1.0 + (self.r_max - 1.0) * ramp(self.r_max_at), self.d_max * ramp(self.d_max_at)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._steps = None  # read the loaded counter at the next training forward

    def _view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.view((1, -1) + (1,) * (x.dim() - 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"BatchRenorm: expected input (N, C) or (N, C, ...), got shape {tuple(x.shape)}")
        if not self.training:
            scale = self.weight / self.running_std
            shift = self.bias - self.running_mean * scale
            return torch.addcmul(self._view(shift, x).to(x.dtype), x, self._view(scale, x).to(x.dtype))
        dims = (0,) + tuple(range(2, x.dim()))
        with torch.no_grad():  # r and d are constants for the gradient (stop_gradient)
            var, mean = torch.var_mean(x.float(), dim=dims, correction=0)
            std = torch.sqrt(var + self.eps)
            if torch.compiler.is_compiling():
                r_max, d_max = self._bounds_tensor()
                r = torch.minimum(torch.maximum(std / self.running_std, 1.0 / r_max), r_max)
                d = torch.minimum(torch.maximum((mean - self.running_mean) / self.running_std, -d_max), d_max)
            else:
                if self._steps is None:
                    self._steps = int(self.num_batches_tracked)  # once after building or loading
                r_max, d_max = bounds(self._steps, self.r_max, self.d_max, self.relax_start, self.r_max_at,
                                      self.d_max_at)
                r = (std / self.running_std).clamp_(1.0 / r_max, r_max)
                d = ((mean - self.running_mean) / self.running_std).clamp_(-d_max, d_max)
        # y = gamma r (x - mu_B) / sigma_B + gamma d + beta: batch norm with that affine (module doc)
        y = F.batch_norm(x, None, None, self.weight * r, torch.addcmul(self.bias, self.weight, d), True, 0.0,
                         self.eps)
        with torch.no_grad():
            torch._foreach_lerp_([self.running_mean, self.running_std],
                                 [mean.to(self.running_mean.dtype), std.to(self.running_std.dtype)], self.momentum)
            self.num_batches_tracked.add_(1)
            if torch.compiler.is_compiling():
                self._steps = None  # an eager forward after compiled ones reads the buffer again
            else:
                self._steps += 1
        return y

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, r_max={self.r_max}, "
                f"d_max={self.d_max}, relax=({self.relax_start}, r@{self.r_max_at}, d@{self.d_max_at})")


class BatchRenormalization(Normalizer):
    name = "brn"
    default_bias = False  # beta replaces the conv bias, as for bn
    tokens = "the tokens as positions: Batch Renormalization of each feature over the (N, L) tokens of the batch"

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        o = self.options
        return BatchRenorm(num_features, eps=o.eps, momentum=o.momentum, r_max=o.brn_r_max, d_max=o.brn_d_max,
                           relax_start=o.brn_relax_start, r_max_at=o.brn_r_max_at, d_max_at=o.brn_d_max_at)


def build(options):
    """Batch Renormalization: BN corrected by r = clip(sigma_B/sigma) and d = clip((mu_B - mu)/sigma) toward the moving statistics (Ioffe 2017)."""
    return BatchRenormalization(options)
