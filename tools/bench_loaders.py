#!/usr/bin/env python3
"""Images/s of the image-folder backends (dali, folder) on this machine, in one process, JSON out.

Each backend's training loader (each of --augment's pipelines, default gitman
and rrc, at --size) is read for --warmup batches, then timed over --batches batches
(crossing epochs if the folder is small); batches end on --device, as in
training. Without --data, a folder of ImageNet-like JPEGs (smooth random
content, ~350-500 px sides, quality 90) is generated first.

    python tools/bench_loaders.py --json bench_loaders.json                  # generated data, CPU
    python tools/bench_loaders.py --data /data/imagenet --device cuda --workers 8 --batch 256
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_folder(root: Path, images: int, classes: int = 8, seed: int = 0) -> Path:
    """ImageNet-like JPEGs (normtrain.benchmark.make_jpeg_folder: the same generator `normtrain doctor` uses)."""
    from normtrain.benchmark import make_jpeg_folder
    return make_jpeg_folder(root, images, classes, seed)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def versions() -> dict:
    import PIL
    import torch
    import torchvision
    v = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
         "pillow": PIL.__version__, "numpy": np.__version__}
    try:
        import nvidia.dali
        v["dali"] = nvidia.dali.__version__
    except Exception:  # noqa: BLE001
        v["dali"] = None
    return v


def bench(backend: str, augment: str, args, device) -> dict:
    from normtrain.benchmark import loader_images_per_s
    from normtrain.config import DataConfig
    cfg = DataConfig(source=str(args.data), backend=backend, augment=augment, image_size=args.size,
                     workers=args.workers, batch_size=args.batch)
    return loader_images_per_s(cfg, device, args.batch, args.batches, args.warmup)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--data", help="ImageNet-style folder (default: generate one in a temp dir)")
    ap.add_argument("--images", type=int, default=512, help="training images to generate without --data")
    ap.add_argument("--backends", default="dali,folder")
    ap.add_argument("--augment", default="gitman,rrc",
                    help="training pipelines, comma-separated (gitman, rrc, crop-flip, flip, none)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=20, help="timed batches per backend")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="DataLoader workers (folder) / DALI threads (dali)")
    ap.add_argument("--device", default="cpu", help="where batches end: cpu or cuda (DALI decodes on the GPU then)")
    ap.add_argument("--json", help="write the results here (also printed)")
    args = ap.parse_args(argv)

    import torch
    device = torch.device(args.device)
    tmp = None
    if not args.data:
        tmp = tempfile.TemporaryDirectory(prefix="bench_loaders_")
        t0 = time.perf_counter()
        args.data = make_folder(Path(tmp.name), args.images)
        print(f"generated {args.images} JPEGs in {time.perf_counter() - t0:.1f}s under {args.data}", file=sys.stderr)
    files = list(Path(args.data, "train").glob("*/*"))
    sizes = [f.stat().st_size for f in files[:2000]]
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "cpu": cpu_model(), "cores": os.cpu_count(), "versions": versions(), "device": str(device),
        "load_average_before": os.getloadavg(),
        "data": {"path": str(args.data), "generated": tmp is not None, "train_images": len(files),
                 "mean_file_kb": round(sum(sizes) / max(len(sizes), 1) / 1024, 1)},
        "settings": {"size": args.size, "batch": args.batch, "batches": args.batches,
                     "warmup": args.warmup, "workers": args.workers},
        "results": {},
        "dali_over_folder": {},
    }
    for aug in args.augment.split(","):
        r = result["results"][aug] = {}
        for b in args.backends.split(","):
            try:
                r[b] = bench(b.strip(), aug.strip(), args, device)
            except Exception as e:  # noqa: BLE001 - report and go on with the others
                r[b] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
            print(f"{aug} {b}: {r[b]}", file=sys.stderr)
        if all("images_per_s" in r.get(k, {}) for k in ("dali", "folder")):
            result["dali_over_folder"][aug] = r["dali"]["images_per_s"] / r["folder"]["images_per_s"]
    result["load_average_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
