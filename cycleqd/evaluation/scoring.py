"""Evaluation: candidates are written into one resident model in place, and the
task plugins score it through the :class:`~cycleqd.protocols.TextModel` interface only."""

from __future__ import annotations

import contextlib
import math
import numbers
import signal
import threading
from typing import Any, Iterator, Mapping, Sequence

import torch

from cycleqd.core.taskvector import LowRank, TaskVector
from cycleqd.errors import EvaluationFailed
from cycleqd.protocols import Failure, ItemScores, Result, Task, TextModel, scored_by_items


class ResidentModel:
    """A model kept in memory with a copy of its base weights for the parameters that
    task vectors touch; :meth:`applied` writes ``θ0 + τ`` in place and restores ``θ0``.

    Args:
        model: The base model (already on its device).
        names: Parameters that any task vector may touch (their base values are copied once).
    """

    def __init__(self, model: torch.nn.Module, names: Sequence[str]) -> None:
        self.model = model
        params = dict(model.named_parameters())
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ValueError(f"task vectors name parameters the base model lacks: {unknown[:5]}")
        self.params = {n: params[n] for n in names}
        self.base = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def _write(self, tv: Mapping[str, Any] | None) -> None:
        touched = set() if tv is None else set(tv)
        for name, p in self.params.items():
            if name not in touched:
                p.copy_(self.base[name])
        if tv is None:
            return
        for name in tv:
            d = None if hasattr(tv, "delta") else tv[name]
            if name not in self.params:
                raise KeyError(f"task vector touches {name!r}, which the resident model does not track")
            p = self.params[name]
            # Accumulate in float32 and cast once: bf16/fp16 models lose small deltas otherwise.
            if hasattr(tv, "delta"):  # a genome: its delta is computed on the model's device
                delta = tv.delta(name, p.device)
            else:
                delta = (d.B.to(p.device) @ d.A.to(p.device)) if isinstance(d, LowRank) else d.to(p.device)
            p.copy_((self.base[name].float() + delta.float()).to(p.dtype))

    @contextlib.contextmanager
    def applied(self, tv: TaskVector | None) -> Iterator[torch.nn.Module]:
        """Within the block the model holds ``θ0 + tv``; afterwards exactly ``θ0`` again."""
        self._write(tv)
        try:
            yield self.model
        finally:
            self._write(None)


class EvaluationTimeout(BaseException):
    """Raised inside a task that ran past its time limit. A BaseException, so that a
    plugin's own ``except Exception`` cannot swallow it."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`EvaluationTimeout` in the block after ``seconds`` (SIGALRM).

    Only the main thread receives signals: elsewhere the block runs unlimited.
    A task stuck in native code that never returns to Python is not interrupted.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise EvaluationTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _out_of_bounds(task: str, value: float, what: str, bounded: bool = True) -> Failure | None:
    """The failure of a score (or an item's score) that is not a finite number in [0, 1]
    (any finite number where not ``bounded``: a lower-is-better task's)."""
    if not math.isfinite(value):
        return Failure("nonfinite_score", task, f"{what} {value}")
    if bounded and not 0.0 <= value <= 1.0:
        return Failure("out_of_range", task, f"{what} {value:g}, outside [0, 1]")
    return None


def _check_items(task: str, values: Any, bounded: bool = True) -> tuple[list[float] | None, Failure | None]:
    try:
        items = [float(v) for v in values]
    except (TypeError, ValueError):
        return None, Failure(
            "out_of_range", task, f"evaluate_items returned {type(values).__name__}, not a sequence of numbers"
        )
    if not items:
        return None, Failure("out_of_range", task, "evaluate_items returned no items")
    for v in items:
        failure = _out_of_bounds(task, v, "an item scored", bounded)
        if failure is not None:
            return None, failure
    return items, None


def score_tasks(
    model: TextModel, tasks: Sequence[Task], split: str, timeout_s: float | None = None, items: bool | None = None
) -> Result:
    """Each task's score of ``model`` on ``split``, or the :class:`Failure` of the first task
    that raises, runs past ``timeout_s`` seconds, or returns something other than a
    finite number in [0, 1] (any finite number for a lower-is-better task).

    Scores are returned as utilities (:meth:`~cycleqd.protocols.Measure.utility`): a
    higher-is-better task's score as it is, a lower-is-better task's mapped into [0, 1] by
    its range, so that everything downstream reads higher as better.

    With ``items`` (default: on the test split) tasks scored item by item
    (:class:`~cycleqd.protocols.ItemTask`) give their per-item results too, returned as
    :class:`~cycleqd.protocols.ItemScores`."""
    items = split == "test" if items is None else items
    scores: dict[str, float] = {}
    per_item: dict[str, list[float]] = {}
    for t in tasks:
        measure = getattr(t, "measure", None)
        bounded = getattr(measure, "direction", "max") == "max"
        try:
            with deadline(timeout_s):
                if items and scored_by_items(t):
                    values, failure = _check_items(t.name, t.evaluate_items(model, split), bounded)
                    if failure is not None:
                        return failure
                    per_item[t.name] = values if bounded else [measure.item_utility(v) for v in values]
                    value = sum(values) / len(values)
                else:
                    value = t.evaluate(model, split)
        except EvaluationTimeout:
            return Failure("timeout", t.name, f"no score after evaluator.timeout_s={timeout_s:g} seconds")
        except Exception as e:
            return Failure("raised", t.name, _one_line(e))
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return Failure(
                "out_of_range",
                t.name,
                f"returned {value!r} ({type(value).__name__}), not a number" + (" in [0, 1]" if bounded else ""),
            )
        value = float(value)
        failure = _out_of_bounds(t.name, value, "returned", bounded)
        if failure is not None:
            return failure
        scores[t.name] = value if bounded else measure.utility(value)
    return ItemScores(scores, per_item) if per_item else scores


def evaluate_model(
    model_dir, tasks: Sequence[Task], split: str = "test", *, batch_size: int = 256, device=None
) -> dict[str, float]:
    """Scores of a saved transformers model (an exported elite, say) on ``tasks``, new ones included."""
    from cycleqd.models.loading import HFTextModel, load_model

    model, tokenizer = load_model(model_dir, device)
    result = score_tasks(HFTextModel(model, tokenizer, batch_size=batch_size), tasks, split)
    if isinstance(result, Failure):
        raise EvaluationFailed(f"evaluation of {str(model_dir)!r} failed: {result}")
    return dict(result)
