"""Output paths checked before the work: a command that will write a folder or a file finds out
at once, in one line, that it cannot (exit 5), instead of after minutes of work.

Shared by the commands that write outside a run folder (scenarios, sweep, doctor); a run
folder has its own, stronger checks (`rundir`). Nothing is created: a probe file is made
and removed in the nearest folder that exists. Standard library only (no torch).
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import EnvError, readable

CAUSES = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
          errno.EACCES: "permission denied", errno.EPERM: "permission denied",
          errno.ENOTDIR: "a path component is not a directory", errno.EDQUOT: "disk quota exceeded",
          errno.EFBIG: "file too large"}


def cause(e: OSError) -> str:
    """A short reason for an OSError ('read-only file system', ...)."""
    return CAUSES.get(e.errno, e.strerror or str(e))


def check_dir(path, what: str = "--out") -> None:
    """EnvError unless `path` is, or can be created as, a folder this process can write in."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise EnvError(f"{what} {readable(p)} exists and is not a directory; choose another {what}")
    ancestor = p
    while not ancestor.exists() and not ancestor.is_symlink():  # the nearest part of the path that exists
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise EnvError(f"{what} {readable(p)}: {readable(ancestor)} is a file, not a folder; choose another {what}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".normtrain-probe-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise EnvError(f"{what} {readable(p)}: cannot write in {readable(ancestor)}: {cause(e)}") from None


def check_file(path, what: str = "--out") -> None:
    """EnvError unless a file can be written at `path`, in a folder that exists."""
    p = Path(path)
    if p.is_dir():
        raise EnvError(f"{what} {readable(p)} is a directory; give a file name")
    if p.exists() and not p.is_file():
        raise EnvError(f"{what} {readable(p)} exists and is not a regular file")
    if not p.parent.is_dir():
        raise EnvError(f"{what} {readable(p)}: the folder {readable(p.parent)} does not exist")
    check_dir(p.parent, what)
