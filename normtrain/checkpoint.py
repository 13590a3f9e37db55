"""Checkpoints: written atomically (temporary file in the same folder, fsync, rename), verified on load.

A checkpoint holds the model, optimizer, grad scaler, the position (epoch, batch
index within the epoch, optimizer step: the schedule is a pure function of it),
every rank's RNG states and data loader state, and the recipe that wrote it, so a
resumed run continues exactly where the first one stopped.

Integrity: ``save`` stores a SHA-256 digest of the payload (every tensor's bytes,
every other value's pickle) under ``"checksum"``; ``load`` recomputes it, so a
flipped bit inside a tensor is caught, not trained on. A truncated, corrupt or
foreign file raises `CheckpointError` (one line naming the file, exit 2).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import random
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


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(fileobj)` on a temp file next to `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only (one GPU per rank)
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
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


def save(path: Path, state: dict) -> None:
    """Write `state` atomically with its checksum (tensors are moved to the CPU first)."""
    state = _to_cpu(state)
    state["checksum"] = digest(state)
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load(path: Path, map_location="cpu", verify: bool = True) -> dict:
    """Load and verify a checkpoint written by `save`; CheckpointError (one line) if it cannot be used."""
    path = Path(path)
    try:
        # Our own files: they hold numpy RNG state and python objects, hence weights_only=False.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - zip/pickle errors of a truncated or corrupt file
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
