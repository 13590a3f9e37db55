"""The seam between a normalization method and a network (DESIGN §6).

A method touches more than the norm layer: WN changes the conv, TReLU the
activation, NormProp the residual sum, NF the whole block. Networks therefore
build *every* layer through a `Normalizer` bundle and never look at a method's
name. Each method subclasses `Normalizer` and overrides what it changes.

Contract for networks (what each call means):

- ``conv(in_ch, out_ch, kernel_size, stride=1, padding=0, groups=1, bias=None, last=False)``
  A 2-d convolution. ``bias=None`` lets the method decide (activation-norm
  methods: no bias, since the norm's shift replaces it; weight methods: a bias);
  ``True``/``False`` is the architecture's choice for layers with no norm after
  them. Methods whose definition fixes the bias (trelu-wn hidden layers) may
  override it. ``last=True`` marks the network's output layer: the module built
  with it carries ``is_output_layer = True`` (set here for every method, see
  `output_layers`), which is how AGC leaves the classifier alone.
- ``linear(in_features, out_features, bias=None, last=False)``: same for dense layers.
- ``norm(num_features, dims=2)``: the activation normalization placed after a
  conv (``dims=2``, input N,C,H,W) or a linear layer (``dims=1``, input N,C)
  where no activation follows it (the last norm of a post-activation residual
  block, a projection shortcut). Identity for weight-normalization methods.
- ``act(num_features)``: the non-linearity where no norm precedes it (after a
  residual join, unnormalized layers): ReLU, TReLU, NormProp's shifted and scaled
  ReLU, NF's gamma-scaled ReLU.
- ``norm_act(num_features, dims=2) -> (norm, act)``: a norm directly followed by
  the activation. By default ``(norm(...), act(...))``; fused
  normalization-activation layers (EvoNorm) return ``(layer, Identity)``, so a
  network always builds the pair through this call.
- ``residual(num_features=None)``: a module ``(shortcut, branch) -> output`` joining a
  residual block whose tensors have ``num_features`` channels. Networks pass the
  channel count; methods with per-channel join parameters (trelu-wn's weighted
  addition) need it, the others ignore it.
- ``residual_join(inner, index, depth, drop_rate=0.0)``: ``inner`` (a join built by
  ``residual()``) with the ``norm.residual`` branch scaling of block ``index`` of
  ``depth`` and stochastic depth around it (`residual.wrap`); `models.build` applies
  it to every block, so networks only call ``residual()``.
- ``output(num_features)``: a module applied to the network's output (N,
  num_features), after the output layer (``last=True``) and whatever the
  architecture puts after it (cifar10-nv's final ReLU and pooling). The identity
  except for trelu-wn, whose scale and bias of the last layer live here.
- ``nf_alpha``, ``nf_skip_gain``: the NF-ResNet block constants (alpha, initial skip gain).

Transformers (models/vit.py, models/convnext.py) call two more, and take their
linear layers (``bias=True``: the architecture's choice), convolutions and
residual joins from the same calls; their non-linearity is the architecture's
GELU (the methods that change the activation have no form there and are refused):

- ``token_norm(num_features)``: the norm of tokens with the features last,
  input (N, ..., C): a ViT's (N, L, C), the channels-last (N, H, W, C) inside a
  ConvNeXt block (where torchvision has ``nn.LayerNorm``).
- ``channel_norm(num_features)``: the norm of an (N, C, H, W) map in ConvNeXt's
  stem, downsampling layers and head (where torchvision has ``LayerNorm2d``).

Both are defined once here for every method: the method's conv norm
(``norm(C, dims=2)``) with the tokens as the positions of a map, i.e. a
(N, L, C) input is normalized as the (N, C, L, 1) map it is a view of (`layout.AsMap`;
no copy: that view is channels_last). So ``bn`` takes its statistics over the
(N, L) tokens of each feature, ``ghost`` over chunks of samples, ``gn`` over groups of
features and all the tokens of a sample, the weight methods (identity norm)
reparametrise every linear layer and normalize no activation. Methods that normalize
each token by itself (``ln``, ``rmsn``) or element-wise (``dyt``) override them.
Each method says what it means there in one line, ``tokens``; a method with no
meaning for tokens keeps ``tokens = None`` and gives its reason in ``no_tokens``: both
calls then raise a UsageError (one line, exit 2, raised while the network is built, so
before anything is written), as networks without residual blocks refuse residual options.

And one fact for the engine (never for networks): ``channels_last_ok``, whether
the method's kernels run as fast in channels_last as in NCHW on CUDA. PyTorch's
CUDA group_norm has an NCHW kernel only (a channels_last input is converted), so
the GroupNorm family says False and stays NCHW unless the model is compiled.
"""
from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from ..errors import UsageError
from . import residual
from .joins import Add
from .layout import AsMap

#: Attribute set on the module a bundle builds with ``last=True`` (the network's output layer).
OUTPUT_LAYER = "is_output_layer"


