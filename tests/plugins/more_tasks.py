"""Tasks beyond the built-in three, as a user's plugin would define them: for runs with
four and five tasks, and a lower-is-better task."""

from __future__ import annotations

import random
from dataclasses import dataclass

from cycleqd.tasks.base import SyntheticTask


@dataclass
class Duplicate(SyntheticTask):
    """Write each digit twice: "381#" -> "338811"."""

    length: int = 3

    def sample(self, rng: random.Random) -> tuple[str, str]:
        s = "".join(rng.choice("0123456789") for _ in range(self.length))
        return s + "#", "".join(c + c for c in s)

    @property
    def max_new_tokens(self) -> int:
        return 2 * self.length + 1


@dataclass
class Shift(SyntheticTask):
    """Each letter one further in the alphabet: "abc>" -> "bcd"."""

    length: int = 3

    def sample(self, rng: random.Random) -> tuple[str, str]:
        s = "".join(rng.choice("abcdefghijkl") for _ in range(self.length))
        return s + ">", "".join(chr(ord(c) + 1) for c in s)

    @property
    def max_new_tokens(self) -> int:
        return self.length + 1


@dataclass
class DuplicateErrors(Duplicate):
    """Duplicate scored by its error rate, one minus exact match: lower is better."""

    def score(self, output: str, answer: str) -> float:
        return 1.0 - super().score(output, answer)
