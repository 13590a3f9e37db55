"""EMA of the weights (`train.ema_decay`): torch's AveragedModel with its EMA update, buffers included.

    ema_t = decay * ema_{t-1} + (1 - decay) * w_t     after every optimizer step; ema_1 = w_1

``torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
use_buffers=True)``: a copy of the network whose parameters *and* buffers (BN running
statistics, so the averaged network is evaluated with statistics that match its own
weights, as timm's ModelEmaV3) follow the moving average, in one foreach lerp per dtype.
Integer and boolean buffers (BN's step counters, WN's pending-init flag) are copied from the
network, not averaged: they count or flag, and an average of them means nothing.

The copy lives on the training device, is never wrapped in DDP or compiled, and is
evaluated beside the raw weights (``eval_ema/*``). Its ``state_dict()`` (the network's
tensors under ``module.`` and the update count ``n_averaged``) goes into every
checkpoint and is restored on resume, so a resumed run's EMA is bitwise the
uninterrupted one's. Under DDP every rank holds the same averaged weights (the weights
are the same on every rank); before an evaluation or a checkpoint its buffers become
rank 0's (``train.broadcast_buffers``, DDP's default, as the raw network's) or their
average over ranks (``broadcast_buffers: false``), see ``engine.sync_ema_buffers``.
"""
from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

#: The key prefix of the network's tensors in an AveragedModel's state_dict.
PREFIX = "module."


def multi_avg_fn(decay: float):
    """torch's EMA update for floating-point tensors; a copy for the others (AveragedModel groups by dtype)."""
    ema = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(averaged: list, current: list, n_averaged) -> None:
        if averaged[0].is_floating_point() or averaged[0].is_complex():
            ema(averaged, current, n_averaged)
        else:
            for a, c in zip(averaged, current):
                a.copy_(c)
    return update


def build(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """The EMA copy of `model` (None when decay is 0, i.e. off)."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=multi_avg_fn(decay), use_buffers=True)


def network_state(state: dict) -> dict:
    """The averaged network's own state_dict out of an AveragedModel's (loadable into the bare network)."""
    return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
