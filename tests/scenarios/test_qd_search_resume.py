"""CMA-MAE and M2N2 killed (SIGKILL) inside a round and in the final phase resume to the result
of an uninterrupted search, draw for draw: the record, the metrics, the summary and the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cycleqd.run import checkpoint
from tests.runs import cli, run_fingerprint
from tests.tiny import lively_overrides

SEARCHES = {
    # (overrides, the evaluations done when the second round starts)
    "cma_mae": (["search=cma_mae", "search.emitters=2", "search.batch_size=4", "search.evaluations=24"], 8),
    "m2n2": (["search=m2n2", "search.population=4", "search.batch_size=2", "search.evaluations=13"], 3),
}


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_a_killed_qd_search_resumes_to_the_uninterrupted_search(name: str, tmp_path: Path, cache: Path):
    overrides, first_round = SEARCHES[name]
    args = [*lively_overrides(cache, 10), *overrides, "genome=true"]
    whole = tmp_path / "whole"
    cli("run", *args, f"hydra.run.dir={whole}")
    budget = json.loads((whole / "summary.json").read_text())["evaluations"]
    run_dir = tmp_path / "run"
    chain = [  # (armed after this fault point, killed at the n-th point after it, evaluations committed)
        (f"evaluation {first_round}", 2, first_round),  # inside the second round
        ("final: start", 5, budget),  # in the final phase, the search done
    ]
    for i, (armed, at, done) in enumerate(chain):
        env = {"CYCLEQD_FAULT_AFTER": armed, "CYCLEQD_FAULT_AT": f"{at}:kill"}
        proc = (
            cli("run", *args, f"hydra.run.dir={run_dir}", env=env, check=False)
            if i == 0
            else cli("resume", str(run_dir), env=env, check=False)
        )
        assert proc.returncode == -9, proc.stderr[-3000:]
        assert checkpoint.load(run_dir).search["done"] == done, i
    cli("resume", str(run_dir))
    assert run_fingerprint(run_dir) == run_fingerprint(whole)
    # test_items.json holds test items only, though M2N2 scores the opt split item by item
    items = json.loads((whole / "test_items.json").read_text())
    assert "final" in items and "final_opt" not in items
    assert "final_opt" not in json.loads((whole / "summary.json").read_text())["final_vs"]
