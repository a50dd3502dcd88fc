"""The embedded tasks with partial credit (the fraction of answer characters in place),
so that even a barely trained tiny model gets scores that vary from child to child and
its archives fill, replace elites and evict them: what the crash tests need to exercise."""

from __future__ import annotations

from dataclasses import dataclass

from cycleqd.tasks.addition import Addition
from cycleqd.tasks.reversal import Reversal
from cycleqd.tasks.sorting import Sorting


def partial_credit(output: str, answer: str) -> float:
    out = output.strip()
    return sum(a == b for a, b in zip(out, answer)) / max(len(answer), len(out), 1)


@dataclass
class PartialAddition(Addition):
    def score(self, output: str, answer: str) -> float:
        return partial_credit(output, answer)


@dataclass
class PartialReversal(Reversal):
    def score(self, output: str, answer: str) -> float:
        return partial_credit(output, answer)


@dataclass
class PartialSorting(Sorting):
    def score(self, output: str, answer: str) -> float:
        return partial_credit(output, answer)
