"""Durable files: every file cycleqd writes goes temp → fsync → rename → fsync of the
directory, so a crash leaves either the old file or the new one, never half of one; a
failed write (a full disk) removes its temporary file and raises :class:`WriteFailed`
naming the path.

Fault injection, for the crash tests: each step of a write or a delete, and each point
the runner marks with :func:`fault_point`, counts as one *fault point*.

    CYCLEQD_FAULT_LOG=FILE      append the name of every fault point reached to FILE
    CYCLEQD_FAULT_AT=N:kill     SIGKILL this process at the N-th fault point
    CYCLEQD_FAULT_AT=N:enospc   raise "No space left on device" at the first write step from
                                the N-th fault point on
    CYCLEQD_FAULT_AFTER=NAME    count only from the fault point called NAME on
                                (``generation 17``, ``final: start``)
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable

from cycleqd.errors import DamagedFile, WriteFailed

_fault_count = 0
_fault_armed = False
_fault_fired = False


def fault_point(name: str) -> None:
    """Mark a moment at which the crash tests may kill the process (a no-op otherwise)."""
    log, at = os.environ.get("CYCLEQD_FAULT_LOG"), os.environ.get("CYCLEQD_FAULT_AT")
    if not (log or at):
        return
    global _fault_count, _fault_armed, _fault_fired
    # CYCLEQD_FAULT_AFTER is a name or a pattern of names ("write elite-*: half written")
    _fault_armed = _fault_armed or fnmatch.fnmatchcase(name, os.environ.get("CYCLEQD_FAULT_AFTER", "*"))
    if not _fault_armed:
        return
    _fault_count += 1
    if log:
        with open(log, "a") as f:
            f.write(f"{_fault_count} {name}\n")
    if at:
        n, action = at.split(":")
        if action == "kill" and _fault_count == int(n):
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "enospc" and _fault_count >= int(n) and name.startswith("write") and not _fault_fired:
            _fault_fired = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> str:
    """Write ``data`` to ``path`` durably and atomically; returns its SHA-256 (hex).

    Raises:
        WriteFailed: the file could not be written; ``path`` is left as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            fault_point(f"write {path.name}: half written")
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"write {path.name}: before rename")
        os.replace(tmp, path)
        tmp = None
        fault_point(f"write {path.name}: after rename")
        fsync_dir(path.parent)
    except OSError as e:
        if isinstance(e, WriteFailed):
            raise
        raise WriteFailed(path, e) from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


def write_text(path: str | Path, text: str) -> str:
    return write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> str:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def remove(path: str | Path) -> None:
    """Delete a file if it exists (a fault point, for the crash tests)."""
    path = Path(path)
    if path.exists():
        fault_point(f"delete {path.name}")
        path.unlink(missing_ok=True)


def remove_temporaries(root: str | Path) -> None:
    """Delete the temporary files that writes killed before their rename left under ``root``."""
    for p in Path(root).rglob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)


def stored(path: str | Path) -> Path | None:
    """Where ``path`` is kept: itself, or ``path.gz`` in a packed run (``cycleqd pack``); None: neither."""
    path = Path(path)
    if path.is_file():
        return path
    packed = path.with_name(path.name + ".gz")
    return packed if packed.is_file() else None


def read_stored_text(path: str | Path) -> str:
    """The text of ``path``, or of ``path.gz`` where a packed run keeps it compressed.

    Raises:
        FileNotFoundError: neither exists.
        DamagedFile: the compressed file does not decompress.
    """
    at = stored(path)
    if at is None:
        raise FileNotFoundError(f"no file at {str(path)!r}")
    if at.suffix != ".gz":
        return at.read_text()
    import gzip

    try:
        return gzip.decompress(at.read_bytes()).decode()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DamagedFile(at, f"does not decompress ({e})") from None


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file cycleqd wrote (or its ``.gz``, in a packed run).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DamagedFile: it exists but is not valid JSON (truncated, say).
    """
    path = Path(path)
    if stored(path) is None:
        raise FileNotFoundError(f"no {what} at {str(path)!r}")
    try:
        return json.loads(read_stored_text(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedFile(path, f"not valid JSON ({e})") from None


def sync_tree(root: Path) -> None:
    """Flush every file under ``root`` and every directory's entries to disk."""
    for p in sorted(Path(root).rglob("*"), reverse=True):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(Path(root))


def write_directory(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Make the directory ``target`` whole or not at all: ``write(tmp)`` fills a temporary
    sibling, everything in it is flushed to disk, and it is renamed into place.

    Raises:
        FileExistsError: ``target`` exists and is not empty (nothing is written).
        WriteFailed: the directory could not be written; ``target`` is left as it was.
    """
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{str(target)!r} exists and is not empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        sync_tree(tmp)
        fault_point(f"write {target.name}/: before rename")
        if target.exists():
            target.rmdir()
        tmp.rename(target)
        fsync_dir(target.parent)
    except OSError as e:
        if isinstance(e, WriteFailed):
            raise
        raise WriteFailed(target, e) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_atomically(target: Path, build: Callable[[Path], dict]) -> Path:
    """Reuse the directory ``target`` if complete, else run ``build(tmp_dir)`` and rename it into place.

    ``build`` returns metadata, written last as ``recipe.json``: its presence marks a
    complete entry, so an interrupted build never passes for a finished one.
    """
    if (target / "recipe.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        meta = build(tmp)
        sync_tree(tmp)
        write_json(tmp / "recipe.json", meta)
        try:
            tmp.rename(target)
            fsync_dir(target.parent)
        except OSError:  # another process finished the same build first
            if not (target / "recipe.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
