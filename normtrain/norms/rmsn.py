"""`rmsn`: Root Mean Square Layer Normalization (Zhang & Sennrich 2019, NeurIPS, eq. 4):

    a_bar_i = a_i / RMS(a) * g_i,    RMS(a) = sqrt(1/n sum_{i=1..n} a_i^2)

LayerNorm without the re-centering: the n summed inputs of a layer for one sample
are only re-scaled, by their root mean square, then multiplied by a gain g (init 1).
There is no bias (the paper's eq. 4; ``torch.nn.RMSNorm`` has none either).
``norm.eps`` is added under the square root, x / sqrt(mean(x^2) + eps), as
``torch.nn.RMSNorm`` computes it.

Like ``ln``, the n inputs are what the network makes them (ln.py):

- **Transformer tokens**: the C features of each token, ``torch.nn.RMSNorm(C)``
  (`token_norm`); ConvNeXt's (N, C, H, W) maps: the C channels of each position
  (`RMSNorm2d`, ``channel_norm``), as ``ln`` there.
- **Conv maps (ResNets, MLPs)**: all (C, H, W) values of a sample, with a per-channel
  gain, i.e. ``ln``'s GroupNorm(1) without the mean (`SampleRMSNorm`); an (N, C) input is
  ``torch.nn.RMSNorm(C)`` exactly.

The conv bias is kept where the norm follows a conv: RMSNorm has no shift to replace it.

Memory (`SampleRMSNorm`): ``F.rms_norm`` runs in fp32 under CUDA autocast (as layer_norm),
and the gain after it keeps the normalized output for its own gradient, so a ResNet saved
fp32 copies of every normalized activation (3.4x bn's saved bytes on ResNet-50, the
fake-CUDA audit, docs/PERFORMANCE.md). Training forwards run `_SampleRMS` instead, an
autograd Function keeping only the input (its own dtype) and each sample's
1/RMS, with the statistics in fp32 and the backward written out; `sample_rms_reference`
is the formula as tensor ops (what torch.compile traces; tests compare the two).
"""
from __future__ import annotations

import torch
from torch import nn

from .bundle import Normalizer


def _gain(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return w.view((1, -1) + (1,) * (x.dim() - 2))


def sample_rms_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean_{C,*}(x^2) + eps) * g_c`` as tensor ops, the statistics in fp32, output in x's dtype."""
    xf = x.float()
    r = torch.rsqrt(xf.square().mean(dim=tuple(range(1, x.dim())), keepdim=True) + eps)
    return (xf * r * _gain(weight, x)).to(x.dtype)


class _SampleRMS(torch.autograd.Function):
    """`sample_rms_reference` keeping x and r = 1/RMS per sample. With x_hat = x r and dx_hat = dy g over the
    K = C x H x W values of a sample: dx = r (dx_hat - x_hat mean_K(dx_hat x_hat)), dg = sum dy x_hat."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        xf = x.float()
        r = torch.rsqrt(xf.square().mean(dim=tuple(range(1, x.dim())), keepdim=True) + eps)
        ctx.save_for_backward(x, r, weight)
        return (xf * r * _gain(weight, x)).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, r, weight = ctx.saved_tensors
        dyf = dy.float()
        x_hat = x.float() * r
        dx = dweight = None
        if ctx.needs_input_grad[0]:
            dx_hat = dyf * _gain(weight, x)
            proj = (dx_hat * x_hat).mean(dim=tuple(range(1, x.dim())), keepdim=True)
            dx = (r * torch.addcmul(dx_hat, x_hat, proj, value=-1)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dweight = (dyf * x_hat).sum(dim=(0,) + tuple(range(2, x.dim())))
        return dx, dweight, None


class SampleRMSNorm(nn.Module):
    """``x / sqrt(mean_{C,*}(x^2) + eps) * g_c`` over everything but the batch dim, a gain per channel (dim 1)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"RMSNorm: expected input (N, C) or (N, C, ...), got shape {tuple(x.shape)}")
        if torch.compiler.is_compiling():
            return sample_rms_reference(x, self.weight, self.eps)
        return _SampleRMS.apply(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class RMSNorm2d(nn.RMSNorm):
    """RMSNorm over the channels of each position of an (N, C, H, W) map (the RMS analogue of ``LayerNorm2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class RMSNorm(Normalizer):
    name = "rmsn"
    default_bias = True  # no shift in the norm to replace a conv bias
    tokens = ("RMSNorm over each token's features (torch.nn.RMSNorm); ConvNeXt: over the channels of each "
              "position")

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        return SampleRMSNorm(num_features, eps=self.options.eps)

    def token_norm(self, num_features: int) -> nn.Module:
        return nn.RMSNorm(num_features, eps=self.options.eps)

    def channel_norm(self, num_features: int) -> nn.Module:
        return RMSNorm2d(num_features, eps=self.options.eps)


def build(options):
    """RMSNorm: x / RMS(x) * g, no mean, no bias (Zhang & Sennrich 2019); each token's features, or a sample's (C, H, W)."""
    return RMSNorm(options)
