"""A run's bookkeeping: its clock, the best opt mean of any model so far, a metrics line per
generation or round, a line per evaluated model (:mod:`cycleqd.run.record`), when a checkpoint
is committed, restore and commit, and the stop and failure policy.

A checkpoint names the elite files it needs with their checksums, and an elite file is
deleted only after a checkpoint that no longer names it is committed, so a run killed at any
moment resumes to the result an uninterrupted run gives.
"""

from __future__ import annotations

import contextlib
import resource
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from cycleqd.core.evolve import Candidate, CycleQD
from cycleqd.core.searches import CoefficientSearch
from cycleqd.errors import ConfigError, RunInterrupted, TooManyFailures
from cycleqd.progress import Progress
from cycleqd.protocols import Failure, Result, mean_score, result_data, result_of
from cycleqd.run import checkpoint, record
from cycleqd.run.stopping import Stop
from cycleqd.run.store import EliteStore


class Bookkeeping:
    """What a run records about itself while it computes, and when.

    Args:
        run_dir: The run directory.
        logger: The run's metrics logger (:mod:`cycleqd.run.loggers`).
        store: The elite files.
        evaluator: The run's evaluator (its utilisation goes into each metrics line).
        generations: The run's ``generations``.
        checkpoint_every: Commit a checkpoint every this many generations (0: only at the end
            and on a stop).
        stop: The run's signal handler.
        genome: Whether elites are genomes (their checkpoint holds them; no elite files).
        bases: Task → the cached basis file of its expert (recorded for ``load_run``).
    """

    def __init__(
        self,
        run_dir: Path,
        logger: Any,
        store: EliteStore,
        evaluator: Any,
        *,
        generations: int,
        checkpoint_every: int,
        stop: Stop,
        genome: bool,
        bases: Mapping[str, str] | None = None,
    ) -> None:
        self.run_dir, self.logger, self.store, self.evaluator = run_dir, logger, store, evaluator
        self.generations, self.checkpoint_every, self.stop = generations, checkpoint_every, stop
        self.genome, self.bases = genome, dict(bases or {})
        self.elapsed_before = 0.0
        self.t_start = time.perf_counter()
        self.best_opt_mean = float("-inf")  # the best mean opt score of any model evaluated so far
        self.bar: Progress | None = None
        self.record = record.CandidateRecord(run_dir)

    @property
    def elapsed(self) -> float:
        """Seconds of computing, over every attempt of the run."""
        return self.elapsed_before + time.perf_counter() - self.t_start

    def track_best(self, results: Iterable[Result]) -> None:
        for r in results:
            if not isinstance(r, Failure):
                self.best_opt_mean = max(self.best_opt_mean, mean_score(r))

    # -- the record of every evaluated model ---------------------------------------------------
    def record_seeds(self, qd: CycleQD, vectors: Mapping[str, Any], results: Mapping[str, Result]) -> None:
        """The experts' lines, after ``qd.seed`` gave them the first ids and evaluations."""
        first = qd.evaluations - len(vectors)
        self.record.append(
            record.line(
                first + j,
                results[t],
                id=first + j,
                origin=f"expert:{t}",
                archives=status,
                genome=x if isinstance(x, np.ndarray) else None,
            )
            for j, ((t, x), status) in enumerate(zip(vectors.items(), qd.last_statuses))
        )

    def record_children(self, qd: CycleQD, candidates: Sequence[Candidate], results: Sequence[Result]) -> None:
        """The lines of the children ``qd`` was just told."""
        first = qd.evaluations - len(candidates)
        self.record.append(
            record.line(
                first + j,
                r,
                id=c.id,
                origin=f"child:{c.quality_task}",
                generation=c.generation,
                parents=c.parents,
                operators=c.operators,
                archives=status,
                genome=c.vector if isinstance(c.vector, np.ndarray) else None,
            )
            for j, (c, r, status) in enumerate(zip(candidates, results, qd.last_statuses))
        )

    # -- CycleQD's checkpoints ---------------------------------------------------------------
    def commit(self, qd: CycleQD, experts_opt: Mapping[str, Result]) -> None:
        """Commit the loop's state as the checkpoint, then delete elite files it no longer names."""
        state = {
            "qd": qd.state_dict(),
            "experts_opt": {t: result_data(r) for t, r in experts_opt.items()},
            "best_opt_mean": self.best_opt_mean,
            "elapsed_s": self.elapsed,
            "genome": self.genome,
            "bases": self.bases,  # where load_run finds the bases of genome elites
        }
        alive = set() if self.genome else qd.archives.alive_ids()  # genomes live in the archives, not in files
        checkpoint.commit(self.run_dir, state, self.store.manifest(alive))
        self.store.collect(alive)

    def restore(self, qd: CycleQD, ckpt: checkpoint.Checkpoint) -> dict[str, Result]:
        """Put the checkpoint's state into ``qd`` and this bookkeeping; returns the experts' opt results."""
        genome = bool(ckpt.state.get("genome"))
        if genome != self.genome:
            raise ConfigError(
                "genome",
                f"the checkpoint holds {'genomes' if genome else 'task vectors'}; resume with genome={str(genome).lower()}",
            )
        qd.load_state_dict(ckpt.state["qd"])
        self.best_opt_mean = ckpt.state.get("best_opt_mean", float("-inf"))
        self._continue_clock(ckpt)
        return {t: result_of(r) for t, r in ckpt.state["experts_opt"].items()}

    def _continue_clock(self, ckpt: checkpoint.Checkpoint) -> None:
        self.elapsed_before, self.t_start = ckpt.state["elapsed_s"], time.perf_counter()

    @contextlib.contextmanager
    def evolving(self, qd: CycleQD) -> Iterator[None]:
        """The progress bar of the loop's generations."""
        self.bar = Progress("cycleqd", self.generations, "generation", initial=qd.generation)
        try:
            yield
        finally:
            self.bar.close()

    def after_generation(
        self,
        qd: CycleQD,
        experts_opt: Mapping[str, Result],
        candidates: list[Candidate],
        results: list[Result],
        seconds: float,
    ) -> None:
        """Record and log what was just told, commit a checkpoint when one is due, stop when asked to."""
        self.track_best(results)
        self.record_children(qd, candidates, results)
        pool = self.evaluator
        limit = getattr(pool, "max_consecutive_failures", None)
        failures = [
            {"child": c.id, "reason": r.reason, "task": r.task, "message": r.message}
            for c, r in zip(candidates, results)
            if isinstance(r, Failure)
        ]
        stats = qd.archives.stats()
        metrics = {
            "generation": qd.generation - 1,
            "quality_task": candidates[0].quality_task,
            "evaluations": qd.evaluations,
            "failed_evaluations": sum(qd.failures.values()),
            "archives": stats,
            "best_opt_mean": self.best_opt_mean,  # any model so far, experts included: the search's progress curve
            "seconds": seconds,
            "evaluations_per_s": len(candidates) / seconds if seconds > 0 else None,
            "elapsed_s": self.elapsed,
            "workers": pool.utilisation(),
            "in_flight": pool.in_flight,
            "queue_depth": pool.queue_depth,
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        if failures:
            metrics["failures"] = failures
        self.logger.log(metrics)
        if self.bar is not None:
            self.bar.set_postfix(
                q=metrics["quality_task"],
                evals_s=f"{len(candidates) / seconds:.1f}" if seconds > 0 else "-",
                busy=",".join(f"{u:.0%}" for u in metrics["workers"]["utilisation"]),
                queue=metrics["queue_depth"],
                cov=",".join(f"{s['coverage']:.2f}" for s in stats.values()),
            )
            self.bar.update(1)
        too_many = limit is not None and qd.consecutive_failures >= limit
        periodic = self.checkpoint_every and qd.generation % self.checkpoint_every == 0
        if too_many or self.stop.requested or periodic or qd.generation == self.generations:
            self.commit(qd, experts_opt)
        if too_many:
            last = failures[-1] if failures else {}
            raise TooManyFailures(
                f"{qd.consecutive_failures} evaluations in a row failed (evaluator.max_consecutive_failures={limit}); "
                f"the last: {last.get('reason')} ({last.get('task')}): {last.get('message')}. Checkpoint written at "
                f"generation {qd.generation}; fix the cause, then: cycleqd resume {self.run_dir}"
            )
        self.check_stop(f"generation {qd.generation} of {self.generations}")

    # -- a comparison search's checkpoints ----------------------------------------------------
    def restore_search(self, loop: CoefficientSearch, ckpt: checkpoint.Checkpoint) -> None:
        try:
            loop.load_state_dict(ckpt.search)
        except ValueError as e:
            raise ConfigError("search", f"{e}; resume with the run's own settings") from None
        self._continue_clock(ckpt)

    def after_round(self, loop: CoefficientSearch, metrics: dict, xs: np.ndarray, results: Sequence[Result]) -> None:
        """Record and log a comparison search's round and commit its checkpoint (kilobytes: the
        search's state), so a resumed search continues with the same draws."""
        first = loop.done - len(xs)
        self.record.append(
            record.line(first + j, r, id=first + j, origin=loop.search.name, coefficients=x)
            for j, (x, r) in enumerate(zip(xs, results))
        )
        self.logger.log(
            {
                **{k: v for k, v in metrics.items() if k != "seconds"},
                "generation": metrics["evaluations"] - 1,
                "seconds": metrics["seconds"],
                "elapsed_s": self.elapsed,
                "workers": self.evaluator.utilisation(),
            }
        )
        checkpoint.commit(self.run_dir, {"search": loop.state_dict(), "elapsed_s": self.elapsed}, {})
        if self.bar is not None:
            self.bar.update(len(xs))
            self.bar.set_postfix(best=f"{loop.best_value:.3f}")
        self.check_stop(f"evaluation {loop.done} of {loop.budget}")

    @contextlib.contextmanager
    def searching(self, name: str, loop: CoefficientSearch) -> Iterator[None]:
        """The progress bar of a comparison search's evaluations."""
        self.bar = Progress(f"search={name}", loop.budget, "evaluation", initial=loop.done)
        try:
            yield
        finally:
            self.bar.close()

    # -- stopping ------------------------------------------------------------------------------
    def check_stop(self, where: str) -> None:
        """Raise :class:`RunInterrupted` if a signal asked the run to stop (its checkpoint is written)."""
        if self.stop.requested:
            raise RunInterrupted(
                f"{self.stop.requested}: stopped at {where}; "
                f"checkpoint written. Resume with: cycleqd resume {self.run_dir}"
            )
