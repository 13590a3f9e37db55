"""A training scenario at ``--scale paper``: its paper's training runs, started, reused, read back and judged.

The scenario module says which runs (``paper_runs(p) -> list[paper.Run]``) and how
to judge them (``paper_judge(ctx, p, done)``, with the same ``verdict`` function as
at CPU size). Here (`run`):

1. every run's recipe is loaded (its ``--set`` pairs, ``--data``, the scenario's
   ``--recipe-set``), checked (`normtrain.preflight.validate`) and its batch split
   on the processes it will get (`normtrain.batching`), before anything is written;
2. each run goes to ``<out>/runs/<run name>``, an ordinary run folder; one that
   already finished with the same recipe is reused (`recipe_runs.finished`); the
   others are started one after another through the training command's launcher
   (`recipe_runs.run_launched`: ``normtrain --recipe R --set ... --nproc-per-node N
   [--nnodes ... --rdzv-endpoint ...]``), so they use every GPU of every node exactly
   as a training run would, and an interrupted one resumes from its checkpoint
   when the scenario is run again;
3. on node 0 the finished runs (`Finished`: results.json and metrics.jsonl) go to
   the module's ``paper_judge``, which writes <out>/results.json (scale "paper",
   each run's folder, status and final numbers, the paper's values beside ours)
   and the plots. The other nodes of a multi-node plan only take part in the runs.

Several nodes: run the same command on each (``--nnodes N --node-rank K
--rdzv-endpoint HOST:PORT``) with ``--out`` on a filesystem every node sees, so
that they agree on which runs are finished.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .. import batching, recipe_runs
from ..errors import EnvError, UsageError
from . import paper


@dataclass
class Finished:
    """One finished run of a paper-scale plan: its `paper.Run`, folder, results.json and metrics.jsonl rows."""
    run: paper.Run
    out: Path
    results: dict
    rows: list

    @property
    def diverged(self) -> bool:
        return self.results.get("status") == "diverged"

    @property
    def final(self) -> dict:
        return self.results.get("final") or {}

    def top1(self) -> float | None:
        """Final top-1 (%) on the test set: test/top1 when a validation split was held out, else eval/top1
        (then the evaluation split is the test set); None for a diverged run or no evaluation."""
        if self.diverged:
            return None
        f = self.final
        if "test/top1" in f:
            return f["test/top1"]
        return f.get("eval/top1") if self.results.get("eval_split", "test") == "test" else None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a logged metric (e.g. train/loss, norms/first_layer_output)."""
        xs, ys = [], []
        for r in self.rows:
            if r.get(key) is not None:
                xs.append(r["step"])
                ys.append(float(r[key]))
        return xs, ys

    def summary(self) -> dict:
        t = self.results.get("timings") or {}
        return {"run": self.run.name, "arm": self.run.arm, "seed": self.run.seed, "folder": str(self.out),
                "status": self.results.get("status"), "steps": self.results.get("steps"),
                "total_steps": self.results.get("total_steps"), "top1": self.top1(),
                "train_loss": self.final.get("train/loss"), "world_size": self.results.get("world_size"),
                "batch": self.results.get("batch"), "images_per_s": t.get("images_per_s"),
                "train_s": t.get("train_s")}


def by_arm(done: list[Finished]) -> dict[str, list[Finished]]:
    """Finished runs grouped by arm (in plan order), each list sorted by seed."""
    out: dict[str, list[Finished]] = {}
    for f in done:
        out.setdefault(f.run.arm, []).append(f)
    return {a: sorted(fs, key=lambda f: f.run.seed) for a, fs in out.items()}


def seed_mean(items: list[Finished], key: str = "train/loss") -> tuple[list[int], list[float]]:
    """The mean over the runs that did not diverge of a logged metric, at the steps they all logged."""
    curves = [dict(zip(*f.series(key))) for f in items if not f.diverged]
    curves = [c for c in curves if c]
    if not curves:
        return [], []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return steps, [sum(c[s] for c in curves) / len(curves) for s in steps]


def test_images(ctx) -> int:
    """The test set's size for the minimum effect (5 test images): the paper's dataset's."""
    ds = ctx.paper.dataset if ctx.paper is not None else None
    return paper.DATASETS[ds].test if ds else 0


def min_effect(ctx, given: float) -> float:
    """`given`, or max(5 test images, 0.5 points) on the paper's test set."""
    from .common import accuracy_min_effect  # common imports torch; a plan needs none
    return accuracy_min_effect(given, test_images(ctx))


def table(done: list[Finished]) -> str:
    from . import common
    rows = [[f.run.name, f.run.arm, f.run.seed, f.results.get("status"),
             f"{f.results.get('steps')}/{f.results.get('total_steps')}", f.top1(), f.final.get("train/loss"),
             str(f.out)] for f in done]
    return common.table(["run", "arm", "seed", "status", "steps", "test top-1 %", "final train loss", "folder"], rows)


