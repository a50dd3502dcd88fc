"""An evaluation worker: one resident base model, the task plugins, and what it needs to
write a child into the model (the experts' bases for genomes; nothing for task vectors,
which travel whole). The loop's own process holds one; a Ray pool holds one per actor
(:mod:`cycleqd.evaluation.pool`), built from a :class:`WorkerSpec`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from cycleqd.core.genome import Basis, place_basis
from cycleqd.core.taskvector import TaskVector
from cycleqd.evaluation.scoring import ResidentModel, score_tasks
from cycleqd.fileio import fault_point
from cycleqd.protocols import Failure, Result


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a remote worker needs to build itself (sent once).

    Attributes:
        base_dir: The base model's transformers directory (on a shared file system for a cluster).
        device: ``cuda``, ``cpu``, ... (None: cuda when present).
        threads: torch CPU threads of the worker (None: torch's default).
        eval_batch_size: Prompts per generate() batch.
        tasks: The config of each task, as plain data (built again in the worker).
        touched: The parameters a child may change.
        timeout_s: Seconds one task may take to score one model.
        seed: torch's global seed, as the loop's process sets it.
        opt_items: Per-item results on the opt split too (a search that competes for items, M2N2).
    """

    base_dir: str
    device: str | None
    threads: int | None
    eval_batch_size: int
    tasks: dict
    touched: tuple[str, ...]
    timeout_s: float | None
    seed: int = 0
    opt_items: bool = False


class Worker:
    """Scores children: writes ``θ0 + τ`` into the resident model, runs every task, restores ``θ0``.

    Args:
        model: The base model, on its device.
        tokenizer: Its tokenizer.
        tasks: The task plugins.
        touched: Parameters a child may change (their base values are kept).
        basis: The experts' bases (:class:`cycleqd.core.genome.Basis`) when children are genomes.
        eval_batch_size: Prompts per generate() batch.
        timeout_s: Seconds one task may take to score one model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        tasks: Sequence,
        touched: Sequence[str],
        basis: Basis | None = None,
        *,
        eval_batch_size: int = 256,
        timeout_s: float | None = None,
        opt_items: bool = False,
    ) -> None:
        from cycleqd.models.loading import HFTextModel

        self.model, self.tasks, self.basis, self.timeout_s = model, list(tasks), basis, timeout_s
        self.opt_items = opt_items
        self.resident = ResidentModel(model, list(touched))
        self.text_model = HFTextModel(model, tokenizer, batch_size=eval_batch_size)

    @classmethod
    def build(cls, spec: WorkerSpec, basis=None) -> "Worker":
        """A worker in a fresh process: the base model loaded from disk, the tasks built from their config."""
        import torch
        from hydra.utils import instantiate

        from cycleqd.models.loading import default_device, load_model

        torch.manual_seed(spec.seed)
        if spec.threads:
            torch.set_num_threads(spec.threads)
        model, tokenizer = load_model(spec.base_dir, spec.device or default_device())
        tasks = [instantiate(node, _convert_="all") for node in spec.tasks.values()]
        if basis is not None:
            place_basis(basis, next(model.parameters()).device)
        return cls(
            model,
            tokenizer,
            tasks,
            spec.touched,
            basis,
            eval_batch_size=spec.eval_batch_size,
            timeout_s=spec.timeout_s,
            opt_items=spec.opt_items,
        )

    def task_vector(self, x: TaskVector | np.ndarray | None):
        """What the resident model is given for ``x``: the task vector, or a genome's view."""
        if x is None or isinstance(x, TaskVector):
            return x
        return self.basis.view(x)

    def score(self, x: Any, split: str) -> Result:
        """Every task's score of ``θ0 + x`` (a task vector or a genome) on ``split``, or the
        :class:`Failure` that stopped it."""
        tv = self.task_vector(x)
        if tv is not None and not tv.is_finite():
            return Failure("nonfinite_weights", None, "the child holds NaN or inf; not evaluated")
        fault_point(f"evaluate on {split}")
        with self.resident.applied(tv):
            return score_tasks(
                self.text_model, self.tasks, split, self.timeout_s, items=split == "test" or self.opt_items
            )

    def run(self, x: Any, split: str) -> tuple[Result, float, int]:
        """:meth:`score`, with the seconds it took and this process's id (what a pool records)."""
        t0 = time.perf_counter()
        result = self.score(x, split)
        return result, time.perf_counter() - t0, os.getpid()
