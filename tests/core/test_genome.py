"""The genome is exact: children made on coefficients, then materialised, equal the
children the dense/factored path makes from the same parents with the same draws."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from cycleqd.core.archives import CyclicArchives
from cycleqd.core.crossover import MergeCrossover, MethodCrossover
from cycleqd.core.evolve import CycleQD
from cycleqd.core.genome import cached_expert_basis, content_hash
from cycleqd.core.merging import Merge
from cycleqd.core.mutation import SVDMutation, expert_svds
from cycleqd.core.operators import DenseOperators, GenomeOperators, linear_in_genome
from cycleqd.core.taskvector import LowRank, as_dense
from cycleqd.protocols import Measure
from cycleqd.run.store import EliteStore
from tests.builders import SHAPES, TASKS, toy_experts, toy_setup

CROSSOVERS = [
    MergeCrossover(sigma=0.3, granularity="model"),
    MergeCrossover(sigma=0.3, granularity="layer"),
    MergeCrossover(sigma=0.3, granularity="layer", scale=(1.0, 1.6)),  # children leave the convex hull
    MethodCrossover(merge=Merge("linear"), sigma=0.3),
    MethodCrossover(merge=Merge("linear", scale=1.3), sigma=0.3),  # task arithmetic's λ
]


def _close(genome_delta: torch.Tensor, dense: torch.Tensor) -> None:
    scale = float(dense.abs().max()) + 1e-12
    assert torch.allclose(genome_delta, dense, rtol=0, atol=2e-5 * scale), (
        float((genome_delta - dense).abs().max()) / scale
    )


@pytest.mark.parametrize("kind", ["full", "lora"])
@pytest.mark.parametrize(
    "crossover", CROSSOVERS, ids=["model", "layer", "layer_scaled", "linear_merge", "linear_lambda"]
)
def test_random_breeding_in_both_representations_makes_the_same_children(kind, crossover):
    experts, svds, basis = toy_setup(kind)
    mutation = SVDMutation(scale=0.5)
    dense_ops = DenseOperators(crossover, mutation, svds, store=None)
    genome_ops = GenomeOperators(crossover, mutation, basis)
    dense_pop = [experts[t] for t in TASKS]
    genome_pop = [basis.expert(t) for t in TASKS]
    for t, x in zip(TASKS, genome_pop):  # an expert's genome is the expert
        for name in SHAPES:
            _close(basis.delta(x, name), as_dense(experts[t][name]))
    pick = random.Random(3)
    g_dense, g_genome = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(25):
        i, j = pick.sample(range(len(dense_pop)), 2)
        q = pick.choice(TASKS)
        dense_child = dense_ops.child([dense_pop[i], dense_pop[j]], q, g_dense)
        genome_child = genome_ops.child([genome_pop[i], genome_pop[j]], q, g_genome)
        assert torch.equal(g_dense.get_state(), g_genome.get_state())  # the same draws, in the same order
        for name in SHAPES:
            _close(basis.delta(genome_child, name), as_dense(dense_child[name]))
        dense_pop.append(dense_child)
        genome_pop.append(genome_child)
    # the factored form of a LoRA genome has rank at most the experts' ranks summed, forever
    if kind == "lora":
        tv = basis.factored(genome_pop[-1])
        assert max(d.rank for d in tv.values() if isinstance(d, LowRank)) <= 3 * len(TASKS)
        assert max(d.rank for d in dense_pop[-1].values() if isinstance(d, LowRank)) > 3 * len(
            TASKS
        )  # the dense path's grows


def test_the_loop_keeps_the_same_archives_in_both_representations(tmp_path):
    experts, svds, basis = toy_setup("full")
    direction = {
        t: {n: torch.randn(s, generator=torch.Generator().manual_seed(99 + k)) for n, s in SHAPES.items()}
        for k, t in enumerate(TASKS)
    }

    def evaluate(tv) -> dict[str, float]:
        # coarse scores, so float32 rounding between the representations cannot split a tie
        return {
            t: round(float(np.clip(0.5 + 0.02 * sum(float((tv[n] * direction[t][n]).sum()) for n in SHAPES), 0, 1)), 2)
            for t in TASKS
        }

    def make(ops, solution_dim):
        arch = CyclicArchives(
            tasks=TASKS, measures={t: Measure(0, 1, 10) for t in TASKS}, seed=1, solution_dim=solution_dim
        )
        return CycleQD(archives=arch, operators=ops, seed=4)

    crossover, mutation = MergeCrossover(sigma=0.3, granularity="layer"), SVDMutation(scale=0.5)
    dense = make(DenseOperators(crossover, mutation, svds, EliteStore(tmp_path / "elites")), 1)
    genome = make(GenomeOperators(crossover, mutation, basis), basis.length)
    dense.seed(experts, {t: evaluate(tv) for t, tv in experts.items()})
    genome.seed({t: basis.expert(t) for t in TASKS}, {t: evaluate(basis.view(basis.expert(t))) for t in TASKS})
    for _ in range(30):
        for qd, view in ((dense, lambda x: x), (genome, basis.view)):
            cands = qd.ask()
            qd.tell(cands, [evaluate(view(c.vector)) for c in cands])
    for t in TASKS:
        a, b = dense.archives.archives[t].data(), genome.archives.archives[t].data()
        for key in ("id", "objective", "measures", "index", "generation", "parents"):
            order_a, order_b = np.argsort(a["id"]), np.argsort(b["id"])
            assert np.array_equal(a[key][order_a], b[key][order_b]), (t, key)
    assert dense.archives.alive_ids() == genome.archives.alive_ids()
    assert len(dense.archives.alive_ids()) > 3  # children entered the archives


def test_entry_wise_operators_are_not_linear_in_the_genome():
    assert linear_in_genome(MergeCrossover(), SVDMutation())
    assert linear_in_genome(MethodCrossover(merge=Merge("linear")), SVDMutation())
    assert not linear_in_genome(MethodCrossover(merge=Merge("ties")), SVDMutation())
    assert not linear_in_genome(MergeCrossover(), SVDMutation(max_rank=4))  # truncation is not linear
    from cycleqd.core.mutation import GaussianMutation

    assert not linear_in_genome(MergeCrossover(), GaussianMutation())
    with pytest.raises(ValueError, match="not linear"):
        GenomeOperators(MethodCrossover(merge=Merge("ties")), SVDMutation(), toy_setup("full")[2])


def test_bases_are_cached_by_expert_content(tmp_path):
    experts = toy_experts("full")
    calls = []

    def svd(tv):
        calls.append(1)
        return expert_svds(tv)

    first, key = cached_expert_basis(experts["a"], tmp_path, svd)
    again, key2 = cached_expert_basis(experts["a"], tmp_path, svd)
    assert key == key2 == content_hash(experts["a"]) and len(calls) == 1  # the second one came from disk
    for name, s in first.svds.items():
        assert torch.equal(s.U, again.svds[name].U) and torch.equal(s.S, again.svds[name].S)
    assert set(again.deltas) == {"model.embed_tokens.weight", "model.layers.0.post_attention_layernorm.weight"}
    assert list(again.svds) == sorted(first.svds)  # the order the mutation draws in, whatever the file order
    cached_expert_basis(experts["b"], tmp_path, svd)
    assert len(calls) == 2 and len(list((tmp_path / "bases").glob("*.safetensors"))) == 2


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_expert_weights_are_the_projection_of_a_genome_on_each_expert(kind):
    experts, _, basis = toy_setup(kind)
    e = {t: basis.expert(t) for t in TASKS}
    assert basis.expert_weights(e["a"]) == pytest.approx({"a": 1.0, "b": 0.0, "c": 0.0})
    assert basis.expert_weights(0.3 * e["a"] + 0.7 * e["b"] + 1.5 * e["c"]) == pytest.approx(
        {"a": 0.3, "b": 0.7, "c": 1.5}
    )
    # Random coefficients on expert b's blocks alone: the weight is the projection <τ, τ_b> / ‖τ_b‖²,
    # computed densely (each singular direction counts by the energy it carries).
    rng = np.random.default_rng(0)
    c = np.where(e["b"] > 0, rng.uniform(0, 2, basis.length), 0.0).astype(np.float32)
    dot = sum(float((basis.delta(c, n).double() * as_dense(experts["b"][n]).double()).sum()) for n in experts["b"])
    norm = sum(float(as_dense(experts["b"][n]).double().pow(2).sum()) for n in experts["b"])
    assert basis.expert_weights(c) == pytest.approx({"a": 0.0, "b": dot / norm, "c": 0.0}, rel=1e-4)
    assert abs(dot / norm - float(c[e["b"] > 0].mean())) > 0.01  # energy-weighted, not a plain mean
