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


def test_the_hierarchical_interval_of_build_effects_alone_is_the_bootstrap_of_the_build_means():
    """Known answer: when runs differ only by build (no seed or prompt variation), a replicate
    is the mean of three builds drawn from {0, 1, 2}: its distribution is computed exactly."""
    from itertools import product

    from cycleqd.stats import hierarchical_bootstrap

    builds = [[{"a": np.full(50, float(j)), "b": np.full(30, float(j))}] * 2 for j in range(3)]
    out = hierarchical_bootstrap(builds, resamples=4000, seed=1)
    exact = np.sort([np.mean(draw) for draw in product(range(3), repeat=3)])  # 27 equally likely draws
    assert out["diff"] == 1.0 and out["builds"] == 3 and out["runs"] == [2, 2, 2]
    assert out["ci"] == [
        float(np.quantile(exact, 0.025, method="inverted_cdf")),
        float(np.quantile(exact, 0.975, method="inverted_cdf")),
    ]


def test_the_hierarchical_interval_covers_a_build_effect_that_prompts_alone_miss():
    """Synthetic runs with a known mean difference of 0: between-build and between-seed
    variation on top of prompt noise. Over 60 datasets the interval that redraws builds,
    seeds and prompts covers 0 about as often as it should; the prompts-only interval, which
    treats every build as the same, rarely does."""
    from cycleqd.stats import hierarchical_bootstrap, paired_bootstrap

    rng = np.random.default_rng(7)
    covered = {"hierarchical": 0, "prompts": 0}
    for _ in range(60):
        builds = []
        for _b in range(8):
            build = rng.normal(0, 1.0)
            builds.append([{"a": build + rng.normal(0, 0.3) + rng.normal(0, 1.0, 100)} for _s in range(2)])
        h = hierarchical_bootstrap(builds, resamples=300, seed=0)
        p = paired_bootstrap([d for b in builds for d in b], resamples=300, seed=0)
        covered["hierarchical"] += h["ci"][0] <= 0 <= h["ci"][1]
        covered["prompts"] += p["ci"][0] <= 0 <= p["ci"][1]
    assert covered["hierarchical"] >= 48, (
        covered
    )  # ≥ 80 % (a percentile bootstrap of 8 builds runs a little short of 95 %)
    assert covered["prompts"] <= 20, covered


def test_a_build_without_runs_or_other_items_is_refused():
    from cycleqd.stats import hierarchical_bootstrap

    with pytest.raises(ValueError, match="every build needs at least one run"):
        hierarchical_bootstrap([[{"a": np.zeros(3)}], []])
    with pytest.raises(ValueError, match="not scored on the same test items"):
        hierarchical_bootstrap([[{"a": np.zeros(3)}], [{"a": np.zeros(4)}]])
