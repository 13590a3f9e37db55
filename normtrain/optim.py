"""Optimizers (`optim.name`), each from a maintained implementation, none hand-written.

- ``sgd``: ``torch.optim.SGD`` with momentum (the papers' optimizer), L2 weight decay; fused CUDA kernel
  on CUDA.
- ``adamw``: ``torch.optim.AdamW`` (Loshchilov & Hutter 2019: decay decoupled from the
  adaptive step), fused CUDA kernel on CUDA (one launch for all parameters), foreach on CPU.
- ``lamb``: ``timm.optim.Lamb`` (You et al. 2020: Adam's step rescaled per tensor by the
  trust ratio ||w|| / ||step||), with timm's defaults: bias correction, and the global
  gradient norm clipped to 1 inside the optimizer (NVIDIA's reference LAMB does the same).
- ``lars``: ``timm.optim.Lars`` (You et al. 2017: SGD with momentum whose per-tensor rate is
  eta ||w|| / ||grad + wd w||, eta = ``optim.trust_coefficient``).

timm is an optional extra (``pip install normtrain[timm]``); asking for lamb or lars
without it is bad input, named before anything is written.

Weight decay: with ``optim.no_decay_norm_bias`` the parameters with at most one
dimension (norm scales and shifts, biases, each method's own vectors and scalars:
WN gains, TReLU thresholds, NF skip gains...) and those the network names in its
``no_weight_decay()`` (timm's convention: a ViT's class token and position embedding,
ConvNeXt's layer scales, as DeiT and ConvNeXt exclude them) form a second group with
weight decay 0;
timm's Lamb and Lars apply their trust ratio only where weight decay is on, so that
group is not adapted either (LARS's usual exclusion of BN and biases).
"""
from __future__ import annotations

import torch

from .config import OptimConfig
from .errors import UsageError

TIMM_HINT = "pip install normtrain[timm] (or pip install timm)"


def require_timm(name: str) -> None:
    """UsageError unless timm's optimizers import (lamb, lars)."""
    try:
        import timm.optim  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means unusable
        raise UsageError(f"optim.name={name} uses timm's implementation, which cannot be imported here "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): {TIMM_HINT}") from None


def param_groups(model: torch.nn.Module, o: OptimConfig) -> list[dict]:
    """[decayed parameters, then (with no_decay_norm_bias) those with <= 1 dimension or named by the
    network's ``no_weight_decay()``, without decay]."""
    named = set(model.no_weight_decay()) if o.no_decay_norm_bias and hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if o.no_decay_norm_bias and (p.ndim <= 1 or name in named) else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build(model: torch.nn.Module, o: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer `o` names over `model`'s parameters (see the module docstring)."""
    groups = param_groups(model, o)
    if o.name == "sgd":
        # CUDA: the fused kernel (one launch for all parameters; with the fp16 grad scaler it skips a step
        # with inf/NaN gradients on the device, where the unfused step reads found_inf on the host every step).
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               fused=True if device.type == "cuda" else None)
    if o.name == "adamw":
        fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, **fast)
    require_timm(o.name)
    from timm.optim import Lamb, Lars
    if o.name == "lamb":
        return Lamb(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    if o.name == "lars":
        return Lars(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, trust_coeff=o.trust_coefficient,
                    eps=o.eps)
    raise UsageError(f"optim.name '{o.name}' is not one of: sgd, adamw, lamb, lars")


def apply_settings(optimizer: torch.optim.Optimizer, o: OptimConfig) -> None:
    """Put the recipe's settings into a restored optimizer's groups (a resume that accepted changed
    optimizer settings must really use them, not the checkpoint's)."""
    for i, g in enumerate(optimizer.param_groups):
        g["weight_decay"] = o.weight_decay if i == 0 else 0.0
        if "momentum" in g:
            g["momentum"] = o.momentum
        if "nesterov" in g:
            g["nesterov"] = o.nesterov
        if "betas" in g:
            g["betas"] = tuple(o.betas)
        if "eps" in g:
            g["eps"] = o.eps
        if "trust_coeff" in g:
            g["trust_coeff"] = o.trust_coefficient
        if "fused" in g:  # this machine's choice (a CUDA checkpoint resumed on a CPU, or the reverse)
            g["fused"] = optimizer.defaults.get("fused")
