"""One writer per run directory: an advisory lock (``flock``) on ``<run_dir>/.lock``.

The kernel drops the lock when its process dies, however it dies, so a lock left by a
killed run never blocks ``resume``; the file itself only says who held it last.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from cycleqd.errors import RunInUse


def holder(run_dir: str | Path) -> dict:
    """What the lock file says of its (last) holder: pid, host, since, command."""
    try:
        return json.loads((Path(run_dir) / ".lock").read_text())
    except (OSError, ValueError):
        return {}


class RunLock:
    """Holds ``run_dir``'s lock from :meth:`acquire` until :meth:`release` or process exit.

    Raises:
        RunInUse: (from :meth:`acquire`) a live process holds the lock; the message names it.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunInUse(in_use_message(self.run_dir)) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:200],
        }
        # Rewritten in place, not renamed: the lock belongs to this inode.
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def in_use_message(run_dir: Path) -> str:
    h = holder(run_dir)
    who = f"pid {h.get('pid', '?')} on host {h.get('host', '?')}"
    return f"run directory {str(run_dir)!r} is in use by {who} since {h.get('since', '?')}; wait for it to finish or stop it"


def is_locked(run_dir: str | Path) -> bool:
    """Whether a live process holds ``run_dir``'s lock (without taking it)."""
    path = Path(run_dir) / ".lock"
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
