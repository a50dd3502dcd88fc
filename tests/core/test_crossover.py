"""Unit tests of cycleqd.core.crossover: the merge crossover τ = Σ_i (w_i / Σ_j w_j) τ_i."""

from __future__ import annotations

import pytest
import torch

from cycleqd.core.crossover import MergeCrossover, layer_of
from cycleqd.core.taskvector import LowRank, TaskVector

NAMES = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.1.self_attn.q_proj.weight",
    "model.layers.1.mlp.up_proj.weight",
    "lm_head.weight",
]
SHAPES = {
    "model.embed_tokens.weight": (7, 4),
    "model.layers.0.self_attn.q_proj.weight": (4, 4),
    "model.layers.0.mlp.up_proj.weight": (6, 4),
    "model.layers.0.input_layernorm.weight": (4,),
    "model.layers.1.self_attn.q_proj.weight": (4, 4),
    "model.layers.1.mlp.up_proj.weight": (6, 4),
    "lm_head.weight": (7, 4),
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dense_parent(seed: int) -> TaskVector:
    g = _gen(seed)
    return TaskVector({n: torch.randn(SHAPES[n], generator=g, dtype=torch.float64) for n in NAMES})


def _lora_parent(seed: int, rank: int) -> TaskVector:
    g = _gen(seed)
    out = {}
    for n in NAMES:
        s = SHAPES[n]
        if len(s) == 2:
            out[n] = LowRank(torch.randn(s[0], rank, generator=g), torch.randn(rank, s[1], generator=g))
    return TaskVector(out)


# -- layer_of ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, group",
    [
        ("model.layers.0.self_attn.q_proj.weight", "layer0"),
        ("model.layers.12.mlp.down_proj.weight", "layer12"),
        ("transformer.h.3.attn.c_attn.weight", "layer3"),
        ("blocks.5.ffn.weight", "layer5"),
        ("encoder.layer.2.output.dense.weight", "layer2"),
        ("model.embed_tokens.weight", "model.embed_tokens.weight"),
        ("lm_head.weight", "lm_head.weight"),
        ("model.norm.weight", "model.norm.weight"),
        ("model.mylayers.1.x", "model.mylayers.1.x"),
    ],
)
def test_layer_of(name, group):
    assert layer_of(name) == group


