"""String reversal: ``"gadcb<"`` → ``"bcdag"``. Alphabet: ``a``–``m`` and ``<``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cycleqd.tasks.base import StringTask


@dataclass
class Reversal(StringTask):
    """Reverse a string of ``min_len``..``max_len`` letters drawn from ``alphabet``."""

    name: str = "reversal"
    alphabet: str = "abcdefghijklm"
    marker: ClassVar[str] = "<"

    def transform(self, s: str) -> str:
        return s[::-1]
