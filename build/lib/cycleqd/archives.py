"""CyclicArchives: one pyribs ``GridArchive`` per task, with the quality task cycling.

In archive ``k`` the objective is task ``k``'s score and the measures are the
other tasks' scores, in task order. pyribs holds each elite's id (its solution)
and all K scores; the weights live in the elite store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from ribs.archives import GridArchive

from cycleqd.checks import matches, require
from cycleqd.protocols import Measure


MAX_CELLS = 1_000_000  # per archive: a GridArchive allocates every cell up front


@dataclass(frozen=True)
class ElitePick:
    """A sampled parent: its elite id and its row in the quality archive."""

    id: int
    objective: float
    scores: tuple[float, ...]


class CyclicArchives:
    """K MAP-Elites grids over the same population, one per task as quality.

    Args:
        tasks: Task names, in a fixed order.
        measures: Each task's descriptor axis (range and bins), used in the other archives.
        sampling: ``"elite"`` (the paper's normalised, biased sampling) or ``"uniform"`` (ablation).
        alpha: ``(α_low, α_high)``, the range that the sampling normalises values into.
        seed: Seed of the archives' own RNG (pyribs).

    Raises:
        ValueError: fewer than two tasks, a task without a measure, or a bad ``alpha``.
    """

    def __init__(
        self,
        *,
        tasks: Sequence[str],
        measures: Mapping[str, Measure],
        sampling: str = "elite",
        alpha: tuple[float, float] = (0.5, 0.8),
        seed: int | None = None,
    ) -> None:
        if len(tasks) < 2:
            raise ValueError(f"CycleQD needs at least 2 tasks, got {list(tasks)}")
        missing = [t for t in tasks if t not in measures]
        if missing:
            raise ValueError(f"no measure range for tasks {missing}")
        require(sampling in ("elite", "uniform"), "sampling", f"must be 'elite' or 'uniform', got {sampling!r}")
        require(
            matches(alpha, tuple[float, ...]) and len(alpha) == 2 and 0 < alpha[0] <= alpha[1],
            "alpha",
            f"must be [low, high] with 0 < low <= high, got {alpha!r}",
        )
        lo, hi = alpha
        for task in tasks:
            others = self.descriptors_of(tasks, task)
            cells = int(np.prod([measures[t].bins for t in others], dtype=object))
            require(
                cells <= MAX_CELLS,
                "",
                f"the archive of {task!r} would have {cells:,} cells ({' × '.join(f'task.{t}.measure.bins={measures[t].bins}' for t in others)}); "
                f"pyribs allocates every cell, at most {MAX_CELLS:,}",
            )
        self.tasks = list(tasks)
        self.measures = dict(measures)
        self.sampling = sampling
        self.alpha = (float(lo), float(hi))
        self.archives: dict[str, GridArchive] = {}
        for k, task in enumerate(self.tasks):
            others = [self.measures[t] for t in self.descriptors(task)]
            self.archives[task] = GridArchive(
                solution_dim=1,
                dims=[m.bins for m in others],
                ranges=[(m.low, m.high) for m in others],
                seed=None if seed is None else seed + k,
                solution_dtype=np.float64,
                extra_fields={"scores": ((len(self.tasks),), np.float64), "generation": ((), np.int64)},
            )

    @property
    def K(self) -> int:
        return len(self.tasks)

    def descriptors(self, task: str) -> list[str]:
        """The tasks whose scores are the measures of ``task``'s archive."""
        return self.descriptors_of(self.tasks, task)

    @staticmethod
    def descriptors_of(tasks: Sequence[str], task: str) -> list[str]:
        return [t for t in tasks if t != task]

    def quality_task(self, generation: int) -> str:
        """Generation ``g`` takes its parents from archive ``g mod K``."""
        return self.tasks[generation % self.K]

    def add(self, elite_id: int, scores: Mapping[str, float], generation: int) -> dict[str, int]:
        """Offer one evaluated model to every archive; returns pyribs' add status per archive.

        Measures are clipped into each axis' range, so a score past the range lands in
        the edge cell instead of being dropped.
        """
        vec = np.array([scores[t] for t in self.tasks], dtype=np.float64)
        status = {}
        for task, archive in self.archives.items():
            meas = np.array([scores[t] for t in self.descriptors(task)], dtype=np.float64)
            lower, upper = archive.lower_bounds, archive.upper_bounds
            meas = np.clip(meas, lower, np.nextafter(upper, lower))
            res = archive.add(
                solution=[[float(elite_id)]],
                objective=[scores[task]],
                measures=[meas],
                scores=[vec],
                generation=[generation],
            )
            status[task] = int(res["status"][0])
        return status

    def sample_parents(self, task: str, n: int, rng: np.random.Generator) -> list[ElitePick]:
        """Draw ``n`` distinct elites of ``task``'s archive (fewer only if it holds fewer).

        ``"elite"`` sampling: probability ∝ Π norm(v) over the elite's quality and each of
        its descriptor cell indices, ``norm`` min-max scaling into ``[α_low, α_high]``
        (1 where all values are equal).
        """
        archive = self.archives[task]
        data = archive.data()
        if len(data["index"]) == 0:
            raise RuntimeError(f"archive {task!r} is empty: seed it with the experts first")
        if self.sampling == "uniform":
            p = np.full(len(data["index"]), 1 / len(data["index"]))
        else:
            cells = np.atleast_2d(archive.int_to_grid_index(data["index"]))
            columns = [data["objective"]] + [cells[:, j] for j in range(cells.shape[1])]
            p = np.prod([self._norm(np.asarray(c, dtype=np.float64)) for c in columns], axis=0)
            p = p / p.sum()
        k = min(n, len(p))
        chosen = rng.choice(len(p), size=k, replace=False, p=p)
        return [
            ElitePick(
                id=int(data["solution"][i][0]),
                objective=float(data["objective"][i]),
                scores=tuple(float(x) for x in data["scores"][i]),
            )
            for i in chosen
        ]

    def _norm(self, v: np.ndarray) -> np.ndarray:
        lo, hi = self.alpha
        span = v.max() - v.min()
        if span == 0:
            return np.ones_like(v)
        return lo + (hi - lo) * (v - v.min()) / span

    def alive_ids(self) -> set[int]:
        return {int(s[0]) for a in self.archives.values() for s in a.data("solution")}

    def best(self, task: str) -> ElitePick:
        a = self.archives[task]
        b = a.best_elite
        if b is None:
            raise RuntimeError(f"archive {task!r} is empty")
        return ElitePick(id=int(b["solution"][0]), objective=float(b["objective"]), scores=tuple(float(x) for x in b["scores"]))

    def stats(self) -> dict[str, dict[str, float]]:
        """Per archive: coverage, QD score (sum of elite objectives), best objective, elite count."""
        out = {}
        for task, a in self.archives.items():
            s = a.stats
            out[task] = {
                "coverage": float(s.coverage),
                "qd_score": float(s.qd_score),
                "best": float(s.obj_max) if s.num_elites else 0.0,
                "num_elites": int(s.num_elites),
            }
        return out
