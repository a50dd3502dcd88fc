"""Choosing among models on the optimisation split: the highest mean score over the tasks wins,
and a tie goes to the candidate its caller prefers (a scale nearer the plain merge's). Every
choice a run makes (a static merge's grid point, the final merge's scale) is made here, on opt,
so that the test split only reports."""

from __future__ import annotations

from typing import Callable, Hashable, Mapping, TypeVar

from cycleqd.protocols import Failure, Result, mean_score

K = TypeVar("K", bound=Hashable)


def opt_means(results: Mapping[K, Result]) -> dict[K, float | None]:
    """Each candidate's mean score (None where its evaluation failed): what a summary records."""
    return {k: None if isinstance(r, Failure) else mean_score(r) for k, r in results.items()}


def choose_on_opt(results: Mapping[K, Result], prefer: Callable[[K], float]) -> K | None:
    """The candidate with the highest mean score; among equal means the one with the highest
    ``prefer(key)``; None when every evaluation failed."""
    ok = [k for k, r in results.items() if not isinstance(r, Failure)]
    if not ok:
        return None
    return max(ok, key=lambda k: (mean_score(results[k]), prefer(k)))
