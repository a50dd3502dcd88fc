"""Choosing elites of a finished run: the best per task, the Pareto front, the top k, the final
model's elites, one cell."""

from __future__ import annotations

STRATEGIES = ("best", "pareto", "topk", "final", "cell")


def pareto_front(scores) -> list[int]:
    """Row positions of the non-dominated rows of ``scores`` ``(n, K)`` (higher is better),
    equal rows all kept (each is an elite of its own)."""
    import moocore
    import numpy as np

    s = np.asarray(scores, dtype=float)
    if len(s) == 0:
        return []
    return [int(i) for i in np.flatnonzero(moocore.is_nondominated(s, maximise=True, keep_weakly=True))]


def select_elites(run, strategy: str, *, k: int = 5, archive: str | None = None, cell: tuple[int, ...] | None = None):
    """Choose elites of a loaded run (:func:`cycleqd.analysis.rundata.load_run`); returns a table, one row per elite.

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
