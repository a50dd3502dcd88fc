"""Paired bootstrap intervals of differences in test mean (cycleqd.stats)."""

from __future__ import annotations

import numpy as np
import pytest

from cycleqd.stats import compare_to, differences, paired_bootstrap


def test_a_constant_lead_has_a_zero_width_interval_because_it_is_paired():
    """Every item 0.1 better: the paired difference is exactly 0.1 in every replicate (an
    unpaired bootstrap of the two means would give a wide interval)."""
    rng = np.random.default_rng(0)
    b = {"x": rng.uniform(0, 0.9, 300), "y": rng.uniform(0, 0.9, 200)}
    a = {t: v + 0.1 for t, v in b.items()}
    out = paired_bootstrap([differences(a, b)], resamples=500)
    assert out["diff"] == pytest.approx(0.1)
    assert out["ci"] == pytest.approx([0.1, 0.1])
    assert out["items"] == {"x": 300, "y": 200}
    same = paired_bootstrap([differences(b, b)])
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0]


def test_the_interval_covers_the_true_difference_about_95_percent_of_the_time():
    """Two models with known per-item success rates, 300 simulated test sets: the 95%
    interval must contain the true difference of test means in 90–99% of them."""
    rng = np.random.default_rng(1)
    p_a, p_b = {"x": 0.7, "y": 0.4}, {"x": 0.6, "y": 0.45}
    truth = np.mean([p_a[t] - p_b[t] for t in p_a])
    hits = 0
    for k in range(300):
        a, b = {}, {}
        for t in p_a:
            u = rng.uniform(size=256)  # the same items: correlated outcomes, as two models on one prompt
            a[t], b[t] = (u < p_a[t]).astype(float), (u < p_b[t]).astype(float)
        lo, hi = paired_bootstrap([differences(a, b)], resamples=400, seed=k)["ci"]
        hits += lo <= truth <= hi
    assert 0.90 <= hits / 300 <= 0.99, hits


def test_runs_that_share_their_test_items_are_averaged():
    rng = np.random.default_rng(2)
    diffs = [{"x": rng.choice([-1.0, 0.0, 1.0], 100)} for _ in range(3)]
    out = paired_bootstrap(diffs, resamples=300)
    assert out["diff"] == pytest.approx(np.mean([d["x"].mean() for d in diffs]))
    assert out["runs"] == 3 and out["ci"][0] <= out["diff"] <= out["ci"][1]
    with pytest.raises(ValueError, match="same test items"):
        paired_bootstrap([{"x": np.zeros(100)}, {"x": np.zeros(99)}])
    with pytest.raises(ValueError, match="different tasks"):
        differences({"x": [1.0]}, {"y": [1.0]})
    assert set(compare_to("a", {"a": {"x": [1.0, 0.0]}, "b": {"x": [0.0, 0.0]}})) == {"b"}


# -- per-item results -----------------------------------------------------------------------------
