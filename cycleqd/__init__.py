"""cycleqd: quality-diversity evolution of language models, the CycleQD way.

One pyribs archive per task; the task that counts as quality cycles each
generation while the others' scores are the behaviour descriptors; children come
from merge-based crossover of elites' task vectors and SVD-based mutation.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The public names load on first use (PEP 562): pyribs, torch and transformers take seconds
# to import, and `cycleqd --help`, `show` or `compare` need none of them.
_EXPORTS = {
    "Candidate": "cycleqd.evolve",
    "CycleQD": "cycleqd.evolve",
    "CyclicArchives": "cycleqd.archives",
    "EliteStore": "cycleqd.store",
    "GaussianMutation": "cycleqd.mutation",
    "LowRank": "cycleqd.taskvector",
    "MergeCrossover": "cycleqd.crossover",
    "RunData": "cycleqd.rundata",
    "SVDMutation": "cycleqd.mutation",
    "TaskVector": "cycleqd.taskvector",
    "linear_combination": "cycleqd.taskvector",
    "load_run": "cycleqd.rundata",
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
    "load_run",
]

if TYPE_CHECKING:
    from cycleqd.archives import CyclicArchives
    from cycleqd.crossover import MergeCrossover
    from cycleqd.evolve import Candidate, CycleQD
    from cycleqd.mutation import GaussianMutation, SVDMutation
    from cycleqd.rundata import RunData, load_run
    from cycleqd.store import EliteStore
    from cycleqd.taskvector import LowRank, TaskVector, linear_combination


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cycleqd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
