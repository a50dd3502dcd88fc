"""CyclicArchives: one pyribs archive per task, with the quality task cycling.

In archive ``k`` the objective is task ``k``'s score and the measures are the
other tasks' scores, in task order. pyribs holds each elite's id (its solution)
and all K scores; the weights live in the elite store.

The archive kind sets how the K−1 descriptors are tessellated: ``grid`` (the paper's
``GridArchive``, bins per axis: 15^(K−1) cells), ``cvt`` (``CVTArchive``, a fixed number
of Voronoi cells however many tasks) or ``dns`` (``DNSArchive``, Dominated Novelty Search:
a population of fixed size and no cells at all).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from ribs.archives import CVTArchive, DNSArchive, GridArchive, k_means_centroids

from cycleqd.checks import matches, require
from cycleqd.protocols import Measure

MAX_CELLS = 1_000_000  # per archive: a GridArchive allocates every cell up front
# Each kind's own settings (beyond sampling, alpha, quality).
OPTIONS = {"grid": (), "cvt": ("cells", "samples"), "dns": ("capacity", "k_neighbors")}
KINDS = tuple(OPTIONS)


@dataclass(frozen=True)
class ArchiveSpec:
    """The archives as the config states them (``archive=grid``, ``cvt`` or ``dns``; each value
    is set in its file under ``conf/archive/``): :meth:`build` makes them for a run's tasks.

    Args:
        kind: ``grid``, ``cvt`` or ``dns`` (see the module's docstring).
        sampling: ``elite`` (the paper's biased parent sampling) or ``uniform``.
        alpha: ``[α_low, α_high]`` of the sampling's min-max normalisation.
        quality: ``task`` (the paper's cycling) or ``mean`` (ablation).
        edges: grid: where a score exactly on the edge between two bins goes: ``upper`` (pyribs)
            or ``lower`` (the reference code).
        cycle_offset: generation ``g`` draws its parents from archive ``(g + cycle_offset) mod K``
            (0: the first listed task first; 1: the reference code's order).
        cells: cvt: Voronoi cells per archive.
        samples: cvt: the points k-means clusters into the cells.
        capacity: dns: models per archive.
        k_neighbors: dns: fitter neighbours a model's novelty is averaged over.
    """

    kind: str
    sampling: str
    alpha: tuple[float, float]
    quality: str
    # Defaults for the configs of runs made before these two existed (they bin and cycle so).
    edges: str = "upper"
    cycle_offset: int = 0
    cells: int | None = None
    samples: int | None = None
    capacity: int | None = None
    k_neighbors: int | None = None

    def __post_init__(self) -> None:
        require(self.kind in KINDS, "kind", f"must be one of {list(KINDS)}, got {self.kind!r}")
        keys = ("kind", "sampling", "alpha", "quality", "edges", "cycle_offset", *OPTIONS[self.kind])
        for option in sorted({o for opts in OPTIONS.values() for o in opts}):
            given = getattr(self, option) is not None
            if given and option not in OPTIONS[self.kind]:
                require(False, option, f"unknown key for archive.kind={self.kind} (the keys are {', '.join(keys)})")
            require(given or option not in OPTIONS[self.kind], option, f"must be set for archive.kind={self.kind}")
        if isinstance(self.alpha, list):
            object.__setattr__(self, "alpha", tuple(self.alpha))

    def build(self, tasks: Sequence[str], measures: Mapping[str, Measure], seed: int | None) -> "CyclicArchives":
        """Empty archives of ``tasks`` (each task's descriptor axis in ``measures``)."""
        options = {o: getattr(self, o) for o in OPTIONS[self.kind]}
        return CyclicArchives(
            tasks=tasks,
            measures=measures,
            sampling=self.sampling,
            alpha=self.alpha,
            seed=seed,
            quality=self.quality,
            kind=self.kind,
            edges=self.edges,
            cycle_offset=self.cycle_offset,
            **options,
        )


@dataclass(frozen=True)
class ElitePick:
    """A sampled parent: its elite id and its row in the quality archive (its solution is
    the elite's id, or its genome)."""

    id: int
    objective: float
    scores: tuple[float, ...]
    solution: np.ndarray | None = None


class LowerEdgeGridArchive(GridArchive):
    """A pyribs ``GridArchive`` whose bins are closed on the right: a measure exactly on the edge
    between two bins goes into the lower one, as the CycleQD reference code bins
    (``np.digitize(m, np.linspace(low, high, bins + 1), right=True) − 1``, clipped into the
    grid). pyribs closes them on the left, and its ``epsilon`` moves a measure within 1e-6 of an
    edge's upper side up as well. Agentic scores k/n land on edges often."""

    def index_of(self, measures: Any) -> np.ndarray:
        measures = np.atleast_2d(np.asarray(measures, dtype=np.float64))
        if measures.shape[1:] != (self.measure_dim,) or not np.all(np.isfinite(measures)):
            return super().index_of(measures)  # pyribs' own errors for a bad batch
        grid = np.stack(
            [
                np.digitize(measures[:, j], np.linspace(low, high, int(n) + 1), right=True) - 1
                for j, (low, high, n) in enumerate(zip(self.lower_bounds, self.upper_bounds, self.dims))
            ],
            axis=1,
        )
        return self.grid_to_int_index(np.clip(grid, 0, self.dims - 1))


def range_warnings(measures: Mapping[str, Measure], scores: Mapping[str, Mapping[str, float]]) -> list[str]:
    """One line for each model in ``scores`` (name → task → utility) and task whose score lies
    outside the task's descriptor range (lower-is-better tasks never do: see
    :meth:`~cycleqd.protocols.Measure.outside`). The other archives clip such a score into their first
    or last bin, where models that differ on that task share cells and only the best at each
    archive's quality survives: the range should cover what the models reach."""
    lines = []
    for model, by_task in scores.items():
        for task, utility in by_task.items():
            measure = measures.get(task)
            end = measure.outside(utility) if measure is not None else None
            if end is None:
                continue
            key = f"task.{task}.measure.{end}"
            # the nearest multiple of 0.05 past the score, inside [0, 1]: a range to copy
            cover = (
                min(1.0, math.ceil(utility * 20 - 1e-9) / 20)
                if end == "high"
                else max(0.0, math.floor(utility * 20 + 1e-9) / 20)
            )
            lines.append(
                f"{model} scores {100 * utility:.1f} on {task}, {'above' if end == 'high' else 'below'} {key}={getattr(measure, end):g}: "
                f"the other archives put all such models in their {'last' if end == 'high' else 'first'} {task} bin and keep only "
                f"the best of them at their own task; {key}={cover:g} covers it"
            )
    return lines


def _pick(row: Mapping[str, Any]) -> ElitePick:
    """An :class:`ElitePick` from one archive row."""
    return ElitePick(
        id=int(row["id"]),
        objective=float(row["objective"]),
        scores=tuple(float(x) for x in row["scores"]),
        solution=row["solution"],
    )


class CyclicArchives:
    """K MAP-Elites archives over the same population, one per task as quality.

    Args:
        tasks: Task names, in a fixed order.
        measures: Each task's descriptor axis (range and bins), used in the other archives.
        sampling: ``"elite"`` (the paper's normalised, biased sampling) or ``"uniform"`` (ablation).
        alpha: ``(α_low, α_high)``, the range that the sampling normalises values into.
        seed: Seed of the archives' own RNG (pyribs).
        quality: ``"task"`` (the paper: archive ``k``'s objective is task ``k``'s score, so the
            quality cycles with the archives) or ``"mean"`` (ablation, no cycling: every
            archive's objective is the mean score over all tasks; the measures stay).
        solution_dim: Length of a solution: 1 (the elite's id; its task vector lives in the
            elite store) or the genome's length (the archive holds the elite itself).
        edges: ``"upper"`` (pyribs: a score exactly on the edge between two bins goes into the
            upper one) or ``"lower"`` (the reference code: into the lower one; grid only).
        cycle_offset: Generation ``g`` draws its parents from archive ``(g + cycle_offset) mod K``.

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
        solution_dim: int = 1,
        quality: str = "task",
        kind: str = "grid",
        edges: str = "upper",
        cycle_offset: int = 0,
        cells: int = 225,
        samples: int = 10_000,
        capacity: int = 100,
        k_neighbors: int = 3,
        centroids: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        if len(tasks) < 2:
            raise ValueError(f"CycleQD needs at least 2 tasks, got {list(tasks)}")
        missing = [t for t in tasks if t not in measures]
        if missing:
            raise ValueError(f"no measure range for tasks {missing}")
        require(sampling in ("elite", "uniform"), "sampling", f"must be 'elite' or 'uniform', got {sampling!r}")
        require(quality in ("task", "mean"), "quality", f"must be 'task' or 'mean', got {quality!r}")
        require(
            matches(alpha, tuple[float, ...]) and len(alpha) == 2 and 0 < alpha[0] <= alpha[1],
            "alpha",
            f"must be [low, high] with 0 < low <= high, got {alpha!r}",
        )
        require(kind in KINDS, "kind", f"must be one of {list(KINDS)}, got {kind!r}")
        require(edges in ("upper", "lower"), "edges", f"must be 'upper' or 'lower', got {edges!r}")
        require(
            edges == "upper" or kind == "grid",
            "edges",
            f"only a grid has bin edges; archive.kind={kind} takes edges=upper, got {edges!r}",
        )
        require(
            matches(cycle_offset, int) and 0 <= cycle_offset < len(tasks),
            "cycle_offset",
            f"must be an integer in [0, {len(tasks)}) (one of the {len(tasks)} tasks), got {cycle_offset!r}",
        )
        for key, value, low in (
            ("cells", cells, 1),
            ("samples", samples, 1),
            ("capacity", capacity, 1),
            ("k_neighbors", k_neighbors, 1),
        ):
            require(matches(value, int) and value >= low, key, f"must be an integer >= {low}, got {value!r}")
        require(
            kind != "cvt" or samples >= cells,
            "samples",
            f"must be at least cells={cells} (k-means draws the centroids from them), got {samples}",
        )
        lo, hi = alpha
        for task in tasks if kind == "grid" else ():
            others = self.descriptors_of(tasks, task)
            cells = int(np.prod([measures[t].bins for t in others], dtype=object))
            require(
                cells <= MAX_CELLS,
                "",
                f"the archive of {task!r} would have {cells:,} cells "
                f"({' × '.join(f'task.{t}.measure.bins={measures[t].bins}' for t in others)}); "
                f"pyribs allocates every cell, at most {MAX_CELLS:,}; "
                "archive=cvt (a fixed number of cells) or archive=dns (none) scale to many tasks",
            )
        self.tasks = list(tasks)
        self._seed = seed
        self.measures = dict(measures)
        self.sampling = sampling
        self.quality = quality
        self.alpha = (float(lo), float(hi))
        self.kind = kind
        self.edges = edges
        self.cycle_offset = int(cycle_offset)
        self.options = {"cells": cells, "samples": samples, "capacity": capacity, "k_neighbors": k_neighbors}
        self.centroids: dict[str, np.ndarray] = {}
        self.archives: dict = {}
        for k, task in enumerate(self.tasks):
            others = [self.measures[t] for t in self.descriptors(task)]
            common = {
                "solution_dim": solution_dim,
                "seed": None if seed is None else seed + k,
                "solution_dtype": np.float64 if solution_dim == 1 else np.float32,
                "extra_fields": {
                    "id": ((), np.int64),
                    "scores": ((len(self.tasks),), np.float64),
                    "generation": ((), np.int64),
                    "parents": ((2,), np.int64),  # -1: none (an expert)
                },
            }
            ranges = [m.axis for m in others]
            if kind == "grid":
                grid = LowerEdgeGridArchive if edges == "lower" else GridArchive
                self.archives[task] = grid(dims=[m.bins for m in others], ranges=ranges, **common)
            elif kind == "cvt":
                if centroids is not None and task in centroids:
                    points = np.asarray(centroids[task], dtype=np.float64)
                else:  # seeded, and kept in checkpoints: a resumed run has the same cells
                    points = k_means_centroids(
                        centroids=cells, ranges=ranges, samples=samples, seed=None if seed is None else seed + k
                    )[0]
                self.centroids[task] = points
                self.archives[task] = CVTArchive(centroids=points, ranges=ranges, **common)
            else:
                self.archives[task] = DNSArchive(
                    measure_dim=len(others), capacity=capacity, k_neighbors=k_neighbors, **common
                )
        self.solution_dim = solution_dim

    def settings(self) -> dict:
        """The constructor's arguments that rebuild these archives, empty."""
        return {
            "tasks": self.tasks,
            "measures": self.measures,
            "sampling": self.sampling,
            "alpha": self.alpha,
            "seed": self._seed,
            "quality": self.quality,
            "kind": self.kind,
            "edges": self.edges,
            "cycle_offset": self.cycle_offset,
            "solution_dim": self.solution_dim,
            "centroids": self.centroids or None,
            **self.options,
        }

    def measures_of(self, task: str, scores: Mapping[str, float]) -> np.ndarray:
        """Where ``scores`` fall in ``task``'s archive: the other tasks' scores clipped into each
        axis' range, as they are (grid, cvt) or as fractions of the range (dns: its novelty is
        a distance, so that no task's units outweigh another's)."""
        others = [self.measures[t] for t in self.descriptors(task)]
        meas = np.array([scores[t] for t in self.descriptors(task)], dtype=np.float64)
        low = np.array([m.axis[0] for m in others])
        high = np.array([m.axis[1] for m in others])
        if self.kind == "dns":
            return np.clip((meas - low) / (high - low), 0.0, 1.0)
        return np.clip(meas, low, np.nextafter(high, low))

    def cells_of(self, task: str, index: np.ndarray) -> list[tuple[int, ...]]:
        """The cells of archive rows with pyribs ``index`` values: grid coordinates (grid), or
        the cell's (cvt) or the row's (dns) number."""
        archive = self.archives[task]
        if self.kind == "grid":
            return [tuple(int(c) for c in row) for row in np.atleast_2d(archive.int_to_grid_index(index))]
        return [(int(i),) for i in index]

    def rows(self) -> list[dict[str, Any]]:
        """One record per (archive, elite), archive by archive in task order: ``archive``, ``cell``
        (:meth:`cells_of`), ``objective``, ``measures``, ``id``, ``generation``, ``parents``
        (ids; none for a seed) and ``scores`` (task → opt score)."""
        out = []
        for task, archive in self.archives.items():
            data = archive.data()
            cells = self.cells_of(task, data["index"])
            for j in range(len(data["index"])):
                out.append(
                    {
                        "archive": task,
                        "cell": cells[j],
                        "objective": float(data["objective"][j]),
                        "measures": tuple(float(m) for m in data["measures"][j]),
                        "id": int(data["id"][j]),
                        "generation": int(data["generation"][j]),
                        "parents": tuple(int(p) for p in data["parents"][j] if p >= 0),
                        "scores": {t: float(v) for t, v in zip(self.tasks, data["scores"][j])},
                    }
                )
        return out

    def with_solution_dim(self, solution_dim: int) -> "CyclicArchives":
        """Empty archives of the same settings whose solutions have ``solution_dim`` numbers."""
        return CyclicArchives(**{**self.settings(), "solution_dim": solution_dim})

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
        """Generation ``g`` takes its parents from archive ``(g + cycle_offset) mod K``."""
        return self.tasks[(generation + self.cycle_offset) % self.K]

    def add(
        self,
        elite_id: int,
        scores: Mapping[str, float],
        generation: int,
        solution: np.ndarray | None = None,
        parents: Sequence[int] = (),
    ) -> dict[str, int]:
        """Offer one evaluated model to every archive; returns pyribs' add status per archive.

        ``solution`` defaults to the id (a solution of one number). Measures are clipped into
        each axis' range, so a score past the range lands in the edge cell instead of being
        dropped (see :meth:`measures_of`).
        """
        vec = np.array([scores[t] for t in self.tasks], dtype=np.float64)
        sol = np.array([float(elite_id)]) if solution is None else np.asarray(solution)
        if sol.shape != (self.solution_dim,):
            raise ValueError(f"solution of shape {sol.shape}, the archives hold ({self.solution_dim},)")
        lineage = (list(parents) + [-1, -1])[:2]
        status = {}
        for task, archive in self.archives.items():
            meas = self.measures_of(task, scores)
            res = archive.add(
                solution=[sol],
                objective=[scores[task] if self.quality == "task" else float(vec.mean())],
                measures=[meas],
                id=[elite_id],
                scores=[vec],
                generation=[generation],
                parents=[lineage],
            )
            status[task] = int(res["status"][0])
        return status

    def sample_parents(self, task: str, n: int, rng: np.random.Generator) -> list[ElitePick]:
        """Draw ``n`` distinct elites of ``task``'s archive (fewer only if it holds fewer).

        ``"elite"`` sampling: probability ∝ Π norm(v) over the elite's quality and each of
        its descriptor cell indices (grid; cvt and dns have no ordered cells: its measures),
        ``norm`` min-max scaling into ``[α_low, α_high]`` (1 where all values are equal).
        """
        data, p = self.parent_probabilities(task)
        k = min(n, len(p))
        chosen = rng.choice(len(p), size=k, replace=False, p=p)
        return [_pick({k: v[i] for k, v in data.items()}) for i in chosen]

    def parent_probabilities(self, task: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``task``'s archive rows (pyribs' ``data()``) and each one's probability of being drawn
        first as a parent (see :meth:`sample_parents`)."""
        archive = self.archives[task]
        data = archive.data()
        if len(data["index"]) == 0:
            raise RuntimeError(f"archive {task!r} is empty: seed it with the experts first")
        if self.sampling == "uniform":
            return data, np.full(len(data["index"]), 1 / len(data["index"]))
        if self.kind == "grid":
            cells = np.atleast_2d(archive.int_to_grid_index(data["index"]))
        else:
            cells = np.atleast_2d(data["measures"])
        columns = [data["objective"]] + [cells[:, j] for j in range(cells.shape[1])]
        p = np.prod([self._norm(np.asarray(c, dtype=np.float64)) for c in columns], axis=0)
        return data, p / p.sum()

    def _norm(self, v: np.ndarray) -> np.ndarray:
        lo, hi = self.alpha
        span = v.max() - v.min()
        if span == 0:
            return np.ones_like(v)
        return lo + (hi - lo) * (v - v.min()) / span

    def alive_ids(self) -> set[int]:
        return {int(i) for a in self.archives.values() for i in a.data("id")}

    def best(self, task: str) -> ElitePick:
        a = self.archives[task]
        if self.kind == "dns" and len(a):  # pyribs 0.12's DNSArchive does not track its best elite
            data = a.data()
            j = int(np.argmax(data["objective"]))
            b = {k: v[j] for k, v in data.items()}
        else:
            b = a.best_elite
        if b is None or not len(a):
            raise RuntimeError(f"archive {task!r} is empty")
        return _pick(b)

    def best_mean(self) -> ElitePick:
        """The elite with the highest mean score over all tasks, in any archive (the lowest
        id among equals, so that the choice does not depend on the archives' order); its
        ``objective`` is that mean."""
        data = [a.data() for a in self.archives.values() if len(a)]
        if not data:
            raise RuntimeError("the archives are empty")
        rows = {k: np.concatenate([d[k] for d in data]) for k in ("id", "scores", "solution")}
        means = rows["scores"].mean(axis=1)
        j = int(np.lexsort((rows["id"], -means))[0])  # the highest mean, then the lowest id
        return _pick({k: v[j] for k, v in rows.items()} | {"objective": means[j]})

    def stats(self) -> dict[str, dict[str, float]]:
        """Per archive: coverage, QD score (sum of elite objectives), best objective, elite count.

        Computed from the archive's contents (pyribs keeps a running sum, whose last digit
        depends on the order elites arrived in, and a restored archive has another history).
        """
        out = {}
        for task, a in self.archives.items():
            objective = a.data("objective")
            out[task] = {
                "coverage": float(len(objective) / a.cells),
                "qd_score": float(np.sum(objective)),
                "best": float(np.max(objective)) if len(objective) else 0.0,
                "num_elites": len(objective),
            }
        return out

    # -- state: the occupied cells only -------------------------------------------------
    _FIELDS = ("objective", "measures", "id", "scores", "generation", "parents")

    def state_dict(self) -> dict[str, Any]:
        """The archives as plain data (numbers, strings, arrays): their settings, each archive's
        occupied rows in pyribs' own order, and each elite's solution once however many
        archives hold it (a GridArchive allocates every cell's solution up front, cells ×
        genome length; a checkpoint keeps what is there)."""
        solutions: dict[int, np.ndarray] = {}
        for a in self.archives.values():
            data = a.data(["id", "solution"])
            solutions.update({int(i): s for i, s in zip(data["id"], data["solution"])})
        settings = self.settings()
        settings["measures"] = {t: dataclasses.asdict(m) for t, m in self.measures.items()}
        settings["alpha"] = list(self.alpha)
        ids = sorted(solutions)
        return {
            "settings": settings,
            "rows": {t: a.data(list(self._FIELDS)) for t, a in self.archives.items()},
            "solution_ids": np.array(ids, dtype=np.int64),
            "solutions": np.stack([solutions[i] for i in ids]) if ids else np.zeros((0, self.solution_dim)),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "CyclicArchives":
        """The archives that :meth:`state_dict` described, their rows added in the same order
        (what parent sampling indexes)."""
        out = cls.__new__(cls)
        out.__setstate__(state)
        return out

    def __getstate__(self) -> dict[str, Any]:
        return self.state_dict()

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        settings = dict(state["settings"])
        settings["measures"] = {t: Measure.of(m) for t, m in settings["measures"].items()}
        settings["alpha"] = tuple(settings["alpha"])
        self.__init__(**settings)
        if "solution_ids" in state:
            solutions = dict(zip((int(i) for i in state["solution_ids"]), state["solutions"]))
        else:  # a format-1 checkpoint's pickle: id → solution
            solutions = state["solutions"]
        for task, rows in state["rows"].items():
            archive = self.archives[task]
            # One by one, so the archive's order of elites (what parent sampling indexes) is the same.
            for j in range(len(rows["objective"])):
                archive.add(solution=[solutions[int(rows["id"][j])]], **{k: [v[j]] for k, v in rows.items()})
