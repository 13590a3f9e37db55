"""Checkpoints: written atomically (temporary file in the same folder, fsync, rename), verified on load.

A checkpoint holds the model, optimizer, grad scaler, the position (epoch, batch
index within the epoch, optimizer step: the schedule is a pure function of it),
every rank's RNG states and data loader state, and the recipe that wrote it, so a
resumed run continues exactly where the first one stopped.

Integrity: ``save`` stores a SHA-256 digest of the payload (every tensor's bytes,
every other value's pickle) under ``"checksum"``; ``load`` recomputes it, so a
flipped bit inside a tensor is caught, not trained on. A truncated, corrupt or
foreign file raises `CheckpointError` (one line naming the file, exit 2).

Safety: a checkpoint is a pickle, and a pickle can name any Python callable. ``load``
reads with ``torch.load(weights_only=True)``: PyTorch's restricted unpickler builds
only tensors, dicts, lists, tuples, strings, numbers, booleans and None, plus the
numpy array types allow-listed in `SAFE_GLOBALS` (the numpy RNG state of checkpoints
written by normtrain 0.2; newer ones store it as a tensor). A file that names anything
else (``os.system``...) is refused before any of it runs; the checksum is verified
before any value is used.

Durability: a write goes to a temporary file in the same folder, is fsync'ed, renamed
over the target, and the folder is fsync'ed so that the rename itself survives a power
loss (on file systems that support fsync of a directory; an error there is ignored).
"""
from __future__ import annotations

import errno
import hashlib
import os
import pickle
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError

#: Files are created with the user's umask (mkstemp alone would make them 0600).
_UMASK = os.umask(0)
os.umask(_UMASK)
TMP_SUFFIX = ".tmp"


class CheckpointError(UsageError):
    """A checkpoint that cannot be used: truncated, corrupt, foreign, or failing its checksum."""


#: Called before every write into a run folder (`guard_writes`); None: this process may always write.
_write_guard = None


def guard_writes(check) -> None:
    """Make every write of this module (and of the run's logger) call `check()` first.

    The run folder's writer sets it when its lock is held by another process, its
    launcher (rundir.RunDir.acquire): `check` stops the process, without writing, once
    that launcher is gone and the folder may belong to another run."""
    global _write_guard
    _write_guard = check


