"""Running model-written Python and its tests where the code can neither forge its score nor
reach the machine: each run inside a bubblewrap sandbox, and its verdict from a judge the
code cannot touch (:mod:`cycleqd.evaluation.harness`).

What the kernel enforces, per run:

- its own user, PID, network, IPC, UTS and cgroup namespaces: no network at all (not even the
  host's loopback), no other process visible or signalable, and when the run ends or its
  deadline passes every process it started is gone with the namespace;
- a read-only view of the system's ``/usr`` (and the interpreter's prefix), a fresh ``/proc``
  and ``/dev``, and one writable directory, ``/scratch``: a tmpfs of ``disk_mb`` that vanishes
  with the run, so nothing of the host (other items, the run directory, secrets) is visible;
- an unprivileged user: started as root, the sandbox runs as ``nobody`` (uid 65534), and it
  refuses to run code as root unless ``allow_root`` says so;
- limits per process on CPU time, address space, file size and processes (``RLIMIT_*``).

Not contained: the CPU and memory a run uses while it lasts (limits are per process, at
most ``max_processes`` of them; there are no cgroups), and the kernel itself (no seccomp filter).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cycleqd.checks import check_fields, require
from cycleqd.errors import ConfigError

NOBODY = 65534
TAIL = 2000  # characters of each output kept
INSTALL = "apt-get install bubblewrap (Debian, Ubuntu), dnf install bubblewrap (Fedora)"


@dataclass(frozen=True)
class Limits:
    """How model-written code runs: what one run may use, and as whom.

    Args:
        timeout_s: Wall-clock seconds of the whole run; then every process of it is killed.
        cpu_s: CPU seconds per process (``RLIMIT_CPU``).
        memory_mb: Address space per process, in MiB (``RLIMIT_AS``).
        file_mb: Largest file a run may write, in MiB (``RLIMIT_FSIZE``).
        disk_mb: Size of the run's writable ``/scratch`` (a tmpfs), in MiB.
        max_processes: Processes a run may have at once, the judge's and the
            candidate's included (``RLIMIT_NPROC`` inside its own user namespace).
        python: Interpreter inside the sandbox; null: this one's base interpreter if the
            sandbox's user can run it, else ``/usr/bin/python3``. Its standard library and
            site packages are what the code and the tests can import.
        allow_root: Run the code as root when the drop to ``nobody`` is not possible. Off:
            such a setup is refused at validation.
    """

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    file_mb: int = 16
    disk_mb: int = 64
    max_processes: int = 16
    python: str | None = None
    allow_root: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        for key in ("timeout_s", "cpu_s", "memory_mb", "file_mb", "disk_mb"):
            require(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        # the judge and the candidate's interpreter are two processes before the code starts any
        require(self.max_processes >= 3, "max_processes", f"must be >= 3, got {self.max_processes}")


@dataclass(frozen=True)
class Verdict:
    """What the judge found: ``ran`` of ``of`` test statements ran without an error."""

    ran: int
    of: int
    reason: str

    @property
    def passed(self) -> bool:
        return self.ran == self.of and not self.reason


@dataclass(frozen=True)
class Outcome:
    """How a sandboxed run ended: the judge's verdict (None: there was none, so it failed),
    whether the deadline passed, bubblewrap's exit code and the tails of the output."""

    verdict: Verdict | None
    timed_out: bool
    returncode: int
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.verdict is not None and self.verdict.passed and not self.timed_out


class SandboxUnavailable(ConfigError):
    """The sandbox cannot run here; the message says what to install or set."""


