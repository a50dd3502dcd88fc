"""Helpers for tests that run the real command line in subprocesses and compare run directories."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIMING = ("seconds", "evaluations_per_s", "elapsed_s", "workers", "in_flight", "queue_depth", "driver_peak_rss_mb")  # how, not what


def cli(*args: str, env: dict | None = None, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m cycleqd.cli ARGS`` from the repository root; asserts success unless ``check=False``."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "cycleqd.cli", *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The process failed with exactly one line on stderr and no traceback; returns that line."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[")]  # log lines start with [time]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_fingerprint(run_dir: Path) -> dict:
    """Everything a finished run directory says, wall times aside: summary, metrics, elite table,
    and the content of every elite file and of the final model."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("wall_time_s")
    metrics = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        metrics.append({k: v for k, v in m.items() if k not in TIMING})
    return {
        "summary": summary,
        "metrics": metrics,
        "table": table.read_text() if (table := run_dir / "elites" / "table.csv").is_file() else None,  # a search run has none
        "elite_files": {p.name: _sha(p) for p in sorted((run_dir / "elites").glob("elite-*"))},
        "final": _sha(run_dir / "final.safetensors"),
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
