"""The CycleQD loop, in pyribs' ask → evaluate → tell form.

for g in 0..G−1:
    q = tasks[g mod K]                           # quality task of this generation
    parents ← 2 elites of archive q (elite sampling)
    child  ← mutation(crossover(parents), SVD of expert q's task vector)
    scores ← evaluate(θ0 + child) on every task  (optimisation split)
    offer the child to every archive
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from cycleqd.core.archives import CyclicArchives
from cycleqd.core.elite import EliteRecord
from cycleqd.core.operators import Operators
from cycleqd.core.taskvector import LowRank, TaskVector
from cycleqd.protocols import Evaluator, Failure, Result


@dataclass(frozen=True)
class Candidate:
    """One child to evaluate: its id, lineage, the child itself (a task vector, or a
    genome: see :mod:`cycleqd.core.operators`) and what its operators drew."""

    id: int
    generation: int
    quality_task: str
    parents: tuple[int, ...]
    vector: Any
    operators: dict = field(default_factory=dict)

    def __setstate__(self, state: dict) -> None:
        # A format-1 checkpoint pickled children from before they recorded their operators.
        for k, v in {"operators": {}, **state}.items():
            object.__setattr__(self, k, v)


class CycleQD:
    """Asks for children of the current quality archive and tells their scores to all archives.

    ``ask`` and ``tell`` must alternate; results go back in the order ``ask`` gave them,
    so candidates can be evaluated in batches or in parallel without changing this class.
    All state is in memory: the archives (with the elites themselves when they are
    genomes), RNGs and counters. With task vectors, ``operators.keep`` writes a kept
    elite to the elite store; nothing is ever deleted here (the runner collects dead
    elites after a checkpoint that no longer names them).

    Args:
        archives: The K archives (their ``solution_dim`` is ``operators.solution_dim``).
        operators: How a child is made and what is kept of it (:mod:`cycleqd.core.operators`).
        children_per_generation: Children asked per generation (the paper: 1).
        seed: Seed of parent sampling and of the operators.
    """

    def __init__(
        self, *, archives: CyclicArchives, operators: Operators, children_per_generation: int = 1, seed: int = 0
    ) -> None:
        if children_per_generation < 1:
            raise ValueError(f"children_per_generation must be >= 1, got {children_per_generation}")
        if archives.solution_dim != operators.solution_dim:
            raise ValueError(
                f"archives hold solutions of {archives.solution_dim} numbers, the operators make {operators.solution_dim}"
            )
        self.archives = archives
        self.operators = operators
        self.children_per_generation = children_per_generation
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.generation = 0
        self.next_id = 0
        self.evaluations = 0
        self.failures: Counter[str] = Counter()
        self.consecutive_failures = 0
        self._asked: list[Candidate] | None = None
        self.pending: dict[int, Candidate] = {}  # asked one by one (steady state), not told yet
        # pyribs' add status per archive of each model the last seed()/tell()/tell_one() offered (None: failed)
        self.last_statuses: list[dict[str, int] | None] = []

    # -- seeding ------------------------------------------------------------------
    def seed(self, vectors: Mapping[str, Any], results: Mapping[str, Result], origin: str = "expert") -> dict[str, int]:
        """Offer each model to every archive (generation −1); returns name → id of the
        models that were scored (a :class:`Failure` result is counted, not offered)."""
        ids = {}
        self.last_statuses = []
        for name, tv in vectors.items():
            i = self._new_id()
            self.evaluations += 1
            status = self._offer(i, tv, results[name], -1, f"{origin}:{name}", ())
            self.last_statuses.append(status)
            if status:
                ids[name] = i
        return ids

    def _new_id(self) -> int:
        i = self.next_id
        self.next_id += 1
        return i

    def _offer(self, i: int, x: Any, result: Result, generation: int, origin: str, parents: tuple[int, ...]):
        """Offer one evaluated model to every archive and store it if one keeps it.
        Returns pyribs' add status per archive, or None for a failed evaluation."""
        if isinstance(result, Failure):
            self.failures[result.reason] += 1
            self.consecutive_failures += 1
            return None
        self.consecutive_failures = 0
        missing = [t for t in self.archives.tasks if t not in result]
        if missing:
            raise ValueError(f"model {i}: no score for tasks {missing}")
        status = self.archives.add(i, result, generation, solution=self.operators.solution(i, x), parents=parents)
        if any(s > 0 for s in status.values()):
            self.operators.keep(x, EliteRecord(i, generation, origin, parents, dict(result)))
        return status

    # -- ask / tell ---------------------------------------------------------------
    def ask(self) -> list[Candidate]:
        if self._asked is not None:
            raise RuntimeError("ask() called twice without tell(): evaluate the asked candidates first")
        q = self.archives.quality_task(self.generation)
        out = [self._breed(q, self.generation) for _ in range(self.children_per_generation)]
        self._asked = out
        return out

    def _breed(self, q: str, generation: int) -> Candidate:
        """One child of two elites of archive ``q`` (parents drawn first, then the operators' numbers)."""
        picks = self.archives.sample_parents(q, 2, self.rng)
        child, drawn = self.operators.breed([self.operators.parent(p) for p in picks], q, self.gen)
        return Candidate(self._new_id(), generation, q, tuple(p.id for p in picks), child, drawn)

    # -- steady state: one child at a time, several in flight -------------------------------
    def ask_one(self) -> Candidate:
        """One child while others are being evaluated (asynchronous steady state). The quality
        task cycles per child: the ``g``-th child asked breeds from archive ``g mod K``, and
        ``generation`` counts children, asked and told."""
        if self._asked is not None:
            raise RuntimeError("ask_one() while a generation asked with ask() is not told")
        generation = self.generation + len(self.pending)
        c = self._breed(self.archives.quality_task(generation), generation)
        self.pending[c.id] = c
        return c

    def tell_one(self, candidate: Candidate, result: Result) -> dict[str, int] | None:
        """Offer one child asked with :meth:`ask_one`, in any order."""
        if candidate.id not in self.pending:
            raise ValueError(f"tell_one(): child {candidate.id} was not asked with ask_one() or was told already")
        del self.pending[candidate.id]
        status = self._offer(
            candidate.id,
            candidate.vector,
            result,
            candidate.generation,
            f"child:{candidate.quality_task}",
            candidate.parents,
        )
        self.evaluations += 1
        self.generation += 1
        self.last_statuses = [status]
        return status

    def tell(self, candidates: Sequence[Candidate], results: Sequence[Result]) -> list[dict[str, int] | None]:
        """Offer each evaluated candidate to every archive; a :class:`Failure` is counted
        and offered nowhere. Returns pyribs' add status per archive (None for a failure)."""
        if self._asked is None:
            raise RuntimeError("tell() called without ask()")
        if [c.id for c in candidates] != [c.id for c in self._asked]:
            raise ValueError("tell() must receive the candidates of the last ask(), in the same order")
        if len(results) != len(candidates):
            raise ValueError(f"{len(candidates)} candidates but {len(results)} score records")
        for c, r in zip(candidates, results):
            if not isinstance(r, Failure):
                missing = [t for t in self.archives.tasks if t not in r]
                if missing:
                    raise ValueError(f"candidate {c.id}: no score for tasks {missing}")
        statuses = [
            self._offer(c.id, c.vector, r, c.generation, f"child:{c.quality_task}", c.parents)
            for c, r in zip(candidates, results)
        ]
        self.evaluations += len(candidates)
        self.generation += 1
        self._asked = None
        self.last_statuses = statuses
        return statuses

    # -- the loop ------------------------------------------------------------------
    def run(
        self,
        evaluator: Evaluator,
        generations: int,
        *,
        after: Callable[[list[Candidate], list[Result], float], None] = lambda c, r, s: None,
        before: Callable[[int], None] = lambda generation: None,
        steady: bool = False,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """Evolve until ``generations``: ask, evaluate on the opt split, tell, then
        ``after(candidates, results, seconds)`` (where the caller logs, checkpoints, stops).

        ``steady=False``: a generation of ``children_per_generation`` at a time, evaluated
        with ``evaluator.map``. ``steady=True``: a new child whenever a worker frees
        (``evaluator.submit`` / ``next_result``; ``generations`` then counts children), none
        asked once ``stop()`` is true. ``before(generation)`` runs before each wait."""
        if steady:
            self._run_steady(evaluator, generations, after, before, stop)
            return
        while self.generation < generations:
            before(self.generation)
            t0 = time.perf_counter()
            candidates = self.ask()
            results = evaluator.map([(c.vector, "opt") for c in candidates])
            self.tell(candidates, results)
            after(candidates, results, time.perf_counter() - t0)

    def _run_steady(self, evaluator: Evaluator, generations: int, after, before, stop) -> None:
        for c in list(self.pending.values()):  # in flight when the last checkpoint was written
            evaluator.submit(c.id, c.vector, "opt")
        t0 = time.perf_counter()
        while self.generation < generations:
            while (
                not stop()
                and self.generation + len(self.pending) < generations
                and evaluator.in_flight < evaluator.num_workers
            ):
                c = self.ask_one()
                evaluator.submit(c.id, c.vector, "opt")
            before(self.generation)
            key, result = evaluator.next_result()
            c = self.pending[key]
            self.tell_one(c, result)
            now = time.perf_counter()
            after([c], [result], now - t0)
            t0 = now

    # -- checkpointing ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The loop's state as plain data (numbers, strings, arrays and tensors): the archives,
        both generators, the counters and the children in flight."""
        if self._asked is not None:
            raise RuntimeError("cannot checkpoint between ask() and tell()")
        return {
            "archives": self.archives.state_dict(),
            "rng": self.rng.bit_generator.state,
            "gen": self.gen.get_state().numpy(),
            "generation": self.generation,
            "next_id": self.next_id,
            "evaluations": self.evaluations,
            "failures": dict(self.failures),
            "consecutive_failures": self.consecutive_failures,
            # in flight at the checkpoint: evaluated again on resume
            "pending": [candidate_data(c) for c in self.pending.values()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.archives = CyclicArchives.from_state(state["archives"])
        self.rng.bit_generator.state = state["rng"]
        self.gen.set_state(torch.from_numpy(np.array(state["gen"], dtype=np.uint8)))
        self.generation = state["generation"]
        self.next_id = state["next_id"]
        self.evaluations = state["evaluations"]
        self.failures = Counter(state.get("failures", {}))
        self.consecutive_failures = state.get("consecutive_failures", 0)
        self.pending = {c.id: c for c in map(candidate_of, state.get("pending", []))}


def candidate_data(c: Candidate) -> dict[str, Any]:
    """A candidate as plain data: its child a genome (an array) or a task vector
    (``{"task_vector": {name: {"dense": t} | {"B": t, "A": t}}}``)."""
    x = c.vector
    if isinstance(x, TaskVector):
        x = {"task_vector": {n: {"B": d.B, "A": d.A} if isinstance(d, LowRank) else {"dense": d} for n, d in x.items()}}
    return {
        "id": c.id,
        "generation": c.generation,
        "quality_task": c.quality_task,
        "parents": list(c.parents),
        "vector": x,
        "operators": c.operators,
    }


def candidate_of(data: Mapping[str, Any]) -> Candidate:
    """The candidate that :func:`candidate_data` wrote."""
    x = data["vector"]
    if isinstance(x, Mapping):
        x = TaskVector({n: LowRank(d["B"], d["A"]) if "B" in d else d["dense"] for n, d in x["task_vector"].items()})
    return Candidate(
        data["id"], data["generation"], data["quality_task"], tuple(data["parents"]), x, dict(data.get("operators", {}))
    )
