"""`bn` and `syncbn`: Batch Normalization (Ioffe & Szegedy 2015), as written in
Gitman & Ginsburg 2017 §3.1:

    o_j = gamma_j * (x_j - E_B[x_j]) / sqrt(Var_B[x_j] + eps) + beta_j

with mean and variance over the (N, H, W) positions of channel j of the
*per-process* mini-batch (the papers' setting: "Batch normalization was applied
separately for each GPU's local chunk of a mini-batch", their footnote 4).
`syncbn` computes the statistics over the global batch instead (SyncBatchNorm),
for comparison. Running statistics, eps and momentum follow PyTorch.
"""
from torch import nn

from .bundle import Normalizer


class BatchNorm(Normalizer):
    name = "bn"
    default_bias = False  # the norm's beta replaces the conv bias
    tokens = "the tokens as positions: each feature over the (N, L) tokens of the per-process batch"

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        return cls(num_features, eps=self.options.eps, momentum=self.options.momentum)


class SyncBatchNorm(BatchNorm):
    name = "syncbn"
    tokens = "the tokens as positions: each feature over the (N, L) tokens of the global batch"

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        # SyncBatchNorm accepts (N, C) and (N, C, H, W); with one process it is plain BN.
        return nn.SyncBatchNorm(num_features, eps=self.options.eps, momentum=self.options.momentum)


def build(options):
    """BatchNorm with the statistics of each process's own chunk of the batch (the papers' multi-GPU setting)."""
    return BatchNorm(options)


def build_sync(options):
    """BatchNorm with the statistics of the global batch, synced over processes (SyncBatchNorm)."""
    return SyncBatchNorm(options)
