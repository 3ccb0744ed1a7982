"""The one crash-safe file write of the project: `atomic_write(path, write)`.

A crash (or a kill, or a lost node) at any moment leaves either the old file or the whole new one:
the bytes go into a temp file in the same folder, are flushed to disk (fsync), and the temp file is
renamed over `path`; the folder is then fsynced so the rename itself survives a power cut. A reader
never sees half a file. Torch-free, so a study's storage code can use it too.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once at import: the process's file-creation mask


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[BinaryIO], object], keep_previous=None) -> None:
    """Write `path` crash-safe (module docstring): `write(fh)` fills a binary file handle. The folder
    is created if missing. With `keep_previous`, the file `path` held so far is renamed there first,
    so a new file that turns out unreadable (a disk that lied about fsync, a copy cut short) still has
    the one before it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets what open() would give it
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path, text: str) -> None:
    """`atomic_write` of a text (UTF-8)."""
    atomic_write(path, lambda fh: fh.write(text.encode()))
