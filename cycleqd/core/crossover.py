"""Merge-based crossover (CycleQD): the child is a normalised, randomly weighted
sum of its parents' task vectors,

    τ_child = Σ_i (w_i / Σ_j w_j) · τ_i,     w_i ~ N(1 + μ, σ)

with one ``w_i`` per parent for the whole model (``granularity="model"``, the
reference code) or one per parent and layer (``granularity="layer"``). Children stay in
the convex hull of their parents; ``scale: [lo, hi]`` multiplies each child by
``s ~ U(lo, hi)``, one draw per child, so that a search can reach the sums of task
vectors a merge of conflicting experts needs (the final merge's ``scales`` for the
same reason).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from cycleqd.checks import check_fields, require
from cycleqd.core.taskvector import TaskVector, linear_combination

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def layer_of(name: str) -> str:
    """The group a parameter is mixed with: ``layer<i>`` for transformer blocks, else its own name."""
    m = _LAYER.search(name)
    return f"layer{m.group(1)}" if m else name


@dataclass(frozen=True)
class MergeCrossover:
    """The paper's crossover. ``mu`` and ``sigma`` from the reference code (0, 0.01).

    Args:
        mu: Mean offset of the weights, ``w ~ N(1 + mu, sigma)``.
        sigma: Standard deviation of the weights.
        granularity: ``"model"`` (one weight per parent) or ``"layer"`` (one per parent and layer).
        scale: ``(lo, hi)``: the child's weights times ``s ~ U(lo, hi)``; ``(1, 1)``, the
            paper's, draws nothing.
    """

    mu: float = 0.0
    sigma: float = 0.01
    granularity: str = "model"
    scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            self.granularity in ("model", "layer"),
            "granularity",
            f"must be 'model' or 'layer', got {self.granularity!r}",
        )
        require(self.sigma >= 0, "sigma", f"must be >= 0, got {self.sigma}")
        ok = len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1]
        require(ok, "scale", f"must be [lo, hi] with 0 < lo <= hi, got {list(self.scale)}")

    def weights(self, parents: Sequence[TaskVector], gen: torch.Generator) -> list[dict[str, float]]:
        """Per-parameter weights (normalised, times the child's scale), one mapping per parent."""
        return self.weights_for(list(dict.fromkeys(n for p in parents for n in p)), len(parents), gen)

    def weights_for(self, names: Sequence[str], n_parents: int, gen: torch.Generator) -> list[dict[str, float]]:
        """The weights of ``n_parents`` parents over the parameters ``names`` (the draws
        :meth:`weights` makes for parents holding exactly those parameters)."""
        groups = ["model"] if self.granularity == "model" else list(dict.fromkeys(layer_of(n) for n in names))
        w = 1 + self.mu + self.sigma * torch.randn(n_parents, len(groups), generator=gen, dtype=torch.float64)
        total = w.sum(0)
        if torch.any(total.abs() < 1e-8):
            raise ValueError("crossover weights sum to zero; lower crossover.sigma")
        w = w / total
        lo, hi = self.scale  # a fixed scale draws nothing, so [1, 1] keeps the paper's draws
        w = w * (lo + (hi - lo) * torch.rand((), generator=gen, dtype=torch.float64) if hi > lo else lo)
        col = {g: j for j, g in enumerate(groups)}
        key = (lambda n: "model") if self.granularity == "model" else layer_of
        return [{n: float(w[i, col[key(n)]]) for n in names} for i in range(n_parents)]

    def __call__(self, parents: Sequence[TaskVector], gen: torch.Generator) -> TaskVector:
        return self.mix(parents, gen)[0]

    def mix(self, parents: Sequence[TaskVector], gen: torch.Generator) -> tuple[TaskVector, dict]:
        """The child and what was drawn for it: each parent's weight per group (:meth:`by_group`)."""
        w = self.weights(parents, gen)
        return linear_combination(parents, w), {"weights": [self.by_group(x) for x in w]}

    def by_group(self, weights: dict[str, float]) -> dict[str, float]:
        """One parent's per-parameter weights (from :meth:`weights`) as the groups they were
        drawn for: ``{"model": w}``, or layer group → weight."""
        if self.granularity == "model":
            return {"model": next(iter(weights.values()))} if weights else {}
        return {g: w for n, w in weights.items() for g in (layer_of(n),)}


@dataclass(frozen=True)
class MethodCrossover:
    """Crossover by a static merge method (ties, dare, breadcrumbs, slerp, linear) with the
    paper's sampled weights: ``w_i ~ N(1 + mu, sigma)``, normalised, one per parent.

    Args:
        merge: A :class:`cycleqd.core.merging.Merge` (method and its parameters).
        mu: Mean offset of the weights.
        sigma: Standard deviation of the weights.
    """

    merge: Any
    mu: float = 0.0
    sigma: float = 0.01

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            callable(self.merge), "merge", f"must be a merge method (a cycleqd.core.merging.Merge), got {self.merge!r}"
        )
        require(self.sigma >= 0, "sigma", f"must be >= 0, got {self.sigma}")

    def parent_weights(self, n_parents: int, gen: torch.Generator) -> list[float]:
        w = 1 + self.mu + self.sigma * torch.randn(n_parents, generator=gen, dtype=torch.float64)
        return (w / w.sum()).tolist()

    def __call__(self, parents: Sequence[TaskVector], gen: torch.Generator) -> TaskVector:
        return self.mix(parents, gen)[0]

    def mix(self, parents: Sequence[TaskVector], gen: torch.Generator) -> tuple[TaskVector, dict]:
        """The child and what was drawn for it: the merge method and each parent's weight."""
        w = self.parent_weights(len(parents), gen)
        return self.merge(parents, w, gen), {"method": getattr(self.merge, "method", None), "weights": w}
