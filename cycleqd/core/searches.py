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
- ``cma_mae``: CMA-MAE (Fontaine & Nikolaidis, 2023), pyribs' ``Scheduler`` of
  ``EvolutionStrategyEmitter`` objects ranked by improvement over an archive with a learning rate
  (:mod:`cycleqd.core.cma_mae`): CMA-ES's efficiency with an archive of trade-offs.
- ``m2n2``: M2N2 (Abrantes et al., 2025; :mod:`cycleqd.core.m2n2`): a fixed population whose
  fitness is shared by competition for each opt item, mates chosen by attraction, split-point
  crossover over the layer stack.

Each is a loop of ask and tell (:class:`CoefficientSearch`, or one built on it), whose state a
checkpoint keeps, so a resumed search ends where an uninterrupted one ends.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cycleqd.checks import check_fields, require
from cycleqd.core.crossover import layer_of
from cycleqd.core.taskvector import TaskVector, linear_combination
from cycleqd.protocols import Failure, Result, mean_score, result_data, result_of

SEARCHES = ("cycleqd", "cmaes", "random", "cma_mae", "m2n2")


@dataclass(frozen=True)
class Search:
    """Which search a run makes (``search=`` config group).

    Args:
        name: ``cycleqd`` (the archives and operators of the rest of the config), or a search
            over per-layer merge coefficients of the experts: ``cmaes``, ``random``,
            ``cma_mae``, ``m2n2``.
        evaluations: Optimisation-split evaluations of a ``cmaes``/``random`` search. None: as
            many as CycleQD spends with the same config (the experts, every child, the
            final model's scales), so that a comparison is at equal budget.
        batch_size: Candidates per round (CMA-ES's population, each CMA-MAE emitter's; None:
            pyribs' 4 + ⌊3 ln n⌋; M2N2's children per round, None: 1).
        sigma0: CMA-ES's (and each CMA-MAE emitter's) initial step size.
        x0: CMA-ES's initial coefficient (every expert, every layer).
        low: Smallest coefficient.
        high: Largest coefficient.
        emitters: CMA-MAE's emitters.
        learning_rate: CMA-MAE's archive learning rate α (1: CMA-ME's elitism; 0: CMA-ES's
            pure optimisation).
        threshold_min: CMA-MAE's initial cell threshold.
        population: M2N2's population size.
        competition: M2N2's α: each item's resource is shared in proportion to the
            population's total score on it raised to α (0: no sharing, a plain GA).
    """

    name: str = "cycleqd"
    evaluations: int | None = None
    batch_size: int | None = None
    sigma0: float = 0.2
    x0: float = 0.5
    low: float = 0.0
    high: float = 1.0
    emitters: int = 1
    learning_rate: float = 0.01
    threshold_min: float = 0.0
    population: int = 20
    competition: float = 1.0

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.name in SEARCHES, "name", f"must be one of {list(SEARCHES)}, got {self.name!r}")
        require(
            self.evaluations is None or self.evaluations >= 1,
            "evaluations",
            f"must be >= 1 or null, got {self.evaluations}",
        )
        require(
            self.batch_size is None or self.batch_size >= 2,
            "batch_size",
            f"must be >= 2 or null, got {self.batch_size}",
        )
        require(self.sigma0 > 0, "sigma0", f"must be > 0, got {self.sigma0}")
        require(self.low < self.high, "low", f"must be below high, got low={self.low}, high={self.high}")
        require(
            self.low <= self.x0 <= self.high, "x0", f"must be in [low, high] = [{self.low}, {self.high}], got {self.x0}"
        )
        require(self.emitters >= 1, "emitters", f"must be >= 1, got {self.emitters}")
        require(0 <= self.learning_rate <= 1, "learning_rate", f"must be in [0, 1], got {self.learning_rate}")
        require(self.population >= 2, "population", f"must be >= 2, got {self.population}")
        require(self.competition >= 0, "competition", f"must be >= 0, got {self.competition}")

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
        basis: The experts' bases (:class:`cycleqd.core.genome.Basis`) when children are genomes.
        origin: A model the coordinates are added to (a genome or a task vector, as the
            children are; None: the base model), for a search around it.
    """

    def __init__(
        self, tasks: Sequence[str], experts: Mapping[str, TaskVector], basis: Any = None, origin: Any = None
    ) -> None:
        self.tasks, self.experts, self.basis, self.origin = list(tasks), experts, basis, origin
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
            return c if self.origin is None else (self.origin.astype(np.float64) + c).astype(np.float32)
        weights = [{n: float(x[i, self._col[layer_of(n)]]) for n in self.experts[q]} for i, q in enumerate(self.tasks)]
        if self.origin is None:
            return linear_combination([self.experts[q] for q in self.tasks], weights)
        return linear_combination([self.origin, *(self.experts[q] for q in self.tasks)], [1.0, *weights])

    def describe(self, x: np.ndarray) -> dict[str, dict[str, float]]:
        """``x`` as task → layer group → coefficient (what a summary records)."""
        x = np.asarray(x, dtype=np.float64).reshape(len(self.tasks), len(self.groups))
        return {q: {g: round(float(x[i, j]), 6) for j, g in enumerate(self.groups)} for i, q in enumerate(self.tasks)}


class CoefficientSearch:
    """CMA-ES or random search over ``dim`` coefficients, one round of candidates at a time
    (ask, evaluate, tell), with a state that a checkpoint keeps: a resumed search continues
    with the same draws and ends where an uninterrupted one ends.

    Args:
        search: Its settings.
        dim: The number of coefficients.
        budget: Evaluations to spend (may grow on resume).
        seed: Seeds CMA-ES and the random draws.
    """

    def __init__(self, search: Search, dim: int, budget: int, seed: int) -> None:
        from ribs.emitters.opt import CMAEvolutionStrategy

        self.search, self.dim, self.budget = search, dim, budget
        self.batch = search.batch_size or 4 + int(3 * math.log(dim))
        self.rng = np.random.default_rng(seed)
        self.es = None
        if search.name == "cmaes":
            self.es = CMAEvolutionStrategy(
                search.sigma0, dim, batch_size=self.batch, seed=seed, lower_bounds=search.low, upper_bounds=search.high
            )
            self.es.reset(np.full(dim, search.x0))
        self.best_x: np.ndarray | None = None
        self.best_result: Result | None = None
        self.best_value = -math.inf
        self.done = self.failures = self.rounds = 0

    @property
    def finished(self) -> bool:
        return self.done >= self.budget

    def ask(self) -> np.ndarray:
        """The next round's candidates (fewer than a population when the budget ends)."""
        n = min(self.batch, self.budget - self.done)
        if self.es is not None:
            return np.asarray(self.es.ask()[:n])
        return self.rng.uniform(self.search.low, self.search.high, size=(n, self.dim))

    def tell(self, xs: np.ndarray, results: Sequence[Result]) -> dict:
        """Record a round's results; returns its metrics (for the run's log)."""
        values = objective_values(results)
        if (
            self.es is not None and len(xs) == self.batch
        ):  # a partial last round is not told: CMA-ES ranks whole populations
            order = np.argsort(-values, kind="stable")
            self.es.tell(order, values[order], num_parents=self.batch // 2)
        return self.track(xs, results, values)

    def track(self, xs: np.ndarray, results: Sequence[Result], values: np.ndarray) -> dict:
        """Count a round and keep its best candidate; returns the round's metrics."""
        failed = sum(isinstance(r, Failure) for r in results)
        i = int(np.argmax(values))
        if values[i] > self.best_value:
            self.best_x, self.best_result, self.best_value = np.array(xs[i]), results[i], float(values[i])
        self.done += len(xs)
        self.failures += failed
        self.rounds += 1
        return {
            "evaluations": self.done,
            "best_opt_mean": self.best_value,
            "batch_opt_mean": float(values.mean()),
            "failed": failed,
        }

    def counts(self) -> dict:
        return {
            "evaluations": self.done,
            "rounds": self.rounds,
            "batch_size": self.batch,
            "failed_evaluations": self.failures,
        }

    _COUNTS = ("best_value", "done", "failures", "rounds")

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed search needs, as plain data: CMA-ES's distribution and
        generator, the random draws' generator, the best so far and the counts (settings come
        from the config; the shape is kept to refuse a config that does not fit)."""
        return {
            "name": self.search.name,
            "dim": self.dim,
            "batch": self.batch,
            "rng": self.rng.bit_generator.state,
            "es": None if self.es is None else cma_es_state(self.es),
            "best_x": self.best_x,
            "best_result": None if self.best_result is None else result_data(self.best_result),
            **{k: getattr(self, k) for k in self._COUNTS},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, mine in (("name", self.search.name), ("dim", self.dim), ("batch", self.batch)):
            if state[key] != mine:
                raise ValueError(f"the checkpoint's search has {key}={state[key]!r}, this config {mine!r}")
        self.rng.bit_generator.state = state["rng"]
        if self.es is not None:
            load_cma_es_state(self.es, state["es"])
        self.best_x = None if state["best_x"] is None else np.asarray(state["best_x"])
        self.best_result = None if state["best_result"] is None else result_of(state["best_result"])
        for k in self._COUNTS:
            setattr(self, k, state[k])


def objective_values(results: Sequence[Result]) -> np.ndarray:
    """Each result's mean score, −1 for a failure (which ranks below every model)."""
    return np.array([-1.0 if isinstance(r, Failure) else mean_score(r) for r in results])


