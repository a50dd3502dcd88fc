"""Helpers for tests that run the real command line in subprocesses and compare run directories."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIMING = (
    "seconds",
    "evaluations_per_s",
    "elapsed_s",
    "workers",
    "in_flight",
    "queue_depth",
    "driver_peak_rss_mb",
)  # how, not what


# What a run imports: a process that has them forks each command-line run instead of
# starting an interpreter that imports them again (about 10 s of a 25 s tiny run on 2 cores).
PRELOAD = [
    "cycleqd",
    "cycleqd.cli",
    "cycleqd.run.runner",
    "cycleqd.run.components",
    "cycleqd.models.embedded",
    "cycleqd.run.configs",
    "hydra",
    "omegaconf",
    "matplotlib.pyplot",
    "ribs.visualize",
    "tabulate",
    "peft",
    "safetensors.torch",
    "transformers.masking_utils",
    "transformers.modeling_layers",
    "transformers.utils.type_validators",
    "transformers.models.llama.modeling_llama",
    "cycleqd.tasks.base",
    "cycleqd.tasks.addition",
    "cycleqd.tasks.reversal",
    "cycleqd.tasks.sorting",
]
_forkserver = None


def _context():
    global _forkserver
    if _forkserver is None:
        import multiprocessing

        _forkserver = multiprocessing.get_context("forkserver")
        # The server only imports, never computes: a fork of it holds no threads or locks.
        _forkserver.set_forkserver_preload(PRELOAD)
        # A run a failed test left going would hold pytest at exit (multiprocessing joins its
        # children there); registered after multiprocessing's own exit hook, this runs first.
        atexit.register(lambda: [p.kill() for p in multiprocessing.active_children()])
    return _forkserver


def _cli_child(args: list[str], env: dict, out: str, err: str) -> None:
    """In the forked process: the environment, directory, output files and exit code that
    ``python -m cycleqd.cli ARGS`` has."""
    import traceback

    os.environ.clear()
    os.environ.update(env)
    os.chdir(REPO)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = [str(REPO / "cycleqd" / "cli.py"), *args]
    code = 0
    try:
        from cycleqd.cli import main as cycleqd_main

        cycleqd_main(list(args))
    except SystemExit as e:
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # what the interpreter runs at exit (Ray's shutdown, log handlers)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Started:
    """``python -m cycleqd.cli ARGS`` started and running: what the tests use of a Popen
    (``pid``, ``poll``, ``send_signal``, ``kill``, ``communicate``, ``returncode``), forked from
    a process that has already imported cycleqd and its libraries."""

    def __init__(self, args: list[str], env: dict | None = None) -> None:
        import tempfile

        self.args = [sys.executable, "-m", "cycleqd.cli", *args]
        self._tmp = tempfile.TemporaryDirectory()
        self._out, self._err = os.path.join(self._tmp.name, "stdout"), os.path.join(self._tmp.name, "stderr")
        full_env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
        self._proc = _context().Process(target=_cli_child, args=(list(args), full_env, self._out, self._err))
        self._proc.start()
        self.pid = self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self._proc.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self._proc.kill()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the exit; its stdout and stderr (``TimeoutExpired`` if it runs on)."""
        self._proc.join(timeout)
        read = lambda path: open(path, errors="replace").read() if os.path.exists(path) else ""  # noqa: E731
        out, err = read(self._out), read(self._err)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout, out, err)
        self._tmp.cleanup()
        return out, err


def cli(*args: str, env: dict | None = None, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m cycleqd.cli ARGS`` from the repository root, run to its end (see
    :class:`Started`); asserts success unless ``check=False``."""
    proc = Started(list(args), env)
    try:
        out, err = proc.communicate(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The process failed with exactly one line on stderr and no traceback; returns that line."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [
        line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[")
    ]  # log lines start with [time]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_fingerprint(run_dir: Path) -> dict:
    """Everything a finished run directory says, wall times aside: summary, metrics, elite table,
    the record of every evaluated model, and the content of every elite file and of the final model."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("wall_time_s")
    metrics = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        metrics.append({k: v for k, v in m.items() if k not in TIMING})
    return {
        "summary": summary,
        "metrics": metrics,
        "table": table.read_text()
        if (table := run_dir / "elites" / "table.csv").is_file()
        else None,  # a search run has none
        "elite_files": {p.name: _sha(p) for p in sorted((run_dir / "elites").glob("elite-*"))},
        "final": _sha(run_dir / "final.safetensors"),
        "candidates": (run_dir / "candidates.jsonl").read_text(),
        "candidate_genomes": _sha(run_dir / "candidates.f32") if (run_dir / "candidates.f32").is_file() else None,
    }


def main(*args: str) -> subprocess.CompletedProcess:
    """``cycleqd ARGS`` in this process (no interpreter start-up); the exit code, stdout and
    stderr as a CompletedProcess. For the commands other than ``run``."""
    import contextlib
    import io
    import logging

    from cycleqd.cli import main as cycleqd_main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    root = logging.getLogger()
    handlers = root.handlers[:]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cycleqd_main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            root.handlers = handlers  # the command line configures logging
    return subprocess.CompletedProcess(["cycleqd", *args], code, out.getvalue(), err.getvalue())
