"""How the loop makes a child, in either representation of an elite:

- :class:`DenseOperators` — task vectors (dense or factored LoRA), one file per elite in
  the elite store; any crossover and mutation.
- :class:`GenomeOperators` — coefficient vectors over the experts' SVD bases
  (:mod:`cycleqd.core.genome`), held by the pyribs archives themselves; the paper's linear
  operators only, drawing the same random numbers as the dense path.

Both answer the same four questions for :class:`cycleqd.core.evolve.CycleQD`: a parent from an
archive row, a child of parents (with the parameters its operators drew: :meth:`breed`), what
the archive stores as the solution, and what to keep elsewhere when an archive keeps an elite.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch

from cycleqd.core.archives import ElitePick
from cycleqd.core.crossover import MergeCrossover, MethodCrossover
from cycleqd.core.elite import EliteRecord
from cycleqd.core.genome import Basis
from cycleqd.core.mutation import SVD, SVDMutation
from cycleqd.core.taskvector import TaskVector, linear_combination


class Operators(Protocol):
    """What the loop needs to breed in one representation."""

    solution_dim: int

    def parent(self, pick: ElitePick) -> Any: ...

    def child(self, parents: Sequence[Any], quality: str, gen: torch.Generator) -> Any: ...

    def breed(self, parents: Sequence[Any], quality: str, gen: torch.Generator) -> tuple[Any, dict]: ...

    def solution(self, elite_id: int, child: Any) -> np.ndarray: ...

    def keep(self, child: Any, record: EliteRecord) -> None: ...

    def combine(self, xs: Sequence[Any], weights: Sequence[float]) -> Any: ...


class TaskVectorStore(Protocol):
    """Where dense elites live between generations (the run's :class:`~cycleqd.run.store.EliteStore`)."""

    def get(self, elite_id: int) -> TaskVector: ...

    def put(self, tv: TaskVector, record: EliteRecord) -> None: ...


class DenseOperators:
    """Task vectors, crossover and mutation as configured, elites in a :class:`TaskVectorStore`.

    Args:
        crossover: ``(parents, generator) -> child``.
        mutation: ``(child, svds, generator) -> child``.
        svds: Per task, the SVDs of its expert task vector (the mutation's directions).
        store: Where kept elites' task vectors go.
    """

    solution_dim = 1

    def __init__(
        self, crossover: Callable, mutation: Callable, svds: Mapping[str, Mapping[str, SVD]], store: TaskVectorStore
    ) -> None:
        self.crossover, self.mutation, self.svds, self.store = crossover, mutation, svds, store

    def parent(self, pick: ElitePick) -> TaskVector:
        return self.store.get(pick.id)

    def child(self, parents: Sequence[TaskVector], quality: str, gen: torch.Generator) -> TaskVector:
        return self.breed(parents, quality, gen)[0]

    def breed(self, parents: Sequence[TaskVector], quality: str, gen: torch.Generator) -> tuple[TaskVector, dict]:
        """The child and the parameters its operators drew (each operator's own draws, in its order)."""
        mix = getattr(self.crossover, "mix", None)  # a crossover of one's own may keep its draws to itself
        mixed, drawn = mix(parents, gen) if callable(mix) else (self.crossover(parents, gen), {})
        child = self.mutation(mixed, self.svds[quality], gen)
        return child, operator_params(drawn, self.mutation, quality)

    def solution(self, elite_id: int, child: TaskVector) -> np.ndarray:
        return np.array([float(elite_id)])

    def keep(self, child: TaskVector, record: EliteRecord) -> None:
        self.store.put(child, record)

    def combine(self, xs: Sequence[TaskVector], weights: Sequence[float]) -> TaskVector:
        return linear_combination(list(xs), list(weights))


def operator_params(crossover: dict, mutation: Any, quality: str) -> dict:
    """A child's record of its operators: what the crossover drew, and the mutation's settings."""
    described = getattr(mutation, "describe", None)
    out = {"crossover": crossover} if crossover else {}
    moved = described(quality) if callable(described) else {}
    return out | ({"mutation": moved} if moved else {})


def linear_in_genome(crossover: Any, mutation: Any) -> bool:
    """Whether the configured operators are the linear ones a genome can represent exactly."""
    linear_crossover = isinstance(crossover, MergeCrossover) or (
        isinstance(crossover, MethodCrossover) and getattr(crossover.merge, "linear", False)
    )
    linear_mutation = isinstance(mutation, SVDMutation) and type(mutation) is SVDMutation and mutation.max_rank is None
    return linear_crossover and linear_mutation


class GenomeOperators:
    """The paper's crossover and SVD mutation on coefficient vectors.

    Each draws exactly the random numbers its dense counterpart draws, in the same order,
    so both representations of a run make the same children.

    Raises:
        ValueError: an operator that is not linear in the genome's basis.
    """

    def __init__(self, crossover: Callable, mutation: SVDMutation, basis: Basis) -> None:
        if not linear_in_genome(crossover, mutation):
            raise ValueError(
                f"{type(crossover).__name__} / {type(mutation).__name__} are not linear in the experts' SVD bases: use genome=false"
            )
        self.crossover, self.mutation, self.basis = crossover, mutation, basis
        self.solution_dim = basis.length

    def parent(self, pick: ElitePick) -> np.ndarray:
        return np.asarray(pick.solution, dtype=np.float32)

    def child(self, parents: Sequence[np.ndarray], quality: str, gen: torch.Generator) -> np.ndarray:
        return self.breed(parents, quality, gen)[0]

    def breed(self, parents: Sequence[np.ndarray], quality: str, gen: torch.Generator) -> tuple[np.ndarray, dict]:
        """The child and the parameters its operators drew (as :meth:`DenseOperators.breed`)."""
        xo = self.crossover
        if isinstance(xo, MergeCrossover):
            per_name = xo.weights_for(self.basis.names, len(parents), gen)
            weights = [self.basis.spread(w) for w in per_name]
            drawn: dict = {"weights": [xo.by_group(w) for w in per_name]}
        else:  # a linear merge, times its λ
            lam = getattr(xo.merge, "scale", 1.0)
            w = xo.parent_weights(len(parents), gen)
            weights, drawn = [x * lam for x in w], {"method": getattr(xo.merge, "method", None), "weights": w}
        c = sum(np.asarray(w, dtype=np.float64) * p.astype(np.float64) for w, p in zip(weights, parents))
        if self.mutation.scale:
            for name, r in self.mutation.draws(self.basis.svds[quality], gen).items():
                b = self.basis.block(quality, name)
                c[b.start : b.stop] += r.numpy()
        return c.astype(np.float32), operator_params(drawn, self.mutation, quality)

    def solution(self, elite_id: int, child: np.ndarray) -> np.ndarray:
        return child

    def keep(self, child: np.ndarray, record: EliteRecord) -> None:
        pass  # the archive row is the elite

    def combine(self, xs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
        return sum(float(w) * x.astype(np.float64) for w, x in zip(weights, xs)).astype(np.float32)