# pyribs' CMAEvolutionStrategy (0.12): what ask and tell change; the rest is its settings.
_CMA_ES_FIELDS = ("current_eval", "mean", "sigma", "pc", "ps")
_COVARIANCE_FIELDS = ("cov", "eigenbasis", "eigenvalues", "condition_number", "invsqrt", "updated_eval")


def cma_es_state(es: Any) -> dict[str, Any]:
    """A pyribs CMA-ES's distribution and generator as plain data."""
    return {
        **{k: getattr(es, k) for k in _CMA_ES_FIELDS},
        "covariance": {k: getattr(es.cov, k) for k in _COVARIANCE_FIELDS},
        "rng": es._rng.bit_generator.state,
    }


def load_cma_es_state(es: Any, state: Mapping[str, Any]) -> None:
    """Put :func:`cma_es_state`'s data into ``es``, a CMA-ES of the same dimension that was reset."""
    for k in _CMA_ES_FIELDS:
        v = state[k]
        setattr(es, k, np.array(v, dtype=es.dtype) if isinstance(v, np.ndarray) else v)
    for k in _COVARIANCE_FIELDS:
        v = state["covariance"][k]
        setattr(es.cov, k, np.array(v, dtype=es.dtype) if isinstance(v, np.ndarray) else v)
    es._rng.bit_generator.state = state["rng"]


