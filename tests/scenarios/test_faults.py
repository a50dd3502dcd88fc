"""Evaluation faults: a task that raises, returns NaN/inf/out of range or hangs makes that
child a recorded failure, never an elite; the run goes on, and stops at a checkpoint after
too many failures in a row. Children with NaN weights are rejected unevaluated."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cycleqd.errors import EvaluationFailed, TooManyFailures
from cycleqd.run import checkpoint
from cycleqd.run.runner import run
from tests.tiny import compose_lively

FAULTY = "task.sorting._target_=tests.plugins.faulty.FaultySorting"


def _failures(run_dir: Path, seed_failures: int = 0) -> list[dict]:
    """The failures metrics.jsonl lists, checked against its running count (which also
    counts the experts that failed while seeding)."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        out += m.get("failures", [])
        assert m["failed_evaluations"] == seed_failures + len(out)
    return out


def _elite_ids(run_dir: Path) -> set[int]:
    rows = (run_dir / "elites" / "table.csv").read_text().splitlines()[1:]
    return {int(r.split(",")[4]) for r in rows}


@pytest.mark.parametrize(
    "mode,reason,needle",
    [
        ("raise", "raised", "RuntimeError: plugin bug on call"),
        ("nan", "nonfinite_score", "returned nan"),
        ("inf", "nonfinite_score", "returned inf"),
        ("big", "out_of_range", "returned 1.7, outside [0, 1]"),
        ("none", "out_of_range", "returned None (NoneType), not a number"),
        ("hang", "timeout", "evaluator.timeout_s=0.5"),
    ],
)
def test_a_misbehaving_task_is_a_recorded_failure(
    tmp_path: Path, cache: Path, monkeypatch, mode: str, reason: str, needle: str
):
    monkeypatch.setenv("FAULTY", f"{mode}:3:opt")
    t0 = time.perf_counter()
    summary = run(compose_lively(cache, FAULTY, "evaluator.timeout_s=0.5"), tmp_path / "run")
    # evaluations on opt: 3 experts then one per generation; every third fails (the sorting expert's too)
    assert needle in summary["failed"]["expert_opt:sorting"]
    assert "sorting" not in summary["experts_opt"]
    failures = _failures(tmp_path / "run", seed_failures=1)
    assert len(failures) == 3 and summary["generations"] == 10
    for f in failures:
        assert f["reason"] == reason and f["task"] == "sorting" and needle in f["message"] and "\n" not in f["message"]
    assert summary["failures"] == {"count": 4, "by_reason": {reason: 4}}
    assert not {f["child"] for f in failures} & _elite_ids(tmp_path / "run")  # never an elite
    assert all(0.0 <= v <= 1.0 for v in summary["final"].values())
    if mode == "hang":
        assert time.perf_counter() - t0 < 600  # four 0.5 s timeouts, not four hours (wide: a loaded machine is slow)


def test_a_run_whose_experts_all_fail_stops_with_a_named_error(tmp_path: Path, cache: Path, monkeypatch):
    monkeypatch.setenv("FAULTY", "raise:1:opt")
    with pytest.raises(
        EvaluationFailed, match=r"no expert could be evaluated.*addition: raised \(sorting\): RuntimeError: plugin bug"
    ):
        run(compose_lively(cache, FAULTY), tmp_path / "run")


def test_failures_in_a_row_stop_the_run_with_a_checkpoint(tmp_path: Path, cache: Path, monkeypatch):
    cfg = compose_lively(cache, FAULTY, "evaluator.max_consecutive_failures=3")
    monkeypatch.setenv("FAULTY", "raise:1:opt")
    monkeypatch.setattr("tests.plugins.faulty.FaultySorting.evaluate", _fail_after_seeding)
    with pytest.raises(
        TooManyFailures,
        match=r"3 evaluations in a row failed .* Checkpoint written at generation 3; fix the cause, then: cycleqd resume",
    ):
        run(cfg, tmp_path / "run")
    assert checkpoint.load(tmp_path / "run").generation == 3
    monkeypatch.undo()
    summary = run(cfg, tmp_path / "run", resume=True)  # the cause is fixed: the run goes on
    assert summary["generations"] == 10 and summary["failures"]["count"] == 3


def _fail_after_seeding(self, model, split="opt"):
    from tests.plugins.partial_tasks import PartialSorting

    self.calls[split] = self.calls.get(split, 0) + 1
    if split == "opt" and self.calls[split] > 3:
        raise RuntimeError("broken after seeding")
    return PartialSorting.evaluate(self, model, split)


def test_children_with_nan_weights_are_rejected_unevaluated(tmp_path: Path, cache: Path):
    summary = run(
        compose_lively(cache, "mutation._target_=tests.plugins.faulty.NaNMutation", "+mutation.every=3"),
        tmp_path / "run",
    )
    failures = _failures(tmp_path / "run")
    assert len(failures) == 10 // 3
    assert all(f["reason"] == "nonfinite_weights" and f["task"] is None for f in failures)
    assert summary["failures"]["by_reason"] == {"nonfinite_weights": 3}
    assert not {f["child"] for f in failures} & _elite_ids(tmp_path / "run")


def test_experts_and_baselines_that_fail_on_test_are_reported(tmp_path: Path, cache: Path, monkeypatch):
    monkeypatch.setenv("FAULTY", "raise:2:test")
    summary = run(compose_lively(cache, FAULTY, generations=2), tmp_path / "run")
    failed = summary["failed"]
    # test-split evaluations in order: 3 experts, the base, the baselines' chosen merges, the final
    assert set(failed) >= {"expert:reversal", "base"}, failed
    assert "expert:reversal" not in summary["experts"] and summary["base"] is None
    assert all("RuntimeError: plugin bug" in why for why in failed.values())
    from cycleqd.cli import format_summary

    table = format_summary(summary)
    assert "FAILED expert:reversal: raised (sorting): RuntimeError: plugin bug on call 2" in table
