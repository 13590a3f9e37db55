"""A training step traced on fake CUDA tensors: what a GPU would save, convert and launch, counted on any machine.

PyTorch's `FakeTensorMode` (``torch._subclasses.fake_tensor``) runs each ATen operator's
meta function on tensors that have a device, a shape, a dtype and strides but no data,
so a network's forward and backward can be traced "on CUDA" on a machine without a GPU,
under CUDA's own autocast policy (the thread-local switches that ``torch.autocast``
sets; ``torch.autocast("cuda")`` itself disables itself without a GPU). What such a
trace counts exactly: the tensors autograd saves for the backward pass (bytes, dtypes,
shapes), the operators dispatched in forward and backward (a proxy for kernel
launches), the dtype of every activation, and every operator that mixes the NCHW and
channels_last layouts (a layout conversion, explicit or inside the kernel).

Where a meta function cannot know what a CUDA machine does, this module corrects it,
each correction the rule of the CUDA code it stands for:

- convolution backend: without a GPU ``torch._C._select_conv_backend`` picks the slow
  2-d backend, whose outputs are NCHW; on a GPU it picks cuDNN, whose output follows a
  channels_last input or weight (``cudnn_conv_suggest_memory_format``). The trace asks
  for the cuDNN backend and lets ``_conv_determine_backend_memory_format`` decide.
- batch-norm backward: the meta function returns ``grad_input`` in ``grad_output``'s
  layout; the CUDA kernels (native and cuDNN) return it in the input's suggested layout
  after copying ``grad_output`` into it. The trace does the same and counts that copy.
- the backward pass: the autograd engine wants a CUDA context for CUDA tensors
  (pytorch#92627), so `run_backward` walks the graph node by node as the engine does
  (gradients summed where paths meet, reduced to each input's shape and cast to its
  dtype, as ``validate_outputs``); tensor hooks are not run (nothing the audited
  training step registers outside gradient accumulation).

Everything else is the meta functions' output, which PyTorch checks against its CUDA
kernels (fake-tensor cross-reference tests); batch-norm's backend choice is torch's own
(``_select_batch_norm_backend``: native for bf16, cuDNN for fp16 and fp32).
"""
from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass, field

import torch
from torch.utils._pytree import tree_leaves
from torch.utils._python_dispatch import TorchDispatchMode

#: A 4-d activation this large (elements) kept in fp32 under autocast is an "fp32 activation".
FP32_MIN_ELEMENTS = 100_000

aten = torch.ops.aten
_BN_BACKWARD = {aten.native_batch_norm_backward.default, aten.cudnn_batch_norm_backward.default,
                aten.batch_norm_backward.default, aten.miopen_batch_norm_backward.default}
#: Allocations and metadata: no kernel is launched for them.
_NO_KERNEL = {"empty", "empty_strided", "new_empty", "new_empty_strided", "empty_like", "lift_fresh", "detach",
              "alias", "_unsafe_view", "as_strided_", "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset",
              "is_contiguous", "set_", "resize_", "_has_compatible_shallow_copy_type"}


def layout(t: torch.Tensor) -> str | None:
    """'cl' or 'nchw' for a dense 4-d tensor in exactly one of the two layouts; None otherwise
    (not 4-d, both at once as for 1x1 maps or one channel, or neither: expanded, permuted)."""
    if t.dim() != 4:
        return None
    cl, nchw = t.is_contiguous(memory_format=torch.channels_last), t.is_contiguous()
    if cl == nchw:
        return None
    return "cl" if cl else "nchw"


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


