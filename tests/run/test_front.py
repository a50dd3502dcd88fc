"""Each pool's opt front scored on test (final.front=true) and what ``cycleqd evidence`` makes
of it: the front equals a brute-force one over the record, the models rebuilt from the
record and the static grids score what the run scored for them, and the preference table's
numbers equal a direct computation from front.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cycleqd.analysis.preference import weightings
from cycleqd.analysis.worth import load_fronts, preference_items, preference_values
from cycleqd.run import record
from tests.runs import cli
from tests.tiny import lively_overrides

GENERATIONS = 12


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache) -> Path:
    """A CycleQD run and a CMA-ES run of the same budget, both scoring their fronts on test."""
    root = tmp_path_factory.mktemp("front")
    for search in ("cycleqd", "cmaes"):
        cli(
            "run",
            *lively_overrides(cache, GENERATIONS),
            "final.front=true",
            f"search={search}",
            f"hydra.run.dir={root / search}",
        )
    return root


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _brute_front(points: list[list[float]]) -> list[int]:
    """Positions no other point dominates; of equal points, the first."""
    keep = []
    for i, p in enumerate(points):
        beaten = any(all(q >= x for q, x in zip(other, p)) and any(q > x for q, x in zip(other, p)) for other in points)
        if not beaten and not any(points[j] == p for j in keep):
            keep.append(i)
    return keep


def test_the_search_pool_s_front_is_the_record_s_non_dominated_models(sweep: Path):
    for search in ("cycleqd", "cmaes"):
        run = sweep / search
        front, summary = _json(run / "front.json"), _json(run / "summary.json")
        tasks = summary["tasks"]
        lines = [x for x in record.read(run)[0] if x["scores"]]
        points = [[x["scores"][t] for t in tasks] for x in lines]
        expected = [f"search:{lines[i]['id']}" for i in _brute_front(points)]
        pool = front["pools"]["search"]
        assert [e["key"] for e in pool["front"]] == expected and pool["size"] == len(lines)
        assert all(set(e["test"]) == set(tasks) for e in pool["front"])


def test_models_rebuilt_from_the_record_and_the_grids_score_what_the_run_scored(sweep: Path):
    run = sweep / "cycleqd"
    front, summary = _json(run / "front.json"), _json(run / "summary.json")
    experts_seen = 0
    for e in front["pools"]["search"]["front"]:  # an expert's genome, read back from candidates.f32
        if e["origin"].startswith("expert:"):
            experts_seen += 1
            assert e["test"] == pytest.approx(summary["experts"][e["origin"].split(":", 1)[1]], abs=1e-12)
    assert experts_seen >= 1
    for e in front["pools"]["experts"]["front"]:
        assert e["test"] == summary["experts"][e["task"]]
    # the static merge best on opt mean is on the grids' front, and its rebuilt merge scores its test result
    choices = summary["baseline_choices"]
    best = max(choices, key=lambda b: max(v for v in choices[b]["opt_mean"].values() if v is not None))
    static = {e["key"]: e for e in front["pools"]["static"]["front"]}
    mine = [
        e for e in static.values() if e["method"] == choices[best]["method"] and e["scale"] == choices[best]["scale"]
    ]
    assert mine and mine[0]["test"] == pytest.approx(summary["baselines"][best], abs=1e-12)
    # CMA-ES's final model is its best candidate: on its front, rebuilt from its coefficients
    cmaes = _json(sweep / "cmaes" / "summary.json")
    tops = [
        e
        for e in _json(sweep / "cmaes" / "front.json")["pools"]["search"]["front"]
        if np.mean(list(e["opt"].values())) == pytest.approx(cmaes["final_elites"]["opt_mean"])
    ]
    assert tops and tops[0]["test"] == pytest.approx(cmaes["final"], abs=1e-12)


def test_choosing_on_the_front_serves_every_weighting_as_the_whole_record_does(sweep: Path):
    run = sweep / "cycleqd"
    pool = load_fronts(run)["search"]
    tasks = pool.tasks
    w = weightings(len(tasks), 32, 0)
    opt = np.array([[x["scores"][t] for t in tasks] for x in record.read(run)[0] if x["scores"]])
    from cycleqd.analysis.preference import choose

    chosen = pool.opt[choose(pool.opt, w)]
    assert np.allclose(np.einsum("wk,wk->w", w, chosen), (w @ opt.T).max(axis=1), atol=1e-12)
    items = preference_items(pool, w)  # per-item values whose test mean is the preference score
    assert np.mean([items[t].mean() for t in tasks]) == pytest.approx(preference_values(pool, w).mean(), abs=1e-12)


def test_evidence_prints_each_pool_s_preference_score_and_hypervolume(sweep: Path):
    png = sweep / "pools.png"
    out = cli(
        "evidence",
        str(sweep),
        "--reference",
        "search=cycleqd",
        "--json",
        str(sweep / "e.json"),
        "--plot-pools",
        str(png),
    ).stdout
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "What each pool is worth" in out
    got = {r["method"]: r for r in _json(sweep / "e.json")["pools"]["rows"]}
    assert set(got) == {"search=cycleqd", "search=cmaes", "static merges (every grid point)", "experts"}
    for label, run, pool in (
        ("search=cycleqd", "cycleqd", "search"),
        ("search=cmaes", "cmaes", "search"),
        ("experts", "cycleqd", "experts"),
    ):
        entries = _json(sweep / run / "front.json")["pools"][pool]["front"]
        if pool == "search":  # every search's pool holds the experts too
            entries = entries + _json(sweep / "cycleqd" / "front.json")["pools"]["experts"]["front"]
        tasks = _json(sweep / run / "front.json")["tasks"]
        w = weightings(len(tasks), 32, 0)
        values = []
        for weights in w:  # the model best on weighted opt, its weighted test score
            pick = max(entries, key=lambda e: sum(a * e["opt"][t] for a, t in zip(weights, tasks)))
            values.append(sum(a * pick["test"][t] for a, t in zip(weights, tasks)))
        assert got[label]["preference"] == pytest.approx(100 * np.mean(values), abs=1e-9)
        assert got[label]["regret"] >= 0
        assert f"{got[label]['preference']:.1f}" in out
    sizes = {s: len([x for x in record.read(sweep / s)[0] if x["scores"]]) for s in ("cycleqd", "cmaes")}
    assert got["search=cycleqd"]["pool"] == sizes["cycleqd"]  # its experts are in it already
    assert got["search=cmaes"]["pool"] == sizes["cmaes"] + 3  # the experts added
    assert got["search=cmaes"]["diff"]["diff"] == pytest.approx(
        (got["search=cmaes"]["preference"] - got["search=cycleqd"]["preference"]) / 100, abs=1e-9
    )


def test_heldout_picks_each_pool_s_best_on_a_task_no_search_saw(sweep: Path):
    from cycleqd.analysis.heldout import heldout_task
    from cycleqd.evaluation.scoring import evaluate_model
    from cycleqd.models.providers import locate
    from cycleqd.run.components import build
    from cycleqd.run.configs import load_config

    out = cli("heldout", str(sweep), "--task", "sorting_long", "--n-opt", "8", "--json", str(sweep / "h.json")).stdout
    rows = {r["model"]: r for r in _json(sweep / "h.json")}
    assert {"search=cycleqd: pool's pick", "search=cmaes: pool's pick", "search=cmaes: final model"} <= set(rows)
    assert "held-out task sorting_long" in out
    for search in ("cycleqd", "cmaes"):
        got = _json(sweep / search / "heldout" / "sorting_long.json")
        scored = [x for x in record.read(sweep / search)[0] if x["scores"]]
        # every pool holds the experts: CycleQD's record has them, CMA-ES's gets them added
        added = 0 if any(x["origin"].startswith("expert:") for x in scored) else 3
        assert (search, added) in {("cycleqd", 0), ("cmaes", 3)}
        assert got["pool"]["size"] == len(scored) + added and got["n_opt"] == 8 and got["experts_in_pool"]
        assert len(got["pool"]["items"]) == 512 and got["pool"]["test"] == pytest.approx(np.mean(got["pool"]["items"]))
    # the experts' held-out scores are those of their own model directories
    cfg = load_config(sweep / "cycleqd")
    c = build(cfg)
    _, expert_dirs, _ = locate(c.model, c.experts, c.tasks)
    task = heldout_task("sorting_long", 8)
    got = _json(sweep / "cycleqd" / "heldout" / "sorting_long.json")
    for t, d in expert_dirs.items():
        assert got["experts"][t]["test"] == pytest.approx(evaluate_model(d, [task], "test")["sorting_long"], abs=1e-9)
    # a second call reads what the first wrote
    stamp = (sweep / "cycleqd" / "heldout" / "sorting_long.json").stat().st_mtime_ns
    cli("heldout", str(sweep), "--task", "sorting_long", "--n-opt", "8")
    assert (sweep / "cycleqd" / "heldout" / "sorting_long.json").stat().st_mtime_ns == stamp


def test_a_held_out_task_that_fails_is_named(sweep: Path, tmp_path: Path):
    from tests.runs import one_line_error

    spec = tmp_path / "faulty.yaml"
    spec.write_text(
        "faulty:\n  _target_: tests.plugins.faulty.FaultySorting\n  name: faulty\n  n_opt: 8\n  n_test: 8\n"
    )
    line = one_line_error(cli("heldout", str(sweep), "--task", str(spec), env={"FAULTY": "raise:1:opt"}, check=False))
    assert "held-out task 'faulty' failed on every model of" in line and "plugin bug on call 1" in line, line
    assert not list(sweep.rglob("heldout/faulty.json"))
    line = one_line_error(cli("heldout", str(sweep), "--task", "no_such_task", check=False))
    assert (
        line == "cycleqd heldout: --task: no task config 'no_such_task' (conf/task/no_such_task.yaml, or a YAML file)"
    )
