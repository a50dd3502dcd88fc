"""Each place cycleqd departs from the authors' reference code (SakanaAI/CycleQD at 3d14971),
with the switch that restores the reference's behaviour: the reference's formula is written out
here from its source (file and function named), fed the same inputs and random numbers as
cycleqd, and compared. Without the switch each one differs, so none of these can pass by
accident."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cycleqd.core.archives import CyclicArchives
from cycleqd.core.crossover import MergeCrossover
from cycleqd.core.evolve import CycleQD
from cycleqd.core.genome import Basis, ExpertBasis, cached_expert_basis
from cycleqd.core.mutation import SVDMutation, expert_svds
from cycleqd.core.operators import DenseOperators, GenomeOperators
from cycleqd.core.taskvector import TaskVector, as_dense
from cycleqd.protocols import Measure
from cycleqd.run.store import EliteStore
from tests.builders import SHAPES, TASKS, toy_experts

# -- elite sampling: sampler/elite_sampler.py, EliteSampler.sample and _normalize ---------------


def reference_elite_probabilities(qualities: np.ndarray, keys: np.ndarray) -> np.ndarray:
    def normalize(values, min_base=0.5, max_base=0.8):
        if values.min() == values.max():
            return np.ones_like(values, dtype=np.float64)
        return min_base + (values - values.min()) * (max_base / (values.max() - values.min()))

    probs = normalize(qualities.astype(np.float64))
    for i in range(keys.shape[1]):
        probs = probs * normalize(keys[:, i].astype(np.float64))
    if np.sum(probs) == 0:
        probs = np.ones(len(probs))
    return probs / np.sum(probs)


def _filled(seed: int, **kw) -> CyclicArchives:
    arch = CyclicArchives(tasks=TASKS, measures={t: Measure(0.0, 1.0, 15) for t in TASKS}, seed=0, **kw)
    rng = np.random.default_rng(seed)
    for i in range(40):
        arch.add(i, {t: float(rng.uniform(0, 1)) for t in TASKS}, generation=i)
    return arch


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_elite_sampling_with_alpha_0_5_1_3_is_the_reference_s(seed):
    for alpha, same in (((0.5, 1.3), True), ((0.5, 0.8), False)):
        arch = _filled(seed, alpha=alpha)
        for task in TASKS:
            data, ours = arch.parent_probabilities(task)
            # the reference's archive is a dict keyed by each elite's descriptor bins
            keys = np.atleast_2d(arch.archives[task].int_to_grid_index(data["index"]))
            theirs = reference_elite_probabilities(data["objective"], keys)
            assert len(ours) >= 10
            if same:
                np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
            else:
                assert np.abs(ours - theirs).max() > 1e-3  # the paper's range is not the code's


# -- SVD mutation: mutation/svd_uniform_mutator.py, SVDUniformMutator._mutate -------------------


def reference_svd_mutate(weights: dict, svd_dict: dict, scales: dict) -> dict:
    """The reference's loop, its ``torch.rand(rank) * mutation_rate`` replaced by ``scales[k]``
    (the numbers cycleqd drew), and its SVDs stored as it stores them (U, S, V with V = Vhᵀ)."""
    out = dict(weights)
    for k in weights:
        if "norm" in k:
            continue
        u, s, v = svd_dict[f"{k}.U"], svd_dict[f"{k}.S"], svd_dict[f"{k}.V"]
        out[k] = out[k] + u @ torch.diag_embed(scales[k] * s) @ v.T
    return out


NAMES = {**SHAPES, "lm_head.weight": (12, 6)}


def _expert(seed: int) -> TaskVector:
    g = torch.Generator().manual_seed(seed)
    return TaskVector({n: torch.randn(s, generator=g) * 0.1 for n, s in NAMES.items()})


def test_svd_mutation_with_embeddings_moves_what_the_reference_moves():
    expert, child = _expert(1), _expert(2)
    for include, same in ((True, True), (False, False)):
        mutation = SVDMutation(scale=0.1, include_embeddings=include)
        svds = expert_svds(expert, include_embeddings=include)
        ours = mutation(child, svds, torch.Generator().manual_seed(7))
        drawn = mutation.draws(svds, torch.Generator().manual_seed(7))
        full = expert_svds(expert, include_embeddings=True)  # the reference holds the SVD of every weight
        svd_dict = {f"{n}.{k}": v for n, s in full.items() for k, v in (("U", s.U), ("S", s.S), ("V", s.Vh.T))}
        # the reference draws for every weight; where cycleqd drew, it gets the same numbers
        extra = torch.Generator().manual_seed(0)
        scales = {n: drawn[n] if n in drawn else torch.rand(len(full[n].S), generator=extra) * 0.1 for n in full}
        theirs = reference_svd_mutate({n: as_dense(d) for n, d in child.items()}, svd_dict, scales)
        assert (set(drawn) == {n for n in NAMES if "norm" not in n}) is same
        moved = {n for n in NAMES if not torch.equal(as_dense(ours[n]), as_dense(child[n]))}
        assert ("model.embed_tokens.weight" in moved and "lm_head.weight" in moved) is same
        assert "model.layers.0.post_attention_layernorm.weight" not in moved
        for n in NAMES:
            close = torch.allclose(as_dense(ours[n]), theirs[n], rtol=0, atol=1e-6)
            assert close or (not same and ("embed" in n or "lm_head" in n)), n
        if not same:
            assert not torch.allclose(as_dense(ours["lm_head.weight"]), theirs["lm_head.weight"], atol=1e-6)


def test_a_genome_mutates_the_embeddings_as_the_dense_path_does(tmp_path):
    experts = toy_experts("full")
    svds = {t: expert_svds(tv, include_embeddings=True) for t, tv in experts.items()}
    basis = Basis(TASKS, {t: ExpertBasis.of(experts[t], svds[t]) for t in TASKS})
    crossover, mutation = MergeCrossover(sigma=0.3), SVDMutation(scale=0.5, include_embeddings=True)
    dense = DenseOperators(crossover, mutation, svds, store=None)
    genome = GenomeOperators(crossover, mutation, basis)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    d = dense.child([experts["a"], experts["b"]], "c", g1)
    x = genome.child([basis.expert("a"), basis.expert("b")], "c", g2)
    name = "model.embed_tokens.weight"
    merged = 0.5 * (as_dense(experts["a"][name]) + as_dense(experts["b"][name]))
    assert (as_dense(d[name]) - merged).abs().max() > 1e-3  # mutated, not only merged
    torch.testing.assert_close(basis.delta(x, name), as_dense(d[name]), rtol=0, atol=1e-5)
    # one expert's bases with and without the embeddings are cached apart
    plain, k1 = cached_expert_basis(experts["a"], tmp_path, expert_svds)
    wide, k2 = cached_expert_basis(
        experts["a"], tmp_path, lambda tv: expert_svds(tv, include_embeddings=True), variant="embeddings"
    )
    assert k1 != k2 and name in wide.svds and name not in plain.svds


# -- bin edges: tasks/base.py, BaseTask._get_bin_id ----------------------------------------------


def reference_bin(metric: float, low: float, high: float, bins: int) -> int:
    edges = np.linspace(low, high, bins + 1)
    return min(max(0, np.digitize(metric, edges, right=True) - 1), bins - 1)


@pytest.mark.parametrize(("runs", "high", "upper_differs"), [(550, 0.45, 7), (100, 0.45, 14), (399, 0.75, 0)])
def test_lower_edges_bin_every_k_over_n_score_as_the_reference(runs, high, upper_differs):
    """The reference's task configs: [0, 0.45] for the agent tasks, [0, 0.75] for coding, 15 bins."""
    tasks = ["q", "d"]
    measures = {"q": Measure(0.0, 1.0, 15), "d": Measure(0.0, high, 15)}
    scores = [k / runs for k in range(runs + 1)]
    for edges in ("lower", "upper"):
        arch = CyclicArchives(tasks=tasks, measures=measures, edges=edges)
        archive = arch.archives["q"]
        cells = archive.int_to_grid_index(archive.index_of([arch.measures_of("q", {"q": 0, "d": s}) for s in scores]))
        theirs = [reference_bin(s, 0.0, high, 15) for s in scores]
        differ = sum(int(c[0]) != r for c, r in zip(cells, theirs))
        assert differ == (0 if edges == "lower" else upper_differs), edges
    # and through add(): an edge score's elite sits in the reference's cell
    arch = CyclicArchives(tasks=tasks, measures=measures, edges="lower")
    arch.add(0, {"q": 0.5, "d": 2 * high / 15}, generation=0)
    (row,) = [r for r in arch.rows() if r["archive"] == "q"]
    assert row["cell"] == (1,)