@contextlib.contextmanager
def fake_cuda():
    """A FakeTensorMode for tracing "on CUDA", with the cuDNN convolution backend (see the module doc)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    select = torch._C._select_conv_backend

    def cudnn_backend(input, weight, *args, **kwargs):
        # fake_impls.conv reads this attribute at call time; a CUDA build with cuDNN picks cuDNN here.
        if input.device.type == "cuda" and weight.dim() == 4 and torch.backends.cudnn.is_available():
            return torch._C._ConvBackend.Cudnn
        return select(input, weight, *args, **kwargs)

    torch._C._select_conv_backend = cudnn_backend
    try:
        with FakeTensorMode(allow_non_fake_inputs=False) as mode:
            yield mode
    finally:
        torch._C._select_conv_backend = select


@contextlib.contextmanager
def cuda_autocast(amp: str):
    """CUDA autocast at `amp` ('bf16', 'fp16'; 'off' does nothing) without a GPU: the thread-local
    state ``torch.autocast('cuda', dtype)`` would set (which turns itself off when no GPU is visible)."""
    if amp == "off":
        yield
        return
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    prev = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), torch.is_autocast_cache_enabled())
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    torch.set_autocast_cache_enabled(True)
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", prev[0])
        torch.set_autocast_dtype("cuda", prev[1])
        torch.set_autocast_cache_enabled(prev[2])


@dataclass
class Saved:
    """One storage autograd saved for the backward pass (several saves of one storage count once)."""
    nbytes: int
    dtype: torch.dtype
    shape: tuple
    activation: bool   # depends on the batch (else: parameters and what is computed from them alone)
    numel: int


@dataclass
class Counts:
    ops: collections.Counter = field(default_factory=collections.Counter)           # phase -> operators
    by_op: collections.Counter = field(default_factory=collections.Counter)         # (phase, name) -> operators
    conversions: collections.Counter = field(default_factory=collections.Counter)   # (phase, name) -> mixed layouts
    weight_conversions: collections.Counter = field(default_factory=collections.Counter)  # the same, weight-shaped
    fp32_outputs: collections.Counter = field(default_factory=collections.Counter)  # forward ops writing fp32 4-d
    saved: dict = field(default_factory=dict)                                      # storage key -> Saved


class Recorder(TorchDispatchMode):
    """Counts what a traced step dispatches (push it above the FakeTensorMode: it sees each op first).

    - operators per phase (``phase`` is set by the caller), views and allocations excluded;
    - which storages hold activations: the input's, and every output of an operator that
      reads one (in-place updates of buffers excluded);
    - layout conversions: an operator whose dense 4-d arguments and results are not all in
      one layout (an explicit copy between NCHW and channels_last, or one inside the kernel);
      counted apart when all of them have the shape of a 4-d parameter (`weight_shapes`):
      weight-sized work such as summing a reparametrised weight's two gradient paths;
    - forward operators that write a 4-d fp32 activation of at least `FP32_MIN_ELEMENTS`.
    """

    def __init__(self, inputs=(), weight_shapes=()):
        super().__init__()
        self.phase = "forward"
        self.counts = Counts()
        self.activations = {_key(t) for t in inputs}
        self._alive = list(inputs)  # storage keys stay unique while their tensors live
        self.weight_shapes = {tuple(s) for s in weight_shapes}

    @staticmethod
    def _kind(func) -> tuple[bool, list[int]]:
        """(launches a kernel, positions of the arguments it writes)."""
        name = func.overloadpacket.__name__
        if name in _NO_KERNEL or func.namespace == "prim":
            return False, []
        written = [i for i, a in enumerate(func._schema.arguments) if a.alias_info is not None and a.alias_info.is_write]
        view = not written and any(r.alias_info is not None for r in func._schema.returns)
        return not view, written

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        kernel, written = self._kind(func)
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func in _BN_BACKWARD and isinstance(out, tuple) and out[0] is not None:
            # CUDA: grad_input in the input's layout, grad_output copied into it first (module doc).
            want = layout(args[1])
            if want is not None and layout(out[0]) != want:
                fmt = torch.channels_last if want == "cl" else torch.contiguous_format
                out = (out[0].contiguous(memory_format=fmt),) + tuple(out[1:])
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        name = f"{func.namespace}.{func.overloadpacket.__name__}"
        c = self.counts
        if kernel:
            c.ops[self.phase] += 1
            c.by_op[self.phase, name] += 1
            mixed = [t for t in ins + outs if layout(t) is not None]
            if len({layout(t) for t in mixed}) > 1:
                weights = all(tuple(t.shape) in self.weight_shapes for t in mixed)
                (c.weight_conversions if weights else c.conversions)[self.phase, name] += 1
        if written:
            # An in-place write: the written tensor holds an activation if what flows into it does
            # (out.copy_(activation) does; a running-statistics update also does, harmlessly: buffers
            # are never saved for the backward pass).
            targets = [args[i] for i in written if i < len(args) and isinstance(args[i], torch.Tensor)]
            sources = [t for t in ins if all(t is not w for w in targets)]
            if any(_key(t) in self.activations for t in sources):
                for t in targets:
                    self.activations.add(_key(t))
                    self._alive.append(t)
        elif any(_key(t) in self.activations for t in ins):
            for t in outs:
                self.activations.add(_key(t))
                self._alive.append(t)
                if (self.phase == "forward" and kernel and t.dtype == torch.float32 and t.dim() == 4
                        and t.numel() >= FP32_MIN_ELEMENTS):
                    c.fp32_outputs[name] += 1
        return out

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """A saved_tensors_hooks pack hook: records the saved storage (once) and keeps the tensor."""
        k = _key(t)
        if k not in self.counts.saved:
            storage = t.untyped_storage()
            self.counts.saved[k] = Saved(storage.nbytes(), t.dtype, tuple(t.shape), k in self.activations,
                                         storage.nbytes() // max(t.element_size(), 1))
            self._alive.append(t)
        return t


def run_backward(loss: torch.Tensor) -> None:
    """``loss.backward()`` for fake CUDA tensors, node by node (see the module doc)."""
    root = loss.grad_fn
    if root is None:
        raise ValueError("the loss does not require grad")
    deps: collections.Counter = collections.Counter()
    seen, stack = {root}, [root]
    while stack:
        for nxt, _ in stack.pop().next_functions:
            if nxt is None:
                continue
            deps[nxt] += 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    buffers = {root: [torch.ones_like(loss)]}
    ready = [root]
    with torch.no_grad():
        while ready:
            node = ready.pop()
            inputs = buffers.pop(node)
            if hasattr(node, "_forward_cls"):  # a custom autograd.Function: its backward, with
                # undefined gradients materialised as zeros (ctx.materialize_grads' default)
                inputs = [torch.zeros(m.shape, dtype=m.dtype, device=m.device) if g is None else g
                          for g, m in zip(inputs, node._input_metadata)]
                grads = node.apply(*inputs)
            else:
                grads = node(*inputs)
            if not isinstance(grads, tuple):
                grads = (grads,)
            for (nxt, nr), g in zip(node.next_functions, grads):
                if nxt is None:
                    continue
                if g is not None:
                    meta = nxt._input_metadata[nr]
                    if tuple(g.shape) != tuple(meta.shape):
                        g = g.sum_to_size(meta.shape)
                    if g.dtype != meta.dtype:
                        g = g.to(meta.dtype)
                slot = buffers.setdefault(nxt, [None] * len(nxt._input_metadata))
                slot[nr] = g if slot[nr] is None else (slot[nr] if g is None else slot[nr] + g)
                deps[nxt] -= 1
                if deps[nxt] == 0:
                    ready.append(nxt)


def to_layout(module: torch.nn.Module, channels_last: bool) -> None:
    """``module.to(memory_format=channels_last)`` for fake parameters (Module.to cannot swap fake tensors)."""
    if not channels_last:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        if t.dim() == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)


def _fake_network(build, mode) -> torch.nn.Module:
    """`build()` on fake CUDA tensors; a network whose initialisation reads tensor values (a ViT's)
    cannot be built there, so it is built for real on the CPU and its tensors are made fake."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, unset_fake_temporarily
    try:
        with torch.device("cuda"):
            return build()
    except DataDependentOutputException:
        pass
    with unset_fake_temporarily():
        net = build()
        slots = [(m._parameters, name, p) for m in net.modules() for name, p in m._parameters.items() if p is not None]
        slots += [(m._buffers, name, b) for m in net.modules() for name, b in m._buffers.items() if b is not None]
        fakes = [(where, name, mode.from_tensor(t.detach()), t) for where, name, t in slots]
    for where, name, fake, real in fakes:
        fake = fake.to("cuda")
        where[name] = torch.nn.Parameter(fake, requires_grad=real.requires_grad) \
            if isinstance(real, torch.nn.Parameter) else fake
    return net


def trace_step(build, in_shape, micro: int, classes: int, amp: str, channels_last: bool,
               backward: bool = True) -> Counts:
    """Build a network with `build()` on fake CUDA and trace one training step's forward (and backward)
    on a fake batch of `micro` inputs of `in_shape`, as the engine runs it: train mode, the input in the
    network's layout, autocast at `amp`, cross-entropy on the fp32 logits."""
    import torch.nn.functional as F
    with fake_cuda() as mode:
        net = _fake_network(build, mode)
        net.train()
        to_layout(net, channels_last)
        x = torch.empty((micro,) + tuple(in_shape), device="cuda")
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.zeros(micro, dtype=torch.long, device="cuda")
        rec = Recorder([x], [p.shape for p in net.parameters() if p.dim() == 4])
        with rec:
            with cuda_autocast(amp), torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t):
                loss = F.cross_entropy(net(x).float(), y)
            if backward:
                rec.phase = "backward"
                run_backward(loss)
    return rec.counts
