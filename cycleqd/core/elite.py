"""The record of one elite's provenance, kept beside it wherever it is stored."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EliteRecord:
    """Provenance of one stored model: where it came from and what it scored (opt split)."""

    id: int
    generation: int
    origin: str  # "expert:<task>", "child:<quality task>", ...
    parents: tuple[int, ...]
    scores: dict[str, float]
