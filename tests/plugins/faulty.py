"""Plugins that misbehave on purpose: a task that raises, returns NaN, inf or 1.7, or
hangs, and a mutation that makes NaN weights. ``FAULTY=<mode>:<every>:<split>`` in the
environment switches the task's misbehaviour on for every ``every``-th evaluation on
``split`` (kept out of the config so the embedded cache key does not change with it).

For worker pools, ``WORKER_FAULTS=<file>:<mode>:<n1,n2,...>`` counts evaluations on opt
across all processes in ``file`` and, at those counts, kills the worker process
(``die``) or hangs it where no alarm can reach it (``hang``). ``WORKER_SLOW_START=<seconds>``
makes every task built after that count has begun (a replacement worker) take that long to
start, as a model load on a busy machine does."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from cycleqd.core.mutation import SVDMutation
from cycleqd.core.taskvector import TaskVector
from tests.plugins.partial_tasks import PartialSorting


@dataclass
class FaultySorting(PartialSorting):
    calls: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        delay, faults = os.environ.get("WORKER_SLOW_START"), os.environ.get("WORKER_FAULTS")
        if delay and faults and os.path.exists(faults.split(":")[0]):
            time.sleep(float(delay))

    def evaluate(self, model, split: str = "opt") -> float:
        _worker_fault(split)
        value = super().evaluate(model, split)
        spec = os.environ.get("FAULTY")
        if not spec:
            return value
        mode, every, on = spec.split(":")
        if split != on:
            return value
        n = self.calls[split] = self.calls.get(split, 0) + 1
        if n % int(every):
            return value
        if mode == "raise":
            raise RuntimeError(f"plugin bug on call {n}\nsecond line of the message")
        if mode == "hang":
            time.sleep(3600)
        return {"nan": float("nan"), "inf": float("inf"), "big": 1.7, "none": None}[mode]


def _worker_fault(split: str) -> None:
    spec = os.environ.get("WORKER_FAULTS")
    if not spec or split != "opt":
        return
    path, mode, at = spec.split(":")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)
    n = os.path.getsize(path)  # appends of one byte: the count across processes
    if str(n) not in at.split(","):
        return
    if mode == "die":
        os._exit(3)
    if mode == "hang":
        import signal

        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM, signal.SIGINT, signal.SIGTERM])
        time.sleep(3600)


@dataclass(frozen=True)
class NaNMutation(SVDMutation):
    """SVD mutation whose every ``every``-th child holds a NaN."""

    every: int = 3

    def __call__(self, child, svds, gen):
        out = super().__call__(child, svds, gen)
        count = getattr(self, "_count", 0) + 1
        object.__setattr__(self, "_count", count)
        if count % self.every:
            return out
        name = next(iter(out))
        d = out[name].clone() if isinstance(out[name], torch.Tensor) else out[name].dense()
        d.view(-1)[0] = float("nan")
        return TaskVector({**dict(out), name: d})
