"""Character sorting: ``"zqnt^"`` → ``"nqtz"``. Alphabet: ``n``–``z`` and ``^``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cycleqd.tasks.base import StringTask


@dataclass
class Sorting(StringTask):
    """Sort a string of ``min_len``..``max_len`` letters drawn from ``alphabet``."""

    name: str = "sorting"
    alphabet: str = "nopqrstuvwxyz"
    marker: ClassVar[str] = "^"

    def transform(self, s: str) -> str:
        return "".join(sorted(s))
