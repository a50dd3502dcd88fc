"""cycleqd: quality-diversity evolution of language models, the CycleQD way.

One pyribs archive per task; the task that counts as quality cycles each
generation while the others' scores are the behaviour descriptors; children come
from merge-based crossover of elites' task vectors and SVD-based mutation.
"""

from cycleqd.archives import CyclicArchives
from cycleqd.crossover import MergeCrossover
from cycleqd.evolve import Candidate, CycleQD
from cycleqd.mutation import GaussianMutation, SVDMutation
from cycleqd.rundata import RunData, load_run
from cycleqd.store import EliteStore
from cycleqd.taskvector import LowRank, TaskVector, linear_combination

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
    "load_run",
]
