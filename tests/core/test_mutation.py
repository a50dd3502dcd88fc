"""Unit tests of cycleqd.core.mutation: SVD mutation, factored SVD, truncation, Gaussian ablation."""

from __future__ import annotations

import pytest
import torch

from cycleqd.core.mutation import (
    SVD,
    GaussianMutation,
    SVDMutation,
    expert_svds,
    svd_dense,
    svd_lowrank,
    svd_of,
    truncate,
)
from cycleqd.core.taskvector import LowRank, TaskVector


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _lowrank(m: int, n: int, r: int, seed: int) -> LowRank:
    g = _gen(seed)
    return LowRank(torch.randn(m, r, generator=g), torch.randn(r, n, generator=g))


def _reconstruct(s: SVD) -> torch.Tensor:
    return s.U @ torch.diag(s.S) @ s.Vh


# -- SVD helpers -----------------------------------------------------------------------


def test_svd_dense_reconstructs():
    X = torch.randn(7, 4, generator=_gen(0))
    s = svd_dense(X)
    assert s.U.shape == (7, 4) and s.S.shape == (4,) and s.Vh.shape == (4, 4)
    torch.testing.assert_close(_reconstruct(s), X, rtol=1e-5, atol=1e-5)


def test_svd_lowrank_matches_dense_svd():
    lr = _lowrank(20, 15, 3, seed=1)
    dense = lr.B @ lr.A
    s = svd_lowrank(lr)
    assert s.U.shape == (20, 3) and s.S.shape == (3,) and s.Vh.shape == (3, 15)
    S_ref = torch.linalg.svdvals(dense)
    torch.testing.assert_close(s.S, S_ref[:3], rtol=1e-5, atol=1e-5)
    assert float(S_ref[3:].max()) < 1e-4  # the product really has rank 3
    torch.testing.assert_close(_reconstruct(s), dense, rtol=1e-5, atol=1e-5)
    # orthonormal singular vectors
    torch.testing.assert_close(s.U.T @ s.U, torch.eye(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(s.Vh @ s.Vh.T, torch.eye(3), rtol=0, atol=1e-5)
    assert svd_of(lr).S.shape == (3,)


def test_svd_lowrank_does_not_form_the_product(monkeypatch):
    lr = _lowrank(20, 15, 3, seed=2)
    monkeypatch.setattr(LowRank, "dense", lambda self: pytest.fail("svd_lowrank formed B @ A"))
    s = svd_lowrank(lr)
    assert s.S.shape == (3,)


@pytest.mark.parametrize("m, n, r", [(4, 15, 6), (15, 4, 6)])
def test_svd_lowrank_rank_above_a_dimension(m, n, r):
    lr = _lowrank(m, n, r, seed=3)
    s = svd_lowrank(lr)
    k = min(m, n)
    assert s.U.shape == (m, k) and s.S.shape == (k,) and s.Vh.shape == (k, n)
    torch.testing.assert_close(_reconstruct(s), lr.B @ lr.A, rtol=1e-4, atol=1e-4)


def test_mutation_with_expert_rank_above_output_dim():
    expert = TaskVector({"w": _lowrank(4, 15, 6, seed=4)})
    child = TaskVector({"w": torch.zeros(4, 15)})
    out = SVDMutation(scale=0.1)(child, expert_svds(expert), _gen(0))
    assert out["w"].shape == (4, 15)


def test_truncate_is_best_rank_k_approximation():
    lr = _lowrank(12, 9, 5, seed=5)
    t = truncate(lr, 2)
    assert isinstance(t, LowRank)
    assert t.rank == 2 and t.shape == lr.shape
    U, S, Vh = torch.linalg.svd(lr.B @ lr.A, full_matrices=False)
    best = U[:, :2] @ torch.diag(S[:2]) @ Vh[:2]
    torch.testing.assert_close(t.dense(), best, rtol=1e-4, atol=1e-4)
    # Eckart–Young: the error is the norm of the dropped singular values
    err = torch.linalg.norm(lr.B @ lr.A - t.dense())
    assert float(err) == pytest.approx(float(torch.linalg.norm(S[2:])), rel=1e-4)


def test_truncate_noop_when_rank_small():
    lr = _lowrank(6, 6, 2, seed=6)
    assert truncate(lr, 2) is lr
    assert truncate(lr, 5) is lr


def test_expert_svds_selection():
    g = _gen(7)
    expert = TaskVector(
        {
            "model.embed_tokens.weight": torch.randn(8, 4, generator=g),
            "model.layers.0.self_attn.q_proj.weight": torch.randn(4, 4, generator=g),
            "model.layers.0.input_layernorm.weight": torch.randn(4, generator=g),
            "model.layers.0.mlp.up_proj.weight": _lowrank(6, 4, 2, seed=8),
            "lm_head.weight": torch.randn(8, 4, generator=g),
        }
    )
    svds = expert_svds(expert)
    assert list(svds) == [
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.self_attn.q_proj.weight",
    ]  # sorted by name
    assert svds["model.layers.0.mlp.up_proj.weight"].S.shape == (2,)
    assert svds["model.layers.0.self_attn.q_proj.weight"].S.shape == (4,)
    with_emb = expert_svds(expert, include_embeddings=True)
    assert set(with_emb) == {
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "lm_head.weight",
    }
    torch.testing.assert_close(
        _reconstruct(with_emb["model.embed_tokens.weight"]), expert["model.embed_tokens.weight"], rtol=1e-5, atol=1e-5
    )


# -- SVDMutation ---------------------------------------------------------------------


def test_scale_zero_is_identity():
    child = TaskVector({"w": torch.randn(5, 4, generator=_gen(0)), "f": _lowrank(5, 4, 2, seed=1)})
    expert = TaskVector({"w": torch.randn(5, 4, generator=_gen(2)), "f": torch.randn(5, 4, generator=_gen(3))})
    g = _gen(0)
    before = g.get_state()
    out = SVDMutation(scale=0.0)(child, expert_svds(expert), g)
    assert set(out) == set(child)
    assert torch.equal(out["w"], child["w"])
    assert isinstance(out["f"], LowRank) and out["f"].rank == 2
    assert torch.equal(out["f"].dense(), child["f"].dense())
    assert torch.equal(g.get_state(), before)


def test_dense_child_adds_exact_svd_term():
    g = _gen(10)
    expert = TaskVector({"a": torch.randn(6, 5, generator=g), "b": torch.randn(3, 7, generator=g)})
    child = TaskVector({"a": torch.randn(6, 5, generator=g), "b": torch.randn(3, 7, generator=g)})
    svds = expert_svds(expert)
    scale = 0.3
    out = SVDMutation(scale=scale)(child, svds, _gen(123))

    # oracle: r drawn per param in the order of the svds dict, from the same seed
    oracle_gen = _gen(123)
    for name in svds:
        U, S, Vh = torch.linalg.svd(expert[name], full_matrices=False)
        r = torch.rand(S.shape[0], generator=oracle_gen) * scale
        expected = child[name] + U @ torch.diag(r * S) @ Vh
        assert isinstance(out[name], torch.Tensor)
        torch.testing.assert_close(out[name], expected, rtol=1e-5, atol=1e-5)
    # the child itself is unchanged (the mutation is functional)
    assert not torch.allclose(out["a"], child["a"])


def test_added_term_singular_values_bounded_by_scale():
    g = _gen(11)
    E = torch.randn(8, 6, generator=g)
    child = TaskVector({"w": torch.randn(8, 6, generator=g)})
    scale = 0.25
    out = SVDMutation(scale=scale)(child, expert_svds(TaskVector({"w": E})), _gen(0))
    added = torch.linalg.svdvals(out["w"] - child["w"])
    S = torch.linalg.svdvals(E)
    assert torch.all(added <= scale * S + 1e-5)
    # and it is not trivially zero
    assert float(added.max()) > 1e-3


def test_mutation_adds_missing_param_factored():
    E = _lowrank(6, 5, 2, seed=12)
    child = TaskVector({})
    out = SVDMutation(scale=0.5)(child, expert_svds(TaskVector({"w": E})), _gen(0))
    assert isinstance(out["w"], LowRank) and out["w"].rank == 2
    s = svd_lowrank(E)
    r = torch.rand(2, generator=_gen(0)) * 0.5
    torch.testing.assert_close(out["w"].dense(), s.U @ torch.diag(r * s.S) @ s.Vh, rtol=1e-5, atol=1e-5)


def test_factored_child_matches_dense_child():
    expert_lr = _lowrank(10, 8, 3, seed=13)
    child_lr = _lowrank(10, 8, 2, seed=14)
    scale = 0.4

    fact = SVDMutation(scale=scale)(TaskVector({"w": child_lr}), expert_svds(TaskVector({"w": expert_lr})), _gen(7))
    assert isinstance(fact["w"], LowRank)
    assert fact["w"].rank == 2 + 3  # grows by the expert's rank

    # oracle: the dense SVD of the same expert delta, truncated to its top-r components
    U, S, Vh = torch.linalg.svd(expert_lr.B @ expert_lr.A, full_matrices=False)
    dense_svds = {"w": SVD(U[:, :3], S[:3], Vh[:3])}
    dense = SVDMutation(scale=scale)(TaskVector({"w": child_lr.dense()}), dense_svds, _gen(7))
    torch.testing.assert_close(fact["w"].dense(), dense["w"], rtol=1e-4, atol=1e-4)

    # and by hand
    r = torch.rand(3, generator=_gen(7)) * scale
    expected = child_lr.dense() + U[:, :3] @ torch.diag(r * S[:3]) @ Vh[:3]
    torch.testing.assert_close(fact["w"].dense(), expected, rtol=1e-4, atol=1e-4)


def test_max_rank_bounds_factored_child():
    expert = TaskVector({"w": _lowrank(10, 8, 3, seed=15)})
    svds = expert_svds(expert)
    child = TaskVector({"w": _lowrank(10, 8, 2, seed=16)})
    mut = SVDMutation(scale=0.2, max_rank=4)
    g = _gen(0)
    for _ in range(3):
        child = mut(child, svds, g)
        assert isinstance(child["w"], LowRank)
        assert child["w"].rank <= 4

    # one step with truncation equals the best rank-4 approximation of the untruncated step
    start = TaskVector({"w": _lowrank(10, 8, 2, seed=16)})
    full = SVDMutation(scale=0.2)(start, svds, _gen(1))
    cut = mut(start, svds, _gen(1))
    assert full["w"].rank == 5 and cut["w"].rank == 4
    U, S, Vh = torch.linalg.svd(full["w"].dense(), full_matrices=False)
    torch.testing.assert_close(cut["w"].dense(), U[:, :4] @ torch.diag(S[:4]) @ Vh[:4], rtol=1e-4, atol=1e-4)


def test_mutation_validation():
    with pytest.raises(ValueError, match="scale"):
        SVDMutation(scale=-0.1)
    with pytest.raises(ValueError, match="max_rank"):
        SVDMutation(max_rank=0)


# -- GaussianMutation -----------------------------------------------------------------


def test_gaussian_std_zero_is_identity():
    child = TaskVector({"w": torch.randn(4, 3, generator=_gen(0)), "f": _lowrank(4, 3, 1, seed=1)})
    out = GaussianMutation(std=0.0)(child, {}, _gen(0))
    assert torch.equal(out["w"], child["w"])
    assert isinstance(out["f"], torch.Tensor)  # densified
    assert torch.equal(out["f"], child["f"].dense())


def test_gaussian_noise_has_requested_std():
    child = TaskVector({"w": torch.zeros(200, 100), "f": _lowrank(50, 40, 2, seed=2)})
    std = 0.05
    out = GaussianMutation(std=std)(child, {}, _gen(3))
    noise = out["w"] - child["w"]
    assert float(noise.std()) == pytest.approx(std, rel=0.05)
    assert abs(float(noise.mean())) < 0.01 * std * 10
    noise_f = out["f"] - child["f"].dense()
    assert float(noise_f.std()) == pytest.approx(std, rel=0.1)
    # seeded: same generator seed, same noise
    again = GaussianMutation(std=std)(child, {}, _gen(3))
    assert torch.equal(again["w"], out["w"])


def test_truncate_when_rank_exceeds_both_dimensions():
    """A child whose factored rank outgrew min(out, in) is still truncated to its best approximation."""
    lr = _lowrank(6, 5, 7, seed=17)
    t = truncate(lr, 3)
    assert isinstance(t, LowRank) and t.rank == 3 and t.shape == (6, 5)
    U, S, Vh = torch.linalg.svd(lr.B @ lr.A, full_matrices=False)
    torch.testing.assert_close(t.dense(), U[:, :3] @ torch.diag(S[:3]) @ Vh[:3], rtol=1e-4, atol=1e-4)


def test_repeated_factored_mutation_with_max_rank_matches_dense_oracle():
    expert_lr = _lowrank(6, 5, 3, seed=18)
    svds = expert_svds(TaskVector({"w": expert_lr}))
    mut = SVDMutation(scale=0.5, max_rank=4)
    child = TaskVector({"w": _lowrank(6, 5, 2, seed=19)})
    dense = child["w"].dense()
    g, og = _gen(4), _gen(4)
    U, S, Vh = torch.linalg.svd(expert_lr.B @ expert_lr.A, full_matrices=False)
    for _ in range(3):
        child = mut(child, svds, g)
        assert child["w"].rank <= 4
        r = torch.rand(3, generator=og) * 0.5
        dense = dense + U[:, :3] @ torch.diag(r * S[:3]) @ Vh[:3]
        Ud, Sd, Vhd = torch.linalg.svd(dense, full_matrices=False)
        dense = Ud[:, :4] @ torch.diag(Sd[:4]) @ Vhd[:4]
        torch.testing.assert_close(child["w"].dense(), dense, rtol=1e-4, atol=1e-4)
