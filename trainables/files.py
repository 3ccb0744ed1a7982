"""The one crash-safe file write of the project: `atomic_write(path, write)`.

A crash (or a kill, or a lost node) at any moment leaves either the old file or the whole new one:
the bytes go into a temp file in the same folder, are flushed to disk (fsync), and the temp file is
renamed over `path`; the folder is then fsynced so the rename itself survives a power cut. A reader
never sees half a file. Torch-free, so a study's storage code can use it too.

A write that fails for a reason of the file system (a full disk, a read-only mount, no permission)
raises `WriteError`, an OSError whose one line names the file and the cause in a user's words; the
file `path` held before is left as it was. torch.save and np.savez hide the OSError of a failed
write behind their own message (torch: "[enforce fail at inline_container.cc:672] unexpected pos"),
so the OSError is looked for behind the exception the writer raised.
"""
from __future__ import annotations

import errno
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


CAUSES = {  # errno -> the cause in a user's words
    errno.ENOSPC: "the disk is full (no space left on device)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class WriteError(OSError):
    """A file could not be written: `str()` is one line naming the file and the cause."""

    def __init__(self, path, cause: OSError):
        super().__init__(cause.errno, cause.strerror, str(path))
        self.line = f"cannot write {path}: {describe_os_error(cause)}"

    def __str__(self) -> str:
        return self.line


def describe_os_error(e: OSError) -> str:
    """The cause of an OSError in a user's words, with its errno name: 'the disk is full (no space
    left on device) [ENOSPC]'."""
    name = errno.errorcode.get(e.errno or 0, "")
    text = CAUSES.get(e.errno, e.strerror or str(e))
    return f"{text} [{name}]" if name else text


def os_error_behind(e: BaseException | None) -> OSError | None:
    """The OSError `e` is, or was raised from or while handling (its cause or context); None if none."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def atomic_write(path, write: Callable[[BinaryIO], object], keep_previous=None) -> None:
    """Write `path` crash-safe (module docstring): `write(fh)` fills a binary file handle. The folder
    is created if missing. With `keep_previous`, the file `path` held so far is renamed there first,
    so a new file that turns out unreadable (a disk that lied about fsync, a copy cut short) still has
    the one before it. A failure of the file system is a WriteError naming `path` (module docstring)."""
    try:
        _atomic_write(Path(path), write, keep_previous)
    except WriteError:
        raise
    except Exception as e:
        cause = os_error_behind(e)
        if cause is None:
            raise
        raise WriteError(path, cause) from e


def _atomic_write(path: Path, write: Callable[[BinaryIO], object], keep_previous=None) -> None:
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
