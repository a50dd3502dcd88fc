"""Static merge methods on task vectors, per tensor (mergekit style), and their use as
crossover operators and as baselines.

Per tensor, for task deltas ``τ_1..τ_n`` with weights ``w_i``:

- ``linear`` (task arithmetic): ``Σ w_i τ_i``.
- ``ties`` (Yadav et al., 2023): keep the ``⌊density·n⌋`` largest-magnitude entries of each
  ``τ_i``; elect each entry's sign as the sign of ``Σ_i w_i trimmed τ_i``; take the weighted
  mean of the entries that agree with it, ``Σ w_i τ_i [agree] / Σ w_i [agree]`` (mergekit's
  ``normalize: true``). The result is on the scale of one ``τ_i`` whatever the weights'
  sum, so normalised crossover weights and equal baseline weights give the same scale; a
  baseline's ``λ`` multiplies the merge afterwards (mergekit's ``lambda``).
- ``dare`` (Yu et al., 2024): drop each entry with probability ``1 − density`` and
  rescale the rest by ``1/density``, then combine by ``linear`` or by ``ties`` sign election.
- ``breadcrumbs`` (Davari & Belilovsky, 2024): drop the ``⌊gamma·n⌋`` largest magnitudes
  (outliers), keep the next ``⌊density·n⌋``, then ``linear`` (mergekit's ``breadcrumbs``).
- ``slerp`` (two vectors): spherical interpolation ``sin((1−t)Ω)/sin Ω · τ_1 + sin(tΩ)/sin Ω · τ_2``
  with ``Ω`` the angle between the flattened tensors (linear when nearly parallel).

Entry-wise methods (ties, dare, breadcrumbs, slerp) need dense tensors: a factored
(LoRA) module is densified for them; ``linear`` keeps factored deltas factored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from cycleqd.checks import check_fields, require
from cycleqd.taskvector import TaskVector, as_dense, linear_combination

METHODS = ("linear", "ties", "dare_linear", "dare_ties", "breadcrumbs", "slerp")


def magnitude_mask(t: torch.Tensor, density: float) -> torch.Tensor:
    """Mask of the ``⌊density·n⌋`` largest-magnitude entries of ``t`` (peft's rule)."""
    k = int(density * t.numel())
    mask = torch.zeros(t.numel(), dtype=torch.bool, device=t.device)
    if k > 0:
        mask[torch.topk(t.abs().flatten(), k).indices] = True
    return mask.view_as(t)


def ties(tensors: Sequence[torch.Tensor], weights: Sequence[float], density: float) -> torch.Tensor:
    trimmed = torch.stack([t * magnitude_mask(t, density) for t in tensors])
    return _disjoint_merge(trimmed, weights)


def _disjoint_merge(stack: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    w = torch.tensor(list(weights), dtype=stack.dtype).view(-1, *([1] * (stack.ndim - 1)))
    weighted = stack * w
    sign = torch.where(weighted.sum(0) >= 0, 1.0, -1.0).to(stack.dtype)
    agree = ((torch.sign(weighted) == sign) & (stack != 0)).to(stack.dtype)
    divisor = (w * agree).sum(0)
    # Dividing by the agreeing weights, not by their count: with weights summing to 1 a
    # count would shrink the merge to ≈ 1/n of each τ_i.
    divisor = torch.where(divisor.abs() < 1e-12, torch.ones_like(divisor), divisor)
    return (weighted * agree).sum(0) / divisor


def dare(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], density: float, gen: torch.Generator, combine: str = "linear"
) -> torch.Tensor:
    if not 0 < density <= 1:
        raise ValueError(f"dare density must be in (0, 1], got {density}")
    kept = [t * (torch.rand(t.shape, generator=gen) < density).to(t.dtype) / density for t in tensors]
    if combine == "linear":
        return sum(w * t for w, t in zip(weights, kept))
    return _disjoint_merge(torch.stack(kept), weights)


def breadcrumbs_mask(t: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Mask that drops the ``⌊gamma·n⌋`` largest magnitudes of ``t`` and keeps the next
    ``⌊density·n⌋``; when the two together pass ``n``, fewer outliers are dropped so that
    ``⌊density·n⌋`` are still kept (mergekit's ``magnitude_outliers``)."""
    n = t.numel()
    keep = int(density * n)
    top = min(int(gamma * n), n - keep)
    order = torch.argsort(t.abs().flatten(), descending=True, stable=True)
    mask = torch.zeros(n, dtype=torch.bool, device=t.device)
    mask[order[top : top + keep]] = True
    return mask.view_as(t)


def breadcrumbs(tensors: Sequence[torch.Tensor], weights: Sequence[float], density: float, gamma: float) -> torch.Tensor:
    out = 0
    for t, w in zip(tensors, weights):
        out = out + w * t * breadcrumbs_mask(t, density, gamma)
    return out


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-8) -> torch.Tensor:
    fa, fb = a.flatten().double(), b.flatten().double()
    na, nb = fa.norm(), fb.norm()
    if na < eps or nb < eps:
        return ((1 - t) * a + t * b)
    cos = torch.clamp((fa / na) @ (fb / nb), -1.0, 1.0)
    omega = torch.arccos(cos)
    if torch.sin(omega).abs() < 1e-6:
        return (1 - t) * a + t * b
    s = torch.sin(omega)
    out = torch.sin((1 - t) * omega) / s * fa + torch.sin(t * omega) / s * fb
    return out.view_as(a).to(a.dtype)


@dataclass(frozen=True)
class Merge:
    """One merge method with its parameters, applied to whole task vectors.

    Args:
        method: One of ``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``breadcrumbs``, ``slerp``.
        density: Fraction of entries kept (ties, dare, breadcrumbs).
        gamma: Fraction of largest entries dropped (breadcrumbs).
        t: Interpolation point (slerp; the weights' share of the second vector when omitted).
    """

    method: str = "linear"
    density: float = 0.5
    gamma: float = 0.01
    t: float | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.method in METHODS, "method", f"must be one of {list(METHODS)}, got {self.method!r}")
        require(0 < self.density <= 1, "density", f"must be in (0, 1], got {self.density}")
        require(0 <= self.gamma < 1, "gamma", f"must be in [0, 1), got {self.gamma}")
        require(self.t is None or 0 <= self.t <= 1, "t", f"must be in [0, 1] or null, got {self.t}")

    def __call__(self, vectors: Sequence[TaskVector], weights: Sequence[float], gen: torch.Generator | None = None) -> TaskVector:
        if self.method == "linear":
            return linear_combination(vectors, list(weights))
        if self.method == "slerp" and len(vectors) != 2:
            raise ValueError(f"slerp merges exactly 2 task vectors, got {len(vectors)}")
        gen = gen or torch.Generator().manual_seed(0)
        names = list(dict.fromkeys(n for v in vectors for n in v))
        out = {}
        for name in names:
            ref = next(v[name] for v in vectors if name in v)
            shape = ref.shape
            ts = [as_dense(v[name]).float() if name in v else torch.zeros(shape) for v in vectors]
            out[name] = self._tensor(ts, list(weights), gen)
        return TaskVector(out)

    def _tensor(self, ts: list[torch.Tensor], w: list[float], gen: torch.Generator) -> torch.Tensor:
        m = self.method
        if m == "ties":
            return ties(ts, w, self.density)
        if m in ("dare_linear", "dare_ties"):
            return dare(ts, w, self.density, gen, combine=m.split("_")[1])
        if m == "breadcrumbs":
            return breadcrumbs(ts, w, self.density, self.gamma)
        t = self.t if self.t is not None else w[1] / (w[0] + w[1])
        # slerp between the vectors, then scaled by the total weight (1 for normalised weights)
        return slerp(ts[0], ts[1], t) * (w[0] + w[1])

