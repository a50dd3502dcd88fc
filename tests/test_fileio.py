"""Durable writes, checkpoint files and the run lock, in one process."""

from __future__ import annotations

import json
import os

import pytest

from cycleqd import fileio
from cycleqd.errors import DamagedFile, RunInUse, WriteFailed
from cycleqd.run import checkpoint
from cycleqd.run.lock import RunLock, is_locked


@pytest.fixture
def faults(monkeypatch, tmp_path):
    """Arm the fault hook: ``faults(at)`` makes the ``at``-th fault point raise ENOSPC."""

    def arm(at: int):
        monkeypatch.setattr(fileio, "_fault_count", 0)
        monkeypatch.setattr(fileio, "_fault_armed", False)
        monkeypatch.setattr(fileio, "_fault_fired", False)
        monkeypatch.setenv("CYCLEQD_FAULT_AT", f"{at}:enospc")
        monkeypatch.setenv("CYCLEQD_FAULT_LOG", str(tmp_path / "faults.log"))

    return arm


@pytest.mark.parametrize("at", [1, 2, 3])  # half written, before the rename, after it
def test_a_failed_write_leaves_the_old_file_or_the_new_one_and_no_temporary(tmp_path, faults, at):
    path = tmp_path / "state.json"
    fileio.write_text(path, "old")
    faults(at)
    with pytest.raises(WriteFailed, match=f"cannot write '{path}': No space left on device"):
        fileio.write_text(path, "new")
    assert path.read_text() == ("new" if at == 3 else "old")
    assert [p.name for p in tmp_path.iterdir() if p.name != "faults.log"] == ["state.json"]


def test_write_returns_the_checksum_and_fault_points_are_logged(tmp_path, faults):
    import hashlib

    faults(99)
    assert fileio.write_bytes(tmp_path / "a.bin", b"abc") == hashlib.sha256(b"abc").hexdigest()
    names = [line.split(" ", 1)[1] for line in (tmp_path / "faults.log").read_text().splitlines()]
    assert names == ["write a.bin: half written", "write a.bin: before rename", "write a.bin: after rename"]


def test_fault_points_count_only_after_the_marker(tmp_path, faults, monkeypatch):
    faults(2)
    monkeypatch.setenv("CYCLEQD_FAULT_AFTER", "generation 3")
    for g in range(3):
        fileio.fault_point(f"generation {g}")
        fileio.write_text(tmp_path / f"{g}.txt", "x")  # not counted yet
    fileio.fault_point("generation 3")  # counted: 1
    with pytest.raises(WriteFailed):
        fileio.write_text(tmp_path / "3.txt", "x")  # its first point is the 2nd


def test_checkpoint_round_trip_and_damage(tmp_path):
    assert checkpoint.load(tmp_path) is None
    state = {"qd": {"generation": 7, "x": [1, 2]}, "other": "y"}
    checkpoint.commit(tmp_path, state, {"elite-000001.safetensors": "ab" * 32})
    ck = checkpoint.load(tmp_path)
    assert ck.state == state and ck.generation == 7 and ck.elites == {"elite-000001.safetensors": "ab" * 32}
    path = checkpoint.checkpoint_path(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    with pytest.raises(DamagedFile, match="checksum does not match"):
        checkpoint.load(tmp_path)
    path.write_bytes(b"")
    with pytest.raises(DamagedFile, match="no cycleqd checkpoint header"):
        checkpoint.load(tmp_path)


def test_the_run_lock_names_its_holder_and_dies_with_it(tmp_path):
    with RunLock(tmp_path):
        assert is_locked(tmp_path)
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(RunInUse, match=f"in use by pid {os.getpid()} on host {holder['host']}"):
            RunLock(tmp_path).acquire()
    assert not is_locked(tmp_path)
    RunLock(tmp_path).acquire().release()  # the file stays; the lock is free again


def test_a_directory_is_written_whole_or_not_at_all(tmp_path):
    def fill(d):
        (d / "a.txt").write_text("a")
        (d / "sub").mkdir()
        (d / "sub" / "b.txt").write_text("b")

    out = fileio.write_directory(tmp_path / "model", fill)
    assert (out / "a.txt").read_text() == "a" and (out / "sub" / "b.txt").read_text() == "b"

    def half(d):
        (d / "a.txt").write_text("a")
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteFailed, match="cannot write .*other"):
        fileio.write_directory(tmp_path / "other", half)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no half directory, no temporary left
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        fileio.write_directory(out, fill)
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "sub"]