def drive(
    loop: CoefficientSearch,
    space: LayerCoefficients,
    scores: Callable[[list[tuple[Any, str]]], list[Result]],
    *,
    on_round: Callable[[dict, np.ndarray, list[Result]], None] = lambda m, xs, rs: None,
    before: Callable[[int], None] = lambda done: None,
) -> tuple[np.ndarray | None, Result | None, dict]:
    """Every search's loop: rounds of ask, evaluate on the optimisation split, tell, until
    ``loop``'s budget is spent. ``on_round(metrics, xs, results)`` gets each round's metrics
    (with its ``seconds``), candidates and results after the tell, where a run records, logs,
    checkpoints and stops; ``before(done)``
    runs before each round. Returns the best coefficients, their scores, and counts."""
    while not loop.finished:
        before(loop.done)
        t0 = time.perf_counter()
        xs = loop.ask()
        results = scores([(space.child(x), "opt") for x in xs])
        m = loop.tell(xs, results)
        on_round({**m, "seconds": time.perf_counter() - t0}, xs, results)
    return loop.best_x, loop.best_result, loop.counts()


def run_search(
    search: Search,
    space: LayerCoefficients,
    scores: Callable[[list[tuple[Any, str]]], list[Result]],
    budget: int,
    seed: int,
    on_batch: Callable[[dict], None] = lambda m: None,
) -> tuple[np.ndarray | None, Result | None, dict]:
    """A fresh search of ``budget`` evaluations (:func:`drive`); ``on_batch`` gets each round's metrics."""
    loop = CoefficientSearch(search, space.dim, budget, seed)
    return drive(loop, space, scores, on_round=lambda m, xs, rs: on_batch(m))
