"""The searches CycleQD is compared with, at the same budget of optimisation-split evaluations.

Both search the parameter space of Evolutionary Model Merge (Akiba et al., 2024) and
mergekit-evolve: one coefficient per expert and layer group,

    θ = θ0 + Σ_q Σ_g x[q, g] · τ_q[g]

(``g`` a transformer block, or a parameter outside the blocks), with the mean score
over the tasks on the optimisation split as the objective. The best candidate on that
split is the search's final model; the test split only reports it.

- ``cmaes``: CMA-ES (pyribs' :class:`~ribs.emitters.opt.CMAEvolutionStrategy`), started at
  ``x0`` everywhere with step ``sigma0``, candidates kept inside ``[low, high]``.
- ``random``: coefficients drawn uniformly from ``[low, high]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cycleqd.baselines import mean
from cycleqd.checks import check_fields, require
from cycleqd.crossover import layer_of
from cycleqd.protocols import Failure, Result
from cycleqd.taskvector import TaskVector, linear_combination

SEARCHES = ("cycleqd", "cmaes", "random")


@dataclass(frozen=True)
class Search:
    """Which search a run makes (``search=`` config group).

    Args:
        name: ``cycleqd`` (the archives and operators of the rest of the config), ``cmaes``
            or ``random`` (over per-layer merge coefficients of the experts).
        evaluations: Optimisation-split evaluations of a ``cmaes``/``random`` search. None: as
            many as CycleQD spends with the same config (the experts, every child, the
            final model's scales), so that a comparison is at equal budget.
        batch_size: Candidates per round (CMA-ES's population; None: pyribs' 4 + ⌊3 ln n⌋).
        sigma0: CMA-ES's initial step size.
        x0: CMA-ES's initial coefficient (every expert, every layer).
        low: Smallest coefficient.
        high: Largest coefficient.
    """

    name: str = "cycleqd"
    evaluations: int | None = None
    batch_size: int | None = None
    sigma0: float = 0.2
    x0: float = 0.5
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.name in SEARCHES, "name", f"must be one of {list(SEARCHES)}, got {self.name!r}")
        require(self.evaluations is None or self.evaluations >= 1, "evaluations", f"must be >= 1 or null, got {self.evaluations}")
        require(self.batch_size is None or self.batch_size >= 2, "batch_size", f"must be >= 2 or null, got {self.batch_size}")
        require(self.sigma0 > 0, "sigma0", f"must be > 0, got {self.sigma0}")
        require(self.low < self.high, "low", f"must be below high, got low={self.low}, high={self.high}")
        require(self.low <= self.x0 <= self.high, "x0", f"must be in [low, high] = [{self.low}, {self.high}], got {self.x0}")

    def budget(self, n_tasks: int, generations: int, children_per_generation: int, final_evaluations: int) -> int:
        """This search's evaluations: its own, or CycleQD's with the same settings
        (``final_evaluations``: those of CycleQD's final step, :attr:`FinalSpec.opt_evaluations`)."""
        if self.evaluations is not None:
            return self.evaluations
        return n_tasks + generations * children_per_generation + final_evaluations


class LayerCoefficients:
    """The coordinates ``x[q, g]`` and the model they stand for (a genome when the run's
    elites are genomes, else a task vector).

    Args:
        tasks: The experts' tasks, in the run's order.
        experts: Each task's expert task vector.
        basis: The experts' bases (:class:`cycleqd.genome.Basis`) when children are genomes.
    """

    def __init__(self, tasks: Sequence[str], experts: Mapping[str, TaskVector], basis: Any = None) -> None:
        self.tasks, self.experts, self.basis = list(tasks), experts, basis
        self.groups = list(dict.fromkeys(layer_of(n) for q in self.tasks for n in experts[q]))
        self.dim = len(self.tasks) * len(self.groups)
        self._col = {g: j for j, g in enumerate(self.groups)}

    def child(self, x: np.ndarray) -> Any:
        x = np.asarray(x, dtype=np.float64).reshape(len(self.tasks), len(self.groups))
        if self.basis is not None:
            c = np.zeros(self.basis.length, dtype=np.float32)
            row = {q: i for i, q in enumerate(self.tasks)}
            for b in self.basis.blocks:
                c[b.start : b.stop] = x[row[b.task], self._col[layer_of(b.name)]]
            return c
        weights = [{n: float(x[i, self._col[layer_of(n)]]) for n in self.experts[q]} for i, q in enumerate(self.tasks)]
        return linear_combination([self.experts[q] for q in self.tasks], weights)

    def describe(self, x: np.ndarray) -> dict[str, dict[str, float]]:
        """``x`` as task → layer group → coefficient (what a summary records)."""
        x = np.asarray(x, dtype=np.float64).reshape(len(self.tasks), len(self.groups))
        return {q: {g: round(float(x[i, j]), 6) for j, g in enumerate(self.groups)} for i, q in enumerate(self.tasks)}


def run_search(
    search: Search,
    space: LayerCoefficients,
    scores: Callable[[list[tuple[Any, str]]], list[Result]],
    budget: int,
    seed: int,
    on_batch: Callable[[dict], None] = lambda m: None,
) -> tuple[np.ndarray, Result, dict]:
    """Spend ``budget`` evaluations; returns the best coefficients on the optimisation split,
    their scores, and counts. ``on_batch`` gets each round's metrics (for the run's log)."""
    from ribs.emitters.opt import CMAEvolutionStrategy

    rng = np.random.default_rng(seed)
    batch = search.batch_size or 4 + int(3 * math.log(space.dim))
    es = None
    if search.name == "cmaes":
        es = CMAEvolutionStrategy(search.sigma0, space.dim, batch_size=batch, seed=seed, lower_bounds=search.low, upper_bounds=search.high)
        es.reset(np.full(space.dim, search.x0))
    best_x, best_result, best_value = None, None, -math.inf
    done, failures, rounds = 0, 0, 0
    while done < budget:
        n = min(batch, budget - done)
        xs = es.ask()[:n] if es is not None else rng.uniform(search.low, search.high, size=(n, space.dim))
        results = scores([(space.child(x), "opt") for x in xs])
        values = np.array([-1.0 if isinstance(r, Failure) else mean(r) for r in results])  # a failure ranks last
        failed = sum(isinstance(r, Failure) for r in results)
        failures += failed
        if es is not None and n == batch:  # a partial last round is not told: CMA-ES ranks whole populations
            order = np.argsort(-values, kind="stable")
            es.tell(order, values[order], num_parents=batch // 2)
        i = int(np.argmax(values))
        if values[i] > best_value:
            best_x, best_result, best_value = np.array(xs[i]), results[i], float(values[i])
        done += n
        rounds += 1
        on_batch({"evaluations": done, "best_opt_mean": best_value, "batch_opt_mean": float(values.mean()), "failed": failed})
    return best_x, best_result, {"evaluations": done, "rounds": rounds, "batch_size": batch, "failed_evaluations": failures}
