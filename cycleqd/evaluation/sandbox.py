"""Running model-written Python (MBPP-style tests) contained: a separate process in a new
session and a scratch directory of its own, with CPU-time, memory, file-size and
process limits, an empty environment, and — when started as root and the interpreter is readable by
``nobody`` — the privileges of ``nobody``. Inside, an audit hook refuses new processes, signals to other processes,
sockets, native libraries (ctypes) and any write outside the scratch directory.

This contains mistakes and accidents of generated code (loops, fork bombs, huge
allocations, stray writes); it is not a security boundary against an adversary who
controls the model. For that, run evaluators in a container or VM.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

from cycleqd.checks import check_fields, require

NOBODY = 65534

# Runs first in the sandboxed interpreter: confine it, then run the code in main.py.
_BOOT = r"""
import os, resource, sys
cpu, mem, fsize, nproc, nobody = (int(a) for a in sys.argv[1:6])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
import runpy
if nobody >= 0:
    os.setgroups([])
    os.setgid(nobody)
    os.setuid(nobody)
SCRATCH = os.path.realpath(os.getcwd())
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
BLOCKED = {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "subprocess.Popen",
           "os.kill", "os.killpg", "socket.connect", "socket.bind", "ctypes.dlopen", "ctypes.dlsym", "os.chroot"}
PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.chmod", "os.chown",
               "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.copyfile", "shutil.move"}

def inside(path):
    if isinstance(path, int):
        return True
    p = os.path.realpath(os.fsdecode(path))
    return p == SCRATCH or p.startswith(SCRATCH + os.sep)

def hook(event, args):
    if event in BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in str(mode) for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        if writing and not inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the scratch directory")
    elif event in PATH_EVENTS:
        for a in args[:2]:
            if isinstance(a, (str, bytes, os.PathLike)) and not inside(a):
                raise PermissionError(f"sandbox: {event} on {a!r} outside the scratch directory")

sys.addaudithook(hook)
sys.argv = ["main.py"]
runpy.run_path("main.py", run_name="__main__")
"""


@dataclass(frozen=True)
class Limits:
    """What one sandboxed run may use.

    Args:
        timeout_s: Wall-clock seconds before the process group is killed.
        cpu_s: CPU seconds (``RLIMIT_CPU``).
        memory_mb: Address space in MiB (``RLIMIT_AS``).
        file_mb: Largest file it may write, in MiB (``RLIMIT_FSIZE``).
        max_processes: Processes its user may have (``RLIMIT_NPROC``; the kernel does not
            apply it to root, so as root without the drop to ``nobody`` the audit hook alone
            stops forks).
    """

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    file_mb: int = 16
    max_processes: int = 16

    def __post_init__(self) -> None:
        check_fields(self)
        for key in ("timeout_s", "cpu_s", "memory_mb", "file_mb"):
            require(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        require(self.max_processes >= 1, "max_processes", f"must be >= 1, got {self.max_processes}")


@dataclass(frozen=True)
class Outcome:
    """How a sandboxed run ended: its exit code (negative: killed by that signal), whether the
    wall clock ran out, and the tails of its output."""

    returncode: int
    timed_out: bool
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@functools.lru_cache(maxsize=1)
def _can_drop_privileges() -> bool:
    """As root, run the code as ``nobody`` — if ``nobody`` can read this interpreter's
    standard library (an install under a private home directory it cannot)."""
    if os.geteuid() != 0:
        return False
    path = os.path.realpath(sysconfig.get_paths()["stdlib"])
    while path != os.path.dirname(path):
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        path = os.path.dirname(path)
    return True


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(code: str, limits: Limits = Limits()) -> Outcome:
    """Run ``code`` as ``main.py`` in a fresh scratch directory under ``limits``; the directory is removed after."""
    scratch = tempfile.mkdtemp(prefix="cycleqd-sandbox-")
    try:
        with open(os.path.join(scratch, "main.py"), "w") as f:
            f.write(code)
        nobody = NOBODY if _can_drop_privileges() else -1
        if nobody >= 0:
            os.chown(scratch, NOBODY, NOBODY)
            os.chown(os.path.join(scratch, "main.py"), NOBODY, NOBODY)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": scratch,
            "TMPDIR": scratch,
            "LANG": "C.UTF-8",
            "OPENBLAS_NUM_THREADS": "1",
        }
        caps = [
            max(1, int(limits.cpu_s)),
            limits.memory_mb * 2**20,
            limits.file_mb * 2**20,
            limits.max_processes,
            nobody,
        ]
        # The limits are set by the child itself, first thing: no preexec_fn, which is unsafe
        # when the parent has threads (items are scored in parallel).
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", _BOOT, *map(str, caps)],
            cwd=scratch,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=limits.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)  # before it is reaped, so its group id cannot belong to another process yet
            out, err = proc.communicate()
        return Outcome(
            proc.returncode, timed_out, out.decode(errors="replace")[-2000:], err.decode(errors="replace")[-2000:]
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
