"""`normtrain eval RUN_OR_CHECKPOINT`: evaluate a saved run again, e.g. on another split or its EMA.

    normtrain eval runs/digits-mlp-bn                       # last.pt on the split it was evaluated on
    normtrain eval runs/x --split test --ema                # the EMA weights on the test split
    normtrain eval runs/x/checkpoints/best.pt --data /data/cifar10

The network, method, data pipeline and precision come from the recipe saved in the
checkpoint; ``--data`` points at the dataset if it moved. Splits: ``val`` is the split the
run evaluated on during training (``eval/*``: a validation split held out of the training
data when the recipe has ``data.val_split``, else the test split), ``test`` the dataset's
test split. The evaluation batches are the training run's (``data.eval_batch_size`` over its
processes), so the numbers of the run's own evaluation are reproduced exactly. Writes
``RUN/eval.json`` (``eval/top1``, ``eval/top5``, ``eval/loss`` and what was evaluated) and
prints one line. One process; ``--help`` and bad arguments answer without importing torch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import EXIT_OK, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="normtrain eval", description=__doc__.split("\n", 1)[1].strip(),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT",
                   help="a run folder (its checkpoints/last.pt, or best.pt with --checkpoint best) or a .pt file")
    p.add_argument("--checkpoint", choices=["last", "best"], default="last",
                   help="which checkpoint of a run folder (default: last, the final weights)")
    p.add_argument("--split", choices=["val", "test"], default="val",
                   help="val: the split evaluated during training (default); test: the dataset's test split")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA of the weights (train.ema_decay)")
    p.add_argument("--data", help="dataset path, if it is not where the run read it (data.source)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to run (default: the run's run.device)")
    return p


def locate(path: str, which: str) -> tuple[Path, Path]:
    """(run folder, checkpoint file) for a run folder or a checkpoint path; UsageError if neither."""
    p = Path(path)
    if p.is_dir():
        ck = p / "checkpoints" / f"{which}.pt"
        if not ck.is_file():
            raise UsageError(f"{p} has no checkpoints/{which}.pt: give a run folder that holds one, or a .pt file")
        return p, ck
    if p.is_file():
        run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        return run, p
    raise UsageError(f"no run folder or checkpoint at {path}")


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    run_dir, ck = locate(args.path, args.checkpoint)
    if args.data is not None:
        from . import data as _data
        from .config import DataConfig
        _data.resolve(DataConfig(source=args.data))  # unknown or missing path: one line, before torch
    res = evaluate(run_dir, ck, args.split, args.ema, args.data, args.device)
    print(line(res), flush=True)
    return EXIT_OK


def evaluate(run_dir: Path, ck: Path, split: str = "val", use_ema: bool = False, data_source: str | None = None,
             device: str | None = None) -> dict:
    """Evaluate checkpoint `ck`; write and return RUN/eval.json's contents."""
    import torch

    from . import batching, checkpoint, config, data, dist, ema, engine
    state = checkpoint.load(ck)
    if use_ema and state.get("ema") is None:
        raise UsageError(f"checkpoint {ck} holds no EMA of the weights (the run had train.ema_decay 0)")
    overrides = [("data.source", data_source)] if data_source else []
    overrides += [("run.device", device)] if device else []
    recipe = config.from_dict(state["recipe"], f"the recipe saved in {ck}", overrides)
    world = state.get("world", 1)
    d = dist.Dist(device=torch.device("cuda", torch.cuda.current_device())
                  if dist.pick_device(recipe.run.device) == "cuda" else torch.device("cpu"))
    cfg = recipe.data
    micro = max((cfg.eval_batch_size or cfg.batch_size) // world, 1)
    loader = data.build(cfg, split, data.DataContext(0, 1, d.device, micro, recipe.run.seed, False))
    plan = batching.for_recipe(recipe, world)
    bundle = engine.bundle_for(recipe, plan)
    amp, channels_last = engine.runtime(recipe, d.device, bundle)
    model = engine.setup_model(recipe, d, loader.num_classes, loader.in_shape, bundle, channels_last)
    weights = ema.network_state(state["ema"]) if use_ema else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UsageError(f"checkpoint {ck} does not fit its own recipe's model ({str(e).splitlines()[0]})") from None
    metrics = engine.evaluate_model(model, loader, d, amp, channels_last, "eval")
    res = {"checkpoint": str(ck), "step": state["step"], "split": split,
           "split_is": ("held-out validation" if split == "val" and cfg.val_split else "test"),
           "weights": "ema" if use_ema else "raw", "data": cfg.source, "samples": loader.num_samples,
           "device": str(d.device), "amp": amp, **metrics}
    checkpoint.atomic_write_text(run_dir / "eval.json", json.dumps(res, indent=2) + "\n")
    res["out"] = str(run_dir / "eval.json")
    return res


def line(res: dict) -> str:
    return (f"normtrain eval: {res['checkpoint']} (step {res['step']}, {res['weights']} weights) on the "
            f"{res['split']} split ({res['split_is']}, {res['samples']} samples): top1 {res['eval/top1']:.2f}% "
            f"top5 {res['eval/top5']:.2f}% loss {res['eval/loss']:.4f} -> {res['out']}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
