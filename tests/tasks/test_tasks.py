"""Unit tests of the synthetic tasks (cycleqd.tasks.base, cycleqd.tasks.addition, cycleqd.tasks.reversal, cycleqd.tasks.sorting)."""

from __future__ import annotations

import re

import pytest

from cycleqd.tasks.addition import Addition
from cycleqd.tasks.base import Measure
from cycleqd.tasks.reversal import Reversal
from cycleqd.tasks.sorting import Sorting


def oracle_addition(prompt: str) -> str:
    m = re.fullmatch(r"(\d+)\+(\d+)=", prompt)
    assert m, prompt
    return str(int(m.group(1)) + int(m.group(2)))


def oracle_reversal(prompt: str) -> str:
    assert prompt.endswith("<")
    return "".join(reversed(prompt[:-1]))


def oracle_sorting(prompt: str) -> str:
    assert prompt.endswith("^")
    return "".join(sorted(prompt[:-1]))


CASES = [
    (Addition, oracle_addition, "addition"),
    (Reversal, oracle_reversal, "reversal"),
    (Sorting, oracle_sorting, "sorting"),
]
IDS = [c[2] for c in CASES]


def _small(cls, **kw):
    return cls(n_opt=64, n_test=64, **kw)


class FakeModel:
    """A TextModel whose answer for the i-th prompt of a call is chosen by ``policy(i, prompt)``."""

    def __init__(self, policy):
        self.policy = policy
        self.calls = []

    def generate(self, prompts, *, max_new_tokens, stop=()):
        self.calls.append((list(prompts), max_new_tokens, tuple(stop)))
        return [self.policy(i, p) for i, p in enumerate(prompts)]


@pytest.mark.parametrize("cls, oracle, name", CASES, ids=IDS)
def test_splits_disjoint_and_correct(cls, oracle, name):
    task = _small(cls)
    assert task.name == name
    opt, test = task.split("opt"), task.split("test")
    assert len(opt) == 64 and len(test) == 64
    opt_prompts, test_prompts = [p for p, _ in opt], [p for p, _ in test]
    assert len(set(opt_prompts)) == 64 and len(set(test_prompts)) == 64
    assert not set(opt_prompts) & set(test_prompts)
    for prompt, answer in opt + test:
        assert answer == oracle(prompt)
        assert len(answer) <= task.max_new_tokens


@pytest.mark.parametrize("cls, oracle, name", CASES, ids=IDS)
def test_train_examples_avoid_eval_prompts(cls, oracle, name):
    task = _small(cls)
    held_out = {p for split in ("opt", "test") for p, _ in task.split(split)}
    train = task.train_examples(500, seed=0)
    assert len(train) == 500
    assert not {p for p, _ in train} & held_out
    for prompt, answer in train:
        assert answer == oracle(prompt)
    assert task.train_examples(500, seed=0) == train
    assert task.train_examples(500, seed=1) != train


@pytest.mark.parametrize("cls, oracle, name", CASES, ids=IDS)
def test_splits_deterministic_across_instances(cls, oracle, name):
    a, b = _small(cls), _small(cls)
    assert a.splits() == b.splits()
    assert a.train_examples(20, seed=3) == b.train_examples(20, seed=3)
    c = _small(cls, seed=99)
    assert c.split("opt") != a.split("opt")


@pytest.mark.parametrize("cls, oracle, name", CASES, ids=IDS)
def test_evaluate_with_fake_models(cls, oracle, name):
    task = _small(cls)
    correct = FakeModel(lambda i, p: oracle(p) + "\n")  # trailing stop char is stripped
    assert task.evaluate(correct, "opt") == 1.0
    prompts, max_new, stop = correct.calls[0]
    assert prompts == [p for p, _ in task.split("opt")]
    assert max_new == task.max_new_tokens
    assert stop == ("\n",)

    wrong = FakeModel(lambda i, p: oracle(p) + "0")
    assert task.evaluate(wrong, "opt") == 0.0

    half = FakeModel(lambda i, p: oracle(p) if i % 2 == 0 else "")
    assert task.evaluate(half, "opt") == 0.5

    assert task.evaluate(correct, "test") == 1.0
    assert correct.calls[-1][0] == [p for p, _ in task.split("test")]


def test_unknown_split():
    with pytest.raises(ValueError, match="split must be one of"):
        _small(Addition).split("train")


def test_prompt_formats_and_alphabets():
    add = _small(Addition)
    for prompt, _ in add.split("opt"):
        a, b = prompt[:-1].split("+")
        assert 1 <= len(a) <= 3 and 1 <= len(b) <= 3
    rev = _small(Reversal)
    for prompt, _ in rev.split("opt"):
        assert set(prompt[:-1]) <= set("abcdefghijklm") and 3 <= len(prompt) - 1 <= 7
    srt = _small(Sorting)
    for prompt, _ in srt.split("opt"):
        assert set(prompt[:-1]) <= set("nopqrstuvwxyz") and 3 <= len(prompt) - 1 <= 7
    assert add.max_new_tokens == 5 and rev.max_new_tokens == 8 and srt.max_new_tokens == 8


def test_measure_from_dict():
    t = Addition(n_opt=4, n_test=4, measure={"low": 0.1, "high": 0.9, "bins": 5})
    assert t.measure == Measure(low=0.1, high=0.9, bins=5)


@pytest.mark.parametrize(
    "task, split",
    [
        # 10 × 10 one-digit sums: 100 distinct prompts
        (Addition(n_opt=64, n_test=64, min_digits=1, max_digits=1), "test"),
        (Addition(n_opt=150, n_test=4, min_digits=1, max_digits=1), "opt"),
        # "a", "b", "aa", "ab", "ba", "bb": 6 distinct prompts
        (Reversal(n_opt=4, n_test=4, alphabet="ab", min_len=1, max_len=2), "test"),
        (Sorting(n_opt=7, n_test=1, alphabet="no", min_len=1, max_len=2), "opt"),
    ],
)
def test_too_many_prompts_raises_naming_split(task, split):
    with pytest.raises(ValueError, match=rf"split '{split}'.*n_{split}="):
        task.splits()


class _CappedAddition(Addition):
    """One-digit addition that gives up (instead of spinning forever) after many samples."""

    cap = 200_000

    def sample(self, rng):
        self._calls = getattr(self, "_calls", 0) + 1
        if self._calls > self.cap:
            raise RuntimeError("train_examples kept sampling: it never terminates")
        return super().sample(rng)


def test_train_examples_exhausted_prompt_space_raises():
    task = _CappedAddition(n_opt=50, n_test=50, min_digits=1, max_digits=1)  # all 100 prompts held out
    task.splits()
    with pytest.raises(ValueError, match="train"):
        task.train_examples(1, seed=0)
