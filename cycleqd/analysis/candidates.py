"""Every model a run's search evaluated, as a table: the pool a user picks from for a weighting
of the tasks of their own, a Pareto front, or a lineage (the record is written by
:mod:`cycleqd.run.record`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cycleqd.run import record


def load_candidates(run_dir: str | Path) -> Any:
    """One row per opt evaluation of ``run_dir``'s search, any search (CycleQD, CMA-ES, random).

    Columns: ``evaluation``, ``id``, ``origin``, ``generation``, ``parents``, ``operators``,
    ``score_<task>`` and ``mean_score`` (NaN where the evaluation failed), ``failure``,
    ``archives`` (those that took it), and ``genome`` (float32) / ``coefficients`` (float64)
    arrays, or None where the record does not hold the model. ``attrs["notes"]`` says what is missing
    and why: no record (a run from before it existed), or lines that could not be read. The
    run directory is only read.
    """
    import numpy as np
    import pandas as pd

    lines, notes = record.read(run_dir)
    numbers = record.vectors(run_dir)
    tasks = list(dict.fromkeys(t for x in lines for t in (x.get("scores") or {})))
    rows = []
    for x in lines:
        scores = x.get("scores") or {}
        rows.append(
            {
                "evaluation": int(x["evaluation"]),
                "id": int(x["id"]),
                "origin": x.get("origin"),
                "generation": x.get("generation", -1),
                "parents": tuple(x.get("parents", ())),
                "operators": x.get("operators", {}),
                **{f"score_{t}": float(scores.get(t, np.nan)) for t in tasks},
                "failure": x.get("failure"),
                "archives": tuple(x.get("archives", ())),
                "genome": record.genome_of(numbers, x),
                "coefficients": np.array(x["coefficients"], dtype=np.float64) if "coefficients" in x else None,
            }
        )
        if "genome" in x and rows[-1]["genome"] is None:
            notes.append(f"{record.VECTORS}: ends before the genome of evaluation {x['evaluation']}")
    table = pd.DataFrame(rows)
    if len(table) and tasks:
        table["mean_score"] = table[[f"score_{t}" for t in tasks]].mean(axis=1, skipna=False)
    table.attrs["notes"] = notes
    return table
