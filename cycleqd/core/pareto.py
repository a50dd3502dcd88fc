"""Pareto quality of a set of models scored on K tasks (higher is better on every task): which
models no other beats on every task, and the hypervolume they dominate, both from moocore.

The hypervolume is measured from a reference point (by default the origin: a model that
scores 0 on every task), so that a set's value is the volume of score space it reaches; on
scores in [0, 1] it lies in [0, 1], 1 for a model perfect at everything.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def non_dominated(scores: np.ndarray) -> np.ndarray:
    """Row positions of the rows of ``scores`` ``(n, K)`` that no other row dominates (at least
    as good on every task and better on one), in their order; of equal rows, only the first."""
    import moocore

    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if s.shape[0] == 0:
        return np.zeros(0, dtype=int)
    return np.flatnonzero(moocore.is_nondominated(s, maximise=True))


def hypervolume(scores: np.ndarray, reference: Sequence[float] | None = None) -> float:
    """The volume of score space that the rows of ``scores`` ``(n, K)`` dominate, bounded below
    by ``reference`` (None: the origin). A row that does not beat the reference on every task
    adds nothing; no rows: 0."""
    import moocore

    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    ref = np.zeros(s.shape[1]) if reference is None else np.asarray(reference, dtype=np.float64)
    if ref.shape != (s.shape[1],):
        raise ValueError(f"hypervolume: a reference point of {ref.size} values for scores on {s.shape[1]} tasks")
    s = s[np.all(s > ref, axis=1)]
    return 0.0 if len(s) == 0 else float(moocore.hypervolume(s, ref=ref, maximise=True))
