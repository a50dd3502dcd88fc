"""Merge methods against peft's merge utilities and against formulas written here."""

from __future__ import annotations

import math

import pytest
import torch
from peft.utils import merge_utils

from cycleqd.merging import Merge, breadcrumbs, dare, magnitude_mask, slerp, ties
from cycleqd.taskvector import LowRank, TaskVector


def _tensors(n=3, shape=(12, 10), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_equals_peft(density):
    ts = _tensors()
    w = [0.5, 0.3, 0.9]
    ours = ties(ts, w, density)
    ref = merge_utils.ties(ts, torch.tensor(w), density, majority_sign_method="total")
    torch.testing.assert_close(ours, ref)


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
    # dare_ties: the same kept tensors through peft's sign election and disjoint merge
    g = torch.Generator().manual_seed(7)
    kept = [t * (torch.rand(t.shape, generator=g) < 0.4).float() / 0.4 for t in ts]
    stack = torch.stack(kept)
    mask = merge_utils.calculate_majority_sign_mask(stack, method="total")
    ref = merge_utils.disjoint_merge(stack * torch.tensor(w).view(-1, 1, 1), mask)
    torch.testing.assert_close(dare(ts, w, 0.4, torch.Generator().manual_seed(7), combine="ties"), ref)
    # density 1 keeps everything: plain task arithmetic, as peft's dare_linear at density 1
    torch.testing.assert_close(dare(ts, w, 1.0, g), merge_utils.dare_linear(ts, torch.tensor(w), 1.0))


def test_breadcrumbs_drops_outliers_and_small_entries():
    t = torch.arange(1.0, 101.0).view(10, 10) * torch.where(torch.arange(100) % 2 == 0, 1.0, -1.0).view(10, 10)
    out = breadcrumbs([t], [2.0], density=0.5, gamma=0.1)
    mag = t.abs()
    keep = (mag <= 90) & (mag > 40)  # the top 10 dropped, the next 50 kept
    torch.testing.assert_close(out, 2.0 * t * keep)


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
    lora = [TaskVector({"w": LowRank(torch.randn(8, 2, generator=g), torch.randn(2, 6, generator=g))}) for _ in range(2)]
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
