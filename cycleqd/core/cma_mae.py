"""CMA-MAE (Fontaine & Nikolaidis, "Covariance Matrix Adaptation MAP-Annealing", GECCO 2023)
over the comparison searches' per-layer expert coefficients, as pyribs builds it: a
``Scheduler`` of ``EvolutionStrategyEmitter`` objects with the improvement ranker (``imp``), over an
archive whose cell thresholds anneal with a learning rate, and a second, plain archive of the
best model per cell.

One archive of the mean opt score over the task scores as measures (every task an axis, its
range and bins from ``task.<name>.measure``). CycleQD's cycling instead keeps K archives with
one task as quality each; here the emitters optimise the mean, the objective every final model
is judged on, while the improvement ranker spreads them over the trade-offs between the tasks,
which is what CMA-MAE adds to CMA-ES. The final model is the best candidate on the mean, as
for CMA-ES.

A checkpoint keeps every round's candidates, objectives and measures (kilobytes); a resumed
search builds the scheduler again from its seed and tells it those rounds once more, which
puts every emitter, its CMA-ES and both archives where they were, with no evaluation, and
checks on the way that it asks for the same candidates.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from cycleqd.core.searches import CoefficientSearch, Search, objective_values
from cycleqd.protocols import Failure, Measure, Result


class CmaMae(CoefficientSearch):
    """CMA-MAE's loop of ask and tell (:class:`~cycleqd.core.searches.CoefficientSearch`'s interface).

    Args:
        search: Its settings (``emitters``, ``batch_size`` each, ``sigma0``, ``x0``, ``low``,
            ``high``, ``learning_rate``, ``threshold_min``).
        dim: The number of coefficients.
        budget: Evaluations to spend.
        seed: Seeds the emitters (emitter ``i``: ``seed + i``) and the archives.
        measures: Task → its measure, in the run's order (the archive's axes).
    """

    def __init__(self, search: Search, dim: int, budget: int, seed: int, measures: Mapping[str, Measure]) -> None:
        from ribs.archives import GridArchive
        from ribs.emitters import EvolutionStrategyEmitter
        from ribs.schedulers import Scheduler

        super().__init__(search, dim, budget, seed)
        self.per_emitter = self.batch
        self.batch = search.emitters * self.per_emitter
        self.tasks = list(measures)
        self.axes = [m.axis for m in measures.values()]
        grid = {"solution_dim": dim, "dims": [m.bins for m in measures.values()], "ranges": self.axes, "seed": seed}
        self.archive = GridArchive(**grid, learning_rate=search.learning_rate, threshold_min=search.threshold_min)
        self.result_archive = GridArchive(**grid)
        emitters = [
            EvolutionStrategyEmitter(
                self.archive,
                x0=np.full(dim, search.x0),
                sigma0=search.sigma0,
                ranker="imp",
                selection_rule="mu",
                restart_rule="basic",
                lower_bounds=np.full(dim, search.low),
                upper_bounds=np.full(dim, search.high),
                batch_size=self.per_emitter,
                seed=seed + i,
            )
            for i in range(search.emitters)
        ]
        self.scheduler = Scheduler(self.archive, emitters, result_archive=self.result_archive)
        self.told: list[dict[str, np.ndarray]] = []

    def ask(self) -> np.ndarray:
        """The emitters' next candidates, fewer when the budget ends (that last round is not
        told: a CMA-ES ranks whole populations)."""
        return np.asarray(self.scheduler.ask())[: min(self.batch, self.budget - self.done)]

    def objective_and_measures(self, results: Sequence[Result]) -> tuple[np.ndarray, np.ndarray]:
        """Each result's mean score and task scores (clipped into the axes); a failure's objective
        lies below every threshold and its measures at the axes' low ends."""
        objective = objective_values(results)
        objective[objective < 0] = self.search.threshold_min - 1.0
        low, high = np.array(self.axes).T
        measures = np.array(
            [low if isinstance(r, Failure) else np.clip([r[t] for t in self.tasks], low, high) for r in results],
            dtype=np.float64,
        )
        return objective, measures

    def tell(self, xs: np.ndarray, results: Sequence[Result]) -> dict:
        if len(xs) == self.batch:
            objective, measures = self.objective_and_measures(results)
            self.scheduler.tell(objective, measures)
            self.told.append({"x": np.asarray(xs, dtype=np.float64), "objective": objective, "measures": measures})
        return {**self.track(xs, results, objective_values(results)), "archive_cells": len(self.result_archive)}

    def state_dict(self) -> dict[str, Any]:
        told = {
            k: np.concatenate([r[k] for r in self.told]) if self.told else np.zeros(0)
            for k in ("x", "objective", "measures")
        }
        return {**super().state_dict(), "es": None, "told": told}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict({**state, "es": None})
        told = state["told"]
        for start in range(0, len(told["objective"]), self.batch):
            xs = np.asarray(self.scheduler.ask())
            want = np.asarray(told["x"][start : start + self.batch])
            if xs.shape != want.shape or not np.allclose(xs, want, rtol=0, atol=1e-12):
                raise ValueError(f"the checkpoint's search asked for other candidates at evaluation {start}")
            objective, measures = (np.asarray(told[k][start : start + self.batch]) for k in ("objective", "measures"))
            self.scheduler.tell(objective, measures)
            self.told.append({"x": want, "objective": objective, "measures": measures})
