"""The fake-CUDA audit: what one training step of every method costs a GPU, counted on any machine.

For a recipe on N GPUs (its per-GPU micro-batch: resnet50-imagenet on 8 GPUs gives 32), every
registered method (`norms.METHODS`, so methods added later are in it) and the options that
change the graph (`VARIANTS`), under CUDA's bf16 and fp16 autocast and in the layout the
engine chooses (`engine.runtime`), one forward and backward is traced on fake CUDA tensors
(`normtrain.fakecuda`) and counted:

- saved activation bytes: the storages autograd keeps for the backward pass that depend
  on the batch (each once), by dtype; the parameters and their casts are counted apart;
- fp32 activations: saved 4-d activations of at least 100k elements kept in fp32 under
  autocast (per-sample or per-channel statistics are smaller, and allowed);
- layout conversions: operators in forward or backward that mix NCHW and channels_last;
- forward and backward operators (views and allocations excluded);
- whether ``train.compile: auto`` compiles the method on CUDA at this micro-batch.

Each figure is also given over `bn`'s in the same recipe, GPU count and autocast dtype, and
checked against `TARGETS` (issue 18): a method that cannot meet one says why in `EXCEPTIONS`,
which the CI test (tests/test_audit.py) and the table in docs/PERFORMANCE.md read.
tools/audit_gpu.py is the command line.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

#: The targets of issue 18 (ResNet-50, 32 images per GPU, bf16).
TARGETS = {
    "saved_vs_bn": 1.2,          # saved activation bytes, at most this many times bn's
    "fp32_activations": 0,       # saved fp32 4-d activations of >= 100k elements under autocast
    "layout_conversions": 0,     # in channels_last rows: operators mixing NCHW and channels_last
    "forward_ops_vs_bn": 2.5,    # eager forward operators over bn's, unless train.compile auto compiles the method
}

#: Targets a method cannot meet, with why and what would: {row label: {target: reason}}. The audit
#: reports them, the CI test accepts exactly these (and fails when one is no longer needed).
EXCEPTIONS: dict[str, dict[str, str]] = {
    "bn residual=skipinit": {
        "saved_vs_bn": "SkipInit's learnable branch gain g (x + g f(x)) needs the branch output f(x) for "
                       "dL/dg = sum(dout * f(x)), and nothing else keeps it (the branch's last norm keeps its "
                       "input, not its output): one more activation per residual block, 1.25x on ResNet-50. "
                       "What would remove it: folding g into the branch's last norm (gamma' = g gamma, a "
                       "different parametrisation with weight decay on the product), or recomputing f(x) from "
                       "the norm's saved input in the backward pass (a fused norm-and-gain Function per method).",
    },
}


@dataclass(frozen=True)
class Case:
    """One row: a method (with recipe overrides) on a recipe at `world` GPUs under `amp` autocast."""
    method: str
    recipe: str = "resnet50-imagenet"
    world: int = 8
    amp: str = "bf16"
    overrides: tuple = ()       # ((key, value), ...) beyond norm.name
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.method


def variants() -> list[tuple[str, str, tuple]]:
    """(label, method, overrides) of the options that change a residual network's graph, each on the
    method it belongs to: every `norm.residual` scaling and stochastic depth (on bn), and trelu-wn's
    plain join (the recipes use the weighted one)."""
    from .norms.options import RESIDUAL_SCALINGS
    out = [(f"bn residual={s}", "bn", (("norm.residual", s),)) for s in RESIDUAL_SCALINGS if s != "none"]
    out.append(("bn drop_path=0.1", "bn", (("model.drop_path", 0.1),)))
    out.append(("trelu-wn join=add", "trelu-wn", (("norm.trelu_join", "add"),)))
    return out


def cases(recipe: str = "resnet50-imagenet", world: int = 8, amps=("bf16", "fp16"), methods=None,
          with_variants: bool = True, overrides: tuple = ()) -> list[Case]:
    """Every method (default: all registered) and, with `with_variants`, `variants()`, for each amp;
    `overrides` apply to every row (e.g. a smaller network for CI)."""
    from . import norms
    names = list(methods) if methods is not None else norms.names()
    if "bn" not in names:
        names = ["bn"] + names  # the reference of every ratio
    rows = [(m, m, ()) for m in names]
    if with_variants:
        rows += [v for v in variants() if v[1] in names]
    return [Case(method, recipe, world, amp, tuple(overrides) + extra, label)
            for amp in amps for label, method, extra in rows]


def setting(case: Case):
    """(recipe, batch plan, bundle, input shape, classes) as the engine would build them on `case.world` GPUs."""
    from . import batching, config, engine
    recipe = config.load(case.recipe, [("norm.name", case.method), *case.overrides])
    plan = batching.for_recipe(recipe, case.world)
    bundle = engine.bundle_for(recipe, plan)
    data = dataclasses.replace(recipe.data, synthetic_shape=[], synthetic_classes=0)
    config.synthetic_like(data, recipe.data)  # the recipe's sample shape and classes, without its data
    return recipe, plan, bundle, tuple(data.synthetic_shape), data.synthetic_classes


#: The method name of a reference row: torchvision's network of the recipe's model name (bn, its own pooling).
TORCHVISION = "torchvision"


def run_case(case: Case) -> dict:
    """Trace `case` and count (see the module doc)."""
    from . import engine, fakecuda, models
    t0 = time.process_time()
    reference = case.method == TORCHVISION
    recipe, plan, bundle, in_shape, classes = setting(dataclasses.replace(case, method="bn") if reference else case)
    cuda = torch.device("cuda")
    _, eager_layout = engine.runtime(recipe, cuda, bundle, compile=False)

    def build():
        if reference:
            import torchvision
            return getattr(torchvision.models, recipe.model.name.replace("-", "_"))(num_classes=classes)
        return models.build(recipe.model.name, bundle, classes, in_shape, init="default",
                            drop_path=recipe.model.drop_path, dropout=recipe.model.dropout, **recipe.model.options)
    counts = fakecuda.trace_step(build, in_shape, plan.micro, classes, case.amp, eager_layout)
    saved = list(counts.saved.values())
    acts = [s for s in saved if s.activation]
    by_dtype: dict = {}
    for s in acts:
        key = str(s.dtype).replace("torch.", "")
        by_dtype[key] = by_dtype.get(key, 0) + s.nbytes
    fp32 = [s for s in acts if s.dtype == torch.float32 and len(s.shape) == 4
            and s.numel >= fakecuda.FP32_MIN_ELEMENTS]
    conversions = sum(counts.conversions.values())
    return {
        "label": case.name, "method": case.method, "recipe": case.recipe, "model": recipe.model.name,
        "overrides": [list(kv) for kv in case.overrides], "world": case.world, "micro": plan.micro,
        "in_shape": list(in_shape), "amp": case.amp, "channels_last": eager_layout,
        "saved_bytes": sum(s.nbytes for s in acts), "saved_by_dtype": by_dtype,
        "saved_weight_bytes": sum(s.nbytes for s in saved if not s.activation),
        "fp32_activations": len(fp32), "fp32_activation_bytes": sum(s.nbytes for s in fp32),
        "fp32_outputs": sum(counts.fp32_outputs.values()),
        "layout_conversions": conversions,
        "conversion_ops": {f"{phase}:{name}": n for (phase, name), n in sorted(counts.conversions.items())},
        "weight_conversions": sum(counts.weight_conversions.values()),
        "forward_ops": counts.ops["forward"], "backward_ops": counts.ops["backward"],
        "trace_cpu_s": time.process_time() - t0,
    }


def add_ratios(rows: list[dict]) -> None:
    """Ratios to bn's row with the same recipe, model, GPUs, micro-batch and amp; the compile-auto
    decision (engine.compile_auto with the forward-operator ratio)."""
    from . import engine
    key = lambda r: (r["recipe"], r["model"], r["world"], r["micro"], r["amp"])  # noqa: E731
    bn = {key(r): r for r in rows if r["label"] == "bn"}
    for r in rows:
        ref = bn.get(key(r))
        if ref is None:
            continue
        r["saved_vs_bn"] = r["saved_bytes"] / ref["saved_bytes"]
        r["forward_ops_vs_bn"] = r["forward_ops"] / ref["forward_ops"]
        r["backward_ops_vs_bn"] = r["backward_ops"] / ref["backward_ops"]
        r["compile_auto"], r["compile_why"] = engine.compile_auto(r["micro"], r["forward_ops_vs_bn"])


def failures(row: dict, exceptions: dict | None = None) -> dict[str, str]:
    """{target: what is wrong} for the targets `row` misses and no exception covers (bf16 rows only:
    the targets are stated for bf16; fp16 rows are reported)."""
    exceptions = EXCEPTIONS if exceptions is None else exceptions
    if row["amp"] != "bf16" or "saved_vs_bn" not in row or row["method"] == TORCHVISION:
        return {}
    out = {}
    if row["saved_vs_bn"] > TARGETS["saved_vs_bn"]:
        out["saved_vs_bn"] = f"saved activations {row['saved_vs_bn']:.2f}x bn (target <= {TARGETS['saved_vs_bn']})"
    if row["fp32_activations"] > TARGETS["fp32_activations"]:
        out["fp32_activations"] = f"{row['fp32_activations']} fp32 4-d activations saved under bf16"
    if row["channels_last"] and row["layout_conversions"] > TARGETS["layout_conversions"]:
        out["layout_conversions"] = (f"{row['layout_conversions']} NCHW/channels_last conversions "
                                     f"({', '.join(row['conversion_ops'])})")
    if row["forward_ops_vs_bn"] > TARGETS["forward_ops_vs_bn"] and not row["compile_auto"]:
        out["forward_ops_vs_bn"] = (f"eager forward {row['forward_ops_vs_bn']:.2f}x bn's operators and "
                                    "train.compile auto does not compile it")
    excused = exceptions.get(row["label"], {})
    return {k: v for k, v in out.items() if k not in excused}


def run(cases_: list[Case], on_row=None) -> list[dict]:
    rows = []
    for c in cases_:
        rows.append(run_case(c))
        if on_row:
            on_row(rows[-1])
    add_ratios(rows)
    return rows


def markdown(rows: list[dict]) -> str:
    """The table of docs/PERFORMANCE.md: one line per row, ratios to bn, targets missed marked."""
    mib = 2 ** 20
    out = ["| method | amp | layout | saved MiB | x bn | by dtype (MiB) | fp32 acts | conversions | fwd ops | x bn "
           "| bwd ops | compile auto | meets the targets |",
           "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        f = lambda k, fmt="%.2fx": (fmt % r[k]) if r.get(k) is not None else "–"  # noqa: E731
        dtypes = ", ".join(f"{k} {v / mib:.0f}" for k, v in sorted(r["saved_by_dtype"].items(), key=lambda kv: -kv[1]))
        missed = failures(r, {})
        excused = EXCEPTIONS.get(r["label"], {})
        if r["method"] == TORCHVISION:
            verdict = "(reference)"
        elif r["amp"] != "bf16":
            verdict = "(targets: bf16)"
        elif not missed:
            verdict = "yes"
        else:
            verdict = "; ".join((f"exception ({excused[k]})" if k in excused else "NO: " + v)
                                for k, v in missed.items())
        out.append(f"| {r['label']} | {r['amp']} | {'cl' if r['channels_last'] else 'nchw'} | "
                   f"{r['saved_bytes'] / mib:.0f} | {f('saved_vs_bn')} | {dtypes} | {r['fp32_activations']} | "
                   f"{r['layout_conversions']} | {r['forward_ops']} | {f('forward_ops_vs_bn')} | {r['backward_ops']} | "
                   f"{'on' if r.get('compile_auto') else 'off'} | {verdict} |")
    return "\n".join(out)


def inductor_cpu(method: str, recipe: str = "resnet50-imagenet", overrides: tuple = (), size: int = 32,
                 batch: int = 8) -> dict:
    """One training step of `method`'s network on this CPU, eager and compiled with inductor: the ATen
    operators the eager step dispatches (forward and backward) against the kernels inductor generates
    for the same step (fp32, NCHW; C++/OpenMP kernels here, Triton ones on a GPU, fused alike), and
    how many graphs dynamo made (1 = no graph break). What ``train.compile`` buys a launch-bound step."""
    import torch.nn.functional as F
    from torch._dynamo.utils import counters
    from torch._inductor import metrics
    from . import models
    recipe_, plan, bundle, _, classes = setting(Case(method, recipe, 1, "bf16", tuple(overrides)))
    in_shape = (3, size, size)

    def build():
        torch.manual_seed(0)
        return models.build(recipe_.model.name, bundle, classes, in_shape, init="default",
                            drop_path=recipe_.model.drop_path, dropout=recipe_.model.dropout,
                            **recipe_.model.options).train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn((batch,) + in_shape, generator=g), torch.randint(0, classes, (batch,), generator=g)
    from .fakecuda import Recorder
    net = build()
    rec = Recorder([x, y])
    with rec:
        loss = F.cross_entropy(net(x), y)
        rec.phase = "backward"
        loss.backward()
    torch._dynamo.reset()
    metrics.reset()
    frames = counters["stats"]["unique_graphs"]
    t0 = time.perf_counter()
    compiled = torch.compile(build())
    F.cross_entropy(compiled(x), y).backward()
    return {"method": method, "model": recipe_.model.name, "batch": batch, "size": size,
            "eager_ops": rec.counts.ops["forward"] + rec.counts.ops["backward"],
            "eager_forward_ops": rec.counts.ops["forward"], "inductor_kernels": metrics.generated_kernel_count,
            "graphs": counters["stats"]["unique_graphs"] - frames, "compile_s": time.perf_counter() - t0}
