"""Task scores with their per-item results (cycleqd.evaluation.scoring)."""

from __future__ import annotations

from cycleqd.evaluation.scoring import score_tasks
from cycleqd.protocols import ItemScores
from cycleqd.tasks.sorting import Sorting


class _Echo:
    """A text model that answers a fixed share of the prompts correctly."""

    def __init__(self, task, right: int):
        self.answers = {p: a for p, a in task.split("test")[:right]}

    def generate(self, prompts, *, max_new_tokens, stop=()):
        return [self.answers.get(p, "?") for p in prompts]


def test_test_scores_carry_their_items_and_an_overriding_task_is_scored_by_its_own_evaluate():
    task = Sorting(name="sorting", n_opt=8, n_test=40)
    result = score_tasks(_Echo(task, 10), [task], "test")
    assert isinstance(result, ItemScores)
    assert result.per_item["sorting"] == [1.0] * 10 + [0.0] * 30 and result["sorting"] == 0.25
    assert not isinstance(score_tasks(_Echo(task, 10), [task], "opt"), ItemScores)  # opt: means only

    class Halved(Sorting):
        def evaluate(self, model, split="opt"):
            return super().evaluate(model, split) / 2

    own = Halved(name="sorting", n_opt=8, n_test=40)
    result = score_tasks(_Echo(own, 10), [own], "test")
    assert result == {"sorting": 0.125} and not isinstance(result, ItemScores)
