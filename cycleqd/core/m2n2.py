"""M2N2 (Abrantes, Lange & Tang, "Competition and Attraction Improve Model Fusion", GECCO 2025;
code: SakanaAI/natural_niches) over the comparison searches' per-layer expert coefficients.

A population of fixed size; every opt item is a resource the population competes for. With
``s[i, j]`` model ``i``'s score on item ``j`` (every task's items together) and ``α`` the
competition,

    z_j = (Σ_i s[i, j])^α        f[i, j] = s[i, j] / z_j        fitness_i = Σ_j f[i, j]

(``z_j = 1`` where no model scores on item ``j``), so an item many models solve is worth little
to each, and one only a few solve is worth much (:func:`shared_fitness`). Each child:

- its first parent drawn in proportion to fitness; its second by *attraction* to the first,
  in proportion to ``Σ_j max(0, f[i, j] − f[first, j])``: where it gains the resources the
  first parent lacks;
- split-point crossover over the layer stack: a split point drawn among the layer groups and a
  mixing ratio ``w ~ U(0, 1)``; before the split the child is ``(1 − w)·A + w·B``, after it
  ``w·A + (1 − w)·B``;
- it joins the population, fitness is shared again over the population and the child, and the
  least fit of them leaves (the child itself, if it is the least fit).

The population starts as the reference code's does: empty places that hold no model and score
nothing, into which the experts (coefficient 1 on one expert's every layer group) go first.

Departures from the reference code, each because of the space searched here: the crossover is
linear in the coefficients, where the reference takes a spherical interpolation (slerp) of
the flattened weights; a model here is linear in its coefficients, and slerp would need every
weight of both parents; and a round may breed several children from one population
(``batch_size``; 1, the reference's, by default). Where every fitness is 0 the first parent is
drawn uniformly among the models, and where no model attracts, the second by fitness (the
reference divides by 0 there). The final model is the best candidate on the mean opt score,
as every comparison search's is.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from cycleqd.core.searches import CoefficientSearch, Search, objective_values
from cycleqd.protocols import Failure, Result


def shared_fitness(scores: np.ndarray, competition: float) -> tuple[np.ndarray, np.ndarray]:
    """Each model's fitness under competition for the items, and the shared scores ``f[i, j]``
    it sums (``scores``: models × items)."""
    scores = np.asarray(scores, dtype=np.float64)
    z = scores.sum(axis=0)
    z = np.where(z != 0, z, 1.0) ** competition
    shared = scores / z[None, :]
    return shared.sum(axis=1), shared


class M2N2(CoefficientSearch):
    """M2N2's loop of ask and tell (:class:`~cycleqd.core.searches.CoefficientSearch`'s interface).

    Args:
        search: Its settings (``population``, ``competition``, ``batch_size``).
        tasks: The experts' tasks, in the run's order (the coefficients' rows).
        groups: Layer groups, in the model's order (the coefficients' columns: the layer stack).
        budget: Evaluations to spend, the experts' among them.
        seed: Seeds parent choice and crossover.
    """

    def __init__(self, search: Search, tasks: Sequence[str], groups: int, budget: int, seed: int) -> None:
        super().__init__(search, len(tasks) * groups, budget, seed)
        self.tasks, self.groups = list(tasks), groups
        self.batch = search.batch_size or 1
        self.seeds = np.kron(np.eye(len(tasks)), np.ones(groups))  # expert q: 1 on its every layer group
        self.pop_x = np.zeros((search.population, self.dim))
        self.pop_s = np.zeros((search.population, 0))  # items: known from the first result
        self.held = np.zeros(search.population, dtype=bool)  # the places that hold a model
        self.seeded = 0

    def ask(self) -> np.ndarray:
        left = self.budget - self.done
        if self.seeded < len(self.seeds):
            return self.seeds[self.seeded :][:left]
        return np.stack([self.child() for _ in range(min(self.batch, left))])

    def parents(self) -> tuple[int, int]:
        """The first parent by fitness, the second by attraction to it (population rows)."""
        fitness, shared = shared_fitness(self.pop_s, self.search.competition)
        n = len(fitness)
        probs = fitness / fitness.sum() if fitness.sum() > 0 else self.held / self.held.sum()
        first = int(self.rng.choice(n, p=probs))
        attraction = np.maximum(0.0, shared - shared[first]).sum(axis=1)
        second = int(self.rng.choice(n, p=attraction / attraction.sum() if attraction.sum() > 0 else probs))
        return first, second

    def child(self) -> np.ndarray:
        """Split-point crossover of two parents over the layer stack."""
        first, second = self.parents()
        a, b = (self.pop_x[i].reshape(len(self.tasks), self.groups) for i in (first, second))
        split = int(self.rng.integers(0, self.groups))
        w = float(self.rng.uniform())
        mix = np.where(np.arange(self.groups) < split, w, 1.0 - w)[None, :]
        return ((1.0 - mix) * a + mix * b).reshape(-1)

    def items(self, result: Result) -> np.ndarray | None:
        """A result's per-item opt scores, every task's in order (None for a failure)."""
        if isinstance(result, Failure):
            return None
        per_item = getattr(result, "per_item", None) or {}
        missing = [t for t in self.tasks if t not in per_item]
        if missing:
            raise ValueError(
                f"search=m2n2 shares fitness over the opt items, and task {missing[0]!r} gives no per-item results"
            )
        return np.concatenate([np.asarray(per_item[t], dtype=np.float64) for t in self.tasks])

    def join(self, x: np.ndarray, s: np.ndarray) -> None:
        """``x`` (scored ``s``) joins the population; the least fit of them all leaves."""
        if self.pop_s.shape[1] == 0:
            self.pop_s = np.zeros((len(self.pop_x), len(s)))
        fitness, _ = shared_fitness(np.vstack([self.pop_s, s[None, :]]), self.search.competition)
        worst = int(np.argmin(fitness))
        if worst < len(self.pop_x):
            self.pop_x[worst], self.pop_s[worst], self.held[worst] = x, s, True

    def tell(self, xs: np.ndarray, results: Sequence[Result]) -> dict:
        scored = [self.items(r) for r in results]
        width = next((len(s) for s in scored if s is not None), self.pop_s.shape[1])
        for x, s in zip(xs, scored):  # a failure scores nothing: it joins only an empty place
            self.join(np.asarray(x, dtype=np.float64), np.zeros(width) if s is None else s)
        if self.seeded < len(self.seeds):
            self.seeded += len(xs)
        return self.track(xs, results, objective_values(results))

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "pop_x": self.pop_x,
            "pop_s": self.pop_s,
            "held": self.held,
            "seeded": self.seeded,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.pop_x, self.pop_s = np.array(state["pop_x"]), np.array(state["pop_s"])
        self.held = np.array(state["held"], dtype=bool)
        self.seeded = int(state["seeded"])
