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
- ``breadcrumbs_ties``: breadcrumbs' masks, then TIES' sign election; the agreeing weighted
  entries are summed, not averaged (mergekit's ``breadcrumbs_ties``, ``normalize: false``).
- ``della`` / ``della_linear`` (Deep et al., 2024): each entry kept with a probability that
  grows with its magnitude's rank in its row, from ``density − epsilon`` (smallest) to
  ``density + epsilon`` (largest); the kept entries rescaled so that the tensor keeps its L1
  norm; then ``ties``' election and weighted mean (``della``) or the weighted sum
  (``della_linear``), as mergekit's ``della_magprune`` with ``rescale: true``. (The DELLA
  paper rescales each kept entry by ``1/p`` instead.)
- ``model_stock`` (Jang et al., 2024): the weighted mean of the ``τ_i`` times
  ``t = k·cos θ / (1 + (k − 1)·cos θ)``, ``cos θ`` the mean pairwise cosine of the flattened
  ``τ_i`` (``k`` of them): an average pulled towards the base where the experts disagree
  (mergekit's ``model_stock``, whose mean is unweighted: equal weights give it).
- ``slerp`` (two vectors): spherical interpolation ``sin((1−t)Ω)/sin Ω · τ_1 + sin(tΩ)/sin Ω · τ_2``
  with ``Ω`` the angle between the flattened tensors (linear when nearly parallel).

Every method's result is multiplied by ``scale`` (task arithmetic's ``λ``, mergekit's ``lambda``).

Entry-wise methods (all but linear) need dense tensors: a factored
(LoRA) module is densified for them; ``linear`` keeps factored deltas factored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from cycleqd.checks import check_fields, require
from cycleqd.core.taskvector import TaskVector, as_dense, linear_combination


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


def _disjoint_merge(stack: torch.Tensor, weights: Sequence[float], normalize: bool = True) -> torch.Tensor:
    w = torch.tensor(list(weights), dtype=stack.dtype).view(-1, *([1] * (stack.ndim - 1)))
    weighted = stack * w
    sign = torch.where(weighted.sum(0) >= 0, 1.0, -1.0).to(stack.dtype)
    agree = ((torch.sign(weighted) == sign) & (stack != 0)).to(stack.dtype)
    if not normalize:
        return (weighted * agree).sum(0)
    divisor = (w * agree).sum(0)
    # Dividing by the agreeing weights, not by their count: with weights summing to 1 a
    # count would shrink the merge to ≈ 1/n of each τ_i.
    divisor = torch.where(divisor.abs() < 1e-12, torch.ones_like(divisor), divisor)
    return (weighted * agree).sum(0) / divisor


def dare(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float,
    gen: torch.Generator,
    combine: str = "linear",
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


def breadcrumbs(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], density: float, gamma: float
) -> torch.Tensor:
    out = 0
    for t, w in zip(tensors, weights):
        out = out + w * t * breadcrumbs_mask(t, density, gamma)
    return out


def breadcrumbs_ties(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], density: float, gamma: float
) -> torch.Tensor:
    masked = torch.stack([t * breadcrumbs_mask(t, density, gamma) for t in tensors])
    return _disjoint_merge(masked, weights, normalize=False)


def della_prune(t: torch.Tensor, density: float, epsilon: float, gen: torch.Generator) -> torch.Tensor:
    """Keep each entry with probability ``density − ε + 2ε·r``, ``r`` its magnitude's rank in
    its row scaled to [0, 1]; rescale the kept entries to the tensor's L1 norm."""
    if density >= 1:
        return t
    rows = t.unsqueeze(0) if t.ndim < 2 else t
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1), dim=1).to(t.dtype) + 1
    low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    r = ((ranks - low) / (high - low)).clamp(0, 1)
    mask = torch.bernoulli((density - epsilon) + r * 2 * epsilon, generator=gen).to(t.dtype)
    kept = rows * mask
    before, after = rows.abs().sum(), kept.abs().sum()
    if before >= 1e-7 and after >= 1e-7:
        kept = kept * (before / after)
    return kept.reshape(t.shape)


def della(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float,
    epsilon: float,
    gen: torch.Generator,
    combine: str = "ties",
) -> torch.Tensor:
    pruned = [della_prune(t, density, epsilon, gen) for t in tensors]
    if combine == "linear":
        return sum(w * t for w, t in zip(weights, pruned))
    return _disjoint_merge(torch.stack(pruned), weights)


def model_stock(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    flat = [t.flatten() for t in tensors]
    cos = [
        ((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-6)).clamp(-1, 1)
        for i, a in enumerate(flat)
        for b in flat[i + 1 :]
    ]
    cos_theta = torch.stack(cos).mean()
    k = len(tensors)
    denominator = 1 + (k - 1) * cos_theta
    # At the singularity the interpolation has no finite estimate: the base (no delta), as mergekit.
    t = torch.zeros(()) if denominator.abs() < 1e-6 else k * cos_theta / denominator
    total = sum(weights)
    return t * sum(w * x for w, x in zip(weights, tensors)) / total


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-8) -> torch.Tensor:
    fa, fb = a.flatten().double(), b.flatten().double()
    na, nb = fa.norm(), fb.norm()
    if na < eps or nb < eps:
        return (1 - t) * a + t * b
    cos = torch.clamp((fa / na) @ (fb / nb), -1.0, 1.0)
    omega = torch.arccos(cos)
    if torch.sin(omega).abs() < 1e-6:
        return (1 - t) * a + t * b
    s = torch.sin(omega)
    out = torch.sin((1 - t) * omega) / s * fa + torch.sin(t * omega) / s * fb
    return out.view_as(a).to(a.dtype)


