"""Unit tests of cycleqd.core.archives.CyclicArchives (pyribs GridArchive per task)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cycleqd.core.archives import CyclicArchives, range_warnings
from cycleqd.tasks.base import Measure

TASKS = ["a", "b", "c"]
BINS = 10


def _archives(**kw) -> CyclicArchives:
    kw.setdefault("measures", {t: Measure(low=0.0, high=1.0, bins=BINS) for t in TASKS})
    return CyclicArchives(tasks=kw.pop("tasks", TASKS), **kw)


def _seeded(scores: dict[int, dict[str, float]], **kw) -> CyclicArchives:
    """Archives holding one elite per entry of ``scores`` (id → task scores)."""
    arch = _archives(**kw)
    for i, s in scores.items():
        arch.add(i, s, -1)
    return arch


def _cell(score: float) -> int:
    """Independent oracle of the grid cell of a score on a [0, 1] axis of BINS bins (edge-clipped)."""
    return min(max(int(math.floor(score * BINS)), 0), BINS - 1)


def _rows(archive) -> dict[int, dict]:
    d = archive.data()
    return {
        int(d["solution"][i][0]): {
            "objective": float(d["objective"][i]),
            "measures": tuple(float(x) for x in d["measures"][i]),
            "scores": tuple(float(x) for x in d["scores"][i]),
            "generation": int(d["generation"][i]),
            "index": int(d["index"][i]),
        }
        for i in range(len(d["index"]))
    }


def test_quality_task_cycles():
    arch = _archives()
    assert arch.K == 3
    assert [arch.quality_task(g) for g in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]
    assert arch.descriptors("b") == ["a", "c"]


def test_add_offers_to_every_archive():
    arch = _archives()
    scores = {"a": 0.15, "b": 0.55, "c": 0.92}
    status = arch.add(7, scores, generation=3)
    assert set(status) == set(TASKS)
    assert all(s > 0 for s in status.values())  # new in every archive
    for k, task in enumerate(TASKS):
        rows = _rows(arch.archives[task])
        assert set(rows) == {7}
        row = rows[7]
        assert row["objective"] == pytest.approx(scores[task])
        others = tuple(scores[t] for t in TASKS if t != task)
        assert row["measures"] == pytest.approx(others)
        assert row["scores"] == pytest.approx(tuple(scores[t] for t in TASKS))
        assert row["generation"] == 3
        cell = tuple(int(x) for x in np.atleast_2d(arch.archives[task].int_to_grid_index([row["index"]]))[0])
        assert cell == tuple(_cell(s) for s in others)
    assert arch.alive_ids() == {7}


def test_same_cell_replacement_rules():
    arch = _archives()
    arch.add(0, {"a": 0.50, "b": 0.21, "c": 0.31}, 0)
    # same cell in archive "a" (b in bin 2, c in bin 3), lower objective: rejected there
    st = arch.add(1, {"a": 0.40, "b": 0.22, "c": 0.33}, 1)
    assert st["a"] == 0
    rows = _rows(arch.archives["a"])
    assert set(rows) == {0} and rows[0]["objective"] == pytest.approx(0.50)
    # higher objective in the same cell: replaces
    st = arch.add(2, {"a": 0.60, "b": 0.25, "c": 0.35}, 2)
    assert st["a"] > 0
    rows = _rows(arch.archives["a"])
    assert set(rows) == {2} and rows[2]["objective"] == pytest.approx(0.60)
    # archive "b": measures (a, c) = (0.5, 0.31), (0.4, 0.33), (0.6, 0.35) are three different cells
    assert set(_rows(arch.archives["b"])) == {0, 1, 2}
    assert arch.alive_ids() == {0, 1, 2}


def test_out_of_range_measures_land_in_edge_cells():
    arch = _archives()
    st = arch.add(0, {"a": 0.3, "b": 1.0, "c": -0.2}, 0)
    assert st["a"] > 0
    row = _rows(arch.archives["a"])[0]
    cell = tuple(int(x) for x in np.atleast_2d(arch.archives["a"].int_to_grid_index([row["index"]]))[0])
    assert cell == (BINS - 1, 0)


def test_range_warnings_name_the_bound_a_score_passes():
    measures = {
        "addition": Measure(low=0.0, high=0.5, bins=15),
        "sorting": Measure(low=0.5, high=1.0, bins=15),
        "loss": Measure(low=1.0, high=3.0, bins=10, direction="min"),
    }
    loss = measures["loss"]
    scores = {
        "expert a": {"addition": 0.664, "sorting": 0.7, "loss": loss.utility(2.0)},  # addition above its range
        "expert b": {
            "addition": 0.5,
            "sorting": 0.42,
            "loss": loss.utility(0.5),
        },  # at high: inside; below low; loss clipped
        "expert c": {"addition": 0.1, "sorting": 1.0, "loss": loss.utility(4.0), "unmeasured": 9.0},
    }
    lines = range_warnings(measures, scores)
    assert lines == [
        "expert a scores 66.4 on addition, above task.addition.measure.high=0.5: the other archives put all such "
        "models in their last addition bin and keep only the best of them at their own task; task.addition.measure.high=0.7 covers it",
        "expert b scores 42.0 on sorting, below task.sorting.measure.low=0.5: the other archives put all such "
        "models in their first sorting bin and keep only the best of them at their own task; task.sorting.measure.low=0.4 covers it",
    ]
    # the range it proposes is a multiple of 0.05 past the score, never past [0, 1]
    at_edges = range_warnings(measures, {"e": {"addition": 0.65, "sorting": 0.0}, "f": {"addition": 0.9999}})
    assert [line.rsplit("; ", 1)[1] for line in at_edges] == [
        "task.addition.measure.high=0.65 covers it",
        "task.sorting.measure.low=0 covers it",
        "task.addition.measure.high=1 covers it",
    ]
    # a lower-is-better score's utility is clipped into its range: like its mirror, never outside
    assert [loss.outside(loss.utility(x)) for x in (0.5, 1.0, 3.0, 4.0)] == [None] * 4
    assert range_warnings(measures, {"inside": {"addition": 0.25, "sorting": 0.75, "loss": loss.utility(2.0)}}) == []


def test_sample_parents_distinct_and_consistent():
    scores = {
        0: {"a": 0.1, "b": 0.1, "c": 0.1},
        1: {"a": 0.5, "b": 0.3, "c": 0.9},
        2: {"a": 0.9, "b": 0.6, "c": 0.2},
        3: {"a": 0.3, "b": 0.8, "c": 0.5},
    }
    arch = _seeded(scores, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        picks = arch.sample_parents("a", 2, rng)
        assert len(picks) == 2
        assert picks[0].id != picks[1].id
        for p in picks:
            assert p.objective == pytest.approx(scores[p.id]["a"])
            assert p.scores == pytest.approx(tuple(scores[p.id][t] for t in TASKS))
    # asking for more than the archive holds gives all of them, once each
    picks = arch.sample_parents("b", 10, rng)
    assert sorted(p.id for p in picks) == [0, 1, 2, 3]
    # same seed, same picks
    a = [p.id for p in arch.sample_parents("c", 2, np.random.default_rng(5))]
    b = [p.id for p in arch.sample_parents("c", 2, np.random.default_rng(5))]
    assert a == b


def test_sample_from_empty_archive():
    with pytest.raises(RuntimeError, match="empty"):
        _archives().sample_parents("a", 2, np.random.default_rng(0))


def _elite_probabilities(scores: dict[int, dict[str, float]], task: str, alpha) -> dict[int, float]:
    """The paper's elite sampling computed from the scores alone (independent of pyribs)."""
    lo, hi = alpha
    ids = sorted(scores)
    others = [t for t in TASKS if t != task]
    columns = [[scores[i][task] for i in ids]] + [[_cell(scores[i][t]) for i in ids] for t in others]

    def norm(col):
        mn, mx = min(col), max(col)
        if mx == mn:
            return [1.0] * len(col)
        return [lo + (hi - lo) * (v - mn) / (mx - mn) for v in col]

    p = [1.0] * len(ids)
    for col in columns:
        p = [x * y for x, y in zip(p, norm(col))]
    total = sum(p)
    return {i: x / total for i, x in zip(ids, p)}


