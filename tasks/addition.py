"""Multi-digit addition: ``"482+37="`` → ``"519"``. Alphabet: digits, ``+``, ``=``."""

from __future__ import annotations

import random
from dataclasses import dataclass

from cycleqd.checks import require
from cycleqd.tasks.base import SyntheticTask


@dataclass
class Addition(SyntheticTask):
    """Add two integers of ``min_digits``..``max_digits`` digits."""

    name: str = "addition"
    min_digits: int = 1
    max_digits: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            1 <= self.min_digits <= self.max_digits <= 18,
            "min_digits",
            f"must satisfy 1 <= min_digits <= max_digits <= 18, got {self.min_digits}, {self.max_digits}",
        )

    def sample(self, rng: random.Random) -> tuple[str, str]:
        a, b = (rng.randrange(10 ** rng.randint(self.min_digits, self.max_digits)) for _ in range(2))
        return f"{a}+{b}=", str(a + b)

    @property
    def max_new_tokens(self) -> int:
        return self.max_digits + 2
