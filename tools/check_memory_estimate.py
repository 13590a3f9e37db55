#!/usr/bin/env python3
"""Compare normtrain.memory's lower bound of a training step with the peak RSS a real CPU step reaches.

    python tools/check_memory_estimate.py RECIPE NORM IMAGE_SIZE BATCH
    python tools/check_memory_estimate.py cifar10-nv bn 28 128

Builds the recipe's network on synthetic data of the given size, runs 3 SGD steps
(zero_grad(set_to_none=True) between them, as the engine does) and prints the
estimate next to the growth of the process's peak RSS over building the model and
the steps. Run each case in a fresh process (peak RSS only grows).
"""
import resource
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normtrain import config, memory, models  # noqa: E402


def main() -> int:
    name, norm, side, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    r = config.load(name, [("norm.name", norm), ("data.source", "synthetic"), ("data.image_size", side)])
    shape, classes = tuple(r.data.synthetic_shape), r.data.synthetic_classes
    est = memory.estimate(r, shape, classes, batch)
    x, y = torch.randn(batch, *shape), torch.randint(0, classes, (batch,))
    torch.manual_seed(0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    net = models.build(r.model.name, norm, classes, shape)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for _ in range(3):
        F.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"| {name} | {norm} | {'x'.join(map(str, shape))} | {batch} | {memory.gib(est.activations)} | "
          f"{memory.gib(est.total)} | {memory.gib(peak - base)} | {(peak - base) / est.total:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
