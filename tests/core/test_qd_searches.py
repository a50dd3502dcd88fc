"""CMA-MAE and M2N2 as loops of ask and tell: M2N2's shared fitness, attraction, split-point
crossover and replacement against direct computations; CMA-MAE's archive and its resume by
replay; a search that needs per-item results and gets none is named."""

from __future__ import annotations

import numpy as np
import pytest

from cycleqd.core.cma_mae import CmaMae
from cycleqd.core.m2n2 import M2N2, shared_fitness
from cycleqd.core.searches import Search
from cycleqd.protocols import Failure, ItemScores, Measure

TASKS = ("a", "b")


def test_shared_fitness_divides_each_item_by_the_population_s_total_to_the_alpha():
    s = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    for alpha in (0.0, 0.5, 1.0, 2.0):
        fitness, shared = shared_fitness(s, alpha)
        for i in range(3):  # written out: item j's total to the alpha, 1 where nobody scores
            expected = sum(s[i, j] / ((s[:, j].sum() ** alpha) if s[:, j].sum() else 1.0) for j in range(3))
            assert fitness[i] == pytest.approx(expected, abs=1e-12)
    fitness, _ = shared_fitness(s, 1.0)
    assert fitness.tolist() == [1.5, 1.5, 0.0]  # item 1 is solved by one model only: worth a whole point


def _items(per_model: list[list[float]]) -> list[ItemScores]:
    """Results over two tasks, the first half of each row's items task a's."""
    out = []
    for row in per_model:
        half = len(row) // 2
        items = {"a": row[:half], "b": row[half:]}
        out.append(ItemScores({t: float(np.mean(v)) for t, v in items.items()}, items))
    return out


def test_m2n2_keeps_the_fittest_under_competition_and_breeds_by_attraction():
    loop = M2N2(Search("m2n2", population=2, evaluations=40), TASKS, groups=3, budget=40, seed=0)
    seeds = loop.ask()
    assert seeds.tolist() == [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]]  # the experts
    loop.tell(seeds, _items([[1, 1, 0, 0], [0, 0, 1, 1]]))
    assert loop.held.all() and loop.pop_x.tolist() == seeds.tolist()
    # a generalist that solves what both do: it takes the place of the less fit expert
    loop.tell(np.array([[0.5] * 6]), _items([[1, 1, 1, 0]]))
    fitness, _ = shared_fitness(np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 0]]), 1.0)
    assert fitness.tolist() == [1.0, 1.5, 1.5] and loop.pop_x[0].tolist() == [0.5] * 6
    # a child weaker than both leaves at once; a failure scores nothing and leaves too
    before = loop.pop_x.copy()
    loop.tell(np.array([[0.1] * 6, [0.2] * 6]), [*_items([[0, 0, 0, 1]]), Failure("raised", "a", "x")])
    assert np.array_equal(loop.pop_x, before) and loop.done == 5 and loop.failures == 1
    # the second parent is drawn by attraction: the only model that gains where the first lacks
    firsts = set()
    for _ in range(50):
        first, second = loop.parents()
        firsts.add(first)
        assert second == 1 - first
    assert firsts == {0, 1}


def test_m2n2_s_crossover_mixes_before_and_after_a_split_point_over_the_layer_stack():
    loop = M2N2(Search("m2n2", population=2), TASKS, groups=4, budget=10, seed=3)
    loop.pop_x[:] = [[1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]]
    loop.pop_s = np.array([[1.0, 0.0], [0.0, 1.0]])
    loop.held[:] = True
    loop.seeded = 2
    rng = np.random.default_rng(0)
    loop.rng = np.random.default_rng(0)
    child = loop.child()
    # replay the draws: the two parents, then the split point and the mixing ratio
    first = rng.choice(2, p=[0.5, 0.5])
    rng.choice(2, p=[0.0, 1.0] if first == 0 else [1.0, 0.0])
    split, w = rng.integers(0, 4), rng.uniform()
    a, b = loop.pop_x[first].reshape(2, 4), loop.pop_x[1 - first].reshape(2, 4)
    mix = np.where(np.arange(4) < split, w, 1 - w)
    assert np.allclose(child, ((1 - mix) * a + mix * b).reshape(-1), atol=1e-15)


def test_m2n2_names_a_task_without_per_item_results():
    loop = M2N2(Search("m2n2"), TASKS, groups=2, budget=10, seed=0)
    with pytest.raises(ValueError, match="task 'a' gives no per-item results"):
        loop.tell(loop.ask(), [{"a": 0.5, "b": 0.5}, {"a": 0.1, "b": 0.9}])


def _objective(xs: np.ndarray) -> list[dict[str, float]]:
    """Two conflicting tasks over coefficients in [0, 1]: a wants the first half large, b the second."""
    h = xs.shape[1] // 2
    return [
        {"a": float(x[:h].mean() * (1 - x[h:].mean() / 2)), "b": float(x[h:].mean() * (1 - x[:h].mean() / 2))}
        for x in xs
    ]


def _cma_mae(seed: int = 0) -> CmaMae:
    search = Search("cma_mae", emitters=2, batch_size=5, learning_rate=0.1, evaluations=60)
    return CmaMae(search, 6, 60, seed, {t: Measure(bins=5) for t in TASKS})


def test_cma_mae_fills_an_archive_of_trade_offs_and_resumes_by_replay():
    whole, asked = _cma_mae(), []
    while not whole.finished:
        xs = whole.ask()
        asked.append(xs)
        whole.tell(xs, _objective(xs))
    assert whole.done == 60 and len(whole.told) == 6
    assert len(whole.result_archive) > 3  # models spread over the two tasks' grid, not one optimum
    best = max(np.mean(list(r.values())) for xs in asked for r in _objective(xs))
    assert whole.best_value == pytest.approx(best)

    part = _cma_mae()
    for _ in range(3):
        xs = part.ask()
        part.tell(xs, _objective(xs))
    state = part.state_dict()
    resumed = _cma_mae()
    resumed.load_state_dict(state)
    for xs in asked[3:]:
        got = resumed.ask()
        assert np.array_equal(got, xs)  # the same draws as the uninterrupted search
        resumed.tell(got, _objective(got))
    assert resumed.best_value == whole.best_value and np.array_equal(resumed.best_x, whole.best_x)

    state["told"]["x"][0, 0] += 0.5  # a checkpoint from other settings or another build of pyribs
    with pytest.raises(ValueError, match="asked for other candidates at evaluation 0"):
        _cma_mae().load_state_dict(state)
