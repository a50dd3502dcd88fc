"""Damaged run directories: a truncated or corrupt checkpoint, elite, summary or config
gives one line naming the file, from resume, show, select, export and load_run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cycleqd.analysis.rundata import load_run
from cycleqd.errors import DamagedFile
from cycleqd.run import checkpoint
from tests.runs import main, one_line_error


@pytest.fixture
def run_copy(tmp_path: Path, lively_run: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(lively_run, dst)
    return dst


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _an_elite(run_dir: Path) -> int:
    return int((run_dir / "elites" / "table.csv").read_text().splitlines()[1].split(",")[4])


def _names(line: str, path: Path) -> None:
    assert str(path) in line, line


def test_truncated_checkpoint(run_copy: Path):
    path = run_copy / "checkpoint" / "state.ckpt"
    _truncate(path)
    for args in (
        ["resume", str(run_copy)],
        ["select", str(run_copy)],
        ["export", str(run_copy), "--elite", "best:addition", "--out", str(run_copy / "x")],
    ):
        line = one_line_error(main(*args))
        _names(line, path)
        assert "truncated or corrupt" in line
    with pytest.raises(DamagedFile, match="state.ckpt"):
        load_run(run_copy)


def test_checkpoint_of_another_kind(run_copy: Path):
    path = run_copy / "checkpoint" / "state.ckpt"
    path.write_bytes(b"\x80\x04not a checkpoint")
    _names(one_line_error(main("resume", str(run_copy))), path)


def test_truncated_elite_file(run_copy: Path):
    elite = _an_elite(run_copy)
    path = run_copy / "elites" / f"elite-{elite:06d}.safetensors"
    _truncate(path)
    line = one_line_error(main("resume", str(run_copy), "generations=30"))
    _names(line, path)
    assert "checksum" in line
    line = one_line_error(main("export", str(run_copy), "--elite", str(elite), "--out", str(run_copy / "x")))
    _names(line, path)
    assert not (run_copy / "x").exists()


def test_missing_elite_file(run_copy: Path):
    elite = _an_elite(run_copy)
    path = run_copy / "elites" / f"elite-{elite:06d}.safetensors"
    path.unlink()
    line = one_line_error(main("resume", str(run_copy), "generations=30"))
    _names(line, path)
    assert "missing" in line


def test_corrupt_elite_record(run_copy: Path):
    path = run_copy / "elites" / f"elite-{_an_elite(run_copy):06d}.json"
    path.write_text('{"id": 3, "gener')
    _names(one_line_error(main("resume", str(run_copy), "generations=30")), path)


def test_corrupt_summary(run_copy: Path):
    path = run_copy / "summary.json"
    _truncate(path)
    line = one_line_error(main("show", str(run_copy)))
    _names(line, path)
    assert "not valid JSON" in line
    _names(one_line_error(main("compare", str(run_copy.parent))), path)
    with pytest.raises(DamagedFile, match="summary.json"):
        load_run(run_copy)
    # resume rewrites a damaged summary from the checkpoint
    proc = main("resume", str(run_copy))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "cycleqd (final)" in out and (run_copy / "summary.json").read_text().startswith("{")


@pytest.mark.parametrize("content", [b"\x00\xff{[: oops", b"- just\n- a list\n"])
def test_corrupt_config(run_copy: Path, content: bytes):
    path = run_copy / ".hydra" / "config.yaml"
    path.write_bytes(content)
    _names(one_line_error(main("resume", str(run_copy))), path)
    assert checkpoint.load(run_copy) is not None  # nothing else was touched


def test_a_genome_run_whose_bases_are_gone_names_them(tmp_path: Path, lively_genome_run: Path):
    run_dir = tmp_path / "run"
    shutil.copytree(lively_genome_run, run_dir)
    run = load_run(run_dir)
    victim = Path(run.bases["sorting"])
    moved = tmp_path / "moved.safetensors"
    shutil.move(victim, moved)
    try:
        line = one_line_error(main("export", str(run_dir), "--elite", "best:sorting", "--out", str(tmp_path / "x")))
        assert str(victim) in line and "expert 'sorting'" in line and f"cycleqd resume {run_dir}" in line, line
        assert main("select", str(run_dir)).returncode == 0  # tables need no basis
    finally:
        shutil.move(moved, victim)


def test_genomes_and_task_vector_files_make_the_same_run(lively_run: Path, lively_genome_run: Path):
    """The same lively config in both representations: the same elites in the same cells with the
    same scores (evaluation of the two materialisations agreed on every prompt here)."""
    a = (lively_run / "elites" / "table.csv").read_text()
    b = (lively_genome_run / "elites" / "table.csv").read_text()
    assert a == b
    assert load_run(lively_genome_run).summary["final"] == load_run(lively_run).summary["final"]
