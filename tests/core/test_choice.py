"""Choosing on the optimisation split (cycleqd.core.choice): the best mean wins, ties go to
the caller's preference, failures never win."""

from __future__ import annotations

from cycleqd.core.choice import choose_on_opt, opt_means
from cycleqd.protocols import Failure

FAILED = Failure("timeout", "a", "slow")


def test_the_highest_mean_wins_and_a_tie_goes_to_the_preferred():
    results = {0.5: {"a": 0.2, "b": 0.6}, 1.0: {"a": 0.6, "b": 0.2}, 1.5: {"a": 0.1, "b": 0.1}, 2.0: FAILED}
    assert choose_on_opt(results, prefer=lambda s: -abs(s - 1.0)) == 1.0
    assert choose_on_opt(results, prefer=lambda s: -abs(s - 0.5)) == 0.5
    results[1.5] = {"a": 0.9, "b": 0.9}
    assert choose_on_opt(results, prefer=lambda s: -abs(s - 1.0)) == 1.5
    assert opt_means(results) == {0.5: 0.4, 1.0: 0.4, 1.5: 0.9, 2.0: None}


def test_nothing_is_chosen_when_every_evaluation_failed():
    assert choose_on_opt({1.0: FAILED, 2.0: FAILED}, prefer=lambda s: 0.0) is None
