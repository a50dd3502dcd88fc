"""Shared fixtures: wandb off, and one tiny run made through the real command line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "disabled"

from tests.tiny import tiny_overrides  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory, cache) -> Path:
    """One run through the real ``cycleqd run`` command line."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "cycleqd.cli", "run", *tiny_overrides(cache), f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cycleqd (final)" in proc.stdout
    return run_dir


LIVELY_GENERATIONS = 25


def _lively(tmp_path_factory, cache, genome: bool) -> Path:
    from tests.runs import cli
    from tests.tiny import lively_overrides

    run_dir = tmp_path_factory.mktemp("lively") / "reference"
    cli("run", *lively_overrides(cache, LIVELY_GENERATIONS), "checkpoint_every=4", f"genome={str(genome).lower()}", f"hydra.run.dir={run_dir}")
    return run_dir


@pytest.fixture(scope="session")
def lively_run(tmp_path_factory, cache) -> Path:
    """An uninterrupted run of the lively tiny setup with elites as task-vector files: the
    reference the crash tests compare to."""
    return _lively(tmp_path_factory, cache, genome=False)


@pytest.fixture(scope="session")
def lively_genome_run(tmp_path_factory, cache) -> Path:
    """The same run with elites as genomes (held by the archives)."""
    return _lively(tmp_path_factory, cache, genome=True)
