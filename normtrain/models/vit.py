"""Vision Transformers (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", ICLR), in
torchvision's layout (``torchvision.models.VisionTransformer``), every layer through the bundle.

    patches: conv k x k, stride k (``conv_proj``) -> (N, L, C) tokens; a class token is prepended
    (``class_token``), a learned position embedding added (``encoder.pos_embedding``)
    L encoder blocks (``encoder.layers.encoder_layer_i``), pre-norm by default:
        x = x + attention(ln_1(x));  x = x + mlp(ln_2(x))
    a final norm (``encoder.ln``); the class token's features -> classifier (``heads.head``)

- ``vit-b16``: ViT-B/16, 12 blocks of width 768, 12 heads, MLP 3072; with ``ln`` at
  224 x 224 it has torchvision ``vit_b_16``'s 86,567,656 parameters.
- ``vit-s16``: ViT-S/16 (DeiT-S, Touvron et al. 2021), 12 blocks of width 384, 6 heads,
  MLP 1536 (22,050,664 parameters with ``ln`` at 224, 1000 classes).
- ``vit-tiny-digits``: a small ViT for the CPU (tests, scenarios): 2 x 2 patches of the
  8 x 8 digits (16 tokens + the class token), ``depth`` blocks (default 6) of width 64,
  4 heads, MLP 128.

Norms are ``bundle.token_norm(C)`` (ln_1, ln_2, encoder.ln), linear layers
``bundle.linear(..., bias=True)`` (the attention's in_proj (q, k, v stacked, as
``nn.MultiheadAttention``'s ``in_proj_weight``) and out_proj, the MLP's two layers), the
patch embedding ``bundle.conv``, the classifier ``bundle.linear(..., last=True)`` then
``bundle.output``; each residual join is ``bundle.residual(C)`` held by a `Residual`
module, so ``model.drop_path`` and ``norm.residual`` act on each of the 2 x depth
residual branches (`models.build`). Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA).
The non-linearity is GELU (the architecture's; methods that change the activation have
no token form and are refused).

``model.options.norm_position``: ``pre`` (default; ViT, GPT-2) or ``post``, the original
Transformer's ``x = norm(x + f(x))`` after each join (Vaswani et al. 2017; Xiong et al.
2020 compare the two), with no final norm (the last block ends with one).

Initialisation (``model.init: default``, the ViT recipes' setting) is torchvision's:
patch embedding truncated normal with std sqrt(1/fan_in); attention in_proj Xavier
uniform, out_proj PyTorch's default, their biases 0; MLP layers Xavier uniform with
biases N(0, 1e-6); class token 0; position embedding N(0, 0.02); the classifier 0 (a
reparametrised classifier, e.g. under ``wn``, keeps its direction's default init: a
zero direction has no norm). ``model.init: kaiming`` etc. replace the conv/linear
weights as for any network.

torchvision state_dicts load as they are (the attention's ``in_proj_weight`` /
``in_proj_bias`` are renamed on load to ``in_proj.weight`` / ``in_proj.bias``);
``model.dropout`` is applied to the class token's features before the classifier.
``no_weight_decay()`` names the class token and the position embedding, which DeiT and
timm keep out of weight decay besides the 1-d parameters (timm's convention).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..norms import Normalizer

NORM_POSITIONS = ("pre", "post")


class Residual(nn.Module):
    """Owns one residual join (``bundle.residual``): ``join(shortcut, branch)``.

    `models.build` finds it as a residual block (it has a ``join``) and wraps the join with
    ``norm.residual`` / stochastic depth; `models.signal_prop` reads its output."""

    def __init__(self, join: nn.Module):
        super().__init__()
        self.join = join

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return self.join(shortcut, branch)


class SelfAttention(nn.Module):
    """Multi-head self-attention, ``nn.MultiheadAttention``'s parameters through the bundle, SDPA inside."""

    def __init__(self, norm: Normalizer, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention: width {dim} is not divisible into {heads} heads")
        self.heads, self.dropout = heads, float(dropout)
        self.in_proj = norm.linear(dim, 3 * dim, bias=True)
        self.out_proj = norm.linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, l, c = x.shape
        q, k, v = self.in_proj(x).view(n, l, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(o.transpose(1, 2).reshape(n, l, c))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torchvision's nn.MultiheadAttention keeps the stacked q, k, v projection as two raw tensors.
        for name in ("weight", "bias"):
            old = f"{prefix}in_proj_{name}"
            if old in state_dict:
                state_dict[f"{prefix}in_proj.{name}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class EncoderBlock(nn.Module):
    """torchvision's ``EncoderBlock`` (ln_1, self_attention, ln_2, mlp), pre- or post-norm."""

    def __init__(self, norm: Normalizer, dim: int, heads: int, mlp_dim: int, position: str = "pre"):
        super().__init__()
        self.pre = position == "pre"
        self.ln_1 = norm.token_norm(dim)
        self.self_attention = SelfAttention(norm, dim, heads)
        self.ln_2 = norm.token_norm(dim)
        # indices as torchvision's MLPBlock (mlp.0, mlp.3): Linear, GELU, Dropout, Linear, Dropout
        self.mlp = nn.Sequential(norm.linear(dim, mlp_dim, bias=True), nn.GELU(), nn.Dropout(0.0),
                                 norm.linear(mlp_dim, dim, bias=True), nn.Dropout(0.0))
        self.residual_1 = Residual(norm.residual(dim))
        self.residual_2 = Residual(norm.residual(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre:
            x = self.residual_1(x, self.self_attention(self.ln_1(x)))
            return self.residual_2(x, self.mlp(self.ln_2(x)))
        x = self.ln_1(self.residual_1(x, self.self_attention(x)))
        return self.ln_2(self.residual_2(x, self.mlp(x)))


class Encoder(nn.Module):
    def __init__(self, norm: Normalizer, seq_length: int, depth: int, dim: int, heads: int, mlp_dim: int,
                 position: str = "pre"):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim).normal_(std=0.02))  # from BERT
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(norm, dim, heads, mlp_dim, position)) for i in range(depth)))
        self.ln = norm.token_norm(dim) if position == "pre" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(x + self.pos_embedding))


