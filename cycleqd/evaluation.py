"""Evaluation: candidates are written into one resident model in place, and the
task plugins score it through the :class:`~tasks.base.TextModel` interface only."""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol, Sequence

import torch

from cycleqd.taskvector import LowRank, TaskVector
from tasks.base import TextModel


class Task(Protocol):
    """What the loop needs of a task plugin: a name and a deterministic score in [0, 1]."""

    name: str

    def evaluate(self, model: TextModel, split: str = "opt") -> float: ...


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
    def _write(self, tv: TaskVector | None) -> None:
        touched = set() if tv is None else set(tv)
        for name, p in self.params.items():
            if name not in touched:
                p.copy_(self.base[name])
        if tv is None:
            return
        for name, d in tv.items():
            if name not in self.params:
                raise KeyError(f"task vector touches {name!r}, which the resident model does not track")
            p = self.params[name]
            # Accumulate in float32 and cast once: bf16/fp16 models lose small deltas otherwise.
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


class LocalEvaluator:
    """Scores a text model on each task in this process (batched generation, CUDA when present)."""

    def __call__(self, model: TextModel, tasks: Sequence[Task], split: str) -> dict[str, float]:
        return {t.name: float(t.evaluate(model, split)) for t in tasks}


def evaluate_model(model_dir, tasks: Sequence[Task], split: str = "test", *, batch_size: int = 256, device=None) -> dict[str, float]:
    """Scores of a saved transformers model (an exported elite, say) on ``tasks``, new ones included."""
    from cycleqd.models import HFTextModel, load_model

    model, tokenizer = load_model(model_dir, device)
    return LocalEvaluator()(HFTextModel(model, tokenizer, batch_size=batch_size), tasks, split)
