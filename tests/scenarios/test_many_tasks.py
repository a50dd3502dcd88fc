"""Runs with more than three tasks: the archive kinds for K−1 ≥ 3 descriptors (grid, CVT,
Dominated Novelty Search), end to end through the command line."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from cycleqd.core.archives import CyclicArchives
from cycleqd.protocols import Measure
from tests.runs import cli, one_line_error
from tests.tiny import tiny_overrides

EXTRA = {
    "duplicate": "tests.plugins.more_tasks.Duplicate",
    "shift": "tests.plugins.more_tasks.Shift",
}


def _extra_task(name: str, target: str) -> list[str]:
    return [
        f"+task.{name}._target_={target}",
        f"+task.{name}.name={name}",
        f"+task.{name}.n_opt=24",
        f"+task.{name}.n_test=24",
        f"+task.{name}.measure={{low: 0.0, high: 1.0, bins: 6}}",
    ]


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
    extra = (
        ["archive.cells=40", "archive.samples=2000"]
        if kind == "cvt"
        else ["archive.capacity=8"]
        if kind == "dns"
        else []
    )
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
    archives = CyclicArchives(
        tasks=tasks,
        measures={t: Measure(0.0, 1.0, 5) for t in tasks},
        seed=3,
        kind=kind,
        cells=30,
        samples=600,
        capacity=10,
    )
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
    archives = CyclicArchives(
        tasks=["q", "m"], measures={"q": Measure(), "m": Measure()}, kind="dns", capacity=3, k_neighbors=1
    )
    for i, (q, m) in enumerate([(0.9, 0.1), (0.5, 0.9), (0.4, 0.5), (0.3, 0.12)]):
        archives.add(i, {"q": q, "m": m}, 0)
    assert sorted(archives.archives["q"].data("id")) == [0, 1, 2]  # 3 sits next to the fitter 0
    assert archives.best("q").id == 0
    assert archives.stats()["q"]["num_elites"] == 3


def test_cvt_sampling_prefers_high_quality_and_measures():
    tasks = ["a", "b", "c"]
    archives = CyclicArchives(
        tasks=tasks,
        measures={t: Measure() for t in tasks},
        kind="cvt",
        cells=50,
        samples=1000,
        seed=0,
        alpha=(0.1, 1.0),
    )
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


# -- lower-is-better tasks ----------------------------------------------------------------


def test_a_lower_is_better_task_is_the_same_search_as_its_mirror(cache: Path, tmp_path: Path):
    """An error rate with `direction: min` over [0, 1] has utility 1 − error = accuracy: the run
    must be the run of the accuracy task, archive for archive, and its table prints the error."""
    from tests.runs import run_fingerprint

    dirs = {}
    for target, direction in (("Duplicate", "max"), ("DuplicateErrors", "min")):
        run_dir = tmp_path / direction
        args = tiny_overrides(cache, generations=6, tasks=("addition", "reversal")) + ["task=[addition,reversal]"]
        args += _extra_task("duplicate", f"tests.plugins.more_tasks.{target}")
        args += [f"+task.duplicate.measure.direction={direction}"]
        cli("run", *args, f"hydra.run.dir={run_dir}")
        dirs[direction] = run_dir
    a, b = run_fingerprint(dirs["max"]), run_fingerprint(dirs["min"])
    assert b["summary"].pop("measures")["duplicate"]["direction"] == "min"
    a["summary"].pop("measures")
    for f in (a, b):
        f["summary"].pop("base_model")  # the base's cache key names the tasks' classes; its weights are the same
    assert a == b
    shown = cli("show", str(dirs["min"])).stdout
    head, _, first = shown.splitlines()[:3]
    assert "duplicate↓" in head and "lower is better" in shown
    accuracy = json.loads((dirs["max"] / "summary.json").read_text())["experts"]["addition"]["duplicate"]
    assert float(first.split()[-2 if "[" not in first else -5]) == pytest.approx(1 - accuracy, abs=1e-4)


def test_scores_of_a_lower_is_better_task_become_utilities_by_its_range():
    from cycleqd.evaluation.scoring import score_tasks
    from cycleqd.protocols import Failure, ItemTask

    class Perplexity(ItemTask):
        name = "ppl"
        measure = Measure(low=5.0, high=50.0, direction="min")

        def __init__(self, values):
            self.values = values

        def evaluate_items(self, model, split="opt"):
            return self.values

    result = score_tasks(None, [Perplexity([10.0, 14.0])], "test")
    assert result["ppl"] == pytest.approx((50 - 12) / 45)
    assert result.per_item["ppl"] == pytest.approx([40 / 45, 36 / 45])  # their mean is the score
    assert score_tasks(None, [Perplexity([80.0, 90.0])], "opt")["ppl"] == 0.0  # past the worst end: clipped
    assert score_tasks(None, [Perplexity([1.0, 3.0])], "opt")["ppl"] == 1.0
    failed = score_tasks(None, [Perplexity([10.0, float("nan")])], "test")
    assert isinstance(failed, Failure) and failed.reason == "nonfinite_score" and failed.task == "ppl"
    assert Perplexity.measure.score(result["ppl"]) == pytest.approx(12.0)


def test_an_archive_of_a_lower_is_better_descriptor_bins_its_utility():
    m = {"q": Measure(), "err": Measure(low=0.0, high=0.5, bins=5, direction="min")}
    archives = CyclicArchives(tasks=["q", "err"], measures=m)
    assert tuple(archives.archives["q"].lower_bounds) == (0.0,) and tuple(archives.archives["q"].upper_bounds) == (1.0,)
    archives.add(0, {"q": 0.5, "err": m["err"].utility(0.05)}, 0)  # utility 0.9: the top bin
    assert archives.cells_of("q", archives.archives["q"].data("index")) == [(4,)]


def test_direction_is_checked():
    from cycleqd.errors import ConfigError

    with pytest.raises(ConfigError, match="direction.*max or min"):
        Measure.of({"direction": "down"})


def test_long_steps_report_progress_where_stderr_is_not_a_terminal(tmp_path: Path):
    """A fresh cache: pretraining, fine-tuning, the SVDs, the loop, the baselines and the
    final model each log their progress lines, with an ETA, to a log (not a terminal)."""
    args = tiny_overrides(tmp_path / "cache", generations=3) + ["progress_every_s=0"]
    proc = cli("run", *args, f"hydra.run.dir={tmp_path / 'run'}")
    err = proc.stdout + proc.stderr  # Hydra logs to stdout and the run's cli.log
    for step in (
        "pretraining the base",
        "expert addition",
        "SVD of expert sorting",
        "cycleqd",
        "baselines",
        "final model",
    ):
        lines = [line for line in err.splitlines() if f"] - {step}" in line]
        assert len(lines) >= 2, (step, err[-3000:])
        assert any("ETA" in line for line in lines) or step.startswith("final model"), (step, lines)
    assert "] - cycleqd: 3/3 generations in" in err


@pytest.mark.parametrize("kind", ["cvt", "dns"])
def test_killed_runs_with_cvt_and_dns_archives_resume_to_the_same_run(kind: str, cache: Path, tmp_path: Path):
    """The run contract holds for the other archives: killed mid-run, a resume ends where an
    uninterrupted run ends (DNS evicting models all along: capacity 6)."""
    import signal

    from tests.runs import run_fingerprint
    from tests.tiny import lively_overrides

    extra = ["archive.cells=30", "archive.samples=600"] if kind == "cvt" else ["archive.capacity=6"]
    args = lively_overrides(cache, generations=12) + [f"archive={kind}", *extra]
    straight, run_dir = tmp_path / "straight", tmp_path / "killed"
    cli("run", *args, f"hydra.run.dir={straight}")
    proc = cli(
        "run",
        *args,
        f"hydra.run.dir={run_dir}",
        env={"CYCLEQD_FAULT_AFTER": "generation 7", "CYCLEQD_FAULT_AT": "1:kill"},
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL
    cli("resume", str(run_dir))
    assert run_fingerprint(run_dir) == run_fingerprint(straight)
    if kind == "dns":
        rows = (straight / "elites" / "table.csv").read_text().splitlines()[1:]
        assert max(sum(r.startswith(f"{t},") for r in rows) for t in ("addition", "reversal", "sorting")) == 6