def _has_direction(layer: nn.Module) -> bool:
    """A reparametrised layer (WN, WS, ...): its raw weight is a direction whose norm it divides by."""
    return callable(getattr(layer, "effective_weight", None))


class VisionTransformer(nn.Module):
    def __init__(self, norm: Normalizer, num_classes: int, in_shape: Sequence[int], patch: int, depth: int,
                 dim: int, heads: int, mlp_dim: int, dropout: float = 0.0, norm_position: str = "pre"):
        super().__init__()
        if norm_position not in NORM_POSITIONS:
            raise UsageError(f"model.options.norm_position: '{norm_position}' is not one of: "
                             f"{', '.join(NORM_POSITIONS)}")
        channels, h, w = in_shape if len(in_shape) == 3 else (None, None, None)
        if channels is None or h % patch or w % patch:
            raise UsageError(f"a ViT with {patch}x{patch} patches needs images (C, H, W) with H and W divisible by "
                             f"{patch}; got input shape {tuple(in_shape)} (set data.image_size)")
        self.patch, self.dim = patch, dim
        self.conv_proj = norm.conv(channels, dim, patch, stride=patch, bias=True)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = Encoder(norm, (h // patch) * (w // patch) + 1, depth, dim, heads, mlp_dim, norm_position)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.heads = nn.Sequential(OrderedDict(head=norm.linear(dim, num_classes, bias=True, last=True)))
        self.output = norm.output(num_classes)
        self._init_torchvision()

    @torch.no_grad()
    def _init_torchvision(self) -> None:
        fan_in = self.conv_proj.weight[0].numel()
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        if self.conv_proj.bias is not None:
            nn.init.zeros_(self.conv_proj.bias)
        for block in self.encoder.layers:
            attn = block.self_attention
            nn.init.xavier_uniform_(attn.in_proj.weight)
            for layer in (attn.in_proj, attn.out_proj):
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
            for layer in (block.mlp[0], block.mlp[3]):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.normal_(layer.bias, std=1e-6)
        head = self.heads.head
        if not _has_direction(head):
            nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters that DeiT and timm keep out of weight decay besides the 1-d ones (timm's convention)."""
        return {"class_token", "encoder.pos_embedding"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)             # (N, L, C)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.encoder(x)[:, 0]
        return self.output(self.heads(self.dropout(x)))


def build_vit_b16(norm, num_classes, in_shape, dropout=0.0, norm_position="pre"):
    """ViT-B/16: 12 blocks of width 768, 12 heads (torchvision's vit_b_16 layout: 86,567,656 parameters with ln at 224)."""
    return VisionTransformer(norm, num_classes, in_shape, 16, 12, 768, 12, 3072, dropout, norm_position)


def build_vit_s16(norm, num_classes, in_shape, dropout=0.0, norm_position="pre"):
    """ViT-S/16 (DeiT-S): 12 blocks of width 384, 6 heads, MLP 1536, torchvision's ViT layout."""
    return VisionTransformer(norm, num_classes, in_shape, 16, 12, 384, 6, 1536, dropout, norm_position)


def build_vit_tiny_digits(norm, num_classes, in_shape, dropout=0.0, norm_position="pre", depth=6):
    """Small ViT for the CPU: 2x2 patches of the 8x8 digits, `depth` blocks (default 6) of width 64, 4 heads."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise UsageError(f"model.options.depth: expected a positive integer, got {depth!r}")
    return VisionTransformer(norm, num_classes, in_shape, 2, depth, 64, 4, 128, dropout, norm_position)
