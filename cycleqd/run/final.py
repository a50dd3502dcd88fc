"""The final model, chosen on the opt split: the paper's merge of each archive's best elite at
the scale the opt split prefers, or (``final.choice: opt``) the archives' best elite by mean
score where it is better; then, with ``final.refine``, CMA-ES around it.

The functions read the run they are given (:class:`cycleqd.run.runner.Run`): its final-model
settings, loop, operators, experts, evaluator and bookkeeping.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from cycleqd.checks import matches, require
from cycleqd.core.aggregation import AGGREGATIONS, CHOICES, aggregate_best
from cycleqd.core.choice import choose_on_opt, opt_means
from cycleqd.core.searches import CoefficientSearch, LayerCoefficients, Search, drive
from cycleqd.progress import Progress
from cycleqd.protocols import Failure, mean_score
from cycleqd.run import record


@dataclass(frozen=True)
class FinalSpec:
    """How the final model is made (``final:`` in ``conf/config.yaml``, where each value is set).

    Args:
        choice: ``opt``: the merge below or the archives' best elite by mean score, whichever has
            the higher mean opt score; ``merge``: the merge (the paper).
        method: Each archive's best elite merged with weights by ``quality``, ``uniform`` or
            ``mean_score``.
        scales: The merge's overall scale, chosen on the opt split from these.
        refine: Opt evaluations of CMA-ES on per-layer coefficients of the experts added to the
            chosen model (0: none), from zero with step ``refine_sigma0`` (:func:`refine`).
        refine_sigma0: That CMA-ES's initial step.
        front: Score each pool's opt front on test after the final model (``front.json``,
            :mod:`cycleqd.run.front`): what users who pick their own model from the run would get.
    """

    choice: str
    method: str
    scales: tuple[float, ...]
    refine: int
    refine_sigma0: float
    front: bool = False

    def __post_init__(self) -> None:
        require(self.choice in CHOICES, "choice", f"must be one of {list(CHOICES)}, got {self.choice!r}")
        require(self.method in AGGREGATIONS, "method", f"must be one of {list(AGGREGATIONS)}, got {self.method!r}")
        require(
            (matches(self.scales, list[float]) or matches(self.scales, tuple[float, ...]))
            and len(self.scales) > 0
            and all(s > 0 for s in self.scales),
            "scales",
            f"must be a non-empty list of positive numbers, got {self.scales!r}",
        )
        require(
            matches(self.refine, int) and self.refine >= 0,
            "refine",
            f"must be an integer >= 0 (opt evaluations; 0: none), got {self.refine!r}",
        )
        require(
            matches(self.refine_sigma0, float) and self.refine_sigma0 > 0,
            "refine_sigma0",
            f"must be a number > 0, got {self.refine_sigma0!r}",
        )
        require(matches(self.front, bool), "front", f"must be true or false, got {self.front!r}")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "refine_sigma0", float(self.refine_sigma0))

    @property
    def opt_evaluations(self) -> int:
        """The final step's evaluations on the opt split: one per scale, none for a single
        scale unless the merge must be weighed against an elite; then the refinement's."""
        return (len(self.scales) if len(self.scales) > 1 or self.choice == "opt" or self.refine else 0) + self.refine