@dataclass(frozen=True)
class Method:
    """A merge method: what it does to one tensor, and what the rest of cycleqd must know of it.

    Args:
        tensor: ``(merge, tensors, weights, generator) -> tensor``, the per-tensor merge
            (None for ``linear``, which combines whole task vectors and keeps LoRA factored).
        params: The :class:`Merge` fields it reads (what a baseline's record reports).
        linear: Whether the merge is ``Σ w_i τ_i``: a genome represents it exactly.
        vectors: How many task vectors it merges, ``(at least, at most)`` (None: any number).
    """

    tensor: Callable[["Merge", list[torch.Tensor], list[float], torch.Generator], torch.Tensor] | None
    params: tuple[str, ...] = ()
    linear: bool = False
    vectors: tuple[int, int | None] = (1, None)


def _slerp(m: "Merge", ts: list[torch.Tensor], w: list[float], gen: torch.Generator) -> torch.Tensor:
    t = m.t if m.t is not None else w[1] / (w[0] + w[1])
    # slerp between the vectors, then scaled by the total weight (1 for normalised weights)
    return slerp(ts[0], ts[1], t) * (w[0] + w[1])


# The merge methods by name: the config's ``method`` is a key of this table.
METHODS: dict[str, Method] = {
    "linear": Method(None, linear=True),
    "ties": Method(lambda m, ts, w, g: ties(ts, w, m.density), ("density",)),
    "dare_linear": Method(lambda m, ts, w, g: dare(ts, w, m.density, g, combine="linear"), ("density",)),
    "dare_ties": Method(lambda m, ts, w, g: dare(ts, w, m.density, g, combine="ties"), ("density",)),
    "breadcrumbs": Method(lambda m, ts, w, g: breadcrumbs(ts, w, m.density, m.gamma), ("density", "gamma")),
    "breadcrumbs_ties": Method(lambda m, ts, w, g: breadcrumbs_ties(ts, w, m.density, m.gamma), ("density", "gamma")),
    "della": Method(lambda m, ts, w, g: della(ts, w, m.density, m.epsilon, g, combine="ties"), ("density", "epsilon")),
    "della_linear": Method(
        lambda m, ts, w, g: della(ts, w, m.density, m.epsilon, g, combine="linear"), ("density", "epsilon")
    ),
    "model_stock": Method(lambda m, ts, w, g: model_stock(ts, w), vectors=(2, None)),
    "slerp": Method(_slerp, ("t",), vectors=(2, 2)),
}


@dataclass(frozen=True)
class Merge:
    """One merge method with its parameters, applied to whole task vectors.

    Args:
        method: One of :data:`METHODS`.
        density: Fraction of entries kept (ties, dare, breadcrumbs, della: on average).
        gamma: Fraction of largest entries dropped (breadcrumbs).
        epsilon: Spread of della's keep probabilities around ``density``.
        t: Interpolation point (slerp; the weights' share of the second vector when omitted).
        scale: ``λ``: the merge is multiplied by it (task arithmetic's λ, mergekit's ``lambda``).
    """

    method: str = "linear"
    density: float = 0.5
    gamma: float = 0.01
    epsilon: float = 0.1
    t: float | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.method in METHODS, "method", f"must be one of {list(METHODS)}, got {self.method!r}")
        require(0 < self.density <= 1, "density", f"must be in (0, 1], got {self.density}")
        require(0 <= self.gamma < 1, "gamma", f"must be in [0, 1), got {self.gamma}")
        require(self.t is None or 0 <= self.t <= 1, "t", f"must be in [0, 1] or null, got {self.t}")
        require(self.scale > 0, "scale", f"must be positive, got {self.scale}")
        if self.method.startswith("della"):
            require(
                0 <= self.epsilon
                and (self.density >= 1 or 0 < self.density - self.epsilon and self.density + self.epsilon < 1),
                "epsilon",
                f"density ± epsilon must lie in (0, 1), got density={self.density}, epsilon={self.epsilon}",
            )

    def __call__(
        self, vectors: Sequence[TaskVector], weights: Sequence[float], gen: torch.Generator | None = None
    ) -> TaskVector:
        merged = self._merge(vectors, weights, gen)
        return merged if self.scale == 1.0 else merged.scale(self.scale)

    @property
    def linear(self) -> bool:
        """Whether this merge is ``Σ w_i τ_i`` (times ``scale``): what a genome can represent."""
        return METHODS[self.method].linear

    def _merge(
        self, vectors: Sequence[TaskVector], weights: Sequence[float], gen: torch.Generator | None
    ) -> TaskVector:
        method = METHODS[self.method]
        if method.tensor is None:
            return linear_combination(vectors, list(weights))
        least, most = method.vectors
        if len(vectors) < least or (most is not None and len(vectors) > most):
            exactly = f"exactly {least}" if least == most else f"at least {least}"
            raise ValueError(f"{self.method} merges {exactly} task vectors, got {len(vectors)}")
        gen = gen or torch.Generator().manual_seed(0)
        names = list(dict.fromkeys(n for v in vectors for n in v))
        out = {}
        for name in names:
            ref = next(v[name] for v in vectors if name in v)
            shape = ref.shape
            ts = [as_dense(v[name]).float() if name in v else torch.zeros(shape) for v in vectors]
            out[name] = method.tensor(self, ts, list(weights), gen)
        return TaskVector(out)