def _marks_output(build):
    """Wrap a ``conv``/``linear`` builder so that the module it builds with ``last=True`` is marked."""
    signature = inspect.signature(build)

    @functools.wraps(build)
    def wrapper(self, *args, **kwargs):
        module = build(self, *args, **kwargs)
        if signature.bind(self, *args, **kwargs).arguments.get("last", False):
            setattr(module, OUTPUT_LAYER, True)
        return module
    return wrapper


def output_layers(model: nn.Module) -> list[nn.Module]:
    """The modules of `model` that a bundle built with ``last=True`` (the classifier), whatever their names."""
    return [m for m in model.modules() if getattr(m, OUTPUT_LAYER, False)]


class Normalizer:
    """Base bundle: plain layers, ReLU, plain residual sum. Subclasses override what their method changes."""

    name = "base"
    #: Bias a conv/linear gets when the network passes ``bias=None``.
    default_bias = True
    #: channels_last is the fast layout for this method's kernels on CUDA (see the module docstring).
    channels_last_ok = True
    #: What the method does in a transformer (its token and channel norms), in one line; None: it has no
    #: meaning there and transformers refuse it, with `no_tokens` as the reason.
    tokens: str | None = None
    #: Why a method with ``tokens = None`` has no form for tokens (the refusal's reason).
    no_tokens: str = "no form for a transformer's tokens is defined"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Every method's conv/linear marks its output layer, without each method having to.
        for builder in ("conv", "linear"):
            if builder in cls.__dict__:
                setattr(cls, builder, _marks_output(cls.__dict__[builder]))

    def __init__(self, options=None):
        if options is None:
            from . import options_class  # the package's registry, above this module
            options = options_class()()
        self.options = options

    # -- layers ---------------------------------------------------------------
    def _bias(self, bias: bool | None) -> bool:
        return self.default_bias if bias is None else bias

    @_marks_output
    def conv(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
             groups: int = 1, bias: bool | None = None, last: bool = False) -> nn.Module:
        return nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding,
                         groups=groups, bias=self._bias(bias))

    @_marks_output
    def linear(self, in_features: int, out_features: int, bias: bool | None = None,
               last: bool = False) -> nn.Module:
        return nn.Linear(in_features, out_features, bias=self._bias(bias))

    def norm(self, num_features: int, dims: int = 2) -> nn.Module:
        return nn.Identity()

    def act(self, num_features: int) -> nn.Module:
        return nn.ReLU(inplace=True)

    def norm_act(self, num_features: int, dims: int = 2) -> tuple[nn.Module, nn.Module]:
        return self.norm(num_features, dims), self.act(num_features)

    # -- transformers -----------------------------------------------------------
    def require_tokens(self) -> None:
        """UsageError (one line) unless the method has a meaning for a transformer's tokens."""
        if self.tokens is None:
            from . import METHODS  # not at the top: the registry's modules import this one
            usable = [n for n, build in METHODS.items() if build(None).tokens is not None]
            raise UsageError(f"norm '{self.name}' has no meaning in a transformer (vit-*, convnext-tiny): "
                             f"{self.no_tokens}; methods that have one: {', '.join(usable)}")

    def token_norm(self, num_features: int) -> nn.Module:
        """Norm of (N, ..., C) tokens, features last: the method's conv norm with the tokens as map positions."""
        self.require_tokens()
        norm = self.norm(num_features, dims=2)
        return norm if isinstance(norm, nn.Identity) else AsMap(norm)

    def channel_norm(self, num_features: int) -> nn.Module:
        """Norm of an (N, C, H, W) map where ConvNeXt has LayerNorm2d: the method's conv norm."""
        self.require_tokens()
        return self.norm(num_features, dims=2)

    # -- block-level hooks ----------------------------------------------------
    def residual(self, num_features: int | None = None) -> nn.Module:
        return Add()

    def residual_join(self, inner: nn.Module, index: int, depth: int, drop_rate: float = 0.0) -> nn.Module:
        return residual.wrap(inner, self.options.residual, index, depth, self.options.residual_depth_power,
                             drop_rate)

    def output(self, num_features: int) -> nn.Module:
        return nn.Identity()

    @property
    def nf_alpha(self) -> float:
        return self.options.nf_alpha

    @property
    def nf_skip_gain(self) -> float:
        return self.options.nf_skip_gain

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def data_init(model: nn.Module, batch: torch.Tensor) -> bool:
    """Run data-dependent initialisation (Salimans & Kingma) if any layer asks for it.

    Layers that need it expose ``needs_data_init`` (True until initialised) and do
    their initialisation inside ``forward`` while that flag is set. One forward of
    ``batch`` in train mode under no_grad initialises them layer by layer, in
    order, as the paper prescribes. Returns True if an init was run.
    Call before wrapping in DDP: DDP then broadcasts rank 0's result to all ranks.
    """
    if not any(getattr(m, "needs_data_init", False) for m in model.modules()):
        return False
    was_training = model.training
    model.train()
    with torch.no_grad():
        model(batch)
    model.train(was_training)
    return True
