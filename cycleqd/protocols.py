"""The types that the loop and the task plugins share: what a task sees of a model, what
a task is, the descriptor axis it contributes, and the record of a failed evaluation.
Task plugins import these; nothing here imports a plugin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence, Union

from cycleqd.checks import check_fields, require
from cycleqd.errors import ConfigError


class TextModel(Protocol):
    """What a task sees of a model: batched greedy text generation, nothing else."""

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]: ...


@dataclass(frozen=True)
class Measure:
    """The axis a task contributes when it is a behaviour descriptor, and which way is better.

    ``direction: max`` (the default): the task's score is a number in [0, 1], higher is
    better, and the axis is ``[low, high]`` in score units. ``direction: min``: the score is
    any finite number, lower is better (perplexity, error rate, length), and ``[low, high]``
    is the span that matters: cycleqd works with its *utility* ``(high − score) / (high − low)``
    clipped to [0, 1] (1 at ``low``, the best end), so that quality, descriptors, sampling,
    means and merge weights all read higher as better; the axis is then ``[0, 1]``.
    """

    low: float = 0.0
    high: float = 1.0
    bins: int = 15
    direction: str = "max"

    def __post_init__(self) -> None:
        check_fields(self)
        require(1 <= self.bins <= 10_000, "bins", f"must be in [1, 10000], got {self.bins}")
        require(self.low < self.high, "low", f"empty range: low={self.low} is not below high={self.high}")
        require(self.direction in ("max", "min"), "direction", f"must be max or min, got {self.direction!r}")

    @property
    def axis(self) -> tuple[float, float]:
        """The descriptor axis' range, in utility units."""
        return (self.low, self.high) if self.direction == "max" else (0.0, 1.0)

    def utility(self, score: float) -> float:
        """``score`` read as higher-is-better: itself (max), or its place in the range (min)."""
        if self.direction == "max":
            return score
        return min(1.0, max(0.0, (self.high - score) / (self.high - self.low)))

    def outside(self, utility: float) -> str | None:
        """The end of the axis that a score, given as its ``utility``, lies past (``"low"`` or
        ``"high"``, the config key of that end), or None inside it. A lower-is-better score's
        utility is already clipped into its range, so it is never outside: an error rate of 1
        on [0, 1] is as inside as its mirror, an accuracy of 0."""
        low, high = self.axis
        return "high" if utility > high else "low" if utility < low else None

    def item_utility(self, score: float) -> float:
        """One item's utility: linear, unclipped, so that the utilities' mean is the mean's."""
        return score if self.direction == "max" else (self.high - score) / (self.high - self.low)

    def score(self, utility: float) -> float:
        """The task's own score back from a utility (the range's end where the utility was clipped)."""
        return utility if self.direction == "max" else self.high - utility * (self.high - self.low)

    @classmethod
    def of(cls, value: "Measure | Mapping[str, Any]") -> "Measure":
        """A Measure from a config mapping (errors keyed under ``measure``)."""
        if isinstance(value, Measure):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError("measure", f"must be a mapping with low, high and bins, got {value!r}")
        unknown = sorted(set(value) - {"low", "high", "bins", "direction"})
        if unknown:
            raise ConfigError(f"measure.{unknown[0]}", "unknown key (the keys are low, high, bins, direction)")
        try:
            return cls(**value)
        except ConfigError as e:
            raise e.under("measure") from None


class Task(Protocol):
    """What the loop needs of a task plugin: a name, its descriptor axis, and a
    deterministic score of a model on a split (``opt`` or ``test``): in [0, 1] and higher is
    better, or, with ``measure.direction: min``, any finite number and lower is better."""

    name: str
    measure: Measure

    def evaluate(self, model: TextModel, split: str = "opt") -> float: ...

    # Optional: ``prepare()`` loads or draws the evaluation data; the config check calls
    # it before any model is built, so a data error surfaces first.
    # Tasks scored item by item derive from :class:`ItemTask`: test-split scores then carry
    # the per-item results, and a run reports paired bootstrap intervals of its differences.


class ItemTask:
    """A task scored item by item: implement ``evaluate_items(model, split)``, one result in
    [0, 1] per item of the split in a fixed order; ``evaluate`` is their mean. A subclass
    that overrides ``evaluate`` is scored by it alone (its items are not used)."""

    def evaluate_items(self, model: TextModel, split: str = "opt") -> Sequence[float]:
        raise NotImplementedError

    def evaluate(self, model: TextModel, split: str = "opt") -> float:
        values = self.evaluate_items(model, split)
        return sum(values) / len(values)


def scored_by_items(task: Any) -> bool:
    """Whether ``task``'s score is the mean of its ``evaluate_items`` (not overridden)."""
    return isinstance(task, ItemTask) and type(task).evaluate is ItemTask.evaluate


FAILURE_REASONS = ("raised", "nonfinite_score", "out_of_range", "timeout", "nonfinite_weights", "worker_lost")


@dataclass(frozen=True)
class Failure:
    """Why a model has no scores: the task at fault (None for the model itself), one of
    :data:`FAILURE_REASONS`, and a one-line message."""

    reason: str
    task: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.reason} ({self.task}): {self.message}" if self.task else f"{self.reason}: {self.message}"


class ItemScores(dict):
    """Each task's score (a plain ``task → float`` mapping), with the per-item results behind
    it: ``per_item[task]`` is one number per item of the split, in the task's order."""

    def __init__(self, scores: Mapping[str, float], items: Mapping[str, Sequence[float]]) -> None:
        super().__init__(scores)
        self.per_item = {t: list(map(float, v)) for t, v in items.items()}


Scores = Mapping[str, float]
Result = Union[Scores, Failure]


class Evaluator(Protocol):
    """What the loops need of an evaluator (:mod:`cycleqd.evaluation.pool`): scores of
    ``θ0 + x`` for a task vector or genome ``x`` (None: the base model) on a split, or the
    :class:`Failure` that stopped them.

    ``map`` evaluates a batch and returns its results in order; ``submit`` and ``next_result``
    are the steady state's: keep up to ``num_workers`` evaluations ``in_flight`` and take
    each result as it comes, with its key."""

    num_workers: int
    in_flight: int

    def map(self, items: Sequence[tuple[Any, str]]) -> list[Result]: ...

    def submit(self, key: Any, x: Any, split: str) -> None: ...

    def next_result(self) -> tuple[Any, Result]: ...


def mean_score(scores: Scores, tasks: Sequence[str] | None = None) -> float:
    """The mean over tasks of ``scores`` (over ``tasks`` only, where given): the one number a
    model's scores are ranked by wherever a single number is needed."""
    names = list(scores) if tasks is None else list(tasks)
    return sum(scores[t] for t in names) / len(names)


def result_data(result: Result) -> dict[str, Any]:
    """``result`` as plain data (what a checkpoint keeps): ``{"failure": {...}}`` or
    ``{"scores": {...}}``, with ``"per_item"`` for :class:`ItemScores`."""
    if isinstance(result, Failure):
        return {"failure": {"reason": result.reason, "task": result.task, "message": result.message}}
    out: dict[str, Any] = {"scores": {t: float(v) for t, v in result.items()}}
    if isinstance(result, ItemScores):
        out["per_item"] = result.per_item
    return out


def result_of(data: Mapping[str, Any]) -> Result:
    """The result that :func:`result_data` wrote."""
    if "failure" in data:
        return Failure(**data["failure"])
    if "per_item" in data:
        return ItemScores(data["scores"], data["per_item"])
    return dict(data["scores"])
