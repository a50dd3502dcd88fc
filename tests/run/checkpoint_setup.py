"""The loops whose checkpoints tests/run/test_checkpoint_format.py reads: a genome CycleQD over
the toy experts (with a child in flight) and a CMA-ES comparison search, driven by a fake,
deterministic evaluator. ``tests/run/data/checkpoint-v1-*.ckpt`` were written from these by
cycleqd's format-1 writer (a pickle), with the candidates each loop asked next."""

from __future__ import annotations

import numpy as np

from cycleqd.core.archives import CyclicArchives
from cycleqd.core.crossover import MergeCrossover
from cycleqd.core.evolve import CycleQD
from cycleqd.core.mutation import SVDMutation
from cycleqd.core.operators import GenomeOperators
from cycleqd.core.searches import CoefficientSearch, Search
from cycleqd.protocols import Failure, ItemScores, Measure
from tests.builders import TASKS, toy_setup


def genome_scores(x: np.ndarray) -> dict[str, float]:
    """Scores in [0, 1] that depend on every coefficient of the genome."""
    d = np.random.default_rng(5).standard_normal((len(TASKS), x.size))
    return {t: float(np.clip(0.5 + 0.2 * np.tanh(d[k] @ x), 0.0, 1.0)) for k, t in enumerate(TASKS)}


def genome_loop(seed: int = 3) -> CycleQD:
    experts, _, basis = toy_setup("lora")
    archives = CyclicArchives(tasks=TASKS, measures={t: Measure(low=0.2, high=0.8, bins=6) for t in TASKS}, seed=seed)
    operators = GenomeOperators(MergeCrossover(sigma=0.2), SVDMutation(scale=0.5), basis)
    return CycleQD(archives=archives.with_solution_dim(basis.length), operators=operators, seed=seed)


def advance_genome_loop(qd: CycleQD) -> dict:
    """Seed, four generations (one of them failed), one child in flight; returns the runner's
    other checkpoint fields."""
    _, _, basis = toy_setup("lora")
    seeds = {t: basis.expert(t) for t in TASKS}
    results = {t: genome_scores(x) for t, x in seeds.items()}
    results["c"] = ItemScores(results["c"], {t: [0.0, 1.0] for t in TASKS})
    qd.seed(seeds, results)
    for g in range(4):
        candidates = qd.ask()
        told = [Failure("timeout", "b", "slow") if g == 2 else genome_scores(c.vector) for c in candidates]
        qd.tell(candidates, told)
    qd.ask_one()  # in flight at the checkpoint
    return {
        "experts_opt": {"a": results["a"], "b": Failure("raised", "b", "boom"), "c": results["c"]},
        "best_opt_mean": 0.5,
        "elapsed_s": 12.5,
        "genome": True,
        "bases": {t: f"bases/{t}.safetensors" for t in TASKS},
    }


def search_loop(seed: int = 4) -> CoefficientSearch:
    return CoefficientSearch(Search("cmaes", batch_size=4), dim=6, budget=40, seed=seed)


def search_scores(x: np.ndarray) -> dict[str, float]:
    return {t: float(1.0 / (1.0 + np.sum((x - 0.1 * k) ** 2))) for k, t in enumerate(TASKS)}


def advance_search_loop(loop: CoefficientSearch) -> None:
    for _ in range(3):
        xs = loop.ask()
        loop.tell(xs, [search_scores(x) for x in xs])
