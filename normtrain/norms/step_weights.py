"""One reparametrised weight per optimizer step under gradient accumulation.

Weight methods (wn, normprop, trelu-wn, ws*, nf and every later subclass of
`wn.ReparamConv2d` / `wn.ReparamLinear`) compute their effective weight
``w = f(v, g)`` from raw parameters in ``forward``. With ``accum_steps = k``
micro-batches per optimizer step (the WS recipes: 1 image per micro-batch, k = 64
or 32) the parameters do not change within a step, so recomputing f k times, and
back-propagating through it k times, is wasted work. `micro_batches` makes it
once per step, the same gradients by the chain rule (dL/dv = J_f^T sum_i dL_i/dw):

- at the start of the step each layer computes ``w_eff = f(v, g)`` once, with its graph;
- micro-batches 1..k-1 use ``leaf = w_eff.detach().requires_grad_()``, one shared leaf
  whose ``.grad`` sums their weight gradients (no gradient reaches v, g yet);
- the last micro-batch uses ``w_eff`` itself, with a tensor hook that adds
  ``leaf.grad`` to the gradient arriving at ``w_eff``; so f's backward runs once,
  inside the last micro-batch's backward. That is the backward that DDP synchronises
  (the engine runs the others under ``no_sync``), so every parameter's gradient is
  produced, complete, inside DDP's reducer as it expects; nothing is all-reduced twice.

It is a no-op (plain per-micro-batch recomputation) when k = 1, when the model is not
in training mode, when gradients are disabled, and in a step where a layer still waits
for its data-dependent initialisation (that step changes g and b in its first forward).
The cached weight is computed outside autocast and outside any compiled region, in
the parameters' dtype, exactly as ``effective_weight`` computes it in ``forward``
(its ops run in fp32 under autocast too), so a compiled model only reads it.
Memory: ``w_eff`` and f's saved tensors, held per micro-batch before, are held for the
step, and each layer adds one weight-sized gradient buffer (the leaf's) to the peak.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from .wn import _StepWeight


def _add_leaf_grad(leaf: torch.Tensor):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad if leaf.grad is None else grad + leaf.grad
    return hook


def micro_batches(model: nn.Module, accum_steps: int) -> Iterator[int]:
    """Yield the micro-batch indices 0..accum_steps-1 of one optimizer step, with each
    reparametrised layer's weight computed once for the step (see the module docstring).

        for i in micro_batches(model, accum):   # model: the bare module (not DDP / compiled)
            loss(model_or_wrapper(x_i)).backward()   # under DDP no_sync except the last

    The caller runs each micro-batch's forward and backward inside the loop body; the
    last backward must happen before the loop asks for the next index (it always does in
    a plain loop). The layers are restored when the loop ends or the generator is closed
    (an exception in the body closes it).
    """
    layers = [m for m in model.modules() if isinstance(m, _StepWeight)] if accum_steps > 1 else []
    if not (layers and model.training and torch.is_grad_enabled()) or \
            any(getattr(m, "needs_data_init", False) for m in model.modules()):
        yield from range(accum_steps)
        return
    step = []
    try:
        with torch.enable_grad():
            for m in layers:
                w = m.effective_weight()
                leaf = w.detach().requires_grad_(w.requires_grad)
                if w.requires_grad:
                    w.register_hook(_add_leaf_grad(leaf))
                step.append((m, w, leaf))
        for i in range(accum_steps):
            last = i == accum_steps - 1
            for m, w, leaf in step:
                m.step_weight = w if last else leaf
            yield i
    finally:
        for m, _, _ in step:
            m.__dict__.pop("step_weight", None)  # back to the class default: recompute per call
