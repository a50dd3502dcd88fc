"""Character sorting: ``"zqnt^"`` → ``"nqtz"``. Alphabet: ``n``–``z`` and ``^``."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tasks.base import SyntheticTask


@dataclass
class Sorting(SyntheticTask):
    """Sort a string of ``min_len``..``max_len`` letters drawn from ``alphabet``."""

    name: str = "sorting"
    alphabet: str = "nopqrstuvwxyz"
    min_len: int = 3
    max_len: int = 7

    def sample(self, rng: random.Random) -> tuple[str, str]:
        s = "".join(rng.choice(self.alphabet) for _ in range(rng.randint(self.min_len, self.max_len)))
        return f"{s}^", "".join(sorted(s))

    @property
    def max_new_tokens(self) -> int:
        return self.max_len + 1
