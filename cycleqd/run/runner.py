"""One run, from a composed config to the run directory's contract files, as phases:

    check every component → lock the run directory → provision models, bases, loop, workers
    → seed the archives (or restore the checkpoint) → evolve, committing checkpoints
    → the final model → experts, baselines and the final model on test → the summary

Each phase lives in its own module: provisioning (:mod:`cycleqd.run.provision`), the loop
(:meth:`cycleqd.core.evolve.CycleQD.run`), the bookkeeping of checkpoints, metrics, stops and
failures (:mod:`cycleqd.run.bookkeeping`), the final model (:mod:`cycleqd.run.final`) and the
summary (:mod:`cycleqd.run.summary`). A comparison search (``search=cmaes``, ``random``)
replaces the archives and the final model with :func:`cycleqd.core.searches.drive`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from cycleqd.core.archives import range_warnings
from cycleqd.core.baselines import static_merges
from cycleqd.core.loops import search_loop
from cycleqd.core.searches import CoefficientSearch, LayerCoefficients, drive
from cycleqd.core.taskvector import TaskVector
from cycleqd.errors import ConfigError, DamagedFile, EvaluationFailed
from cycleqd.fileio import fault_point, read_json, remove, remove_temporaries, write_json, write_text
from cycleqd.progress import Progress
from cycleqd.progress import configure as configure_progress
from cycleqd.protocols import Failure, Result
from cycleqd.run import checkpoint
from cycleqd.run.bookkeeping import Bookkeeping
from cycleqd.run.components import Components, build
from cycleqd.run.final import final_model
from cycleqd.run.front import FILE as FRONT
from cycleqd.run.front import pools_on_test
from cycleqd.run.lock import RunLock
from cycleqd.run.provision import provision, start_evaluator
from cycleqd.run.reports import elite_table, heatmaps
from cycleqd.run.stopping import Stop
from cycleqd.run.store import EliteStore
from cycleqd.run.summary import Summary
from cycleqd.stats import compare_to

log = logging.getLogger(__name__)


class Run:
    """One run's components, models, loop, evaluator and bookkeeping, and its phases.

    Args:
        cfg: The composed config.
        run_dir: The run directory.
        components: ``build(cfg)``, if already built.
        stop: The run's signal handler (one that never fires, if None).

    Raises:
        ConfigError: a bad config value (before any model is loaded).
    """

    def __init__(
        self, cfg: DictConfig, run_dir: str | Path, components: Components | None = None, stop: Stop | None = None
    ) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.c = components or build(cfg)
        configure_progress(quiet=cfg.quiet, every_s=cfg.get("progress_every_s", 30.0))
        if cfg.device and cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device", f"{cfg.device!r} requested, but this machine has no CUDA device")
        self.tasks, self.names = self.c.tasks, self.c.names
        self.logger = self.c.logger
        self.store = EliteStore(self.run_dir / "elites")
        self.pool = self.c.evaluator
        self.experts_opt: dict[str, Result] = {}
        self.basis_kept: dict[str, dict[str, float]] | None = None
        self.search_loop: CoefficientSearch | None = None  # a comparison search's loop (search=cmaes, random, ...)
        self.books = Bookkeeping(
            self.run_dir,
            self.logger,
            self.store,
            self.pool,
            generations=cfg.generations,
            checkpoint_every=cfg.checkpoint_every,
            stop=stop or Stop(),
            genome=self.c.genome,
        )

    # -- provisioning ------------------------------------------------------------------------
    def setup(self) -> None:
        """Build or find the base model and experts, load them, make the loop, start the evaluator."""
        p = provision(self.cfg, self.c, self.store)
        self.base_dir, self.model, self.experts = p.base_dir, p.model, p.experts
        self.basis, self.operators, self.seeds, self.qd = p.basis, p.operators, p.seeds, p.qd
        self.books.bases = p.basis_files
        self.basis_kept = p.kept
        start_evaluator(self.cfg, self.c, p)

    def scores(self, items: list[tuple[TaskVector | np.ndarray | None, str]]) -> list[Result]:
        """Each ``(x, split)``'s scores of ``θ0 + x`` (a task vector or a genome), or the
        :class:`Failure` that stopped it; evaluated at once when the pool has several workers."""
        return self.pool.map(items)

    def check_stop(self) -> None:
        loop = self.search_loop
        self.books.check_stop(
            f"generation {self.qd.generation} of {self.cfg.generations}"
            if loop is None
            else f"evaluation {loop.done} of {loop.budget}"
        )

    # -- the archives --------------------------------------------------------------------------
    def seed_archives(self) -> None:
        self.experts_opt = dict(zip(self.seeds, self.scores([(x, "opt") for x in self.seeds.values()])))
        self.books.track_best(self.experts_opt.values())
        for line in self.range_warnings():
            log.warning("descriptor range: %s", line)
        ids = self.qd.seed(self.seeds, self.experts_opt)
        self.books.record_seeds(self.qd, self.seeds, self.experts_opt)
        if not ids:
            reasons = "; ".join(f"{t}: {r}" for t, r in self.experts_opt.items())
            raise EvaluationFailed(f"no expert could be evaluated, so the archives cannot be seeded ({reasons})")

    def range_warnings(self) -> list[str]:
        """The experts' opt scores that fall outside a task's descriptor range."""
        scores = {f"expert {t}": dict(r) for t, r in self.experts_opt.items() if not isinstance(r, Failure)}
        return range_warnings(self.qd.archives.measures, scores)

    def restore(self, ckpt: checkpoint.Checkpoint) -> None:
        self.experts_opt = self.books.restore(self.qd, ckpt)

    def commit(self) -> None:
        self.books.commit(self.qd, self.experts_opt)

    def evolve(self) -> None:
        """Children until ``cfg.generations``, checkpoints committed on the way: a generation of
        ``children_per_generation`` at a time (``sync``), or a new child whenever a worker
        frees (``async``: ``generations`` then counts children)."""
        books = self.books
        with books.evolving(self.qd):
            self.qd.run(
                self.pool,
                self.cfg.generations,
                after=lambda c, r, s: books.after_generation(self.qd, self.experts_opt, c, r, s),
                before=lambda g: fault_point(f"generation {g}"),
                steady=getattr(self.pool, "mode", "sync") == "async",
                stop=lambda: bool(books.stop.requested),
            )

    # -- a comparison search ---------------------------------------------------------------------
    def search(self, ckpt: checkpoint.Checkpoint | None) -> tuple[Any, dict[str, Any]]:
        """A comparison search (CMA-ES, random) over per-layer merge coefficients, at CycleQD's
        budget; its best model on the opt split is the final model. A checkpoint is committed
        after every round, so a resumed search continues with the same draws and ends where an
        uninterrupted one ends."""
        search = self.c.search
        space = LayerCoefficients(self.names, self.experts, self.basis)
        budget = search_budget(self.cfg, self.c)
        measures = {t.name: t.measure for t in self.c.tasks}
        loop = self.search_loop = search_loop(search, space, budget, self.cfg.seed, measures)
        if ckpt is not None:
            self.books.restore_search(loop, ckpt)
            log.info("resuming %s from evaluation %d", self.run_dir, loop.done)
        self.logger.truncate(loop.done)  # its lines are keyed by evaluations - 1
        self.books.record.truncate(loop.done)
        with self.books.searching(search.name, loop):
            best_x, best_result, counts = drive(
                loop,
                space,
                self.scores,
                on_round=lambda m, xs, rs: self.books.after_round(loop, m, xs, rs),
                before=lambda done: fault_point(f"evaluation {done}"),
            )
        if best_x is None or isinstance(best_result, Failure):
            raise EvaluationFailed(f"search={search.name}: every one of {budget} candidates failed on the opt split")
        info = {"search": search.name, "coefficients": space.describe(best_x), "opt_mean": loop.best_value, **counts}
        return space.child(best_x), info

    # -- the report ------------------------------------------------------------------------------
    def finish(self, searched: tuple[Any, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Final model, experts and baselines on the test split; then final.safetensors, the
        elite table, heatmaps and, last, summary.json (its presence marks a finished run).

        ``searched``: the final model and its record when another search chose it (then the
        run has no archives)."""
        failed: dict[str, Any] = {}
        items: dict[str, dict[str, list[float]]] = {}  # model → task → per-item test results

        def scored(what: str, result: Result, test: bool = True) -> dict[str, float] | None:
            if isinstance(result, Failure):
                failed[what] = str(result)
                return None
            # test_items.json holds test items only (an opt result has them where a search asks, as M2N2 does)
            if test and getattr(result, "per_item", None) and set(result.per_item) == set(self.names):
                items[what] = result.per_item
            return dict(result)

        fault_point("final: start")
        final_tv, final_info = searched if searched is not None else final_model(self)
        self.check_stop()
        with Progress("experts and base on test", len(self.experts) + 1, "evaluation") as progress:
            *expert_results, base_result = self.scores(
                [(tv, "test") for tv in self.experts.values()] + [(None, "test")]
            )
            progress.update(len(self.experts) + 1)
        experts = {t: scored(f"expert:{t}", r) for t, r in zip(self.experts, expert_results)}
        base = scored("base", base_result)
        self.check_stop()
        baseline_results, chosen, failed_baselines = static_merges(
            [self.experts[t] for t in self.names], self.c.baselines, self.scores, self.cfg.seed
        )
        baselines = {name: scored(f"baseline:{name}", r) for name, r in baseline_results.items()}
        failed.update({f"baseline:{k}": v for k, v in failed_baselines.items()})
        self.check_stop()
        with Progress("final model on test and opt", 2, "evaluation") as progress:
            final_test_result, final_opt_result = self.scores([(final_tv, "test"), (final_tv, "opt")])
            progress.update(2)
        final = scored("final", final_test_result)
        final_opt = scored("final_opt", final_opt_result, test=False)
        fronts = None
        if self.c.final.front:
            self.check_stop()
            fronts, front_items = pools_on_test(self, chosen, dict(zip(self.experts, expert_results)))
            items.update(front_items)
        fault_point("final: scored")
        qd = self.qd
        summary = Summary(
            tasks=self.names,
            measures={t.name: dataclasses.asdict(t.measure) for t in self.c.tasks},
            search=self.c.search.name,
            generations=qd.generation,
            evaluations=qd.evaluations if searched is None else final_info["evaluations"],
            opt_evaluations=qd.evaluations
            + len(final_info.get("opt_mean", {}))
            + final_info.get("refine", {}).get("evaluations", 0)
            if searched is None
            else final_info["evaluations"],
            experts={t: s for t, s in experts.items() if s is not None},
            base=base,
            baselines=baselines,
            final=final,
            final_opt=final_opt,
            # Paired bootstrap over the test items: is the final model's lead real or sampling noise?
            final_vs=compare_to("final", items, seed=self.cfg.seed) if "final" in items else {},
            final_elites=final_info,
            baseline_choices=chosen,
            experts_opt={t: dict(r) for t, r in self.experts_opt.items() if not isinstance(r, Failure)},
            archives=qd.archives.stats() if searched is None else {},
            range_warnings=self.range_warnings() if searched is None else [],
            failures={"count": sum(qd.failures.values()), "by_reason": dict(sorted(qd.failures.items()))},
            failed=failed | {f"expert_opt:{t}": str(r) for t, r in self.experts_opt.items() if isinstance(r, Failure)},
            wall_time_s=self.books.elapsed,
            base_model=str(self.base_dir),
            basis=None
            if not self.basis_kept
            else {
                **dataclasses.asdict(self.c.truncation),
                "kept": self.basis_kept,
                "bytes": self.basis.nbytes() if self.basis is not None else None,
            },
        )
        final_vector = final_tv if self.basis is None else self.basis.task_vector(final_tv)
        final_vector.save(self.run_dir / "final.safetensors", metadata={"elites": json.dumps(final_info)})
        write_json(self.run_dir / "test_items.json", items)
        if fronts is not None:
            write_json(self.run_dir / FRONT, fronts)
        if searched is None:
            elite_table(qd.archives, self.run_dir)
            self.logger.log_images(heatmaps(qd.archives, self.run_dir))
        summary.write(self.run_dir)
        self.logger.finish(summary.as_dict())
        return summary.as_dict()

    # -- the experts and their static merges alone (cycleqd baselines) --------------------------
    def baselines(self) -> tuple[dict[str, Result], dict[str, Any], dict[str, Any], dict[str, str]]:
        """The experts on test, and each static merge chosen on opt and scored on test: the
        experts' results, the baselines' results, their choices, and the failed baselines."""
        baselines, chosen, failed = static_merges(
            [self.experts[t] for t in self.names], self.c.baselines, self.scores, self.cfg.seed
        )
        experts = dict(zip(self.experts, self.scores([(tv, "test") for tv in self.experts.values()])))
        return experts, baselines, chosen, failed


