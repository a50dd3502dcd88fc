"""Runs with more than three tasks: the archive kinds for K−1 ≥ 3 descriptors (grid, CVT,
Dominated Novelty Search), end to end through the command line."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from cycleqd.archives import CyclicArchives
from cycleqd.protocols import Measure
from tests.runs import cli, one_line_error
from tests.tiny import tiny_overrides

EXTRA = {
    "duplicate": "tests.plugins.more_tasks.Duplicate",
    "shift": "tests.plugins.more_tasks.Shift",
}


def _extra_task(name: str, target: str) -> list[str]:
    return [f"+task.{name}._target_={target}", f"+task.{name}.name={name}", f"+task.{name}.n_opt=24", f"+task.{name}.n_test=24",
            f"+task.{name}.measure={{low: 0.0, high: 1.0, bins: 6}}"]


def _run(cache: Path, run_dir: Path, k: int, *extra: str) -> dict:
    names = list(EXTRA)[: k - 3]
    args = tiny_overrides(cache, generations=6)
    for name in names:
        args += _extra_task(name, EXTRA[name])
    cli("run", *args, f"hydra.run.dir={run_dir}", *extra)
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("k, kind", [(4, "grid"), (4, "cvt"), (5, "dns")])
def test_runs_with_many_tasks(k: int, kind: str, cache: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    extra = ["archive.cells=40", "archive.samples=2000"] if kind == "cvt" else ["archive.capacity=8"] if kind == "dns" else []
    summary = _run(cache, run_dir, k, f"archive={kind}", *extra)
    tasks = summary["tasks"]
    assert len(tasks) == k and summary["generations"] == 6
    for t in tasks:  # a heatmap per archive, K−1 descriptors each
        assert (run_dir / "heatmaps" / f"{t}.png").read_bytes()[:4] == b"\x89PNG"
    with (run_dir / "elites" / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["archive"] for r in rows} == set(tasks)
    assert all(len(r["measures"].split("-")) == k - 1 for r in rows)
    for t in tasks:
        held = [r for r in rows if r["archive"] == t]
        assert summary["archives"][t]["best"] == pytest.approx(max(float(r[f"score_{t}"]) for r in held), abs=1e-6)
        if kind == "dns":
            assert len(held) <= 8  # the population's capacity
        if kind == "cvt":
            assert all(0 <= int(r["cell"]) < 40 for r in held)
    assert set(summary["final"]) == set(tasks)


def test_a_grid_too_large_names_the_bins_and_the_other_kinds(cache: Path, tmp_path: Path):
    args = tiny_overrides(cache, generations=2)
    for name in EXTRA:
        args += _extra_task(name, EXTRA[name])
    args += [f"task.{t}.measure.bins=40" for t in ("addition", "reversal", "sorting", *EXTRA)]
    line = one_line_error(cli("run", *args, "dry_run=true", f"hydra.run.dir={tmp_path / 'run'}", check=False))
    assert "would have" in line and "bins=40" in line and "archive=cvt" in line


@pytest.mark.parametrize("kind", ["cvt", "dns"])
def test_a_restored_archive_is_the_same_archive(kind: str):
    tasks = ["a", "b", "c", "d"]
    archives = CyclicArchives(tasks=tasks, measures={t: Measure(0.0, 1.0, 5) for t in tasks}, seed=3, kind=kind, cells=30, samples=600, capacity=10)
    rng = np.random.default_rng(0)
    for i in range(80):
        archives.add(i, dict(zip(tasks, rng.uniform(size=4))), i)
    restored = pickle.loads(pickle.dumps(archives))
    for t in tasks:
        a, b = archives.archives[t].data(), restored.archives[t].data()
        assert set(a) == set(b) and all(np.array_equal(a[f], b[f]) for f in a)
    if kind == "cvt":  # the same cells, not k-means run again
        assert all(np.array_equal(archives.centroids[t], restored.centroids[t]) for t in tasks)
    picks = [p.id for p in archives.sample_parents("b", 2, np.random.default_rng(5))]
    assert picks == [p.id for p in restored.sample_parents("b", 2, np.random.default_rng(5))]


def test_dns_keeps_the_novel_and_the_fit():
    """Capacity 3 over one descriptor: a dominated model next to a fitter one is dropped;
    the best of each region and the fittest overall stay."""
    archives = CyclicArchives(tasks=["q", "m"], measures={"q": Measure(), "m": Measure()}, kind="dns", capacity=3, k_neighbors=1)
    for i, (q, m) in enumerate([(0.9, 0.1), (0.5, 0.9), (0.4, 0.5), (0.3, 0.12)]):
        archives.add(i, {"q": q, "m": m}, 0)
    assert sorted(archives.archives["q"].data("id")) == [0, 1, 2]  # 3 sits next to the fitter 0
    assert archives.best("q").id == 0
    assert archives.stats()["q"]["num_elites"] == 3


def test_cvt_sampling_prefers_high_quality_and_measures():
    tasks = ["a", "b", "c"]
    archives = CyclicArchives(tasks=tasks, measures={t: Measure() for t in tasks}, kind="cvt", cells=50, samples=1000, seed=0, alpha=(0.1, 1.0))
    archives.add(0, {"a": 0.9, "b": 0.9, "c": 0.9}, 0)
    archives.add(1, {"a": 0.1, "b": 0.1, "c": 0.1}, 0)
    archives.add(2, {"a": 0.5, "b": 0.5, "c": 0.5}, 0)
    rng = np.random.default_rng(0)
    counts = np.bincount([archives.sample_parents("a", 1, rng)[0].id for _ in range(2000)], minlength=3)
    assert counts[0] > counts[2] > counts[1]  # ∝ 1·1·1, 0.55³, 0.1³


def test_archive_keys_are_checked_per_kind(cache: Path, tmp_path: Path):
    args = tiny_overrides(cache, generations=2)
    line = one_line_error(cli("run", *args, "archive=grid", "+archive.cells=10", "dry_run=true", check=False))
    assert "archive.cells" in line and "kind=grid" in line
    line = one_line_error(cli("run", *args, "archive=cvt", "archive.cells=0", "dry_run=true", check=False))
    assert "archive.cells" in line and ">= 1" in line
