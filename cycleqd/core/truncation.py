"""Truncated expert bases: keep each delta's top singular directions, stored in a smaller float.

A full-weight expert's basis holds ``U``, ``S`` and ``Vᵀ`` of every delta the mutation moves:
more numbers than the model (40 GiB per expert at the Llama-3-8B shape in float32). Task
vectors of fine-tunes are close to low rank (TSV-Merge, Gargiulo et al., CVPR 2025), so the
top directions of each delta hold nearly all of it. Truncating approximates the paper's
operators: an expert is then ``Σ_{j<r} U_j S_j V_jᵀ`` of each delta, not the delta itself, and a
mutation moves only the kept directions. What each expert's basis keeps is reported
(:func:`kept`), and the exact basis is the default.

    r = the fewest leading directions with Σ_{j<r} S_j² ≥ energy · Σ_j S_j²     (energy)
    r = ⌈rank · k⌉, k = min(m, n)                                                 (rank)

Both set: the smaller ``r``. The stored factors (and the deltas kept whole) take ``dtype``;
every product is computed in float32 (:meth:`cycleqd.core.genome.Basis.delta`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cycleqd.checks import require
from cycleqd.core.mutation import SVD

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Truncation:
    """How much of each expert's basis a genome run keeps (``basis:`` in the config).

    Args:
        energy: Keep the fewest leading singular directions of each delta that hold this
            fraction of its energy (Σ S²), in (0, 1]; ``None``: every direction.
        rank: Keep this fraction of each delta's directions (rounded up), in (0, 1]; ``None``: all.
        dtype: How the bases are stored: ``float32``, ``bfloat16`` or ``float16``.
    """

    energy: float | None = None
    rank: float | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for key in ("energy", "rank"):
            v = getattr(self, key)
            require(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1),
                key,
                f"must be a fraction in (0, 1] (or null for every direction), got {v!r}",
            )
        require(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def exact(self) -> bool:
        return self.energy in (None, 1) and self.rank in (None, 1) and self.dtype == "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def variant(self) -> str:
        """What tells this truncation's cached bases apart from the exact ones."""
        return f"energy={self.energy},rank={self.rank},dtype={self.dtype}"

    def keep(self, S: torch.Tensor) -> int:
        """How many leading directions of a delta with singular values ``S`` (descending) to keep."""
        k = int(S.shape[0])
        r = k
        if self.energy not in (None, 1):
            e = S.double().pow(2)
            total = float(e.sum())
            if total > 0:
                # the fewest leading directions whose share reaches the fraction (guarding float sums)
                share = torch.cumsum(e, 0) / total
                r = min(r, int(torch.searchsorted(share, torch.tensor(self.energy - 1e-12, dtype=share.dtype))) + 1)
        if self.rank not in (None, 1):
            r = min(r, math.ceil(self.rank * k))
        return max(1, min(r, k))

    def apply(self, svds: dict[str, SVD]) -> tuple[dict[str, SVD], dict[str, float]]:
        """The kept directions of each SVD in ``dtype``, and what they keep of the whole:
        ``energy`` (Σ kept S² / Σ S², over every delta) and ``rank`` (kept / all directions)."""
        out, kept_e, total_e, kept_r, total_r = {}, 0.0, 0.0, 0, 0
        for name, s in svds.items():
            r = self.keep(s.S)
            e = s.S.double().pow(2)
            kept_e, total_e = kept_e + float(e[:r].sum()), total_e + float(e.sum())
            kept_r, total_r = kept_r + r, total_r + int(s.S.shape[0])
            dt = self.torch_dtype
            out[name] = SVD(s.U[:, :r].to(dt).contiguous(), s.S[:r].to(dt).contiguous(), s.Vh[:r].to(dt).contiguous())
        return out, {
            "energy": kept_e / total_e if total_e else 1.0,
            "rank": kept_r / total_r if total_r else 1.0,
        }
