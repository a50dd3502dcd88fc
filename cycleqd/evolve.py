"""The CycleQD loop, in pyribs' ask → evaluate → tell form.

    for g in 0..G−1:
        q = tasks[g mod K]                           # quality task of this generation
        parents ← 2 elites of archive q (elite sampling)
        child  ← mutation(crossover(parents), SVD of expert q's task vector)
        scores ← evaluate(θ0 + child) on every task  (optimisation split)
        offer the child to every archive
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from cycleqd.archives import CyclicArchives
from cycleqd.mutation import SVD
from cycleqd.store import EliteRecord, EliteStore
from cycleqd.taskvector import TaskVector


@dataclass(frozen=True)
class Candidate:
    """One child to evaluate: its id, lineage and task vector."""

    id: int
    generation: int
    quality_task: str
    parents: tuple[int, ...]
    vector: TaskVector


class CycleQD:
    """Asks for children of the current quality archive and tells their scores to all archives.

    ``ask`` and ``tell`` must alternate; results go back in the order ``ask`` gave them,
    so candidates can be evaluated in batches or in parallel without changing this class.

    Args:
        archives: The K archives.
        store: Where elite task vectors live.
        crossover: ``(parents, generator) -> child``.
        mutation: ``(child, svds, generator) -> child``.
        expert_svds: Per task, the SVDs of that task's expert task vector (mutation directions).
        children_per_generation: Children asked per generation (the paper: 1).
        seed: Seed of parent sampling and of the operators.
    """

    def __init__(
        self,
        *,
        archives: CyclicArchives,
        store: EliteStore,
        crossover,
        mutation,
        expert_svds: Mapping[str, Mapping[str, SVD]],
        children_per_generation: int = 1,
        seed: int = 0,
    ) -> None:
        if children_per_generation < 1:
            raise ValueError(f"children_per_generation must be >= 1, got {children_per_generation}")
        self.archives = archives
        self.store = store
        self.crossover = crossover
        self.mutation = mutation
        self.expert_svds = expert_svds
        self.children_per_generation = children_per_generation
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.generation = 0
        self.next_id = 0
        self.evaluations = 0
        self._asked: list[Candidate] | None = None

    # -- seeding ------------------------------------------------------------------
    def seed(self, vectors: Mapping[str, TaskVector], scores: Mapping[str, Mapping[str, float]], origin: str = "expert") -> dict[str, int]:
        """Store each model and offer it to every archive (generation −1). Returns name → id."""
        ids = {}
        for name, tv in vectors.items():
            i = self._new_id()
            self.store.put(tv, EliteRecord(id=i, generation=-1, origin=f"{origin}:{name}", parents=(), scores=dict(scores[name])))
            self.archives.add(i, scores[name], -1)
            ids[name] = i
        self.evaluations += len(vectors)
        self.store.keep_only(self.archives.alive_ids())
        return ids

    def _new_id(self) -> int:
        i = self.next_id
        self.next_id += 1
        return i

    # -- ask / tell ---------------------------------------------------------------
    def ask(self) -> list[Candidate]:
        if self._asked is not None:
            raise RuntimeError("ask() called twice without tell(): evaluate the asked candidates first")
        q = self.archives.quality_task(self.generation)
        out = []
        for _ in range(self.children_per_generation):
            picks = self.archives.sample_parents(q, 2, self.rng)
            parents = [self.store.get(p.id) for p in picks]
            child = self.crossover(parents, self.gen)
            child = self.mutation(child, self.expert_svds[q], self.gen)
            out.append(Candidate(self._new_id(), self.generation, q, tuple(p.id for p in picks), child))
        self._asked = out
        return out

    def tell(self, candidates: Sequence[Candidate], scores: Sequence[Mapping[str, float]]) -> list[dict[str, int]]:
        """Offer each evaluated candidate to every archive; returns pyribs' add status per archive."""
        if self._asked is None:
            raise RuntimeError("tell() called without ask()")
        if [c.id for c in candidates] != [c.id for c in self._asked]:
            raise ValueError("tell() must receive the candidates of the last ask(), in the same order")
        if len(scores) != len(candidates):
            raise ValueError(f"{len(candidates)} candidates but {len(scores)} score records")
        statuses = []
        for c, s in zip(candidates, scores):
            missing = [t for t in self.archives.tasks if t not in s]
            if missing:
                raise ValueError(f"candidate {c.id}: no score for tasks {missing}")
            # Stored before it enters an archive: an archive never names a missing file.
            self.store.put(c.vector, EliteRecord(c.id, c.generation, f"child:{c.quality_task}", c.parents, dict(s)))
            statuses.append(self.archives.add(c.id, s, c.generation))
        self.store.keep_only(self.archives.alive_ids())
        self.evaluations += len(candidates)
        self.generation += 1
        self._asked = None
        return statuses

    # -- checkpointing ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._asked is not None:
            raise RuntimeError("cannot checkpoint between ask() and tell()")
        return {
            "archives": self.archives,
            "rng": self.rng.bit_generator.state,
            "gen": self.gen.get_state(),
            "generation": self.generation,
            "next_id": self.next_id,
            "evaluations": self.evaluations,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.archives = state["archives"]
        self.rng.bit_generator.state = state["rng"]
        self.gen.set_state(state["gen"])
        self.generation = state["generation"]
        self.next_id = state["next_id"]
        self.evaluations = state["evaluations"]
