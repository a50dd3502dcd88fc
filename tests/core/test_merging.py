"""Merge methods against peft's merge utilities and against formulas written here."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from peft.utils import merge_utils

from cycleqd.core.merging import Merge, breadcrumbs, dare, magnitude_mask, slerp, ties
from cycleqd.core.taskvector import LowRank, TaskVector


def _tensors(n=3, shape=(12, 10), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_equals_peft_at_equal_weights(density):
    ts = _tensors()
    ours = ties(ts, [1.0, 1.0, 1.0], density)
    ref = merge_utils.ties(ts, torch.ones(3), density, majority_sign_method="total")
    torch.testing.assert_close(ours, ref)


def test_ties_is_the_weighted_mean_of_agreeing_entries():
    """mergekit's ``normalize: true``: Σ w_i τ_i [agree] / Σ w_i [agree], the sign elected on
    the weighted sum; written out entry by entry."""
    ts = _tensors(3, (6, 5))
    w = [0.5, 0.3, 0.9]
    out = ties(ts, w, 0.6)
    trimmed = [t * magnitude_mask(t, 0.6) for t in ts]
    oracle = torch.zeros(6, 5)
    for idx in itertools.product(range(6), range(5)):
        vals = [float(t[idx]) for t in trimmed]
        sign = 1.0 if sum(wi * v for wi, v in zip(w, vals)) >= 0 else -1.0
        agree = [(wi, v) for wi, v in zip(w, vals) if v != 0 and math.copysign(1.0, v) == sign]
        oracle[idx] = sum(wi * v for wi, v in agree) / sum(wi for wi, _ in agree) if agree else 0.0
    torch.testing.assert_close(out, oracle)


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_a_ties_crossover_child_is_on_its_parents_scale(method):
    """Normalised crossover weights must not shrink the child: two equal parents give that
    parent back (trimmed), not half of it."""
    from cycleqd.core.crossover import MethodCrossover

    (t,) = _tensors(1, (16, 16))
    parent = TaskVector({"w": t})
    child = MethodCrossover(Merge(method, density=1.0), sigma=0.05)([parent, parent], torch.Generator().manual_seed(0))
    torch.testing.assert_close(child["w"], t)


def test_magnitude_mask_equals_peft_pruning():
    t = _tensors(1)[0]
    torch.testing.assert_close(t * magnitude_mask(t, 0.3), merge_utils.magnitude_based_pruning(t, 0.3))


def test_dare_rescales_the_kept_entries_and_is_reproducible():
    ts = _tensors()
    w = [1.0, 0.5, 0.25]
    a = dare(ts, w, 0.4, torch.Generator().manual_seed(7))
    b = dare(ts, w, 0.4, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)
    # oracle: the same masks drawn in the same order, written out
    g = torch.Generator().manual_seed(7)
    masks = [(torch.rand(t.shape, generator=g) < 0.4).float() for t in ts]
    oracle = sum(wi * t * m / 0.4 for wi, t, m in zip(w, ts, masks))
    torch.testing.assert_close(a, oracle)
    # dare_ties at equal weights: the same kept tensors through peft's sign election and disjoint merge
    g = torch.Generator().manual_seed(7)
    kept = [t * (torch.rand(t.shape, generator=g) < 0.4).float() / 0.4 for t in ts]
    stack = torch.stack(kept)
    mask = merge_utils.calculate_majority_sign_mask(stack, method="total")
    ref = merge_utils.disjoint_merge(stack, mask)
    torch.testing.assert_close(dare(ts, [1.0] * 3, 0.4, torch.Generator().manual_seed(7), combine="ties"), ref)
    # density 1 keeps everything: plain task arithmetic, as peft's dare_linear at density 1
    torch.testing.assert_close(dare(ts, w, 1.0, g), merge_utils.dare_linear(ts, torch.tensor(w), 1.0))


def test_breadcrumbs_drops_outliers_and_small_entries():
    t = torch.arange(1.0, 101.0).view(10, 10) * torch.where(torch.arange(100) % 2 == 0, 1.0, -1.0).view(10, 10)
    out = breadcrumbs([t], [2.0], density=0.5, gamma=0.1)
    mag = t.abs()
    keep = (mag <= 90) & (mag > 40)  # the top 10 dropped, the next 50 kept
    torch.testing.assert_close(out, 2.0 * t * keep)


@pytest.mark.parametrize("shape, density, gamma", [((64, 47), 0.5, 0.1), ((10, 10), 0.9, 0.2), ((7,), 0.3, 0.0)])
def test_breadcrumbs_keeps_floor_density_n_entries(shape, density, gamma):
    """``⌊density·n⌋`` kept after the ``⌊gamma·n⌋`` largest (the paper's count; 64×47 with
    γ = 0.1 is a shape where ⌊(density+γ)·n⌋ − ⌊γ·n⌋ differs)."""
    (t,) = _tensors(1, shape, seed=3)
    n = t.numel()
    out = breadcrumbs([t], [1.0], density, gamma)
    keep = int(density * n)
    top = min(int(gamma * n), n - keep)  # fewer outliers dropped when density + gamma > 1
    order = torch.argsort(t.abs().flatten(), descending=True)
    expected = torch.zeros(n)
    expected[order[top : top + keep]] = t.flatten()[order[top : top + keep]]
    assert int((out != 0).sum()) == keep
    torch.testing.assert_close(out, expected.view(shape))


def test_slerp_formula_and_endpoints():
    a, b = _tensors(2, (5, 4))
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    fa, fb = a.flatten().double(), b.flatten().double()
    omega = math.acos(float(fa @ fb / (fa.norm() * fb.norm())))
    oracle = (math.sin(0.3 * omega) * fa / math.sin(omega) + math.sin(0.7 * omega) * fb / math.sin(omega)).view(5, 4)
    torch.testing.assert_close(slerp(a, b, 0.7), oracle.float())
    torch.testing.assert_close(slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel: linear


def test_merge_on_task_vectors_dense_and_lora():
    g = torch.Generator().manual_seed(1)
    lora = [
        TaskVector({"w": LowRank(torch.randn(8, 2, generator=g), torch.randn(2, 6, generator=g))}) for _ in range(2)
    ]
    dense = [v.dense() for v in lora]
    lin = Merge("linear")(lora, [0.5, 0.5])
    assert isinstance(lin["w"], LowRank) and lin["w"].rank == 4  # linear stays factored
    torch.testing.assert_close(lin["w"].dense(), Merge("linear")(dense, [0.5, 0.5])["w"])
    for method in ("ties", "breadcrumbs", "slerp", "dare_linear"):
        m = Merge(method, density=0.5)
        a = m(lora, [0.6, 0.4], torch.Generator().manual_seed(3))
        b = m(dense, [0.6, 0.4], torch.Generator().manual_seed(3))
        assert isinstance(a["w"], torch.Tensor)  # entry-wise methods densify
        torch.testing.assert_close(a["w"], b["w"])
    with pytest.raises(ValueError, match="method"):
        Merge("average")
    with pytest.raises(ValueError, match="exactly 2"):
        Merge("slerp")(dense + dense[:1], [1, 1, 1])


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.5, 0.3, 0.9], [0.36, 0.33, 0.31]])
@pytest.mark.parametrize("density", [0.3, 0.7, 1.0])
def test_ties_and_breadcrumbs_equal_mergekit_per_tensor(weights, density):
    """mergekit 0.1.5's own per-tensor code (TIES: magnitude sparsification, sign election on
    the weighted deltas, ``normalize: true``; breadcrumbs: ``magnitude_outliers``) as the oracle."""
    sparsify = pytest.importorskip("mergekit.sparsify")
    gta = pytest.importorskip("mergekit.merge_methods.generalized_task_arithmetic")
    ts = _tensors(3, (64, 47), seed=5)
    w = torch.tensor(weights).view(-1, 1, 1)
    deltas = torch.stack([sparsify.magnitude(t, density) for t in ts]) * w
    mask = gta.get_mask(deltas, method="sum")
    divisor = (w * mask).sum(0)
    divisor[divisor == 0] = 1
    torch.testing.assert_close(ties(ts, weights, density), (deltas * mask).sum(0) / divisor)
    for gamma in (0.01, 0.1, 0.5):
        ref = sum(wi * sparsify.magnitude_outliers(t, density, gamma=gamma) for wi, t in zip(weights, ts))
        torch.testing.assert_close(breadcrumbs(ts, weights, density, gamma), ref)


# -- breadcrumbs_ties, della, model_stock, λ ------------------------------------------------


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.5, 0.3, 0.9]])
@pytest.mark.parametrize("density, epsilon", [(0.3, 0.1), (0.6, 0.2)])
def test_della_breadcrumbs_ties_and_model_stock_equal_mergekit_per_tensor(weights, density, epsilon):
    """mergekit 0.1.5's per-tensor code as the oracle: della_magprune with ``rescale: true``
    (the same Bernoulli draws from the same seed), TIES' election with ``normalize`` as each
    method's default, and model_stock at equal weights (its mean is unweighted)."""
    sparsify = pytest.importorskip("mergekit.sparsify")
    gta = pytest.importorskip("mergekit.merge_methods.generalized_task_arithmetic")
    from mergekit.merge_methods.base import TensorGroup
    from mergekit.merge_methods.model_stock import model_stock_merge_method

    from cycleqd.core.merging import breadcrumbs_ties, della, model_stock

    ts = _tensors(3, (64, 47), seed=7)
    w = torch.tensor(weights).view(-1, 1, 1)

    def elect(deltas, normalize):
        deltas = deltas * w
        mask = gta.get_mask(deltas, method="sum")
        divisor = (w * mask).sum(0)
        divisor[divisor == 0] = 1
        return (deltas * mask).sum(0) / (divisor if normalize else 1)

    # della: mergekit draws from the global generator, cycleqd from its own, both seeded alike
    torch.manual_seed(11)
    pruned = torch.stack(
        [sparsify.della_magprune(t, density, epsilon, rescale_norm=sparsify.RescaleNorm.l1) for t in ts]
    )
    torch.testing.assert_close(
        della(ts, weights, density, epsilon, torch.Generator().manual_seed(11)), elect(pruned, True)
    )
    torch.testing.assert_close(
        della(ts, weights, density, epsilon, torch.Generator().manual_seed(11), combine="linear"), (pruned * w).sum(0)
    )
    outliers = torch.stack([sparsify.magnitude_outliers(t, density, gamma=0.05) for t in ts])
    torch.testing.assert_close(breadcrumbs_ties(ts, weights, density, 0.05), elect(outliers, False))
    base = torch.zeros(64, 47)
    group = TensorGroup.from_tensors([base, *ts], base_index=0)
    torch.testing.assert_close(model_stock(ts, [1.0, 1.0, 1.0]), model_stock_merge_method.implementation(group) - base)


