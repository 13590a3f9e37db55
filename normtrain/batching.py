"""Batch arithmetic: how a recipe's batch splits over processes and accumulation steps.

A recipe states its batch the way its paper does. Gitman & Ginsburg give the
global batch (256, i.e. 64 per GPU on 4 GPUs); the WS paper gives images per GPU
per micro-batch and an "iteration size" (1 image per GPU, gradients averaged over
64 iterations). So:

- ``data.batch_size``: the global batch of one optimizer step (all processes and
  accumulation steps together);
- ``train.micro_batch``: images per process per forward (0 = derived);
- ``train.accum_steps``: micro-batches per optimizer step (0 = derived).

With ``micro_batch`` set and ``accum_steps: 0`` the accumulation follows the
process count (256 = 8 processes x 1 image x 32 steps, or 1 x 1 x 256), which is
what lets the WS recipes start on 1, 2, 4 or 8 GPUs. ``norm.ghost_batch`` (samples
per GhostNorm chunk) likewise gives ``norm.ghost_groups`` from the per-process
micro-batch. Pure functions on numbers, no torch: the launcher checks a plan
before it starts any worker.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class BatchPlan:
    world: int
    micro: int          # images per process per micro-batch
    accum: int          # micro-batches per optimizer step
    ghost_groups: int   # GhostNorm chunks per micro-batch (ghost, seqnorm)

    @property
    def global_batch(self) -> int:
        return self.world * self.micro * self.accum


def plan(batch_size: int, world: int, accum_steps: int = 1, micro_batch: int = 0,
         ghost_groups: int = 1, ghost_batch: int = 0) -> BatchPlan:
    """The per-process split of a global batch, or UsageError saying which value to change."""
    where = f"data.batch_size {batch_size} on {world} process(es)"
    if micro_batch:
        if accum_steps == 0:
            if batch_size % (world * micro_batch):
                raise UsageError(f"{where} does not split into micro-batches of train.micro_batch {micro_batch} "
                                 f"per process: make data.batch_size a multiple of {world * micro_batch}")
            accum = batch_size // (world * micro_batch)
        else:
            accum = accum_steps
            if world * micro_batch * accum != batch_size:
                raise UsageError(f"{where} != processes x train.micro_batch {micro_batch} x train.accum_steps "
                                 f"{accum} = {world * micro_batch * accum}; set train.accum_steps=0 to derive it")
        micro = micro_batch
    else:
        accum = accum_steps or 1
        if batch_size % (world * accum):
            raise UsageError(f"{where} is not divisible by processes ({world}) x train.accum_steps ({accum})")
        micro = batch_size // (world * accum)
    groups = ghost_groups
    if ghost_batch:
        if micro % ghost_batch:
            raise UsageError(f"norm.ghost_batch {ghost_batch} does not divide the per-process micro-batch of {micro} "
                             f"({where}, {accum} accumulation step(s))")
        groups = micro // ghost_batch
    return BatchPlan(world=world, micro=micro, accum=accum, ghost_groups=groups)


def for_recipe(recipe, world: int) -> BatchPlan:
    """`plan` for a loaded recipe on `world` processes."""
    t, n = recipe.train, recipe.norm
    return plan(recipe.data.batch_size, world, t.accum_steps, t.micro_batch, n.ghost_groups, n.ghost_batch)