def test_edges_are_a_grid_s_only():
    with pytest.raises(Exception, match="edges: only a grid has bin edges"):
        CyclicArchives(tasks=TASKS, measures={t: Measure(0, 1, 5) for t in TASKS}, kind="dns", edges="lower")


# -- the order of the quality task: main.py, run_qd ----------------------------------------------


def reference_cycle(tasks: list[str], generations: int, workers: int, flip_interval: int = 1) -> dict[int, str]:
    """Which archive each generation (numbered from 1) draws its parents from."""
    q_idx, gen, out = 0, 1, {}
    for i in range(workers):
        q_idx = (q_idx + 1) % len(tasks)
        out[i + gen] = tasks[q_idx]
    while gen < generations + 1:
        if gen % flip_interval == 0:
            q_idx = (q_idx + 1) % len(tasks)
        out[gen + workers] = tasks[q_idx]
        gen += 1
    return {g: t for g, t in out.items() if g <= generations}


@pytest.mark.parametrize("workers", [1, 3, 4])
def test_cycle_offset_1_cycles_the_archives_in_the_reference_s_order(tmp_path, workers):
    experts = toy_experts("full")
    svds = {t: expert_svds(tv) for t, tv in experts.items()}
    theirs = reference_cycle(TASKS, 12, workers)
    for offset, same in ((1, True), (0, False)):
        arch = CyclicArchives(tasks=TASKS, measures={t: Measure(0, 1, 10) for t in TASKS}, cycle_offset=offset)
        store = EliteStore(tmp_path / f"{offset}")
        qd = CycleQD(archives=arch, operators=DenseOperators(MergeCrossover(), SVDMutation(), svds, store), seed=0)
        qd.seed(experts, {t: {u: 0.2 + 0.5 * (u == t) for u in TASKS} for t in TASKS})
        ours = {}
        in_flight = [qd.ask_one() for _ in range(workers)]  # steady state, as the reference's workers
        while len(ours) < 12:
            c = in_flight.pop(0)
            ours[c.generation + 1] = c.quality_task
            qd.tell_one(c, {t: 0.1 for t in TASKS})
            in_flight.append(qd.ask_one())
        assert (ours == theirs) is same
    assert [theirs[g] for g in (1, 2, 3)] == ["b", "c", "a"]  # the second listed task first
