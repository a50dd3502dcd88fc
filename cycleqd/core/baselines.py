"""Static merges of the experts: each configured method's parameters are chosen on the
opt split from its grid (scale × density × gamma × epsilon), and the chosen merge is reported on
the test split. A merge whose evaluation fails is reported as failed."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from cycleqd.checks import matches, require
from cycleqd.core.choice import choose_on_opt, opt_means
from cycleqd.core.merging import METHODS, Merge
from cycleqd.core.taskvector import TaskVector
from cycleqd.protocols import Failure, Result


@dataclass(frozen=True)
class StaticMerge:
    """One static merge of all experts as the config states it (``baselines.<name>`` in
    ``conf/config.yaml``): a merge method and the grid its parameters are chosen from on the
    opt split. A parameter the method does not read is left out (null); one it reads must be
    given. ``scales: []`` switches the baseline off.

    Args:
        method: One of :data:`cycleqd.core.merging.METHODS`.
        scales: ``λ``, the factor the merge of equally weighted experts is multiplied by.
        density: Fraction of entries kept (ties, dare, breadcrumbs; della: on average).
        gamma: Fraction of the largest entries dropped (breadcrumbs).
        epsilon: Spread of della's keep probabilities around ``density``.
    """

    method: str
    scales: list[float]
    density: list[float] | None = None
    gamma: list[float] | None = None
    epsilon: list[float] | None = None

    def __post_init__(self) -> None:
        require(
            isinstance(self.method, str) and self.method in METHODS,
            "method",
            f"must be one of {list(METHODS)}, got {self.method!r}",
        )
        for key in ("scales", *PARAMETERS):
            value = getattr(self, key)
            if key in PARAMETERS and value is None:
                require(
                    key not in METHODS[self.method].params or not self.scales,
                    key,
                    f"{self.method} reads {key}: give the values to choose from, e.g. [{_EXAMPLE[key]}]",
                )
                continue
            require(matches(value, list[float]), key, f"must be a list of numbers, got {value!r}")
            object.__setattr__(self, key, [float(x) for x in value])
        require(all(s > 0 for s in self.scales), "scales", f"must be positive, got {self.scales}")
        for point in self.grid():
            Merge(self.method, **dict(zip(PARAMETERS, point[1:])))  # each grid point's values checked

    def grid(self) -> tuple[tuple[float, ...], ...]:
        """(scale, density, gamma, epsilon) of each grid point; a parameter the method does not
        read holds :class:`~cycleqd.core.merging.Merge`'s value, which the method ignores."""
        reads = METHODS[self.method].params
        axes = [getattr(self, k) if k in reads and getattr(self, k) else [getattr(Merge, k)] for k in PARAMETERS]
        return tuple(itertools.product(self.scales, *axes))

    def spec(self, name: str) -> "BaselineSpec":
        return BaselineSpec(name, self.method, self.grid())

    def check_experts(self, n_experts: int) -> None:
        """The method can merge ``n_experts`` vectors (slerp: two)."""
        least, most = METHODS[self.method].vectors
        if least == most:
            require(
                n_experts == least,
                "",
                f"{self.method} merges exactly {least} experts, the config has {n_experts} tasks",
            )
        else:
            require(
                n_experts >= least,
                "",
                f"{self.method} merges at least {least} experts, the config has {n_experts} tasks",
            )


PARAMETERS = ("density", "gamma", "epsilon")
_EXAMPLE = {"density": "0.3, 0.6", "gamma": "0.01", "epsilon": "0.1"}


@dataclass(frozen=True)
class BaselineSpec:
    """One static merge of all experts and its grid of (scale, density, gamma, epsilon), chosen on opt."""

    name: str
    method: str
    grid: tuple[tuple[float, float, float, float], ...]


def static_merges(
    experts: Sequence[TaskVector],
    specs: Mapping[str, BaselineSpec],
    scores: Callable[[list[tuple[TaskVector, str]]], list[Result]],
    seed: int,
) -> tuple[dict[str, dict[str, float]], dict[str, Any], dict[str, str]]:
    """Test results of each baseline's chosen merge, the choices, and the failed baselines (name → why).

    ``scores`` evaluates a list of ``(task vector, split)`` at once (a pool's workers in parallel)."""
    from cycleqd.progress import Progress

    out, chosen, failed = {}, {}, {}
    with Progress(
        "baselines: static merges on opt, the chosen on test",
        sum(len(s.grid) + 1 for s in specs.values()),
        "evaluation",
    ) as progress:
        for name, spec in specs.items():
            _one(name, spec, experts, _counted(scores, progress), seed, out, chosen, failed)
    return out, chosen, failed


def _counted(scores: Callable, progress) -> Callable:
    def counted(pairs):
        results = scores(pairs)
        progress.update(len(pairs))
        return results

    return counted


def _one(
    name: str, spec: BaselineSpec, experts, scores: Callable, seed: int, out: dict, chosen: dict, failed: dict
) -> None:
    """Choose ``spec``'s grid point on opt and score it on test, into ``out`` / ``chosen`` / ``failed``."""
    merges = {point: grid_merge(spec.method, point, experts, seed) for point in spec.grid}
    opt = dict(zip(merges, scores([(tv, "opt") for tv in merges.values()])))
    best = choose_on_opt(opt, prefer=lambda k: -abs(k[0] - 0.5))  # a tie: the scale nearer the mean of the experts
    if best is None:
        failed[name] = f"every grid point failed on opt, e.g. {opt[spec.grid[0]]}"
        return
    (test,) = scores([(merges[best], "test")])
    if isinstance(test, Failure):
        failed[name] = f"the chosen merge failed on test: {test}"
        return
    out[name] = test  # with its per-item results, when the tasks give them
    chosen[name] = {
        "method": spec.method,
        "scale": best[0],
        "density": best[1] if "density" in METHODS[spec.method].params else None,
        "gamma": best[2] if "gamma" in METHODS[spec.method].params else None,
        "epsilon": best[3] if "epsilon" in METHODS[spec.method].params else None,
        "opt_mean": {str(k): v for k, v in opt_means(opt).items()},
        # every grid point's opt scores: a pool of models to pick from for a weighting of the tasks
        "grid": [
            {**dict(zip(("scale", *PARAMETERS), point)), "opt": None if isinstance(r, Failure) else dict(r)}
            for point, r in opt.items()
        ],
    }


def grid_merge(method: str, point: Sequence[float], experts: Sequence[TaskVector], seed: int) -> TaskVector:
    """The static merge at one grid point ``(scale, density, gamma, epsilon)``, its random
    draws (dare, della) seeded by ``seed``: the same point and seed give the same merge."""
    lam, density, gamma, epsilon = point
    gen = torch.Generator().manual_seed(seed)
    # λ multiplies the merge of equally weighted experts (mergekit's ``lambda``)
    return Merge(method, density=density, gamma=gamma, epsilon=epsilon)(experts, [1.0] * len(experts), gen).scale(lam)
