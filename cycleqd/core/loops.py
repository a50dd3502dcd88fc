"""The loop of a comparison search (``search=``), by name: CMA-ES and random search
(:class:`~cycleqd.core.searches.CoefficientSearch`), CMA-MAE (:class:`~cycleqd.core.cma_mae.CmaMae`)
and M2N2 (:class:`~cycleqd.core.m2n2.M2N2`), all over the same per-layer expert coefficients."""

from __future__ import annotations

from typing import Mapping

from cycleqd.core.cma_mae import CmaMae
from cycleqd.core.m2n2 import M2N2
from cycleqd.core.searches import CoefficientSearch, LayerCoefficients, Search
from cycleqd.protocols import Measure


def search_loop(
    search: Search, space: LayerCoefficients, budget: int, seed: int, measures: Mapping[str, Measure]
) -> CoefficientSearch:
    """``search``'s loop over ``space``'s coefficients, to spend ``budget`` opt evaluations
    (``measures``: each task's, in the run's order: CMA-MAE's archive axes)."""
    if search.name == "cma_mae":
        return CmaMae(search, space.dim, budget, seed, measures)
    if search.name == "m2n2":
        return M2N2(search, space.tasks, len(space.groups), budget, seed)
    return CoefficientSearch(search, space.dim, budget, seed)
