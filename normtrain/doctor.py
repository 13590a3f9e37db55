"""`normtrain doctor`: will normtrain work on this machine, and how fast? One command, minutes.

    normtrain doctor [--data PATH] [--out doctor.json] [--device auto|cpu|cuda] [--quick]

Checks, each a row of the printed table with a verdict (ok / slow / broken / skipped)
and, where it is not ok, the fix:

  versions     torch, torchvision, CUDA, cuDNN, NCCL, DALI (and whether its file reader
               takes a shuffle seed), NVIDIA driver
  gpus         the visible GPUs (all of one model, or DDP runs at the slowest one's pace)
  all-reduce   a SUM all-reduce across the local GPUs over NCCL, one process per GPU
               (spawned through `dist.run_local`), with its bus bandwidth as nccl-tests
               define it, judged by what it costs ResNet-50's data-parallel step: the time
               to all-reduce its 25.6M fp32 gradients at the measured rate, against a
               step at DLE's 2,600 images/s per GPU with 256 images per GPU; on a CPU-only
               machine the same over gloo with 2 processes (works or not)
  step         ResNet-50 training steps with `bn` against torchvision's resnet50 in the
               same process and loop (bf16, channels_last, 256 images per GPU, cuDNN
               autotuning; interleaved rounds): the ratio (target >= 1.00x) and images/s
               (target >= 2,600 on H100/H200, DLE's class); then the same through the
               engine's own loop (everything normtrain adds per step, target <= 1.05x);
               CPU: a small size, timings reported but not judged
               On a GPU also bn at fp16 beside bf16: PyTorch picks cuDNN's batch norm for
               fp16 and its own kernels for bf16 (torch._C._select_batch_norm_backend);
               train.amp: fp16 switches a run to it
  dali         the dali backend's training pipeline (Gitman & Ginsburg's, the
               resnet50-imagenet recipe's) on --data or on generated ImageNet-like JPEGs:
               mixed (GPU) decode with this GPU's share of the CPUs (its affinity and
               cgroup quota, not the machine's count), at the recipe's per-GPU batch, with
               a ResNet-50 training step on each batch: the rate against the same step on a
               batch already on the GPU (the loader must keep up while the GPU trains);
               CPU-only: DALI's CPU decode

`--quick` runs everything at tiny sizes (seconds; what CI runs). Writes every figure to
doctor.json. Exit code 0 unless an item is broken (1); 2 for bad input.
Nothing here imports torch until the checks start (so `--help` and usage errors are instant).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from . import outputs
from .errors import EXIT_OK, EnvError, UsageError
from .version import __version__

OK, SLOW, BROKEN, SKIPPED = "ok", "slow", "broken", "skipped"
#: DLE's ResNet-50 (AMP, 256 images per GPU) class on an H100, the issue's per-GPU target.
TARGET_IMAGES_PER_S = 2600
#: The bn network against torchvision's in the same loop (the issue's target is >= 1.00x;
#: 3% is the run-to-run spread of a short step benchmark).
TARGET_VS_TORCHVISION = 0.97
RESNET50_PARAMS = 25_557_032
#: The all-reduce may take at most this share of a ResNet-50 step at the target rate before
#: it is "slow" (DDP overlaps much of it with the backward pass, so this is conservative).
MAX_ALLREDUCE_SHARE = 0.15
DDP_BUCKET_BYTES = 25 * 2**20  # DDP's default bucket_cap_mb: the message size that matters


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"doctor: {message}")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="normtrain doctor", description=__doc__.split("\n\n")[0],
                epilog="\n\n".join(__doc__.split("\n\n")[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="an ImageNet-style folder (train/<class>/...) to time DALI on "
                   "(default: generated JPEGs)")
    p.add_argument("--out", default="doctor.json", help="where to write the results (default: ./doctor.json)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="cpu runs the CPU subset even where GPUs are visible")
    p.add_argument("--quick", action="store_true", help="tiny sizes everywhere (seconds; what CI runs)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.data is not None:
        data = Path(args.data).expanduser()
        if not (data / "train").is_dir():
            raise UsageError(f"doctor: --data {args.data}: expected an ImageNet-style folder with a train/ "
                             "subfolder (train/<class>/<image>)")
    outputs.check_file(args.out, "doctor: --out")  # before the checks, not after minutes of them
    return Doctor(args).run()


class Doctor:
    def __init__(self, args):
        self.args, self.quick = args, args.quick
        self.items: list[dict] = []
        self.t0 = time.perf_counter()

    def add(self, item: str, verdict: str, result: str, fix: str = "", **data) -> dict:
        row = {"item": item, "verdict": verdict, "result": result, "fix": fix, "data": data}
        self.items.append(row)
        mark = {OK: "ok", SLOW: "SLOW", BROKEN: "BROKEN", SKIPPED: "skipped"}[verdict]
        print(f"  {item:12s} {mark:8s} {result}" + (f"\n  {'':12s} {'':8s} fix: {fix}" if fix else ""), flush=True)
        return row

    def run(self) -> int:
        import torch
        from . import benchmark
        want = self.args.device
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if want == "cuda" and not gpus:
            raise UsageError("doctor: --device cuda but no GPU is visible")
        self.device = torch.device("cuda", 0) if gpus and want != "cpu" else torch.device("cpu")
        self.gpus = gpus if self.device.type == "cuda" else 0
        print(f"normtrain doctor {__version__}: {'%d GPU(s)' % self.gpus if self.gpus else 'CPU subset'}"
              f"{' (quick sizes)' if self.quick else ''}", flush=True)
        self.versions = self.check_versions()
        self.check_gpus()
        self.check_all_reduce()
        train_rate = self.check_step()
        self.check_dali(train_rate)
        verdicts = [r["verdict"] for r in self.items]
        overall = BROKEN if BROKEN in verdicts else SLOW if SLOW in verdicts else OK
        elapsed = time.perf_counter() - self.t0
        result = {"normtrain": __version__, "verdict": overall, "elapsed_s": elapsed, "quick": self.quick,
                  "device": str(self.device), "gpus": self.gpus, "versions": self.versions,
                  "machine": benchmark.machine(self.device), "args": vars(self.args), "items": self.items}
        self.print_table(overall, elapsed)
        from .checkpoint import atomic_write_text
        try:
            atomic_write_text(Path(self.args.out), json.dumps(result, indent=2, default=str) + "\n")
        except OSError as e:
            raise EnvError(f"doctor: cannot write {self.args.out}: {outputs.cause(e)}") from None
        print(f"wrote {self.args.out}")
        return 1 if overall == BROKEN else EXIT_OK

    def print_table(self, overall: str, elapsed: float) -> None:
        w = max(len(r["result"]) for r in self.items)
        print(f"\n{'item':12s} {'verdict':8s} {'result':{w}s}  fix")
        for r in self.items:
            print(f"{r['item']:12s} {r['verdict']:8s} {r['result']:{w}s}  {r['fix']}")
        print(f"\nnormtrain doctor: {overall} ({elapsed:.0f} s)")

    # -- versions -------------------------------------------------------------------------

    def check_versions(self) -> dict:
        import torch
        from .data import dali
        v = {"python": platform.python_version(), "normtrain": __version__, "torch": torch.__version__,
             "cuda": torch.version.cuda, "cudnn": None, "nccl": None, "dali": dali.version(), "driver": None}
        try:
            import torchvision
            v["torchvision"] = torchvision.__version__
        except Exception as e:  # noqa: BLE001
            v["torchvision"] = None
            self.add("torchvision", BROKEN, f"cannot be imported ({type(e).__name__})",
                     "pip install torchvision matching your torch (the NGC image has it)")
        major_minor = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
        if major_minor < (2, 11):
            self.add("torch", BROKEN, f"torch {torch.__version__}", "normtrain needs torch >= 2.11")
        else:
            self.add("torch", OK, f"torch {torch.__version__}, torchvision {v['torchvision']}, "
                     f"python {v['python']}")
        if self.gpus:
            v["cudnn"] = torch.backends.cudnn.version()
            try:
                v["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
            except Exception:  # noqa: BLE001 - a build without NCCL
                v["nccl"] = None
            v["driver"] = _driver_version()
            self.add("cuda", OK if v["cudnn"] else BROKEN,
                     f"CUDA {v['cuda']}, cuDNN {v['cudnn']}, NCCL {v['nccl']}, driver {v['driver']}",
                     "" if v["cudnn"] else "this torch has no cuDNN: use the NGC image or a CUDA wheel of torch")
        else:
            build = f"torch built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only torch"
            why = "CPU forced (--device cpu)" if torch.cuda.is_available() else f"no GPU visible ({build})"
            self.add("cuda", SKIPPED, why)
        if v["dali"] is None:
            self.add("dali", SLOW if self.gpus else SKIPPED, "not installed: image folders use the folder backend "
                     "(CPU decode)", "pip install nvidia-dali-cuda130 (preinstalled in the NGC image)")
        elif not dali.available():
            self.add("dali", BROKEN if self.gpus else SKIPPED, f"DALI {v['dali']}: {dali._import_error}",
                     "use DALI >= 1.33 (NGC PyTorch 24.x or newer) or data.backend=folder")
        else:
            seeded = dali.has_argument("readers__File", "shuffle_after_epoch_seed")
            v["dali_shuffle_seed"] = seeded
            self.add("dali", OK, f"DALI {v['dali']}" + ("" if seeded else
                     " (no shuffle_after_epoch_seed: the data order does not change with run.seed)"))
        return v

    def check_gpus(self) -> None:
        import torch
        if not self.gpus:
            self.add("gpus", SKIPPED, "no GPU: CPU subset (gloo, DALI CPU decode, tiny step benchmark)")
            return
        props = [torch.cuda.get_device_properties(i) for i in range(self.gpus)]
        names = sorted({p.name for p in props})
        memory = {p.name: p.total_memory / 2**30 for p in props}
        desc = ", ".join(f"{sum(p.name == n for p in props)}x {n} ({memory[n]:.0f} GiB)" for n in names)
        if len(names) > 1:
            self.add("gpus", SLOW, desc, "DDP steps at the slowest GPU's pace: set CUDA_VISIBLE_DEVICES to one model")
        else:
            self.add("gpus", OK, desc, gpus=[{"name": p.name, "memory_gib": p.total_memory / 2**30,
                                               "capability": f"{p.major}.{p.minor}"} for p in props])

    # -- all-reduce --------------------------------------------------------------------------

    def check_all_reduce(self) -> None:
        from . import dist
        if self.gpus == 1:
            self.add("all-reduce", SKIPPED, "one GPU: nothing to all-reduce")
            return
        backend, n = ("nccl", self.gpus) if self.gpus else ("gloo", 2)
        sizes = [2**16, 2**20] if self.quick else [2**20, DDP_BUCKET_BYTES, 256 * 2**20]
        iters, warmup = (3, 1) if self.quick else (20, 5)
        try:
            res = dist.run_local(dist.all_reduce_bandwidth, n, backend, sizes, iters, warmup,
                                 timeout_s=120 if self.quick else 180)[0]
        except Exception as e:  # noqa: BLE001 - the failure is the finding
            self.add("all-reduce", BROKEN, f"{backend} with {n} processes failed: {str(e)[:120]}",
                     "rerun with NCCL_DEBUG=INFO; in docker add --ipc=host (or a large --shm-size) and, across "
                     "nodes, the InfiniBand flags of the README's multi-node line", backend=backend, processes=n)
            return
        if not all(r["correct"] for r in res):
            self.add("all-reduce", BROKEN, f"{backend}: wrong sums", "check the GPUs/driver (nvidia-smi -q) and "
                     "NCCL_P2P_DISABLE=1 to rule out peer-to-peer", backend=backend, processes=n, sizes=res)
            return
        big = res[-1]
        text = ", ".join(f"{r['bytes'] / 2**20:g} MiB {r['busbw_gbps']:.1f} GB/s" for r in res)
        if backend == "gloo":
            self.add("all-reduce", OK, f"gloo, 2 processes: correct; bus bandwidth {text}", backend=backend,
                     processes=n, sizes=res)
            return
        bucket = min(res, key=lambda r: abs(r["bytes"] - DDP_BUCKET_BYTES))
        grad_bytes = 4 * RESNET50_PARAMS
        t = grad_bytes * 2 * (n - 1) / n / (bucket["busbw_gbps"] * 1e9)
        step = 256 / TARGET_IMAGES_PER_S
        share = t / step
        verdict = OK if share <= MAX_ALLREDUCE_SHARE else SLOW
        self.add("all-reduce", verdict, f"NCCL, {n} GPUs, bus bandwidth {text}; ResNet-50's gradients take "
                 f"{1e3 * t:.1f} ms = {100 * share:.0f}% of a {1e3 * step:.0f} ms step",
                 "" if verdict == OK else "check the GPU interconnect (nvidia-smi topo -m: NVLink, not PCIe "
                 "through the CPU) and NCCL_P2P_LEVEL / NCCL_IB_* settings",
                 backend=backend, processes=n, sizes=res, grad_allreduce_s=t, step_s_at_target=step,
                 bus_bandwidth_gbps=big["busbw_gbps"])

    # -- ResNet-50 step benchmark ----------------------------------------------------------

    def check_step(self) -> float | None:
        """Returns the per-GPU training images/s of `bn` (the rate the data loader must keep up with)."""
        import torch
        from . import benchmark
        gpu = self.device.type == "cuda"
        settings = benchmark.set_fast_defaults(self.device)
        if self.quick:
            micro, size, warmup, steps, repeats = 2, 32, 1, 2, 1
        elif gpu:
            micro, size, warmup, steps, repeats = 256, 224, 10, 20, 2
        else:
            micro, size, warmup, steps, repeats = 4, 64, 1, 2, 2
        amp = "bf16" if gpu else "off"
        base = benchmark.Config("resnet50", "bn", micro, 1, size, 1000, amp, True)
        configs = [dataclasses.replace(base, method=benchmark.TORCHVISION), base]
        if not self.quick:
            configs.append(dataclasses.replace(base, loop="engine"))
        if gpu:  # cuDNN's batch norm (fp16, with the grad scaler) beside ATen's (bf16)
            configs.append(dataclasses.replace(base, amp="fp16"))
        rows = benchmark.run(configs, self.device, warmup, steps, repeats)
        if gpu and micro > 128 and any("OutOfMemory" in r.get("error", "") for r in rows):
            torch.cuda.empty_cache()
            configs = [dataclasses.replace(c, micro=128) for c in configs]
            rows = benchmark.run(configs, self.device, warmup, steps, repeats)
        tv, bn = rows[0], rows[1]
        eng = next((r for r in rows if r["loop"] == "engine"), None)
        fp16 = next((r for r in rows if r["amp"] == "fp16"), None)
        setting = (f"ResNet-50, {configs[1].micro} images/{'GPU' if gpu else 'step'} at {size} px, {amp}, "
                   f"channels_last")
        data = dict(rows=rows, settings=settings, setting=setting)
        failed = [r for r in rows if "error" in r]
        if failed:
            self.add("step", BROKEN, f"{failed[0]['method']} ({failed[0]['loop']} loop): {failed[0]['error'][:120]}",
                     "report it with doctor.json", **data)
            return None
        ratio = bn["vs_torchvision"]
        parts = [f"bn {_rate(bn['images_per_s'])} images/s = {ratio:.2f}x torchvision ({_rate(tv['images_per_s'])})"]
        if eng is not None:
            e = eng["engine_vs_bare"]
            parts.append(f"the engine's step takes {e:.2f}x the bare loop's ({'slower' if e > 1 else 'faster'}; "
                         "target <= 1.05)")
        if fp16 is not None and "error" not in fp16:
            parts.append(f"fp16 (cuDNN batch norm) {_rate(fp16['images_per_s'])} images/s, "
                         f"{fp16['images_per_s'] / bn['images_per_s']:.2f}x bf16 (train.amp: fp16 to use it)")
        verdict, fix = OK, ""
        if not gpu:
            parts.append("CPU: timings not judged")
        elif ratio < TARGET_VS_TORCHVISION:
            verdict, fix = SLOW, "bn should match torchvision's network: report it with doctor.json"
        name = torch.cuda.get_device_name(self.device) if gpu else ""
        if gpu and not self.quick and any(k in name for k in ("H100", "H200")):
            parts.append(f"target {TARGET_IMAGES_PER_S} on {name}")
            if bn["images_per_s"] < TARGET_IMAGES_PER_S:
                verdict = SLOW
                fix = fix or ("below DLE's class: check the GPU clocks/power (nvidia-smi -q -d PERFORMANCE) "
                              "and that nothing else runs on it")
        if gpu and eng is not None and eng["engine_vs_bare"] > 1.05:
            verdict = SLOW
            fix = fix or "the engine adds more than 5% per step: report it with doctor.json"
        self.add("step", verdict, f"{setting}: " + "; ".join(parts), fix, **data)
        return bn["images_per_s"] if gpu else None

    # -- DALI -----------------------------------------------------------------------------

    def check_dali(self, train_rate: float | None) -> None:
        from . import benchmark
        from .config import DataConfig
        from .data import dali
        if not dali.available():
            self.add("dali-decode", SKIPPED, "DALI not usable here (see the dali row)")
            return
        from . import batching, config
        from .threads import available as usable_cpus
        gpu = self.device.type == "cuda"
        tmp = None
        if self.args.data:
            root, what = Path(self.args.data).expanduser(), f"{self.args.data}"
        else:
            tmp = tempfile.mkdtemp(prefix="normtrain-doctor-")
            images = 16 if self.quick else 512 if gpu else 128
            sides = (40, 64) if self.quick else (330, 500)
            root = benchmark.make_jpeg_folder(Path(tmp), images, classes=8, sides=sides)
            what = f"{images} generated JPEGs of {sides[0]}-{sides[1]} px"
        usable = usable_cpus()  # this process's affinity and cgroup quota, not the machine's count
        threads = max(1, usable // max(self.gpus, 1))
        if self.quick:
            batch, batches, warmup = 4, 2, 1
        elif gpu:  # resnet50-imagenet's per-GPU batch on this machine's GPUs (8 GPUs: 32)
            recipe = config.load("resnet50-imagenet")
            batch = batching.for_recipe(recipe, max(self.gpus, 1)).micro
            batches, warmup = max(12, 3072 // batch), 3
        else:
            batch, batches, warmup = 32, 4, 1
        size = 32 if self.quick else 224
        cfg = DataConfig(source=str(root), backend="dali", augment="gitman", image_size=size, workers=threads,
                         batch_size=batch)
        step_rate = step = None
        if gpu:  # the training step the loader must feed, alone (its batch already on the GPU), then fed by DALI
            model = benchmark.BareRunner(benchmark.Config("resnet50", "bn", batch, 1, size, 8, "bf16", True),
                                         self.device)
            step_rate = batch / model.time(warmup, batches)["step_s"]
            step = model.step_on
        try:
            r = benchmark.loader_images_per_s(cfg, self.device, batch, batches, warmup, step=step,
                                              channels_last=gpu)
        except Exception as e:  # noqa: BLE001 - the failure is the finding
            self.add("dali-decode", BROKEN, f"{'mixed' if gpu else 'CPU'} decode on {what} failed: {str(e)[:120]}",
                     "run with data.backend=folder, and report it with doctor.json", data=what)
            return
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        where = f"{threads} threads ({usable} CPUs usable / {max(self.gpus, 1)} GPU(s)), batch {batch}"
        data = dict(r, threads=threads, cpus_available=usable, batch=batch, data=what,
                    train_images_per_s=train_rate, step_images_per_s=step_rate)
        if step_rate is None:
            self.add("dali-decode", OK, f"CPU decode, gitman pipeline, {where}, {what}: "
                     f"{_rate(r['images_per_s'])} images/s", **data)
            return
        rate = r["images_per_s"]
        result = (f"mixed (GPU) decode, gitman pipeline, {where}, {what}: ResNet-50 bn steps fed by DALI "
                  f"{_rate(rate)} images/s against {_rate(step_rate)} with the batch already on the GPU")
        if rate >= 0.95 * step_rate:
            self.add("dali-decode", OK, result + " (the loader keeps up)", **data)
        else:
            self.add("dali-decode", SLOW, f"{result}: the GPU waits for data",
                     "more CPU threads per GPU (data.workers, and the container's --cpus), the data on local NVMe, "
                     "or data.augment=rrc (decodes only the crop window)", **data)


def _rate(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _driver_version() -> str | None:
    """The NVIDIA driver version from nvidia-smi (None where it is missing)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()
        return out[0].strip() if out else None
    except (OSError, subprocess.SubprocessError):
        return None