def prior_state(run_dir: Path) -> tuple[checkpoint.Checkpoint | None, dict | None]:
    """The committed checkpoint and summary of ``run_dir`` (None where absent), read with named errors."""
    ckpt = checkpoint.load(run_dir)
    summary_path = run_dir / "summary.json"
    try:
        summary = read_json(summary_path, "summary") if summary_path.is_file() else None
    except DamagedFile as e:
        log.warning("%s; it will be written again", e)  # the final phase rewrites it from the checkpoint
        summary = None
    return ckpt, summary


def run(cfg: DictConfig, run_dir: str | Path, resume: bool = False, write_config: bool = False) -> dict[str, Any]:
    """Execute (``resume=False``) or continue (``resume=True``) one run in ``run_dir``; returns its summary.

    A fresh run refuses a directory that already holds a checkpoint. Resuming a
    directory without a checkpoint (killed before its first one) starts the run over.
    ``write_config`` replaces ``.hydra/config.yaml`` with ``cfg`` once the lock is held
    (a resume with changed settings).

    Raises:
        ConfigError: a bad config value, before any model exists.
        RunInUse: another live process holds ``run_dir``.
        DamagedFile: the checkpoint, an elite file it names or the summary is damaged.
        RunInterrupted: SIGINT/SIGTERM; a checkpoint was written.
        TooManyFailures: too many evaluations in a row failed; a checkpoint was written.
    """
    run_dir = Path(run_dir)
    components = build(cfg)
    with RunLock(run_dir), Stop() as stop:
        remove_temporaries(run_dir)
        ckpt, summary = prior_state(run_dir)
        if ckpt is not None and not resume:
            raise ConfigError(
                "hydra.run.dir",
                f"{str(run_dir)!r} already holds a run (checkpoint at {ckpt.where()}): "
                f"resume it with `cycleqd resume {run_dir}` or choose another directory",
            )
        if ckpt is not None:
            kind = ckpt.search_name
            if kind != components.search.name:
                raise ConfigError(
                    "search",
                    f"the checkpoint is of search={kind}, the config asks for search={components.search.name}; resume with search={kind}",
                )
            if ckpt.search is None:
                done, target, key, limit = (
                    ckpt.generation,
                    cfg.generations,
                    "generations",
                    f"generations={cfg.generations}",
                )
                finished = summary is not None and summary.get("generations") == done == target
            else:
                done, target, key = ckpt.search["done"], search_budget(cfg, components), "search.evaluations"
                limit = f"this config's budget of {target} evaluations"
                finished = summary is not None and summary.get("evaluations") == done == target
            if finished:
                log.info("the run in %s has already finished", run_dir)
                return summary
            if done > target:
                raise ConfigError(key, f"the checkpoint is at {ckpt.where()}, past {limit}")
        if write_config:
            write_text(run_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
        r = Run(cfg, run_dir, components, stop)
        if ckpt is not None:
            r.store.verify(ckpt.elites)  # before minutes of model building
        try:
            r.setup()
            return _phases(r, run_dir, cfg, ckpt, stop)
        finally:
            r.pool.close()


def _phases(r: Run, run_dir: Path, cfg: DictConfig, ckpt: checkpoint.Checkpoint | None, stop: Stop) -> dict[str, Any]:
    """Seed or restore, evolve (or search), finish (the pool is up)."""
    r.logger.start(run_dir, OmegaConf.to_container(cfg, resolve=True))
    stop.graceful = True
    remove(run_dir / "summary.json")
    remove(run_dir / FRONT)  # a resume writes it again with the summary, from its own settings
    if r.c.search.name != "cycleqd":
        return r.finish(r.search(ckpt))
    if ckpt is not None:
        log.info("resuming %s from generation %d", run_dir, ckpt.generation)
        r.restore(ckpt)
        r.store.collect(r.qd.archives.alive_ids())  # files written after the checkpoint
        r.logger.truncate(ckpt.generation)
        r.books.record.truncate(r.qd.evaluations)
    else:
        r.logger.truncate(0)
        r.books.record.truncate(0)
        r.store.collect(())  # elites of an attempt killed before its first checkpoint
        r.seed_archives()
        r.commit()
    r.evolve()
    return r.finish()


def search_budget(cfg: DictConfig, c: Components) -> int:
    """A comparison search's opt evaluations: its own, or CycleQD's with the same config."""
    return c.search.budget(len(c.names), cfg.generations, cfg.children_per_generation, c.final.opt_evaluations)