def plot(ctx, done: list[Finished], v: dict, file: str, metric: str = "test top-1 (%)", values: dict | None = None,
         key: str = "train/loss") -> None:
    """The plot of a paper-scale training scenario: each arm's seed-mean training loss against the step, and
    its final metric (`values[arm]`: per-seed numbers; default the test top-1), seeds as dots."""
    arms = by_arm(done)
    values = values if values is not None else {a: [f.top1() for f in fs] for a, fs in arms.items()}
    from . import common
    with common.plotting() as plt:
        fig, axes = common.figure(plt, 1, 2, panel=(6.5, 4.8))
        ax = axes[0][0]
        for a, fs in arms.items():
            xs, ys = seed_mean(fs, key)
            if xs:
                ax.plot(xs, common.positive_or_nan(ys), label=a)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{key} (mean of seeds; each point a logging window)")
        ax.set_title("training loss of the paper-scale runs")
        ax.legend()
        ax = axes[0][1]
        names = list(arms)
        for i, a in enumerate(names):
            vals = [x for x in values.get(a, []) if x is not None and math.isfinite(x)]
            if vals:
                m, sd = common.mean_std(vals)
                ax.bar(i, m, yerr=sd, capsize=6, alpha=0.6)
                ax.plot([i] * len(vals), vals, "ko", ms=5)
        ax.set_xticks(range(len(names)), names, rotation=12)
        ax.set_ylabel(metric)
        ax.set_title("final value per arm (bar: mean ± std over seeds; dots: seeds)")
        ctx.savefig(fig, file, v)


def recipe_of(f: Finished):
    """The resolved recipe a run saved (<run>/recipe.yaml)."""
    from .. import config
    return config.load(str(f.out / "recipe.yaml"))


def network(f: Finished, weights: str = "last", device=None, split: str = "val", batch: int = 0):
    """(model, loader) of a finished run: the network as the engine builds it (seeded by run.seed, the run's
    batch plan for GhostNorm chunks) with its initial weights ('init') or its last checkpoint's ('last': the
    final weights, or the last good ones of a diverged run), in eval mode, and a loader of `split` (its
    in_shape and classes build the network)."""
    import torch

    from .. import batching, checkpoint, data, engine, models
    recipe = recipe_of(f)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    world = f.results.get("world_size") or 1
    plan = batching.for_recipe(recipe, world)
    ld = data.build(recipe.data, split, data.DataContext(0, 1, device, batch or max(plan.micro, 1),
                                                         recipe.run.seed, False))
    torch.manual_seed(recipe.run.seed)
    model = models.build(recipe.model.name, engine.bundle_for(recipe, plan), ld.num_classes, ld.in_shape,
                         init=recipe.model.init, drop_path=recipe.model.drop_path,
                         **recipe.model.builder_options()).to(device)
    if weights == "last":
        ck = f.out / "checkpoints" / "last.pt"
        if not ck.is_file():
            raise EnvError(f"run {f.out} has no checkpoints/last.pt to read its final weights from")
        model.load_state_dict(checkpoint.load(ck)["model"])
    model.eval()
    return model, ld


# -- running the plan ------------------------------------------------------------------------------

@dataclass
class PlanSpec(recipe_runs.RunSpec):
    run: paper.Run = None   # the plan's entry this run folder is for


def specs(name: str, module, params, out: Path, data: str | None, extra: list) -> list:
    """The `recipe_runs.RunSpec` of every run of the plan, loaded and checked (no file written)."""
    from ..preflight import check_names, validate
    result = []
    for r in module.paper_runs(params):
        overrides = [*r.overrides()]
        if data:
            overrides.append(("data.source", data))
        overrides += [("run.out", str(out / "runs" / r.name)), ("run.name", f"{name}-{r.name}"),
                      ("run.device", params.device), ("log.progress", params.progress), *extra]
        spec = PlanSpec(r.recipe, overrides, run=r).load()
        check_names(spec.recipe)
        result.append(spec)
    for s in result:
        validate(s.recipe)
    return result


def processes(launch: recipe_runs.LaunchOptions, device: str) -> int:
    """The world size every run will have: --nproc-per-node (auto: the GPUs here) x nodes."""
    from .. import dist
    return dist.resolve_nproc(launch.nproc_per_node, device) * launch.nodes()


def run(name: str, module, params, out: str, data: str | None, extra: list,
        launch: recipe_runs.LaunchOptions) -> dict:
    """Run (or reuse) every run of the scenario's paper-scale plan, then judge them on node 0; see the module."""
    out = Path(out)
    todo_specs = specs(name, module, params, out, data, extra)
    world = processes(launch, params.device)
    for s in todo_specs:  # a batch that does not split on this many processes: say so before any run starts
        try:
            batching.for_recipe(s.recipe, world)
        except UsageError as e:
            raise UsageError(f"scenario {name} --scale paper, run {s.run.name} on {world} process(es): {e}") from None
    todo = []
    for s in todo_specs:
        if recipe_runs.finished(s) is not None:
            print(f"[scenario {name}] reusing finished run {s.out}", flush=True)
        else:
            todo.append(s)
    failures = recipe_runs.run_launched(todo, launch, label=f"scenario {name}") if todo else []
    if failures:
        raise EnvError(f"scenario {name}: run(s) failed: {', '.join(failures)}; see their messages above. Rerun the "
                       f"same command: finished runs are reused, interrupted ones resume from their checkpoints")
    if launch.node_rank != 0:
        print(f"[scenario {name}] node {launch.node_rank}: every run done; node 0 judges them", flush=True)
        return {}
    done = []
    for s in todo_specs:
        res = recipe_runs.load_result(s.out)
        if res is None or res.get("status") not in ("completed", "diverged"):
            raise EnvError(f"scenario {name}: run {s.out} has no finished results.json (status "
                           f"{(res or {}).get('status', 'missing')}); rerun the same command to finish it")
        done.append(Finished(s.run, s.out, res, recipe_runs.read_metrics(s.out)))
    from . import common
    ctx = common.Context(name, params, out, data, scale="paper", paper=module.PAPER)
    with common.torch_threads(params.threads):
        return module.paper_judge(ctx, params, done)