def test_della_keeps_large_entries_more_often_and_the_l1_norm():
    """Written out: keep probability density − ε + 2ε·(rank − 1)/(n − 1) along each row."""
    from cycleqd.core.merging import della_prune

    t = torch.arange(1, 101, dtype=torch.float32).repeat(4000, 1)  # rank = value
    kept = della_prune(t, 0.5, 0.3, torch.Generator().manual_seed(0))
    rate = (kept != 0).float().mean(0)
    expected = 0.2 + 0.6 * torch.arange(100) / 99
    torch.testing.assert_close(rate, expected, atol=0.03, rtol=0)
    torch.testing.assert_close(kept.abs().sum(), t.abs().sum())
    assert torch.equal(della_prune(t, 1.0, 0.0, torch.Generator()), t)
    with pytest.raises(ValueError, match="epsilon"):
        Merge("della", density=0.5, epsilon=0.5)


def test_model_stock_follows_the_angle_between_the_experts():
    """t = k·cos θ / (1 + (k − 1)·cos θ): equal experts give their mean, orthogonal ones the base."""
    from cycleqd.core.merging import model_stock

    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    assert torch.equal(model_stock([a, b], [1.0, 1.0]), torch.zeros(2, 2))
    torch.testing.assert_close(model_stock([a, a, a], [1.0, 1.0, 1.0]), a)
    c = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # cos(a, c) = 1/√2
    cos = 1 / math.sqrt(2)
    torch.testing.assert_close(model_stock([a, c], [1.0, 1.0]), 2 * cos / (1 + cos) * (a + c) / 2)
    torch.testing.assert_close(
        model_stock([a, c], [3.0, 1.0]), 2 * cos / (1 + cos) * (3 * a + c) / 4
    )  # the mean weighted