@pytest.mark.parametrize("alpha", [(0.5, 0.8), (0.1, 1.0)])
def test_elite_sampling_probabilities(alpha):
    scores = {
        0: {"a": 0.10, "b": 0.05, "c": 0.15},
        1: {"a": 0.40, "b": 0.35, "c": 0.95},
        2: {"a": 0.90, "b": 0.65, "c": 0.25},
        3: {"a": 0.65, "b": 0.85, "c": 0.55},
        4: {"a": 0.95, "b": 0.95, "c": 0.85},
    }
    arch = _seeded(scores, alpha=alpha)
    assert set(_rows(arch.archives["a"])) == set(scores)

    # the hand cell oracle agrees with pyribs' grid indices
    data = arch.archives["a"].data()
    cells = np.atleast_2d(arch.archives["a"].int_to_grid_index(data["index"]))
    for row, cell in zip(data["solution"], cells):
        i = int(row[0])
        assert tuple(int(x) for x in cell) == (_cell(scores[i]["b"]), _cell(scores[i]["c"]))

    p = _elite_probabilities(scores, "a", alpha)
    draws = 4000
    rng = np.random.default_rng(123)
    counts = dict.fromkeys(scores, 0)
    for _ in range(draws):
        (pick,) = arch.sample_parents("a", 1, rng)
        counts[pick.id] += 1
    freq = {i: c / draws for i, c in counts.items()}
    for i in scores:
        sd = math.sqrt(p[i] * (1 - p[i]) / draws)
        assert abs(freq[i] - p[i]) < 5 * sd + 1e-3, (i, freq[i], p[i])
    # the ordering by probability is respected where the probabilities differ clearly
    ranked = sorted(scores, key=lambda i: p[i])
    for lo_id, hi_id in zip(ranked, ranked[1:]):
        if p[hi_id] - p[lo_id] > 0.05:
            assert freq[hi_id] > freq[lo_id]
    # the worst elite (all columns at their minimum) is the least likely
    assert min(freq, key=freq.get) == 0


