"""SVD-based mutation (CycleQD): push a child further along the principal directions
of the quality task's expert task vector,

    τ_child[W] += U · diag(r ⊙ S) · Vᵀ,     r_j ~ Uniform(0, ρ)

where ``U S Vᵀ`` is the SVD of that expert's delta for weight ``W``. For factored
(LoRA) deltas the SVD comes from QR of each factor and the SVD of a small r×r
core, and the added term stays factored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from cycleqd.checks import check_fields, require
from cycleqd.core.taskvector import Delta, LowRank, TaskVector, as_dense, concat_lowrank


@dataclass(frozen=True)
class SVD:
    """Thin SVD of one delta: ``U (m, k)``, ``S (k,)``, ``Vh (k, n)``."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor


def svd_dense(delta: torch.Tensor) -> SVD:
    U, S, Vh = torch.linalg.svd(delta.float(), full_matrices=False)
    return SVD(U, S, Vh)


def svd_lowrank(delta: LowRank) -> SVD:
    """SVD of ``B @ A`` without forming it: QR(B), QR(Aᵀ), SVD of the r×r core."""
    Qb, Rb = torch.linalg.qr(delta.B.float())
    Qa, Ra = torch.linalg.qr(delta.A.float().T)
    # Thin SVD: when r exceeds a side of the matrix the core is not square.
    Uc, S, Vch = torch.linalg.svd(Rb @ Ra.T, full_matrices=False)
    return SVD(Qb @ Uc, S, Vch @ Qa.T)


def svd_of(delta: Delta) -> SVD:
    return svd_lowrank(delta) if isinstance(delta, LowRank) else svd_dense(delta)


def truncate(delta: LowRank, max_rank: int) -> LowRank:
    """Best rank-``max_rank`` approximation of a factored delta (Eckart–Young), still factored."""
    if delta.rank <= max_rank:
        return delta
    s = svd_lowrank(delta)
    k = max_rank
    return LowRank(s.U[:, :k] * s.S[:k], s.Vh[:k])


def expert_svds(
    expert: TaskVector, *, include_embeddings: bool = False, desc: str = "SVD of an expert"
) -> dict[str, SVD]:
    """SVD of each 2-D delta of an expert task vector (computed once per expert, then cached)."""
    from cycleqd.progress import Progress

    names = [
        n
        for n, d in expert.items()
        if len(d.shape) == 2 and (include_embeddings or not ("embed" in n or "lm_head" in n))
    ]
    out = {}
    with Progress(desc, len(names), "matrix") as progress:
        for name in names:
            out[name] = svd_of(expert[name])
            progress.update()
    return out


@dataclass(frozen=True)
class SVDMutation:
    """The paper's mutation. ``scale`` is ρ, 0.1 in the reference code.

    Args:
        scale: Upper bound ρ of the uniform factors ``r_j``; 0 makes the mutation the identity.
        max_rank: For factored children, truncate each delta to this rank after mutating
            (``None`` lets the rank grow by the expert's rank per mutation).
        include_embeddings: Move the token embeddings and the output head too (the reference
            code mutates every weight whose name lacks "norm"); ``False`` leaves them as the
            crossover made them. It decides which SVDs the run computes (:func:`expert_svds`).
    """

    scale: float = 0.1
    max_rank: int | None = None
    include_embeddings: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.scale >= 0, "scale", f"must be >= 0, got {self.scale}")
        require(self.max_rank is None or self.max_rank >= 1, "max_rank", f"must be >= 1 or null, got {self.max_rank}")

    def describe(self, quality: str) -> dict:
        """What a child's record says of this mutation (its draws live in the child itself)."""
        return {"kind": "svd", "along": quality, "scale": self.scale} if self.scale else {}

    def draws(self, svds: Mapping[str, SVD], gen: torch.Generator) -> dict[str, torch.Tensor]:
        """The factors ``r`` of each direction, per parameter, in the order they are drawn."""
        return {
            name: torch.rand(s.S.shape[0], generator=gen, dtype=torch.float32) * self.scale for name, s in svds.items()
        }

    def __call__(self, child: TaskVector, svds: Mapping[str, SVD], gen: torch.Generator) -> TaskVector:
        if self.scale == 0:
            return child
        out: dict[str, Delta] = dict(child)
        draws = self.draws(svds, gen)
        for name, s in svds.items():
            r = draws[name]
            term = LowRank(s.U * (r * s.S), s.Vh)
            current = out.get(name)
            if current is None or isinstance(current, LowRank):
                new = term if current is None else concat_lowrank([current, term])
                out[name] = truncate(new, self.max_rank) if self.max_rank else new
            else:
                out[name] = current + term.dense()
        return TaskVector(out)


@dataclass(frozen=True)
class GaussianMutation:
    """Ablation: i.i.d. Gaussian noise of standard deviation ``std`` on every delta (densifies)."""

    std: float = 3e-4

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.std >= 0, "std", f"must be >= 0, got {self.std}")

    def describe(self, quality: str) -> dict:
        """What a child's record says of this mutation."""
        return {"kind": "gaussian", "std": self.std} if self.std else {}

    def __call__(self, child: TaskVector, svds: Mapping[str, SVD], gen: torch.Generator) -> TaskVector:
        out = {}
        for name, d in child.items():
            d = as_dense(d)
            out[name] = d + self.std * torch.randn(d.shape, generator=gen, dtype=d.dtype)
        return TaskVector(out)
