"""Elite selection and the final aggregated model."""

from __future__ import annotations

from typing import Sequence

from cycleqd.archives import CyclicArchives
from cycleqd.store import EliteStore
from cycleqd.taskvector import TaskVector, linear_combination

AGGREGATIONS = ("quality", "uniform", "mean_score")


def aggregate_best(archives: CyclicArchives, store: EliteStore, method: str = "quality") -> tuple[TaskVector, dict]:
    """Merge the best elite of each archive into one task vector.

    ``quality`` weights each archive's best elite by its quality (the default),
    ``uniform`` weights them equally, ``mean_score`` by their mean score over all
    tasks. Weights are normalised to sum to one. Returns the merged vector and a
    record of which elites went in with which weight.
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"final.method must be one of {AGGREGATIONS}, got {method!r}")
    picks = [archives.best(t) for t in archives.tasks]
    if method == "quality":
        raw = [p.objective for p in picks]
    elif method == "uniform":
        raw = [1.0] * len(picks)
    else:
        raw = [sum(p.scores) / len(p.scores) for p in picks]
    total = sum(raw)
    weights = [w / total for w in raw] if total > 0 else [1 / len(raw)] * len(raw)
    # The same elite can be best in several archives: merge its weights.
    merged: dict[int, float] = {}
    for p, w in zip(picks, weights):
        merged[p.id] = merged.get(p.id, 0.0) + w
    tv = linear_combination([store.get(i) for i in merged], list(merged.values()))
    return tv, {"method": method, "elites": [{"id": i, "weight": w} for i, w in merged.items()]}


def task_arithmetic(experts: Sequence[TaskVector], scale: float) -> TaskVector:
    """θ0 + λ Σ_i τ_i (Ilharco et al., 2023)."""
    return linear_combination(list(experts), [scale] * len(experts))
