"""One CycleQD run, from a composed config to the run directory's contract files:

    check every component → lock the run directory → models and experts
    → seed the archives (or restore the checkpoint) → evolve, committing checkpoints
    → final model and baselines → heatmaps, elite table, summary

The loop's state lives in memory (:mod:`cycleqd.core.evolve`); this module commits it. A
checkpoint names the elite files it needs with their checksums, and an elite file is
deleted only after a checkpoint that no longer names it is committed, so a run killed
at any moment resumes to the result an uninterrupted run gives.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from cycleqd.core.aggregation import aggregate_best
from cycleqd.core.archives import range_warnings
from cycleqd.core.baselines import static_merges
from cycleqd.core.evolve import CycleQD
from cycleqd.core.genome import Basis, cached_expert_basis, place_basis
from cycleqd.core.mutation import expert_svds
from cycleqd.core.operators import DenseOperators, GenomeOperators
from cycleqd.core.taskvector import TaskVector
from cycleqd.errors import ConfigError, DamagedFile, EvaluationFailed, RunInterrupted, TooManyFailures
from cycleqd.evaluation.workers import Worker, WorkerSpec
from cycleqd.fileio import fault_point, read_json, remove, remove_temporaries, write_json, write_text
from cycleqd.models.embedded import cache_root
from cycleqd.models.experts import expert_vectors, locate_models
from cycleqd.models.loading import default_device, load_model
from cycleqd.progress import Progress
from cycleqd.progress import configure as configure_progress
from cycleqd.protocols import Failure, Result, mean_score
from cycleqd.run import checkpoint
from cycleqd.run.components import Components, build
from cycleqd.run.lock import RunLock
from cycleqd.run.reports import elite_table, heatmaps
from cycleqd.run.stopping import Stop
from cycleqd.run.store import EliteStore
from cycleqd.stats import compare_to

log = logging.getLogger(__name__)


class Run:
    """Everything one run holds in memory: its components, the resident model, the experts, the loop.

    Args:
        cfg: The composed config.
        run_dir: The run directory.
        components: ``build(cfg)``, if already built.

    Raises:
        ConfigError: a bad config value (before any model is loaded).
    """

    def __init__(self, cfg: DictConfig, run_dir: str | Path, components: Components | None = None) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.c = components or build(cfg)
        configure_progress(quiet=cfg.quiet, every_s=cfg.get("progress_every_s", 30.0))
        if cfg.device and cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device", f"{cfg.device!r} requested, but this machine has no CUDA device")
        self.tasks, self.names = self.c.tasks, self.c.names
        self.logger = self.c.logger
        self.store = EliteStore(self.run_dir / "elites")
        self.experts_opt: dict[str, Result] = {}
        self.elapsed_before = 0.0
        self.t_start = time.perf_counter()
        self.stop = Stop()
        self.qd: CycleQD | None = None
        self.search_loop = None  # a comparison search's loop (search=cmaes, random)
        self.pool = self.c.evaluator
        self.best_opt_mean = float("-inf")  # the best mean opt score of any model evaluated so far

    # -- models ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Build or find the base model and experts, load them, and make the loop."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        base_dir, expert_dirs, fmt = locate_models(cfg, self.tasks)
        self.base_dir = base_dir
        self.model, tokenizer = load_model(base_dir, cfg.device or default_device())
        key = "experts.paths" if cfg.experts.kind == "paths" else "experts"
        self.experts = expert_vectors(self.model, expert_dirs, fmt, key=key)
        touched = list(dict.fromkeys(n for tv in self.experts.values() for n in tv))
        # The experts' SVDs, once per expert content, cached beside the models.
        root = Path(cfg.model.cache_dir) if cfg.model.get("cache_dir") else cache_root()
        parts, self.basis_files = {}, {}
        for t in self.names:
            parts[t], key = cached_expert_basis(
                self.experts[t], root, lambda tv, t=t: expert_svds(tv, desc=f"SVD of expert {t}")
            )
            self.basis_files[t] = str(root / "bases" / f"{key[:32]}.safetensors")
        if self.c.genome:
            self.basis = Basis(self.names, parts)
            operators = GenomeOperators(self.c.crossover, self.c.mutation, self.basis)
            archives = self.c.archives.with_solution_dim(self.basis.length)
            self.seeds = {t: self.basis.expert(t) for t in self.names}
        else:
            self.basis = None
            operators = DenseOperators(
                self.c.crossover, self.c.mutation, {t: parts[t].svds for t in self.names}, self.store
            )
            archives = self.c.archives
            self.seeds = self.experts
        self.operators = operators
        self.qd = CycleQD(
            archives=archives, operators=operators, children_per_generation=cfg.children_per_generation, seed=cfg.seed
        )
        # Who scores: this process (its resident model), or a pool of workers built from the spec.
        spec = WorkerSpec(
            base_dir=str(base_dir),
            device=cfg.device,
            threads=cfg.threads,
            eval_batch_size=cfg.eval_batch_size,
            tasks=OmegaConf.to_container(cfg.task, resolve=True),
            touched=tuple(touched),
            timeout_s=self.pool.timeout_s,
            seed=cfg.seed,
        )
        local = None
        if self.pool.needs_local_worker:
            if self.basis is not None:
                log.info("expert bases: %s", place_basis(self.basis, next(self.model.parameters()).device))
            local = Worker(
                self.model,
                tokenizer,
                self.tasks,
                touched,
                self.basis,
                eval_batch_size=cfg.eval_batch_size,
                timeout_s=self.pool.timeout_s,
            )
        self.pool.start(local, spec, self.basis)

    def scores(self, items: list[tuple[TaskVector | np.ndarray | None, str]]) -> list[Result]:
        """Each ``(x, split)``'s scores of ``θ0 + x`` (a task vector or a genome), or the
        :class:`Failure` that stopped it; evaluated at once when the pool has several workers."""
        return self.pool.map(items)

    def score(self, x: TaskVector | np.ndarray | None, split: str) -> Result:
        return self.scores([(x, split)])[0]

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    # -- the loop -------------------------------------------------------------------------
    def seed_archives(self) -> None:
        self.experts_opt = dict(zip(self.seeds, self.scores([(x, "opt") for x in self.seeds.values()])))
        self._track_best(self.experts_opt.values())
        for line in self.range_warnings():
            log.warning("descriptor range: %s", line)
        ids = self.qd.seed(self.seeds, self.experts_opt)
        if not ids:
            reasons = "; ".join(f"{t}: {r}" for t, r in self.experts_opt.items())
            raise EvaluationFailed(f"no expert could be evaluated, so the archives cannot be seeded ({reasons})")

    def range_warnings(self) -> list[str]:
        """The experts' opt scores that fall outside a task's descriptor range."""
        scores = {f"expert {t}": dict(r) for t, r in self.experts_opt.items() if not isinstance(r, Failure)}
        return range_warnings(self.qd.archives.measures, scores)

    def restore(self, ckpt: checkpoint.Checkpoint) -> None:
        genome = bool(ckpt.state.get("genome"))
        if genome != self.c.genome:
            raise ConfigError(
                "genome",
                f"the checkpoint holds {'genomes' if genome else 'task vectors'}; resume with genome={str(genome).lower()}",
            )
        self.qd.load_state_dict(ckpt.state["qd"])
        self.experts_opt = ckpt.state["experts_opt"]
        self.best_opt_mean = ckpt.state.get("best_opt_mean", float("-inf"))
        self.elapsed_before = ckpt.state["elapsed_s"]
        self.t_start = time.perf_counter()

    def commit(self) -> None:
        """Commit the loop's state as the checkpoint, then delete elite files it no longer names."""
        state = {
            "qd": self.qd.state_dict(),
            "experts_opt": self.experts_opt,
            "best_opt_mean": self.best_opt_mean,
            "elapsed_s": self.elapsed,
            "genome": self.c.genome,
            "bases": self.basis_files,  # where load_run finds the bases of genome elites
        }
        alive = set() if self.c.genome else self.qd.archives.alive_ids()  # genomes live in the archives, not in files
        checkpoint.commit(self.run_dir, state, self.store.manifest(alive))
        self.store.collect(alive)

    def evolve(self) -> None:
        """Children until ``cfg.generations``, checkpoints committed on the way: a generation of
        ``children_per_generation`` at a time (``sync``), or a new child whenever a worker
        frees (``async``: ``generations`` then counts children)."""
        qd = self.qd
        self.bar = Progress("cycleqd", self.cfg.generations, "generation", initial=qd.generation)
        try:
            if getattr(self.pool, "mode", "sync") == "async":
                self._evolve_async()
            else:
                while qd.generation < self.cfg.generations:
                    fault_point(f"generation {qd.generation}")
                    t0 = time.perf_counter()
                    candidates = qd.ask()
                    results = self.scores([(c.vector, "opt") for c in candidates])
                    qd.tell(candidates, results)
                    self._after(candidates, results, time.perf_counter() - t0)
        finally:
            self.bar.close()

    def _evolve_async(self) -> None:
        qd, pool = self.qd, self.pool
        for c in list(qd.pending.values()):  # in flight when the last checkpoint was written
            pool.submit(c.id, c.vector, "opt")
        t0 = time.perf_counter()
        while qd.generation < self.cfg.generations:
            while (
                not self.stop.requested
                and qd.generation + len(qd.pending) < self.cfg.generations
                and pool.in_flight < pool.num_workers
            ):
                c = qd.ask_one()
                pool.submit(c.id, c.vector, "opt")
            fault_point(f"generation {qd.generation}")
            key, result = pool.next_result()
            c = qd.pending[key]
            qd.tell_one(c, result)
            now = time.perf_counter()
            self._after([c], [result], now - t0)
            t0 = now

    def _track_best(self, results) -> None:
        for r in results:
            if not isinstance(r, Failure):
                self.best_opt_mean = max(self.best_opt_mean, mean_score(r))

    def _after(self, candidates: list, results: list[Result], seconds: float) -> None:
        """Log what was just told, commit a checkpoint when one is due, stop when asked to."""
        cfg, qd = self.cfg, self.qd
        self._track_best(results)
        limit = getattr(self.pool, "max_consecutive_failures", None)
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
            "workers": self.pool.utilisation(),
            "in_flight": self.pool.in_flight,
            "queue_depth": self.pool.queue_depth,
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        if failures:
            metrics["failures"] = failures
        self.logger.log(metrics)
        self.bar.set_postfix(
            q=metrics["quality_task"],
            evals_s=f"{len(candidates) / seconds:.1f}" if seconds > 0 else "-",
            busy=",".join(f"{u:.0%}" for u in metrics["workers"]["utilisation"]),
            queue=metrics["queue_depth"],
            cov=",".join(f"{s['coverage']:.2f}" for s in stats.values()),
        )
        self.bar.update(1)
        too_many = limit is not None and qd.consecutive_failures >= limit
        periodic = cfg.checkpoint_every and qd.generation % cfg.checkpoint_every == 0
        if too_many or self.stop.requested or periodic or qd.generation == cfg.generations:
            self.commit()
        if too_many:
            last = failures[-1] if failures else {}
            raise TooManyFailures(
                f"{qd.consecutive_failures} evaluations in a row failed (evaluator.max_consecutive_failures={limit}); "
                f"the last: {last.get('reason')} ({last.get('task')}): {last.get('message')}. Checkpoint written at "
                f"generation {qd.generation}; fix the cause, then: cycleqd resume {self.run_dir}"
            )
        self._check_stop()

    def _check_stop(self) -> None:
        if self.stop.requested:
            loop = self.search_loop
            where = (
                f"generation {self.qd.generation} of {self.cfg.generations}"
                if loop is None
                else f"evaluation {loop.done} of {loop.budget}"
            )
            raise RunInterrupted(
                f"{self.stop.requested}: stopped at {where}; "
                f"checkpoint written. Resume with: cycleqd resume {self.run_dir}"
            )

    # -- the final phase ------------------------------------------------------------------
    def final_model(self) -> tuple[TaskVector, dict[str, Any]]:
        """The final model, chosen on the opt split.

        The paper's: each archive's best elite merged, its overall scale chosen on the opt
        split (normalised merge weights shrink each skill's task vector to about 1/K of its
        elite's; the task-arithmetic baseline chooses its λ on the opt split, and the final
        merge gets the same freedom; ``final.scales: [1.0]`` is the plain merge). With
        ``final.choice: opt`` that merge competes with the archives' best elite by mean
        score, whose opt scores the search already measured: where merging the archives'
        bests loses a skill, an evolved generalist can be the better model.
        """
        final = self.c.final
        picks, weights, info = aggregate_best(self.qd.archives, final.method)
        merged = self.operators.combine([self.operators.parent(p) for p in picks], weights)
        scales = list(final.scales)
        best = scales[0]
        if final.opt_evaluations:
            with Progress("final model: its scale on opt", len(scales), "evaluation") as progress:
                opt = dict(zip(scales, self.scores([(self.operators.combine([merged], [s]), "opt") for s in scales])))
                progress.update(len(scales))
            ok = [s for s in scales if not isinstance(opt[s], Failure)]
            if ok:
                best = max(ok, key=lambda s: (mean_score(opt[s]), -abs(s - 1.0)))
            info["opt_mean"] = {s: (mean_score(v) if not isinstance(v, Failure) else None) for s, v in opt.items()}
        info["scale"] = best
        info["choice"] = final.choice
        if final.choice == "opt":
            top = self.qd.archives.best_mean()
            merge_mean = info["opt_mean"][best]
            info["candidates"] = {"merge": merge_mean, f"elite:{top.id}": top.objective}
            # The merge wins ties: it is the paper's model, and a tie on opt is no evidence against it.
            if merge_mean is None or top.objective > merge_mean:
                info |= {
                    "chosen": "elite",
                    "elites": [{"id": top.id, "weight": 1.0}],
                    "merge_elites": info.pop("elites"),
                }
                return self.refine(
                    self.operators.combine([self.operators.parent(top)], [1.0]), top.objective, info
                ), info
        info["chosen"] = "merge"
        return self.refine(self.operators.combine([merged], [best]), info.get("opt_mean", {}).get(best), info), info

    def refine(self, model: Any, opt_mean: float | None, info: dict[str, Any]) -> Any:
        """``final.refine`` opt evaluations of CMA-ES around the chosen model, over the
        comparison searches' coordinates (one coefficient per expert and layer group):
        ``model + Σ_q Σ_g x[q, g] τ_q[g]``, from ``x = 0`` with step ``final.refine_sigma0``.

        The archives hold the best model of each skill; the model the final step reports is
        judged on the mean over the skills, which no archive optimises. The refinement spends
        part of the budget on that mean, from the archives' answer instead of from scratch.
        The refined model replaces the chosen one only if its mean opt score is higher;
        ``info["refine"]`` records what it found."""
        final = self.c.final
        if not final.refine:
            return model
        from cycleqd.core.searches import LayerCoefficients, Search, run_search

        space = LayerCoefficients(self.names, self.experts, self.basis, origin=model)
        search = Search("cmaes", sigma0=final.refine_sigma0, x0=0.0, low=-1.0, high=1.0)
        # The rounds continue the run's progress curve: evaluations and best mean count from
        # the search and the merge's scales before them.
        scale_means = info.get("opt_mean", {})
        evaluations_before = self.qd.evaluations + len(scale_means)
        best_before = max([self.best_opt_mean, *(v for v in scale_means.values() if v is not None)])
        rounds = itertools.count()
        with Progress("final model: refinement on opt", final.refine, "evaluation") as progress:

            def after_round(m: dict) -> None:
                progress.update(m["evaluations"] - progress.done)
                k = next(rounds)
                # Lines keyed after the last generation, so a resume (which reruns the final phase) drops them.
                self.logger.log({
                    "phase": "refine", "generation": self.qd.generation + k, "round": k + 1,
                    "evaluations": evaluations_before + m["evaluations"], "refine_evaluations": m["evaluations"],
                    "best_opt_mean": max(best_before, m["best_opt_mean"]), "refine_best_opt_mean": m["best_opt_mean"],
                    "batch_opt_mean": m["batch_opt_mean"], "failed": m["failed"], "elapsed_s": self.elapsed,
                })  # fmt: skip
                self._check_stop()  # a stop resumes from the last checkpoint, which reruns the final phase

            self._check_stop()
            x, result, counts = run_search(
                search, space, self.scores, final.refine, self.cfg.seed, on_batch=after_round
            )
        found = None if result is None or isinstance(result, Failure) else mean_score(result)
        applied = found is not None and (opt_mean is None or found > opt_mean)
        info["refine"] = {
            "evaluations": counts["evaluations"],
            "failed": counts["failed_evaluations"],
            "opt_mean_before": opt_mean,
            "opt_mean": found,
            "applied": applied,
        }
        if not applied:
            return model
        info["refine"]["coefficients"] = space.describe(x)
        return space.child(x)

    def finish(self, searched: tuple[Any, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Final model, experts and baselines on the test split; then final.safetensors, the
        elite table, heatmaps and, last, summary.json (its presence marks a finished run).

        ``searched``: the final model and its record when another search chose it (then the
        run has no archives)."""
        failed: dict[str, Any] = {}
        items: dict[str, dict[str, list[float]]] = {}  # model → task → per-item test results

        def scored(what: str, result: Result) -> dict[str, float] | None:
            if isinstance(result, Failure):
                failed[what] = str(result)
                return None
            if getattr(result, "per_item", None) and set(result.per_item) == set(self.names):
                items[what] = result.per_item
            return dict(result)

        fault_point("final: start")
        final_tv, final_info = searched if searched is not None else self.final_model()
        self._check_stop()
        with Progress("experts and base on test", len(self.experts) + 1, "evaluation") as progress:
            *expert_results, base_result = self.scores(
                [(tv, "test") for tv in self.experts.values()] + [(None, "test")]
            )
            progress.update(len(self.experts) + 1)
        experts = {t: scored(f"expert:{t}", r) for t, r in zip(self.experts, expert_results)}
        base = scored("base", base_result)
        self._check_stop()
        baseline_results, chosen, failed_baselines = static_merges(
            [self.experts[t] for t in self.names], self.c.baselines, self.scores, self.cfg.seed
        )
        baselines = {name: scored(f"baseline:{name}", r) for name, r in baseline_results.items()}
        failed.update({f"baseline:{k}": v for k, v in failed_baselines.items()})
        self._check_stop()
        with Progress("final model on test and opt", 2, "evaluation") as progress:
            final_test_result, final_opt_result = self.scores([(final_tv, "test"), (final_tv, "opt")])
            progress.update(2)
        final = scored("final", final_test_result)
        final_opt = scored("final_opt", final_opt_result)
        fault_point("final: scored")
        # Paired bootstrap over the test items: is the final model's lead real or sampling noise?
        final_vs = compare_to("final", items, seed=self.cfg.seed) if "final" in items else {}
        summary = {
            "tasks": self.names,
            # each task's axis; scores below are utilities (a lower-is-better task's mapped by its range)
            "measures": {t.name: dataclasses.asdict(t.measure) for t in self.c.tasks},
            "search": self.c.search.name,
            "generations": self.qd.generation,
            "evaluations": self.qd.evaluations if searched is None else final_info["evaluations"],
            # every evaluation on the opt split that chose the final model (the budget of a comparison)
            "opt_evaluations": self.qd.evaluations
            + len(final_info.get("opt_mean", {}))
            + final_info.get("refine", {}).get("evaluations", 0)
            if searched is None
            else final_info["evaluations"],
            "experts": {t: s for t, s in experts.items() if s is not None},
            "base": base,
            "baselines": baselines,
            "final": final,
            "final_opt": final_opt,
            "final_vs": final_vs,  # test-mean difference final − model, with its 95% paired bootstrap interval
            "final_elites": final_info,
            "baseline_choices": chosen,
            "experts_opt": {t: dict(r) for t, r in self.experts_opt.items() if not isinstance(r, Failure)},
            "archives": self.qd.archives.stats() if searched is None else {},
            # experts' opt scores outside a descriptor range (the archives lump such models together)
            "range_warnings": self.range_warnings() if searched is None else [],
            "failures": {"count": sum(self.qd.failures.values()), "by_reason": dict(sorted(self.qd.failures.items()))},
            "failed": failed
            | {f"expert_opt:{t}": str(r) for t, r in self.experts_opt.items() if isinstance(r, Failure)},
            "wall_time_s": self.elapsed,
            "base_model": str(self.base_dir),
        }
        final_vector = final_tv if self.basis is None else self.basis.task_vector(final_tv)
        final_vector.save(self.run_dir / "final.safetensors", metadata={"elites": json.dumps(final_info)})
        write_json(self.run_dir / "test_items.json", items)
        if searched is None:
            elite_table(self.qd.archives, self.run_dir)
            self.logger.log_images(heatmaps(self.qd.archives, self.run_dir))
        write_json(self.run_dir / "summary.json", summary)
        self.logger.finish(summary)
        return summary


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
        r = Run(cfg, run_dir, components)
        r.stop = stop
        if ckpt is not None:
            r.store.verify(ckpt.elites)  # before minutes of model building
        try:
            r.setup()
            return _phases(r, run_dir, cfg, ckpt, stop)
        finally:
            r.pool.close()


def _phases(r: Run, run_dir: Path, cfg: DictConfig, ckpt, stop: Stop) -> dict[str, Any]:
    """Seed or restore, evolve, finish (the pool is up)."""
    r.logger.start(run_dir, OmegaConf.to_container(cfg, resolve=True))
    stop.graceful = True
    remove(run_dir / "summary.json")
    if r.c.search.name != "cycleqd":
        return _search(r, ckpt)
    if ckpt is not None:
        log.info("resuming %s from generation %d", run_dir, ckpt.generation)
        r.restore(ckpt)
        r.store.collect(r.qd.archives.alive_ids())  # files written after the checkpoint
        r.logger.truncate(ckpt.generation)
    else:
        r.logger.truncate(0)
        r.store.collect(())  # elites of an attempt killed before its first checkpoint
        r.seed_archives()
        r.commit()
    r.evolve()
    return r.finish()


def search_budget(cfg: DictConfig, c: Components) -> int:
    """A comparison search's opt evaluations: its own, or CycleQD's with the same config."""
    return c.search.budget(len(c.names), cfg.generations, cfg.children_per_generation, c.final.opt_evaluations)


def _search(r: Run, ckpt: checkpoint.Checkpoint | None) -> dict[str, Any]:
    """A comparison search (CMA-ES, random) over per-layer merge coefficients, at CycleQD's
    budget; its best model on the opt split is the final model. A checkpoint is committed
    after every round of candidates (kilobytes: the search's state), so a resumed search
    continues with the same draws and ends where an uninterrupted one ends."""
    from cycleqd.core.searches import CoefficientSearch, LayerCoefficients

    cfg, search = r.cfg, r.c.search
    space = LayerCoefficients(r.names, r.experts, r.basis)
    budget = search_budget(cfg, r.c)
    loop = r.search_loop = CoefficientSearch(search, space.dim, budget, cfg.seed)
    if ckpt is not None:
        try:
            loop.load_state_dict(ckpt.search)
        except ValueError as e:
            raise ConfigError("search", f"{e}; resume with the run's own settings") from None
        r.elapsed_before, r.t_start = ckpt.state["elapsed_s"], time.perf_counter()
        log.info("resuming %s from evaluation %d", r.run_dir, loop.done)
    r.logger.truncate(loop.done)  # its lines are keyed by evaluations - 1
    bar = Progress(f"search={search.name}", budget, "evaluation", initial=loop.done)
    try:
        while not loop.finished:
            fault_point(f"evaluation {loop.done}")
            t0 = time.perf_counter()
            xs = loop.ask()
            m = loop.tell(xs, r.scores([(space.child(x), "opt") for x in xs]))
            r.logger.log(
                {
                    **m,
                    "generation": m["evaluations"] - 1,
                    "seconds": time.perf_counter() - t0,
                    "elapsed_s": r.elapsed,
                    "workers": r.pool.utilisation(),
                }
            )
            checkpoint.commit(r.run_dir, {"search": loop.state_dict(), "elapsed_s": r.elapsed}, {})
            bar.update(len(xs))
            bar.set_postfix(best=f"{loop.best_value:.3f}")
            r._check_stop()
    finally:
        bar.close()
    if loop.best_x is None or isinstance(loop.best_result, Failure):
        raise EvaluationFailed(f"search={search.name}: every one of {budget} candidates failed on the opt split")
    info = {
        "search": search.name,
        "coefficients": space.describe(loop.best_x),
        "opt_mean": loop.best_value,
        **loop.counts(),
    }
    return r.finish((space.child(loop.best_x), info))
