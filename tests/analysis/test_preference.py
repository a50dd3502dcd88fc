"""Downstream selection by a weighting of the tasks, against a brute-force oracle."""

from __future__ import annotations

import numpy as np
import pytest

from cycleqd.analysis.preference import choose, regret, weightings


def test_weightings_are_seeded_simplex_points_then_the_one_hot_ones():
    w = weightings(3, 32, seed=4)
    assert w.shape == (35, 3) and np.allclose(w.sum(axis=1), 1) and (w >= 0).all()
    assert np.array_equal(w[-3:], np.eye(3)) and np.array_equal(w, weightings(3, 32, seed=4))
    assert not np.array_equal(w[:32], weightings(3, 32, seed=5)[:32])


def test_the_choice_is_the_brute_force_best_weighted_opt_score():
    rng = np.random.default_rng(0)
    opt = rng.uniform(0, 1, (40, 3)).round(2)  # rounded: ties happen, the first wins
    opt[[5, 17]] = np.nan  # failed evaluations
    opt[9] = opt[3]  # an exact duplicate of an earlier candidate
    w = weightings(3, 32, seed=1)
    chosen = choose(opt, w)
    for j, weights in enumerate(w):
        best, best_value = None, -np.inf
        for i, row in enumerate(opt):
            if np.isnan(row).any():
                continue
            value = sum(weights[t] * row[t] for t in range(3))
            if value > best_value + 1e-12:
                best, best_value = i, value
        assert chosen[j] == best, j
    assert chosen[-3:].tolist() == [int(np.nanargmax(np.where(np.isnan(opt[:, t]), -1, opt[:, t]))) for t in range(3)]


def test_regret_is_to_the_best_method_per_weighting():
    out = regret({"a": np.array([1.0, 0.5, 0.2]), "b": np.array([0.8, 0.7, 0.2])})
    assert out == pytest.approx({"a": (0 + 0.2 + 0) / 3, "b": (0.2 + 0 + 0) / 3})


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="cmaes: a weighting of 2 tasks for candidates scored on 3"):
        choose(np.zeros((4, 3)), np.ones((1, 2)) / 2, pool="cmaes")
    with pytest.raises(ValueError, match="cycleqd: no candidate with a score on every task"):
        choose(np.full((2, 3), np.nan), weightings(3, 2), pool="cycleqd")
    with pytest.raises(ValueError, match="cycleqd: no candidate"):
        choose(np.zeros((0, 3)), weightings(3, 2), pool="cycleqd")