@pytest.mark.parametrize("method", ["linear", "ties", "breadcrumbs_ties", "della_linear", "model_stock"])
def test_lambda_multiplies_every_merge(method):
    vectors = [TaskVector({"w": t}) for t in _tensors(3, (8, 6), seed=2)]
    plain = Merge(method)(vectors, [0.4, 0.3, 0.3], torch.Generator().manual_seed(1))
    scaled = Merge(method, scale=1.7)(vectors, [0.4, 0.3, 0.3], torch.Generator().manual_seed(1))
    torch.testing.assert_close(scaled["w"], 1.7 * plain["w"])
    with pytest.raises(ValueError, match="scale"):
        Merge(method, scale=0.0)


def test_the_method_table_says_which_merge_is_linear_and_what_each_reads():
    from dataclasses import fields

    from cycleqd.core.merging import METHODS

    assert [name for name, m in METHODS.items() if m.linear] == ["linear"]
    assert Merge("linear", scale=1.3).linear and not Merge("ties").linear
    for name, m in METHODS.items():
        assert set(m.params) <= {f.name for f in fields(Merge)}, name
    tv = TaskVector({"w": torch.ones(2, 2)})
    with pytest.raises(ValueError, match="slerp merges exactly 2 task vectors, got 3"):
        Merge("slerp")([tv, tv, tv], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="model_stock merges at least 2 task vectors, got 1"):
        Merge("model_stock")([tv], [1.0])