def final_model(run: Any) -> tuple[Any, dict[str, Any]]:
    """The final model and its record (``summary.json``'s ``final_elites``).

    The paper's: each archive's best elite merged, its overall scale chosen on the opt
    split (normalised merge weights shrink each skill's task vector to about 1/K of its
    elite's; the task-arithmetic baseline chooses its λ on the opt split, and the final
    merge gets the same freedom; ``final.scales: [1.0]`` is the plain merge). With
    ``final.choice: opt`` that merge competes with the archives' best elite by mean
    score, whose opt scores the search already measured: where merging the archives'
    bests loses a skill, an evolved generalist can be the better model.
    """
    final, operators, archives = run.c.final, run.operators, run.qd.archives
    picks, weights, info = aggregate_best(archives, final.method)
    merged = operators.combine([operators.parent(p) for p in picks], weights)
    scales = list(final.scales)
    best = scales[0]
    if final.opt_evaluations:
        with Progress("final model: its scale on opt", len(scales), "evaluation") as progress:
            scaled = [operators.combine([merged], [s]) for s in scales]
            opt = dict(zip(scales, run.scores([(x, "opt") for x in scaled])))
            progress.update(len(scales))
        # Its opt evaluations join the record after the loop's (a resume reruns this phase and drops them first).
        run.books.record.append(
            record.line(
                run.qd.evaluations + j,
                opt[s],
                id=run.qd.next_id + j,
                origin="final:merge",
                parents=[p.id for p in picks],
                operators={"merge": {"method": final.method, "weights": list(weights), "scale": s}},
                genome=x if isinstance(x, np.ndarray) else None,
            )
            for j, (s, x) in enumerate(zip(scales, scaled))
        )
        best = choose_on_opt(opt, prefer=lambda s: -abs(s - 1.0))  # a tie: the scale nearer the plain merge
        best = scales[0] if best is None else best
        info["opt_mean"] = opt_means(opt)
    info["scale"] = best
    info["choice"] = final.choice
    if final.choice == "opt":
        top = archives.best_mean()
        merge_mean = info["opt_mean"][best]
        info["candidates"] = {"merge": merge_mean, f"elite:{top.id}": top.objective}
        # The merge wins ties: it is the paper's model, and a tie on opt is no evidence against it.
        if merge_mean is None or top.objective > merge_mean:
            info |= {"chosen": "elite", "elites": [{"id": top.id, "weight": 1.0}], "merge_elites": info.pop("elites")}
            return refine(run, operators.combine([operators.parent(top)], [1.0]), top.objective, info), info
    info["chosen"] = "merge"
    return refine(run, operators.combine([merged], [best]), info.get("opt_mean", {}).get(best), info), info


def refine(run: Any, model: Any, opt_mean: float | None, info: dict[str, Any]) -> Any:
    """``final.refine`` opt evaluations of CMA-ES around the chosen model, over the
    comparison searches' coordinates (one coefficient per expert and layer group):
    ``model + Σ_q Σ_g x[q, g] τ_q[g]``, from ``x = 0`` with step ``final.refine_sigma0``.

    The archives hold the best model of each skill; the model the final step reports is
    judged on the mean over the skills, which no archive optimises. The refinement spends
    part of the budget on that mean, from the archives' answer instead of from scratch.
    The refined model replaces the chosen one only if its mean opt score is higher;
    ``info["refine"]`` records what it found."""
    final = run.c.final
    if not final.refine:
        return model
    space = LayerCoefficients(run.names, run.experts, run.basis, origin=model)
    search = Search("cmaes", sigma0=final.refine_sigma0, x0=0.0, low=-1.0, high=1.0)
    # The rounds continue the run's progress curve: evaluations and best mean count from
    # the search and the merge's scales before them.
    scale_means = info.get("opt_mean", {})
    evaluations_before = run.qd.evaluations + len(scale_means)
    best_before = max([run.books.best_opt_mean, *(v for v in scale_means.values() if v is not None)])
    rounds = itertools.count()
    with Progress("final model: refinement on opt", final.refine, "evaluation") as progress:

        def after_round(m: dict, xs: Any, results: Any) -> None:
            progress.update(m["evaluations"] - progress.done)
            first = evaluations_before + m["evaluations"] - len(xs)
            run.books.record.append(
                record.line(
                    first + j,
                    r,
                    id=run.qd.next_id + len(scale_means) + m["evaluations"] - len(xs) + j,
                    origin="final:refine",
                    genome=g if isinstance(g := space.child(x), np.ndarray) else None,
                    coefficients=x,
                )
                for j, (x, r) in enumerate(zip(xs, results))
            )
            k = next(rounds)
            # Lines keyed after the last generation, so a resume (which reruns the final phase) drops them.
            run.logger.log({
                "phase": "refine", "generation": run.qd.generation + k, "round": k + 1,
                "evaluations": evaluations_before + m["evaluations"], "refine_evaluations": m["evaluations"],
                "best_opt_mean": max(best_before, m["best_opt_mean"]), "refine_best_opt_mean": m["best_opt_mean"],
                "batch_opt_mean": m["batch_opt_mean"], "failed": m["failed"], "elapsed_s": run.books.elapsed,
            })  # fmt: skip
            run.check_stop()  # a stop resumes from the last checkpoint, which reruns the final phase

        run.check_stop()
        loop = CoefficientSearch(search, space.dim, final.refine, run.cfg.seed)
        x, result, counts = drive(loop, space, run.scores, on_round=after_round)
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
