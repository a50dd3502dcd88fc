"""Elite selection and the final aggregated model."""

from __future__ import annotations

from typing import Sequence

from cycleqd.archives import CyclicArchives, ElitePick
from cycleqd.taskvector import TaskVector, linear_combination

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


def task_arithmetic(experts: Sequence[TaskVector], scale: float) -> TaskVector:
    """θ0 + λ Σ_i τ_i (Ilharco et al., 2023)."""
    return linear_combination(list(experts), [scale] * len(experts))


STRATEGIES = ("best", "pareto", "topk", "final", "cell")


def pareto_front(scores) -> list[int]:
    """Row positions of the non-dominated rows of ``scores`` ``(n, K)`` (higher is better)."""
    import numpy as np

    s = np.asarray(scores, dtype=float)
    keep = []
    for i in range(len(s)):
        dominated = np.any(np.all(s >= s[i], axis=1) & np.any(s > s[i], axis=1))
        if not dominated:
            keep.append(i)
    return keep


def select_elites(run, strategy: str, *, k: int = 5, archive: str | None = None, cell: tuple[int, ...] | None = None):
    """Choose elites of a loaded run (:func:`cycleqd.rundata.load_run`); returns a table, one row per elite.

    ``best``: the top elite on each task over all archives; ``pareto``: the Pareto front
    over the K task scores; ``topk``: the ``k`` best by mean score; ``final``: the elites
    the final model took, with their weights (one, of weight 1, where it is an elite; a
    refined final model, ``final.refine``, adds per-layer expert coefficients to them, which
    ``summary.json`` records under ``final_elites.refine``: its file is ``final.safetensors``);
    ``cell``: the elite of ``archive`` at ``cell``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {STRATEGIES}, got {strategy!r}")
    tasks = run.tasks
    cols = [f"score_{t}" for t in tasks]
    unique = run.elites.drop_duplicates("id").reset_index(drop=True)
    if strategy == "best":
        rows = [unique.loc[unique[c].idxmax()].to_dict() | {"chosen_for": t} for t, c in zip(tasks, cols)]
        import pandas as pd

        return pd.DataFrame(rows)
    if strategy == "pareto":
        return unique.iloc[pareto_front(unique[cols].to_numpy())].sort_values("mean_score", ascending=False)
    if strategy == "topk":
        return unique.sort_values("mean_score", ascending=False).head(k)
    if strategy == "final":
        info = run.summary.get("final_elites")
        if not info:
            raise ValueError(f"{run.run_dir} has no final merge in summary.json (unfinished run)")
        weights = {e["id"]: e["weight"] for e in info["elites"]}
        out = unique[unique["id"].isin(list(weights))].copy()
        out["weight"] = out["id"].map(weights)
        return out
    if archive not in run.archives:
        raise ValueError(f"--archive must be one of {tasks}, got {archive!r}")
    rows = run.elites[(run.elites["archive"] == archive) & (run.elites["cell"] == tuple(cell or ()))]
    if rows.empty:
        raise ValueError(f"archive {archive!r} has no elite in cell {cell}")
    return rows
