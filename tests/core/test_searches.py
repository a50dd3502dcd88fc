"""The comparison searches over per-layer merge coefficients: CMA-ES and random search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cycleqd.core.searches import LayerCoefficients, Search, run_search
from cycleqd.run.final import FinalSpec
from tests.builders import TASKS as GENOME_TASKS
from tests.builders import toy_setup


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_layer_coefficients_as_a_genome_equal_the_dense_merge(kind):
    experts, _, basis = toy_setup(kind)
    dense = LayerCoefficients(GENOME_TASKS, experts)
    genome = LayerCoefficients(GENOME_TASKS, experts, basis)
    assert dense.groups == genome.groups and dense.dim == 3 * len(dense.groups)
    x = np.random.default_rng(0).uniform(0, 1, dense.dim)
    a, b = dense.child(x).dense(), basis.task_vector(genome.child(x)).dense()
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4)
    # the oracle, written out: layer 1's q_proj is Σ_q x[q, layer1] τ_q
    col = dense.groups.index("layer1")
    name = "model.layers.1.self_attn.q_proj.weight"
    oracle = sum(x[i * dense.dim // 3 + col] * experts[q].dense()[name] for i, q in enumerate(GENOME_TASKS))
    torch.testing.assert_close(a[name], oracle.float(), atol=1e-5, rtol=1e-4)
    assert dense.describe(x)["b"]["layer1"] == pytest.approx(x[dense.dim // 3 + col], abs=1e-6)


class _Quadratic:
    """Scores a coefficient vector by how near it is to a target (both tasks alike)."""

    def __init__(self, target):
        self.target, self.calls = np.asarray(target), 0

    def __call__(self, items):
        self.calls += len(items)
        return [
            {"a": float(np.exp(-np.sum((x - self.target) ** 2))), "b": float(np.exp(-np.sum((x - self.target) ** 2)))}
            for x, _ in items
        ]


class _Identity:
    dim = 6

    def child(self, x):
        return np.asarray(x)


@pytest.mark.parametrize("budget", [97, 100])
def test_cmaes_finds_the_optimum_that_random_search_misses_on_the_same_budget(budget):
    target = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
    found = {}
    for name in ("cmaes", "random"):
        objective = _Quadratic(target)
        curve = []
        x, result, counts = run_search(
            Search(name=name, sigma0=0.2), _Identity(), objective, budget, seed=0, on_batch=curve.append
        )
        assert objective.calls == counts["evaluations"] == budget  # the budget, to the evaluation
        assert [m["evaluations"] for m in curve][-1] == budget
        bests = [m["best_opt_mean"] for m in curve]
        assert bests == sorted(bests) and bests[-1] == pytest.approx(result["a"])
        assert np.all((x >= 0) & (x <= 1))
        found[name] = result["a"]
    assert found["cmaes"] > 0.95 > found["random"], found


def test_search_settings_are_checked():
    for bad, key in (
        (dict(name="bogus"), "name"),
        (dict(sigma0=0), "sigma0"),
        (dict(low=1, high=0), "low"),
        (dict(x0=2.0), "x0"),
    ):
        with pytest.raises(ValueError, match=key):
            Search(**bad)
    assert Search().budget(3, 300, 1, 3) == 306 and Search(evaluations=50).budget(3, 300, 1, 3) == 50
    assert Search().budget(3, 10, 2, 0) == 23  # the paper's merge at one scale: no evaluations for it
    # a refinement's evaluations count in the budget (and the merge it starts from is scored)
    assert Search().budget(3, 200, 1, FinalSpec("opt", "quality", (1.0, 1.25, 1.5), 100, 0.1).opt_evaluations) == 306
    assert FinalSpec("merge", "quality", (1.0,), 5, 0.1).opt_evaluations == 6


def test_drive_resumed_from_a_round_ends_where_an_uninterrupted_search_ends():
    from cycleqd.core.searches import CoefficientSearch, drive

    target = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
    whole = CoefficientSearch(Search(name="cmaes"), 6, 40, seed=1)
    rounds, before = [], []
    x, result, counts = drive(
        whole,
        _Identity(),
        _Quadratic(target),
        on_round=lambda m, xs, rs: rounds.append((m, len(xs))),
        before=before.append,
    )
    assert before == [0, 9, 18, 27, 36] and [n for _, n in rounds] == [9, 9, 9, 9, 4]  # 4 + ⌊3 ln 6⌋ = 9 a round
    assert all(m["seconds"] >= 0 for m, _ in rounds) and counts["evaluations"] == 40

    first = CoefficientSearch(Search(name="cmaes"), 6, 40, seed=1)
    state = {}

    def stop_after_two(m, xs, rs):
        if first.rounds == 2:
            state.update(first.state_dict())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drive(first, _Identity(), _Quadratic(target), on_round=stop_after_two)
    resumed = CoefficientSearch(Search(name="cmaes"), 6, 40, seed=99)
    resumed.load_state_dict(state)
    y, again, _ = drive(resumed, _Identity(), _Quadratic(target))
    np.testing.assert_array_equal(x, y)
    assert again == result