# -- basic properties ----------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["model", "layer"])
@pytest.mark.parametrize("sigma", [0.0, 0.01, 0.3])
def test_parent_crossed_with_itself_is_itself(granularity, sigma):
    p = _dense_parent(0)
    xo = MergeCrossover(sigma=sigma, granularity=granularity)
    child = xo([p, p, p], _gen(3))
    assert set(child) == set(p)
    for n in NAMES:
        torch.testing.assert_close(child[n], p[n], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("granularity", ["model", "layer"])
def test_sigma_zero_is_exact_mean(granularity):
    parents = [_dense_parent(s) for s in range(3)]
    child = MergeCrossover(mu=0.7, sigma=0.0, granularity=granularity)(parents, _gen(0))
    for n in NAMES:
        torch.testing.assert_close(child[n], (parents[0][n] + parents[1][n] + parents[2][n]) / 3)


def test_model_granularity_matches_oracle():
    mu, sigma, seed = 0.1, 0.2, 42
    parents = [_dense_parent(s) for s in (1, 2, 3)]
    xo = MergeCrossover(mu=mu, sigma=sigma, granularity="model")

    g = _gen(seed)
    w = 1 + mu + sigma * torch.randn(3, 1, generator=g, dtype=torch.float64)
    w = (w / w.sum()).squeeze(1)
    assert float(w.sum()) == pytest.approx(1.0)

    weights = xo.weights(parents, _gen(seed))
    assert len(weights) == 3
    for i in range(3):
        assert set(weights[i]) == set(NAMES)
        for n in NAMES:
            assert weights[i][n] == pytest.approx(float(w[i]), abs=1e-12)

    child = xo(parents, _gen(seed))
    for n in NAMES:
        expected = sum(float(w[i]) * parents[i][n] for i in range(3))
        torch.testing.assert_close(child[n], expected)


def test_crossover_draws_from_the_generator():
    parents = [_dense_parent(s) for s in (1, 2)]
    xo = MergeCrossover(sigma=0.1)
    a = xo(parents, _gen(0))["lm_head.weight"]
    b = xo(parents, _gen(0))["lm_head.weight"]
    c = xo(parents, _gen(1))["lm_head.weight"]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_layer_granularity_groups():
    parents = [_dense_parent(s) for s in (1, 2, 3)]
    xo = MergeCrossover(sigma=0.2, granularity="layer")
    weights = xo.weights(parents, _gen(5))
    groups = {}
    for n in sorted(NAMES):  # task vectors keep their parameters sorted by name
        groups.setdefault(layer_of(n), []).append(n)
    assert len(groups) == 4  # embed, layer0, layer1, lm_head

    for members in groups.values():
        for i in range(3):
            # every parameter of one layer shares the parent's weight
            assert len({weights[i][n] for n in members}) == 1
        # per group, parents' weights sum to one
        assert sum(weights[i][members[0]] for i in range(3)) == pytest.approx(1.0, abs=1e-12)

    reps = [members[0] for members in groups.values()]
    for i in range(3):
        vals = [weights[i][n] for n in reps]
        assert len(set(vals)) == len(vals), "different layers should get different weights"

    # oracle: one N(1, σ) column per group, in first-appearance order of the groups
    g = _gen(5)
    w = 1 + 0.2 * torch.randn(3, len(groups), generator=g, dtype=torch.float64)
    w = w / w.sum(0)
    for j, members in enumerate(groups.values()):
        for i in range(3):
            assert weights[i][members[0]] == pytest.approx(float(w[i, j]), abs=1e-12)

    child = xo(parents, _gen(5))
    for n in NAMES:
        expected = sum(weights[i][n] * parents[i][n] for i in range(3))
        torch.testing.assert_close(child[n], expected)


@pytest.mark.parametrize("granularity", ["model", "layer"])
def test_lora_parents_stay_factored(granularity):
    parents = [_lora_parent(10, 2), _lora_parent(11, 3)]
    xo = MergeCrossover(sigma=0.3, granularity=granularity)
    child = xo(parents, _gen(9))
    assert child.is_factored
    for n in child:
        assert isinstance(child[n], LowRank)
        assert child[n].rank == 5
    dense_child = xo([p.dense() for p in parents], _gen(9))
    assert set(dense_child) == set(child)
    for n in child:
        torch.testing.assert_close(child[n].dense(), dense_child[n], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("granularity", ["model", "layer"])
def test_a_scaled_child_is_its_convex_child_times_a_uniform_draw(granularity):
    parents = [_dense_parent(s) for s in range(3)]
    plain = MergeCrossover(sigma=0.2, granularity=granularity)(parents, _gen(5))
    fixed = MergeCrossover(sigma=0.2, granularity=granularity, scale=(1.5, 1.5))(parents, _gen(5))
    for n in NAMES:  # a fixed scale draws nothing: the same weights, times 1.5
        torch.testing.assert_close(fixed[n], 1.5 * plain[n])
    # The oracle: the weights' normal draws, then one uniform draw for the whole child.
    g = _gen(5)
    torch.randn(3, 1 if granularity == "model" else 4, generator=g, dtype=torch.float64)
    s = 0.5 + 1.5 * float(torch.rand((), generator=g, dtype=torch.float64))
    drawn = MergeCrossover(sigma=0.2, granularity=granularity, scale=(0.5, 2.0))(parents, _gen(5))
    assert 0.5 <= s <= 2.0
    for n in NAMES:
        torch.testing.assert_close(drawn[n], s * plain[n])


@pytest.mark.parametrize("scale", [(0.0, 1.0), (1.5, 1.2), (1.0,), (1.0, 1.2, 1.5)])
def test_a_bad_scale_is_named(scale):
    with pytest.raises(ValueError, match="scale: must be \\[lo, hi\\] with 0 < lo <= hi"):
        MergeCrossover(scale=scale)


def test_invalid_granularity():
    with pytest.raises(ValueError, match="granularity"):
        MergeCrossover(granularity="param")


def test_negative_sigma():
    with pytest.raises(ValueError, match="sigma"):
        MergeCrossover(sigma=-0.1)
