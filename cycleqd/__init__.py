"""cycleqd: quality-diversity evolution of language models, the CycleQD way.

One pyribs archive per task; the task that counts as quality cycles each generation while
the others' scores are the behaviour descriptors; children come from merge-based crossover
of elites' task vectors and SVD-based mutation.

The package is layered; each layer imports only the layers below it (a test checks it):

    cycleqd.cli          the ``cycleqd`` command
    cycleqd.analysis     reading finished runs: load_run, selection, export, compare, evidence
    cycleqd.run          a run from config to run directory: components, runner, checkpoints
    cycleqd.evaluation   scoring candidates: the resident model, local and Ray evaluators
    cycleqd.models       loading, the embedded tiny Llama, SmolLM2, fine-tuning experts
    cycleqd.core         the algorithm: task vectors, genomes, operators, archives, the loop
    foundation           cycleqd.errors, protocols, checks, fileio, progress, stats

The task plugins (``cycleqd.tasks``) use the foundation and the evaluation's sandbox; no
layer imports them: configs name them by ``_target_``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cycleqd._lazy import lazy_exports

_EXPORTS = {
    "Candidate": "cycleqd.core.evolve",
    "CycleQD": "cycleqd.core.evolve",
    "CyclicArchives": "cycleqd.core.archives",
    "EliteStore": "cycleqd.run.store",
    "GaussianMutation": "cycleqd.core.mutation",
    "LowRank": "cycleqd.core.taskvector",
    "MergeCrossover": "cycleqd.core.crossover",
    "RunData": "cycleqd.analysis.rundata",
    "SVDMutation": "cycleqd.core.mutation",
    "TaskVector": "cycleqd.core.taskvector",
    "linear_combination": "cycleqd.core.taskvector",
    "load_candidates": "cycleqd.analysis.candidates",
    "load_run": "cycleqd.analysis.rundata",
}
__all__ = [
    "Candidate",
    "CycleQD",
    "CyclicArchives",
    "EliteStore",
    "GaussianMutation",
    "LowRank",
    "MergeCrossover",
    "RunData",
    "SVDMutation",
    "TaskVector",
    "linear_combination",
    "load_candidates",
    "load_run",
]

if TYPE_CHECKING:
    from cycleqd.analysis.candidates import load_candidates
    from cycleqd.analysis.rundata import RunData, load_run
    from cycleqd.core.archives import CyclicArchives
    from cycleqd.core.crossover import MergeCrossover
    from cycleqd.core.evolve import Candidate, CycleQD
    from cycleqd.core.mutation import GaussianMutation, SVDMutation
    from cycleqd.core.taskvector import LowRank, TaskVector, linear_combination
    from cycleqd.run.store import EliteStore

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
