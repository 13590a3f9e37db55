"""dist.spawn: a real 2-process gloo group inside one command, results back in rank order, failures raised."""
import pytest
import torch

from normtrain import dist


def _sum_ranks(d, offset):
    t = torch.tensor([float(d.rank + offset)])
    dist.all_sum(t)  # a real collective: every rank must get the sum of all
    return d.rank, d.world, float(t)


def _rank1_fails(d):
    if d.rank == 1:
        raise ValueError("rank one is broken")
    return d.rank


def test_spawn_runs_a_gloo_group_and_returns_every_rank():
    assert dist.spawn(_sum_ranks, 2, (10,)) == [(0, 2, 21.0), (1, 2, 21.0)]


def test_spawn_raises_with_the_failing_rank_traceback():
    with pytest.raises(RuntimeError, match=r"rank 1 failed(.|\n)*rank one is broken"):
        dist.spawn(_rank1_fails, 2, timeout_s=120)