def check_writer() -> None:
    """Stop here, without writing, if this process no longer owns its run folder (`guard_writes`)."""
    if _write_guard is not None:
        _write_guard()


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so that a rename into it survives a power loss; ignored where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. EINVAL: this file system cannot fsync a directory
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(fileobj)` on a temp file next to `path`, then rename it over `path` (and fsync the folder)."""
    path = Path(path)
    check_writer()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        check_writer()  # the save may have taken long: still ours?
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temp files left by saves that were killed mid-write; returns how many bytes were freed.

    Only call while holding the run folder's lock (no save of ours can be in flight).
    """
    freed = 0
    if folder.is_dir():
        for p in folder.glob(f".*{TMP_SUFFIX}"):
            try:
                freed += p.stat().st_size
                p.unlink()
            except FileNotFoundError:
                pass
    return freed


def rng_state() -> dict:
    """This process's RNG states as tensors and plain values (what `load` accepts)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only (one GPU per rank)
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    npstate = state["numpy"]
    if isinstance(npstate, dict):
        npstate = (npstate["kind"], npstate["keys"].numpy().astype(np.uint32), npstate["pos"], npstate["has_gauss"],
                   npstate["gauss"])
    np.random.set_state(npstate)  # a tuple holding an ndarray: a checkpoint of normtrain 0.2
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        # Older checkpoints held every device's state (a list); take this process's.
        torch.cuda.set_rng_state(cuda[torch.cuda.current_device()] if isinstance(cuda, (list, tuple)) else cuda)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


def digest(obj) -> str:
    """SHA-256 over a nested structure: tensor bytes (with dtype and shape), other leaves by pickle."""
    h = hashlib.sha256()

    def walk(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        elif isinstance(o, dict):
            h.update(f"D{len(o)}".encode())
            for k in sorted(o, key=repr):
                h.update(repr(k).encode())
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"L{len(o)}".encode())
            for v in o:
                walk(v)
        elif isinstance(o, np.ndarray):
            h.update(f"N{o.dtype}{o.shape}".encode())
            h.update(memoryview(np.ascontiguousarray(o)).cast("B"))
        else:
            h.update(pickle.dumps(o, protocol=4))

    walk(obj)
    return h.hexdigest()


class _Recorder:
    """A file object that remembers the OSError of a failed write: torch.save turns it into a
    RuntimeError ("unexpected pos"), which would hide a full disk behind a traceback."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        return self.f.flush()


def _torch_save(state: dict, f) -> None:
    rec = _Recorder(f)
    try:
        torch.save(state, rec)
    except RuntimeError as e:
        if rec.error is not None:
            raise rec.error from None
        if "unexpected pos" in str(e) or "write" in str(e).lower():
            raise OSError(errno.EIO, f"the checkpoint could not be written ({str(e).splitlines()[0]})") from None
        raise


def save(path: Path, state: dict) -> None:
    """Write `state` atomically with its checksum (tensors are moved to the CPU first).

    A write that fails (full disk, quota, I/O error) raises OSError; the previous file at `path` is intact."""
    state = _to_cpu(state)
    state["checksum"] = digest(state)
    atomic_write_bytes(path, lambda f: _torch_save(state, f))


#: Everything but plain data that a normtrain checkpoint may hold: numpy arrays (the numpy RNG state of
#: checkpoints written by normtrain 0.2). Looked up by name, so numpy 1 and 2 both work.
def _safe_globals() -> list:
    out = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            out.append(getattr(__import__(module, fromlist=["_reconstruct"]), "_reconstruct"))
            break
        except (ImportError, AttributeError):
            continue
    return out


def _unsafe_reason(e: BaseException) -> str | None:
    """'GLOBAL posix.system' for a weights_only refusal, else None."""
    m = re.search(r"(Unsupported (?:global|operand)[^.\n]*|GLOBAL [\w.]+)", str(e))
    if isinstance(e, pickle.UnpicklingError) or m:
        return m.group(1) if m else str(e).splitlines()[0][:120]
    return None


def load(path: Path, map_location="cpu", verify: bool = True) -> dict:
    """Load and verify a checkpoint written by `save`; CheckpointError (one line) if it cannot be used.

    Nothing in the file runs: see the module docstring (Safety)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - zip/pickle errors of a truncated, corrupt or foreign file
        unsafe = _unsafe_reason(e)
        if unsafe is not None and "weights only" in str(e).lower():
            raise CheckpointError(f"checkpoint {path} is not a normtrain checkpoint: it names code or objects "
                                  f"a normtrain checkpoint never holds ({unsafe}); refused without running "
                                  "any of it") from None
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path} is not a normtrain checkpoint (no model/step entries)")
    if verify:
        stored = state.pop("checksum", None)
        if stored is None:
            raise CheckpointError(f"checkpoint {path} has no checksum (written by a normtrain before 0.2?); "
                                  "it cannot be verified")
        if digest(state) != stored:
            raise CheckpointError(f"checkpoint {path} fails its checksum: its contents were changed or damaged "
                                  "after it was written")
    return state


#: The entries a training checkpoint holds, with their types (what `engine.save_checkpoint` writes).
_STRUCTURE = {"model": dict, "optimizer": dict, "scaler": dict, "step": int, "epoch": int, "batch": int,
              "best_top1": (int, float), "history": list, "recipe": dict, "world": int}


def check_training(state: dict, path: Path) -> dict:
    """`state` if it holds what a resume needs (`_STRUCTURE`), else CheckpointError naming the first entry
    that is missing or of the wrong type. A checksum is no signature: a file made to pass it is checked too."""
    state.setdefault("world", 1)  # older checkpoints: one process
    for key, typ in _STRUCTURE.items():
        if key not in state:
            raise CheckpointError(f"{path} is not a normtrain training checkpoint (no '{key}' entry)")
        if isinstance(state[key], bool) or not isinstance(state[key], typ):
            raise CheckpointError(f"{path} is not a normtrain training checkpoint ('{key}' is a "
                                  f"{type(state[key]).__name__})")
    if min(state["step"], state["epoch"], state["batch"]) < 0 or state["world"] < 1:
        raise CheckpointError(f"{path} is not a normtrain training checkpoint (negative position or world size)")
    return state
