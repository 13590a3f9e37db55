"""`none`: no normalization at all, plain conv + bias and ReLU.

The baseline of Gitman & Ginsburg 2017 (§4.1: "As a baseline we use cifar10-nv
without normalization") and of their linear 50-layer experiment (§5).
"""
from .bundle import Normalizer


class NoNorm(Normalizer):
    name = "none"
    default_bias = True
    tokens = "no normalization: nothing on the tokens, plain layers (the norm-free baseline)"


def build(options):
    """No normalization: plain conv + bias and ReLU (the papers' baseline)."""
    return NoNorm(options)