def test_elite_sampling_constant_columns_count_as_one():
    """Two elites that differ only in one descriptor cell: p ∝ α_low vs α_high."""
    arch = _archives(alpha=(0.2, 0.8))
    arch.add(0, {"a": 0.5, "b": 0.35, "c": 0.15}, -1)
    arch.add(1, {"a": 0.5, "b": 0.35, "c": 0.85}, -1)
    rng = np.random.default_rng(0)
    draws = 4000
    ones = sum(arch.sample_parents("a", 1, rng)[0].id == 1 for _ in range(draws))
    assert ones / draws == pytest.approx(0.8, abs=0.03)


def test_uniform_sampling_is_uniform():
    scores = {
        0: {"a": 0.05, "b": 0.05, "c": 0.05},
        1: {"a": 0.95, "b": 0.55, "c": 0.95},
        2: {"a": 0.45, "b": 0.95, "c": 0.35},
        3: {"a": 0.75, "b": 0.25, "c": 0.65},
    }
    arch = _seeded(scores, sampling="uniform")
    rng = np.random.default_rng(1)
    draws = 4000
    counts = dict.fromkeys(scores, 0)
    for _ in range(draws):
        counts[arch.sample_parents("a", 1, rng)[0].id] += 1
    for c in counts.values():
        assert c / draws == pytest.approx(0.25, abs=0.035)


