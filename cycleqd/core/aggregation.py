"""The final model's ingredients: each archive's best elite and its weight in the merge."""

from __future__ import annotations

from cycleqd.core.archives import CyclicArchives, ElitePick

AGGREGATIONS = ("quality", "uniform", "mean_score")
# The final model: "merge", the paper's merge of each archive's best; "opt", that merge or
# the archives' best elite by mean score, whichever scores higher on the opt split.
CHOICES = ("opt", "merge")


def aggregate_best(archives: CyclicArchives, method: str = "quality") -> tuple[list[ElitePick], list[float], dict]:
    """The best elite of each archive and its weight in the final merge.

    ``quality`` weights each archive's best elite by its quality (the default),
    ``uniform`` weights them equally, ``mean_score`` by their mean score over all
    tasks. Weights are normalised to sum to one; an elite best in several archives
    appears once with the sum of its weights. Returns the elites, their weights, and a
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
    by_id: dict[int, ElitePick] = {}
    for p, w in zip(picks, weights):
        merged[p.id] = merged.get(p.id, 0.0) + w
        by_id[p.id] = p
    info = {"method": method, "elites": [{"id": i, "weight": w} for i, w in merged.items()]}
    return [by_id[i] for i in merged], list(merged.values()), info
