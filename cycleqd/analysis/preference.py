"""Downstream selection: a user's preference is a weighting of the tasks, and the model they
take from a method's pool is the one with the best weighted opt score. Over many weightings,
a pool that holds specialists and generalists serves more users than one best-mean model.

The weightings are Dirichlet(1) draws (uniform over the simplex), seeded, plus the K one-hot
weightings (a user who wants one skill).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def weightings(k: int, n: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` seeded Dirichlet(1) weightings of ``k`` tasks, then the ``k`` one-hot ones: (n + k, k)."""
    if k < 1 or n < 0:
        raise ValueError(f"weightings: need k >= 1 tasks and n >= 0 draws, got k={k}, n={n}")
    drawn = np.random.default_rng(seed).dirichlet(np.ones(k), size=n)
    return np.vstack([drawn, np.eye(k)])


def choose(opt: np.ndarray, weights: np.ndarray, pool: str = "pool") -> np.ndarray:
    """For each weighting (row of ``weights``), the row of ``opt`` (candidates × tasks, opt
    scores) with the best weighted score; the first among equals. A candidate with a missing
    score (NaN: a failed evaluation) is never chosen.

    Raises:
        ValueError: a weighting of the wrong length, or a pool with no scored candidate
            (``pool`` names it).
    """
    opt, weights = (
        np.atleast_2d(np.asarray(opt, dtype=np.float64)),
        np.atleast_2d(np.asarray(weights, dtype=np.float64)),
    )
    if weights.shape[1] != opt.shape[1]:
        raise ValueError(f"{pool}: a weighting of {weights.shape[1]} tasks for candidates scored on {opt.shape[1]}")
    scored = ~np.isnan(opt).any(axis=1)
    if opt.shape[0] == 0 or not scored.any():
        raise ValueError(f"{pool}: no candidate with a score on every task to choose from")
    values = np.where(scored[None, :], weights @ np.nan_to_num(opt).T, -np.inf)  # weightings × candidates
    return np.argmax(values, axis=1)


def regret(values: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per method, the mean over weightings of how far its chosen model's weighted test score
    falls below the best method's for that weighting (``values``: method → one score per weighting)."""
    if not values:
        raise ValueError("regret: no methods")
    table = np.vstack([np.asarray(v, dtype=np.float64) for v in values.values()])
    best = table.max(axis=0)
    return {m: float(np.mean(best - row)) for m, row in zip(values, table)}
