"""Paired bootstrap intervals of differences in test mean: over the test prompts, and over
builds of the models, search seeds and prompts.

A run's *test mean* is the mean over tasks of each task's mean over its test items. Two
models scored on the same items differ by ``mean_t mean_i (a_ti − b_ti)``; its sampling
uncertainty comes from which prompts were drawn, so a bootstrap replicate redraws each
task's items with replacement (stratified by task) and recomputes the difference on the
same redrawn items for both models (paired). Over several runs (seeds) that share their
test items, one redraw is applied to every run and the replicate is the mean over runs.

Across builds of the models (:func:`hierarchical_bootstrap`), a replicate redraws the builds,
then each drawn build's seeds, then the prompts: the spread between builds, which no number of
seeds or prompts on one build shows, widens the interval as it should.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

Items = Mapping[str, Sequence[float]]

RESAMPLES = 2000
LEVEL = 0.95


def differences(a: Items, b: Items) -> dict[str, np.ndarray]:
    """Per-task, per-item ``a − b``; both must hold the same tasks with the same item counts."""
    if set(a) != set(b):
        raise ValueError(f"the two models were scored on different tasks: {sorted(a)} and {sorted(b)}")
    out = {}
    for t in a:
        x, y = np.asarray(a[t], dtype=np.float64), np.asarray(b[t], dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"task {t!r}: {x.size} items against {y.size}; a paired comparison needs the same items")
        out[t] = x - y
    return out


def paired_bootstrap(
    diffs: Sequence[Mapping[str, np.ndarray]], *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> dict:
    """The mean over runs of the test-mean difference, with its percentile interval.

    Args:
        diffs: One mapping per run: task → per-item differences (as :func:`differences`);
            every run has the same tasks and item counts (the same test items).
        resamples: Bootstrap replicates.
        level: Coverage of the interval.
        seed: Seed of the redraws (fixed, so a summary is reproducible).

    Returns:
        ``{"diff", "ci": [low, high], "level", "resamples", "items": {task: n}, "runs"}``.
    """
    if not diffs:
        raise ValueError("no runs to compare")
    tasks = sorted(diffs[0])
    for d in diffs[1:]:
        if sorted(d) != tasks or any(len(d[t]) != len(diffs[0][t]) for t in tasks):
            raise ValueError("the runs were not scored on the same test items; pair them per run instead")
    rng = np.random.default_rng(seed)
    point = float(np.mean([np.mean([d[t].mean() for t in tasks]) for d in diffs]))
    reps = np.zeros(resamples)
    for t in tasks:
        n = len(diffs[0][t])
        stacked = np.stack([d[t] for d in diffs])  # runs × items
        idx = rng.integers(0, n, size=(resamples, n))
        reps += stacked[:, idx].mean(axis=2).mean(axis=0)  # mean over items, then over runs
    reps /= len(tasks)
    return {**_interval(point, reps, level, {t: int(len(diffs[0][t])) for t in tasks}), "runs": len(diffs)}


def _interval(point: float, reps: np.ndarray, level: float, items: dict[str, int]) -> dict:
    """A point estimate with the percentile interval of its bootstrap replicates."""
    tail = (1 - level) / 2
    low, high = np.quantile(reps, [tail, 1 - tail])
    return {"diff": point, "ci": [float(low), float(high)], "level": level, "resamples": len(reps), "items": items}


def compare_to(reference: str, items: Mapping[str, Items], **kw) -> dict[str, dict]:
    """``reference`` against every other model in ``items`` (label → task → per-item results)."""
    ref = items[reference]
    return {
        label: paired_bootstrap([differences(ref, other)], **kw) for label, other in items.items() if label != reference
    }


def hierarchical_bootstrap(
    builds: Sequence[Sequence[Mapping[str, np.ndarray]]],
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> dict:
    """The mean test-mean difference over builds of the models and search seeds, with an
    interval that counts all three sources of variation.

    A finding on one build of the experts may not hold on another, and one search seed is one
    draw of the search's randomness. A replicate therefore redraws, with replacement, the
    builds, then each drawn build's runs (its seeds), then each task's test items (one redraw
    for every run: they share the items), and takes the mean over the drawn builds of the mean
    over their drawn runs. The point estimate weighs every build equally.

    Args:
        builds: One sequence per build of the runs' per-item differences (task → array, as
            :func:`differences`), one mapping per seed; every run has the same tasks and items.
        resamples: Bootstrap replicates.
        level: Coverage of the interval.
        seed: Seed of the redraws.

    Returns:
        ``{"diff", "ci", "level", "resamples", "items", "builds", "runs"}``; ``runs`` counts
        the seeds of each build.
    """
    builds = [list(b) for b in builds]
    if not builds or any(not b for b in builds):
        raise ValueError("every build needs at least one run to compare")
    runs = [d for b in builds for d in b]
    tasks = sorted(runs[0])
    for d in runs[1:]:
        if sorted(d) != tasks or any(len(d[t]) != len(runs[0][t]) for t in tasks):
            raise ValueError("the runs were not scored on the same test items")
    owner = np.repeat(np.arange(len(builds)), [len(b) for b in builds])  # run → its build
    starts = np.concatenate([[0], np.cumsum([len(b) for b in builds])[:-1]])
    sizes = np.array([len(b) for b in builds])
    run_means = np.mean([[d[t].mean() for t in tasks] for d in runs], axis=1)
    point = float(np.mean([run_means[owner == j].mean() for j in range(len(builds))]))
    rng = np.random.default_rng(seed)
    stacked = {t: np.stack([d[t] for d in runs]) for t in tasks}  # runs × items
    reps = np.empty(resamples)
    for r in range(resamples):
        # every run's test mean on this replicate's redrawn items
        means = np.mean(
            [stacked[t][:, rng.integers(0, stacked[t].shape[1], stacked[t].shape[1])].mean(axis=1) for t in tasks],
            axis=0,
        )
        drawn = rng.integers(0, len(builds), len(builds))
        reps[r] = np.mean([means[starts[j] + rng.integers(0, sizes[j], sizes[j])].mean() for j in drawn])
    items = {t: int(stacked[t].shape[1]) for t in tasks}
    return {**_interval(point, reps, level, items), "builds": len(builds), "runs": [len(b) for b in builds]}
