"""One driver per study: a lock file beside the study's checkpoints, `<storage>/<study>/driver.lock`.

Every driver of a study reads and writes that folder (its trials' checkpoints live under it), and
on a cluster it is the shared storage every node sees, so the lock is held where the storage and
every driver can see it; the tracking store is only written by the holder. The file holds the
holder's host, boot id, pid, process start time, a random token, the time it was taken and its
command line (JSON).

- Taken by an exclusive create (`O_CREAT | O_EXCL`): of two drivers, exactly one gets it.
- Released (the file removed, only if it still holds our token) when the driver ends: normally, on
  an exception, on Ctrl-C and on SIGTERM (both reach Python's `finally`). A SIGKILLed or crashed
  driver leaves it behind.
- A lock left behind is broken only when its holder is provably gone: it was taken on this host
  (same host name) and either the machine has rebooted since (another boot id), or no process has
  its pid, or the process with its pid started at another time (a reused pid). Breaking happens
  under a second exclusive file (`driver.lock.break`), so two drivers that both find a stale lock
  cannot both take it.
- A lock taken on another host is never broken automatically: from here nothing proves that
  driver is gone. The refusal says how to break it by hand once you know it is (`rm` the file).
- On object storage (s3://, gs://) there is no exclusive create: the lock is written, read back
  after a short wait and kept only if it still holds our token (two drivers started within that
  wait can in principle both pass; docs/fault-tolerance.md). The same staleness rules apply.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
import uuid
from pathlib import Path

from study.storage import Folder

LOCK_FILE = "driver.lock"
BREAK_FILE = "driver.lock.break"
REMOTE_SETTLE_S = 2.0  # object storage: wait before reading our lock back


class LockHeld(RuntimeError):
    """Another driver holds the study; the message is the one line the user sees."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot, /proc/<pid>/stat field 22), or None
    when there is no such process (or no /proc to ask)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after the last ')'
    return stat.rsplit(")", 1)[1].split()[19]


def holder_info() -> dict:
    """Who we are, as the lock file records it."""
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
            "start": process_start(os.getpid()), "token": uuid.uuid4().hex, "since": time.time(),
            "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])[:2000]}


def holder_gone(holder: dict) -> str | None:
    """Why the holder of a lock is provably gone (one phrase), or None when it may still run."""
    if holder.get("host") != socket.gethostname():
        return None
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return "this host has rebooted since it was taken"
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return None
    start = process_start(pid)
    if start is None:
        if not Path("/proc/self/stat").exists():  # no /proc: cannot prove anything
            return None
        return f"no process has pid {pid} any more"
    if holder.get("start") and start != holder["start"]:
        return f"pid {pid} is now another process (started at another time)"
    return None


def describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {since}"


class StudyLock:
    """The lock of study folder `folder` (a local path or an object store URI: study.storage)."""

    def __init__(self, folder: str):
        self.store = Folder(folder)
        self.folder = self.store.uri
        self.remote = not self.store.local
        self.path = f"{self.folder}/{LOCK_FILE}"
        self.holder: dict | None = None  # ours, while we hold it
        self.made: list[Path] = []  # folders we created (removed again on release when empty)
        self.broke: str | None = None  # what we found and broke, for the plan

    # -------------------------------------------------------------- file access
    def read(self) -> dict | None:
        """The lock's content: None if there is no lock; {} if it is unreadable (half written)."""
        text = self.store.read_text(LOCK_FILE)
        if text is None:
            return None
        try:
            data = json.loads(text)
            return data if isinstance(data, dict) else {}
        except ValueError:
            return {}

    def _create_local(self, path: Path, data: dict) -> bool:
        """Exclusive create of `path` holding `data`; False when it exists."""
        missing = []
        p = path.parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        path.parent.mkdir(parents=True, exist_ok=True)
        self.made += [m for m in reversed(missing) if m not in self.made]
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        return True

    # -------------------------------------------------------------- take and release
    def acquire(self) -> dict:
        """Take the lock or raise LockHeld naming its holder. Returns our holder record."""
        me = holder_info()
        for _ in range(3):  # a stale lock broken, then one more try (a racing driver may win it)
            if self._try_create(me):
                self.holder = me
                return me
            found = self.read()
            if found is None:
                continue  # released between our create and our read: try again
            why = holder_gone(found) if found else None
            if found == {}:
                raise LockHeld(f"study lock {self.path} is unreadable; if no driver of this study is "
                               f"running, remove it by hand (rm {shlex.quote(self.path)}) and start again")
            if why is None:
                hint = (f"if it is gone, remove the lock by hand (rm {shlex.quote(self.path)})"
                        if found.get("host") != socket.gethostname() else
                        "wait for it to end or stop it (Ctrl-C)")
                raise LockHeld(f"study is driven by another process: {describe(found)} "
                               f"({self.path}); {hint}")
            self._break(found, why)
        raise LockHeld(f"could not take the study lock {self.path} (other drivers keep taking it)")

    def _try_create(self, me: dict) -> bool:
        if not self.remote:
            return self._create_local(Path(self.path), me)
        if self.read() is not None:
            return False
        self.store.write_text(LOCK_FILE, json.dumps(me, sort_keys=True))
        time.sleep(REMOTE_SETTLE_S)  # a racing driver's write lands in this window: then one loses
        return (self.read() or {}).get("token") == me["token"]

    def _break(self, stale: dict, why: str) -> None:
        """Remove a stale lock, but only the one we judged stale (its token), under BREAK_FILE."""
        if self.remote:
            if (self.read() or {}).get("token") == stale.get("token"):
                self.store.delete(LOCK_FILE)
            self.broke = f"broke a stale lock of {describe(stale)}: {why}"
            return
        brk = Path(self.folder) / BREAK_FILE
        if not self._create_local(brk, holder_info()):
            try:  # a breaker that died inside these few lines leaves BREAK_FILE: judge it the same way
                other = json.loads(brk.read_text())
            except (OSError, ValueError):
                return
            if holder_gone(other):
                brk.unlink(missing_ok=True)
            return
        try:
            if (self.read() or {}).get("token") == stale.get("token"):
                self.store.delete(LOCK_FILE)
                self.broke = f"broke a stale lock of {describe(stale)}: {why}"
        finally:
            brk.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if it is still ours, and the folders acquire made if they are empty."""
        if self.holder is None:
            self._remove_made()
            return
        try:
            if (self.read() or {}).get("token") == self.holder["token"]:
                self.store.delete(LOCK_FILE)
        finally:
            self.holder = None
            self._remove_made()

    def _remove_made(self) -> None:
        for d in reversed(self.made):
            try:
                d.rmdir()  # only when empty: a study that wrote nothing leaves nothing
            except OSError:
                pass
        self.made = []

    def __enter__(self) -> "StudyLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