def test_best_and_stats():
    arch = _archives()
    arch.add(0, {"a": 0.2, "b": 0.7, "c": 0.1}, -1)
    arch.add(1, {"a": 0.6, "b": 0.1, "c": 0.3}, 0)
    assert arch.best("a").id == 1
    assert arch.best("b").id == 0
    st = arch.stats()
    assert st["a"]["num_elites"] == 2
    assert st["a"]["best"] == pytest.approx(0.6)
    assert st["a"]["qd_score"] == pytest.approx(0.8)
    assert st["a"]["coverage"] == pytest.approx(2 / BINS**2)
    with pytest.raises(RuntimeError, match="empty"):
        _archives().best("a")


def test_two_tasks_one_dimensional_grids():
    m = {t: Measure(0, 1, BINS) for t in ("x", "y")}
    arch = CyclicArchives(tasks=["x", "y"], measures=m, alpha=(0.5, 1.0))
    arch.add(0, {"x": 0.1, "y": 0.15}, -1)
    arch.add(1, {"x": 0.9, "y": 0.95}, -1)
    rng = np.random.default_rng(0)
    # elite 1 is best on both columns: p = 1*1 : 0.5*0.5 = 0.8 : 0.2
    draws = 4000
    ones = sum(arch.sample_parents("x", 1, rng)[0].id == 1 for _ in range(draws))
    assert ones / draws == pytest.approx(0.8, abs=0.03)


# -- validation ------------------------------------------------------------------------


def test_fewer_than_two_tasks():
    with pytest.raises(ValueError, match="at least 2 tasks"):
        CyclicArchives(tasks=["a"], measures={"a": Measure()})


def test_bad_sampling_name():
    with pytest.raises(ValueError, match="sampling"):
        _archives(sampling="greedy")


@pytest.mark.parametrize("alpha", [(0.0, 0.5), (-0.1, 0.5), (0.8, 0.5)])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        _archives(alpha=alpha)


def test_missing_measure():
    with pytest.raises(ValueError, match=r"no measure range for tasks \['c'\]"):
        CyclicArchives(tasks=TASKS, measures={"a": Measure(), "b": Measure()})


def test_pickling_keeps_the_occupied_cells_in_order_and_each_genome_once():
    import pickle

    rng = np.random.default_rng(0)
    arch = CyclicArchives(tasks=TASKS, measures={t: Measure(0.0, 1.0, 5) for t in TASKS}, seed=2, solution_dim=400)
    for i in range(80):
        scores = {t: float(rng.random()) for t in TASKS}
        arch.add(i, scores, i, solution=rng.normal(size=400).astype(np.float32), parents=(i - 1, i - 2))
    blob = pickle.dumps(arch)
    back = pickle.loads(blob)
    for t in TASKS:
        a, b = arch.archives[t].data(), back.archives[t].data()
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), t  # same rows, same order
    assert back.stats() == arch.stats()
    # the same draws from the restored archives
    assert [p.id for p in arch.sample_parents("b", 2, np.random.default_rng(5))] == [
        p.id for p in back.sample_parents("b", 2, np.random.default_rng(5))
    ]
    allocated = 3 * 25 * 400 * 4  # what pyribs holds: every cell of every archive
    assert len(blob) < 4 * 400 * len(arch.alive_ids()) + 20_000 < allocated


def test_mean_quality_archives_score_every_elite_by_its_mean():
    archives = CyclicArchives(tasks=["a", "b", "c"], measures={t: Measure(bins=4) for t in "abc"}, quality="mean")
    archives.add(0, {"a": 0.9, "b": 0.3, "c": 0.0}, -1)
    for t in "abc":
        assert archives.best(t).objective == pytest.approx(0.4)
    with pytest.raises(ValueError, match="quality"):
        CyclicArchives(tasks=["a", "b"], measures={t: Measure() for t in "ab"}, quality="bogus")
