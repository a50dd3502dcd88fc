"""Shared fixtures: wandb off, and one tiny run made through the real command line."""

import os
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "disabled"

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # Each pytest-xdist worker gets its share of the cores, so in-process tests do not
    # oversubscribe them (the command-line runs the tests start set their own threads).
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

from tests.tiny import tiny_overrides  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory, cache) -> Path:
    """One run through the real ``cycleqd run`` command line."""
    from tests.runs import cli

    run_dir = tmp_path_factory.mktemp("cli") / "run"
    proc = cli("run", *tiny_overrides(cache), f"hydra.run.dir={run_dir}")
    assert "cycleqd (final)" in proc.stdout
    return run_dir


LIVELY_GENERATIONS = 25


def _lively(tmp_path_factory, cache, genome: bool) -> Path:
    from tests.runs import cli
    from tests.tiny import lively_overrides

    run_dir = tmp_path_factory.mktemp("lively") / "reference"
    cli(
        "run",
        *lively_overrides(cache, LIVELY_GENERATIONS),
        "checkpoint_every=4",
        f"genome={str(genome).lower()}",
        f"hydra.run.dir={run_dir}",
    )
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