def run_tests(code: str, tests: str, limits: Limits = Limits()) -> Outcome:
    """Run ``code`` as a module and then ``tests`` (statements, usually asserts) against it,
    in a fresh sandbox under ``limits``; passed only if every test statement ran."""
    plan = _plan(limits)
    token = secrets.token_hex(16)
    payload = {
        "token": token,
        "code": code,
        "tests": tests,
        "limits": {
            "cpu_s": max(1, int(limits.cpu_s)),
            "memory_bytes": limits.memory_mb * 2**20,
            "file_bytes": limits.file_mb * 2**20,
            "max_processes": limits.max_processes,
        },
    }
    payload_fd = _memfd("payload", json.dumps(payload).encode())
    harness_fd = _memfd("harness", Path(__file__).with_name("harness.py").read_bytes())
    verdict_r, verdict_w = os.pipe()
    command = [
        *plan.bwrap,
        "--ro-bind-data",
        str(harness_fd),
        "/harness.py",
        *plan.finish,
        plan.python,
        "-I",
        "/harness.py",
        "judge",
        str(payload_fd),
        str(verdict_w),
    ]
    try:
        proc = subprocess.Popen(
            command,
            pass_fds=(payload_fd, harness_fd, verdict_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"},
            start_new_session=True,
            **plan.user,
        )
    finally:
        for fd in (payload_fd, harness_fd, verdict_w):
            os.close(fd)
    try:
        with os.fdopen(verdict_r, "rb") as verdict_file:
            files = {"stdout": proc.stdout, "stderr": proc.stderr, "verdict": verdict_file}
            outputs, timed_out = _drain(proc, files, limits)
    except BaseException:  # the evaluator's own deadline (SIGALRM) or an interrupt: the run goes down with it
        _kill(proc)
        proc.wait()
        raise
    return Outcome(
        _verdict(outputs["verdict"], token),
        timed_out,
        proc.returncode,
        outputs["stdout"].decode(errors="replace")[-TAIL:],
        outputs["stderr"].decode(errors="replace")[-TAIL:],
    )


def run_python(code: str, limits: Limits = Limits()) -> Outcome:
    """Run ``code`` alone in a sandbox: passed if it ran to its end without an exception."""
    return run_tests(code, "", limits)


def check(limits: Limits = Limits()) -> None:
    """Raise :class:`SandboxUnavailable` (naming the tool or setting) unless a known-good
    solution passes and a wrong one fails here, under ``limits``: run before any model loads."""
    _check(limits)


@functools.lru_cache(maxsize=8)
def _check(limits: Limits) -> None:
    plan = _plan(limits)
    quick = Limits(**{**limits.__dict__, "timeout_s": max(30.0, limits.timeout_s)})
    right = run_tests("def f(x):\n    return x + 1\n", "assert f(1) == 2\n", quick)
    wrong = run_tests("def f(x):\n    return x\n", "assert f(1) == 2\n", quick)
    if not right.passed or wrong.passed:
        why = (right.stderr.strip().splitlines() or [right.verdict and right.verdict.reason or "no verdict"])[-1]
        raise SandboxUnavailable("", f"the sandbox does not run here ({why}); command: {' '.join(plan.bwrap[:3])} ...")


@dataclass(frozen=True)
class _Plan:
    bwrap: list[str]  # the mounts
    finish: list[str]  # after the last mount: the read-only root, the environment, the user
    python: str
    user: dict


@functools.lru_cache(maxsize=8)
def _plan(limits: Limits) -> _Plan:
    """The bubblewrap command line, the interpreter and the user to start it as."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            "", f"model-written code runs under bubblewrap (bwrap), which is not installed: {INSTALL}"
        )
    root = os.geteuid() == 0
    python = _interpreter(limits, NOBODY if root else None)
    if python is None:
        if not (root and limits.allow_root):
            raise SandboxUnavailable(
                "python" if not root else "allow_root",
                "no Python interpreter that the sandbox's user (nobody) can run: set sandbox.python to one it can read"
                + (", or sandbox.allow_root=true to run model-written code as root knowingly" if root else ""),
            )
        python = _interpreter(limits, None)
        root_drop = False
    else:
        root_drop = root
    if python is None:
        raise SandboxUnavailable("python", f"{limits.python!r} is not an executable file")
    prefix = Path(python).resolve().parent.parent
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]
    args += ["--as-pid-1", "--cap-drop", "ALL", "--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/", top)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    if not str(prefix).startswith("/usr/"):
        args += ["--ro-bind", str(prefix), str(prefix)]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache", "--proc", "/proc", "--dev", "/dev"]
    args += ["--size", str(limits.disk_mb * 2**20), "--tmpfs", "/scratch", "--chdir", "/scratch"]
    finish = ["--remount-ro", "/", "--clearenv", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    for key, value in (("PATH", "/usr/bin:/bin"), ("HOME", "/scratch"), ("TMPDIR", "/scratch"), ("LANG", "C.UTF-8")):
        finish += ["--setenv", key, value]
    finish += ["--setenv", "OPENBLAS_NUM_THREADS", "1", "--setenv", "OMP_NUM_THREADS", "1"]
    user = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if root_drop else {}
    return _Plan(args, finish, python, user)


def _interpreter(limits: Limits, user: int | None) -> str | None:
    """The interpreter to run inside, if ``user`` (None: this one) can execute it."""
    if limits.python is not None:
        candidates = [limits.python]
    else:
        candidates = [getattr(sys, "_base_executable", sys.executable), "/usr/bin/python3"]
    for path in candidates:
        real = Path(path).resolve()
        if not real.is_file() or not os.access(real, os.X_OK):
            continue
        if user is None or _reachable_by_others(real):
            return str(real)
    return None


def _reachable_by_others(path: Path) -> bool:
    """Whether a user with no ownership or group can execute ``path`` (each directory above searchable)."""
    if not path.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(f"cycleqd-{name}", os.MFD_CLOEXEC)  # only pass_fds carries it, into this run alone
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _drain(proc: subprocess.Popen, files: dict, limits: Limits) -> tuple[dict[str, bytes], bool]:
    """Read the outputs (keeping each one's tail) until they close or the deadline passes;
    at the deadline kill bubblewrap, which takes its PID namespace and every process in it along."""
    deadline = time.monotonic() + limits.timeout_s
    kept = {name: bytearray() for name in files}
    timed_out = False
    with selectors.DefaultSelector() as selector:
        for name, f in files.items():
            os.set_blocking(f.fileno(), False)
            selector.register(f, selectors.EVENT_READ, name)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0 and not timed_out:
                timed_out = True
                _kill(proc)
                deadline = time.monotonic() + 1.0  # the namespace is gone: the pipes close now
                continue
            if left <= 0:
                break  # cannot happen: nothing outside the namespace holds the pipes
            for key, _ in selector.select(left):
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buf = kept[key.data]
                buf += chunk
                if len(buf) > 4 * TAIL:
                    del buf[: len(buf) - TAIL]
    for f in files.values():
        f.close()
    try:
        proc.wait(timeout=1.0 if timed_out else None)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.wait()
    return {name: bytes(v) for name, v in kept.items()}, timed_out


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # bubblewrap's session: --die-with-parent does the rest
    except (ProcessLookupError, PermissionError):
        pass


def _verdict(data: bytes, token: str) -> Verdict | None:
    """The judge's line, if it carries this run's token and is well formed."""
    try:
        line = json.loads(data.decode().splitlines()[0])
        if line["token"] != token:
            return None
        ran, of, reason = line["ran"], line["of"], line["reason"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if type(ran) is not int or type(of) is not int or type(reason) is not str:
        return None
    return Verdict(ran, of, reason)
