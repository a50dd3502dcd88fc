"""Synthetic, exactly verifiable tasks with fixed, disjoint evaluation splits."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

from cycleqd.checks import check_fields, require
from cycleqd.protocols import ItemTask, Measure, TextModel

__all__ = ["SPLITS", "Measure", "StringTask", "SyntheticTask", "TextModel"]

SPLITS = ("opt", "test")
MAX_ITEMS = 100_000  # per evaluation split; more is beyond what a run can score per child anyway
MAX_MISSES = 10_000  # draws in a row that give nothing new: the prompt space is exhausted


@dataclass
class SyntheticTask(ItemTask):
    """A task whose items come from a seeded generator and are scored by exact match.

    Subclasses implement :meth:`sample`, one ``(prompt, answer)`` pair from an RNG.
    The ``opt`` split (used by the archives and every choice made in a run) and the
    ``test`` split (used only for reporting) are disjoint, and training examples never
    contain a prompt of either split.

    Args:
        name: Task name, the key used in archives and summaries.
        n_opt: Items in the optimisation split.
        n_test: Items in the held-out test split.
        seed: Seed of the evaluation splits.
        measure: Descriptor axis (range and bins) of this task's score.
    """

    name: str
    n_opt: int = 256
    n_test: int = 512
    seed: int = 1234
    measure: Measure = field(default_factory=Measure)
    stop: str = "\n"

    def __post_init__(self) -> None:
        self.measure = Measure.of(self.measure)
        check_fields(self)
        require(bool(self.name), "name", "must be a non-empty string")
        for key in ("n_opt", "n_test"):
            require(1 <= getattr(self, key) <= MAX_ITEMS, key, f"must be in [1, {MAX_ITEMS}], got {getattr(self, key)}")
        self._splits: dict[str, list[tuple[str, str]]] | None = None

    # -- to implement -----------------------------------------------------------
    def sample(self, rng: random.Random) -> tuple[str, str]:
        raise NotImplementedError

    @property
    def max_new_tokens(self) -> int:
        raise NotImplementedError

    # -- data -------------------------------------------------------------------
    def splits(self) -> dict[str, list[tuple[str, str]]]:
        if self._splits is None:
            rng = random.Random(f"{self.name}:{self.seed}:eval")
            seen: set[str] = set()
            out: dict[str, list[tuple[str, str]]] = {}
            for split, n in (("opt", self.n_opt), ("test", self.n_test)):
                items: list[tuple[str, str]] = []
                misses = 0
                while len(items) < n and misses < MAX_MISSES:
                    prompt, answer = self.sample(rng)
                    if prompt in seen:
                        misses += 1
                        continue
                    misses = 0
                    seen.add(prompt)
                    items.append((prompt, answer))
                if len(items) < n:
                    raise ValueError(
                        f"task {self.name!r}: could only draw {len(items)} distinct "
                        f"prompts for split {split!r}, asked for n_{split}={n}"
                    )
                out[split] = items
            self._splits = out
        return self._splits

    def prepare(self) -> None:
        """Draw the evaluation splits now, so a prompt space too small for them fails before any model exists."""
        self.splits()

    def split(self, split: str) -> list[tuple[str, str]]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.splits()[split]

    def train_examples(self, n: int, seed: int) -> list[tuple[str, str]]:
        """``n`` training pairs that share no prompt with either evaluation split."""
        held_out = {p for items in self.splits().values() for p, _ in items}
        rng = random.Random(f"{self.name}:{seed}:train")
        out: list[tuple[str, str]] = []
        misses = 0
        while misses < MAX_MISSES:
            if len(out) == n:
                return out
            prompt, answer = self.sample(rng)
            if prompt in held_out:
                misses += 1
            else:
                misses = 0
                out.append((prompt, answer))
        raise ValueError(
            f"task {self.name!r}: could only draw {len(out)} of {n} training examples outside the "
            f"evaluation splits; the splits hold too much of the prompt space (lower n_opt/n_test)"
        )

    # -- scoring ----------------------------------------------------------------
    def score(self, output: str, answer: str) -> float:
        return float(output.strip() == answer)

    def evaluate_items(self, model: TextModel, split: str = "opt") -> list[float]:
        """Exact match (0 or 1) of the greedy output on each item of ``split``, in order."""
        items = self.split(split)
        outputs = model.generate([p for p, _ in items], max_new_tokens=self.max_new_tokens, stop=(self.stop,))
        return [self.score(o, a) for o, (_, a) in zip(outputs, items)]


@dataclass
class StringTask(SyntheticTask):
    """A string of ``min_len``..``max_len`` letters of ``alphabet`` followed by ``marker``;
    the answer is :meth:`transform` of the string.

    ``credit``: ``exact`` (1 for the whole answer, else 0) or ``partial`` (the fraction of the
    answer's characters in place, out of the longer of answer and output): a graded score
    where exact answers are rare, as on lengths no model was trained on."""

    alphabet: str = "abcdefghijklm"
    min_len: int = 3
    max_len: int = 7
    credit: str = "exact"
    marker: ClassVar[str] = ":"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.credit in ("exact", "partial"), "credit", f"must be exact or partial, got {self.credit!r}")
        require(len(self.alphabet) > 0, "alphabet", "must be a non-empty string")
        require(
            1 <= self.min_len <= self.max_len <= 1000,
            "min_len",
            f"must satisfy 1 <= min_len <= max_len <= 1000, got {self.min_len}, {self.max_len}",
        )

    def transform(self, s: str) -> str:
        raise NotImplementedError

    def score(self, output: str, answer: str) -> float:
        if self.credit == "exact":
            return super().score(output, answer)
        out = output.strip()
        return sum(a == b for a, b in zip(out, answer)) / max(len(answer), len(out), 1)

    def sample(self, rng: random.Random) -> tuple[str, str]:
        s = "".join(rng.choice(self.alphabet) for _ in range(rng.randint(self.min_len, self.max_len)))
        return s + self.marker, self.transform(s)

    @property
    def max_new_tokens(self) -> int:
        return self.max_len + 1
