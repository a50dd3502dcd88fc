"""The algorithm, with no knowledge of runs, models on disk or workers.

Task vectors and their SVD bases (genomes), crossover, mutation, the merge methods, the
pyribs archives, the CycleQD ask/tell loop and its driver, the final merge's ingredients, the
choice on the optimisation split, the static merge baselines and the comparison searches
(CMA-ES, random) with the one loop that drives them.

Imports: the foundation (``cycleqd.errors``, ``protocols``, ``checks``, ``fileio``,
``progress``, ``stats``) and itself, nothing else of cycleqd.
"""

from cycleqd._lazy import lazy_exports

_EXPORTS = {
    "aggregate_best": "cycleqd.core.aggregation",
    "Basis": "cycleqd.core.genome",
    "Candidate": "cycleqd.core.evolve",
    "choose_on_opt": "cycleqd.core.choice",
    "CoefficientSearch": "cycleqd.core.searches",
    "CycleQD": "cycleqd.core.evolve",
    "CyclicArchives": "cycleqd.core.archives",
    "drive": "cycleqd.core.searches",
    "EliteRecord": "cycleqd.core.elite",
    "GaussianMutation": "cycleqd.core.mutation",
    "LayerCoefficients": "cycleqd.core.searches",
    "linear_combination": "cycleqd.core.taskvector",
    "LowRank": "cycleqd.core.taskvector",
    "Merge": "cycleqd.core.merging",
    "MergeCrossover": "cycleqd.core.crossover",
    "MethodCrossover": "cycleqd.core.crossover",
    "run_search": "cycleqd.core.searches",
    "Search": "cycleqd.core.searches",
    "static_merges": "cycleqd.core.baselines",
    "SVDMutation": "cycleqd.core.mutation",
    "TaskVector": "cycleqd.core.taskvector",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
