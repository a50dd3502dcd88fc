"""Evaluator pools: who scores the children.

- :class:`LocalEvaluator` (``evaluator=local``, the default): the loop's
  own process, one child after another.
- :class:`RayPool` (``evaluator=ray``): N Ray actors, each a :class:`~cycleqd.evaluation.workers.Worker`
  with its own resident base model (one GPU each when ``num_gpus=1``), the task plugins, and
  the experts' bases, sent once through the object store. Per child only its genome (or task
  vector) travels. ``mode: sync`` evaluates a generation's children in parallel and tells them
  in ask order (the same run as the local evaluator with the same settings); ``mode: async``
  keeps every worker busy, asking a new child whenever one finishes.

A worker that dies, or hangs past its deadline, is replaced and its child tried once more;
a second loss is a failed evaluation (``worker_lost`` or ``timeout``), and the run goes on.
A replacement gets work only once it has started (loaded its model): its start-up is not
evaluation time, so a slow start on a loaded machine cannot count as a hang.
A pool that started its own Ray leaves no process behind: at close it waits for its
workers' processes to end, and kills those that outlive Ray's shutdown.
"""

from __future__ import annotations

import collections
import logging
import numbers
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

from cycleqd.checks import require
from cycleqd.errors import ConfigError
from cycleqd.protocols import Failure, Result

log = logging.getLogger(__name__)


class LocalEvaluator:
    """The loop's own process scores the children, one after another (batched generation,
    CUDA when present).

    Args:
        timeout_s: Seconds one task may take to score one model before the model counts
            as a failed evaluation (``None``: no limit).
        max_consecutive_failures: Failed evaluations in a row after which the run stops
            at a checkpoint with an error naming the last failure.
    """

    mode = "sync"
    num_workers = 1
    needs_local_worker = True

    def __init__(self, *, timeout_s: float | None = 3600.0, max_consecutive_failures: int = 20) -> None:
        require(
            timeout_s is None
            or (isinstance(timeout_s, numbers.Real) and not isinstance(timeout_s, bool) and timeout_s > 0),
            "timeout_s",
            f"must be a positive number of seconds or null, got {timeout_s!r}",
        )
        require(
            isinstance(max_consecutive_failures, int)
            and not isinstance(max_consecutive_failures, bool)
            and max_consecutive_failures >= 1,
            "max_consecutive_failures",
            f"must be a positive integer, got {max_consecutive_failures!r}",
        )
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        self.max_consecutive_failures = max_consecutive_failures
        self.stats = [WorkerStats()]
        self.t_start = time.perf_counter()
        self.in_flight = 0
        self.queue_depth = 0

    def start(self, local_worker, spec, basis) -> None:
        self.worker = local_worker
        self.t_start = time.perf_counter()

    def map(self, items: Sequence[tuple[Any, str]]) -> list[Result]:
        out = []
        for x, split in items:
            result, busy, _ = self.worker.run(x, split)
            self.stats[0].busy_s += busy
            self.stats[0].evaluations += 1
            out.append(result)
        return out

    def utilisation(self) -> dict[str, Any]:
        return _utilisation(self.stats, self.t_start)

    def close(self) -> None:
        pass


def _utilisation(stats: Sequence["WorkerStats"], t_start: float) -> dict[str, Any]:
    wall = max(time.perf_counter() - t_start, 1e-9)
    return {
        "busy_s": [round(s.busy_s, 3) for s in stats],
        "evaluations": [s.evaluations for s in stats],
        "restarts": [s.restarts for s in stats],
        "utilisation": [round(s.busy_s / wall, 4) for s in stats],
    }


@dataclass
class WorkerStats:
    """Busy seconds and evaluations of one worker slot (its replacements included)."""

    busy_s: float = 0.0
    evaluations: int = 0
    restarts: int = 0


class _Actor:
    """The Ray actor: a Worker built in its own process."""

    def __init__(self, spec, basis) -> None:
        from cycleqd.evaluation.workers import Worker

        self.worker = Worker.build(spec, basis)

    def run(self, x: Any, split: str):
        return self.worker.run(x, split)

    def ready(self) -> int:
        return os.getpid()


def _end_processes(processes: Sequence, grace_s: float) -> None:
    """Wait up to ``grace_s`` for ``processes`` (psutil) to end, then kill the rest."""
    import psutil

    def running(p) -> bool:
        try:  # a zombie has ended: only its parent (Ray's, gone) could reap it
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def wait(ps: list) -> list:
        deadline = time.monotonic() + grace_s
        while (ps := [p for p in ps if running(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        return ps

    for p in wait(list(processes)):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    wait(list(processes))


class RayPool:
    """N evaluation workers as Ray actors.

    Args:
        num_workers: Actors (workers).
        num_gpus: GPUs per actor (0 on a CPU machine; 1 for one model per GPU).
        threads: CPU threads per actor (torch threads, and Ray's ``num_cpus``).
        address: An existing cluster (``auto``, ``ray://host:10001``); None starts a local Ray.
        mode: ``sync`` (a generation's children in parallel, told in ask order) or ``async``
            (steady state: a new child whenever a worker frees).
        timeout_s: Seconds one task may take to score one model (inside the worker).
        hang_timeout_s: Seconds a whole evaluation may take before its worker counts as hung
            and is replaced (None: ``timeout_s`` per task plus a minute).
        max_consecutive_failures: Failed evaluations in a row after which the run stops.
        object_store_mb: Object store of a local Ray (None: Ray's default).
        start_timeout_s: Seconds a replacement worker may take to start (load its model)
            before it is replaced in turn; three failed starts in a row stop the run.
    """

    needs_local_worker = False
    #: Seconds the workers of a local Ray get to exit after its shutdown before they are killed.
    EXIT_GRACE_S = 10.0

    def __init__(
        self,
        *,
        num_workers: int = 2,
        num_gpus: float = 0.0,
        threads: int = 1,
        address: str | None = None,
        mode: str = "sync",
        timeout_s: float | None = 3600.0,
        hang_timeout_s: float | None = None,
        max_consecutive_failures: int = 20,
        object_store_mb: int | None = 512,
        start_timeout_s: float = 600.0,
    ) -> None:
        require(
            isinstance(num_workers, int) and not isinstance(num_workers, bool) and num_workers >= 1,
            "num_workers",
            f"must be a positive integer, got {num_workers!r}",
        )
        require(
            isinstance(num_gpus, numbers.Real) and not isinstance(num_gpus, bool) and num_gpus >= 0,
            "num_gpus",
            f"must be >= 0, got {num_gpus!r}",
        )
        require(
            isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1,
            "threads",
            f"must be a positive integer, got {threads!r}",
        )
        require(mode in ("sync", "async"), "mode", f"must be 'sync' or 'async', got {mode!r}")
        require(
            address is None or isinstance(address, str),
            "address",
            f"must be null, auto or a Ray address, got {address!r}",
        )
        for key, v in (("timeout_s", timeout_s), ("hang_timeout_s", hang_timeout_s)):
            require(
                v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0),
                key,
                f"must be a positive number of seconds or null, got {v!r}",
            )
        require(
            isinstance(start_timeout_s, numbers.Real) and not isinstance(start_timeout_s, bool) and start_timeout_s > 0,
            "start_timeout_s",
            f"must be a positive number of seconds, got {start_timeout_s!r}",
        )
        require(
            isinstance(max_consecutive_failures, int) and max_consecutive_failures >= 1,
            "max_consecutive_failures",
            f"must be a positive integer, got {max_consecutive_failures!r}",
        )
        require(
            object_store_mb is None or (isinstance(object_store_mb, int) and object_store_mb >= 64),
            "object_store_mb",
            f"must be >= 64 or null, got {object_store_mb!r}",
        )
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("evaluator", "evaluator=ray needs Ray: pip install -e '.[ray]'") from None
        self.num_workers, self.num_gpus, self.threads, self.address, self.mode = (
            num_workers,
            float(num_gpus),
            threads,
            address,
            mode,
        )
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        self.hang_timeout_s = hang_timeout_s
        self.max_consecutive_failures = max_consecutive_failures
        self.object_store_mb = object_store_mb
        self.start_timeout_s = float(start_timeout_s)
        self.actors: list = []
        self._starting: dict = {}  # ready ref -> (slot, since, failed starts in a row)
        self.stats = [WorkerStats() for _ in range(num_workers)]
        self._started_ray = False
        self._processes: list = []  # psutil.Process of each worker a local Ray started, replaced ones too
        self._inflight: dict = {}  # ref -> (slot, key, x, split, started, attempt)
        self._queue: collections.deque = collections.deque()
        self._done: collections.deque = collections.deque()
        self.t_start = time.perf_counter()

    # -- life cycle ------------------------------------------------------------------------
    def start(self, local_worker, spec, basis) -> None:
        """Start (or join) Ray, put the bases in the object store once, and start the actors."""
        import ray

        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
            if self.address is None:
                kwargs["num_cpus"] = self.num_workers * self.threads
                if self.object_store_mb:
                    kwargs["object_store_memory"] = self.object_store_mb * 2**20
                # Workers on this machine import what the loop imports (task plugins on its path).
                kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
            ray.init(address=self.address, **kwargs)
            self._started_ray = True
        n_tasks = len(spec.tasks)
        self._hang = self.hang_timeout_s or ((self.timeout_s or 3600.0) * n_tasks + 60.0)
        self._spec, self._basis_ref = spec, (ray.put(basis) if basis is not None else None)
        self._remote = ray.remote(num_cpus=self.threads, num_gpus=self.num_gpus)(_Actor)
        self.actors = [self._remote.remote(self._spec, self._basis_ref) for _ in range(self.num_workers)]
        pids = ray.get([a.ready.remote() for a in self.actors])  # built: load time is not evaluation time
        self._track(pids)
        self.t_start = time.perf_counter()

    def close(self) -> None:
        """Stop the actors, and Ray itself if this pool started it (no process is left behind)."""
        import ray

        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:
                pass
        self.actors = []
        self._inflight.clear()
        self._starting.clear()
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False
        _end_processes(self._processes, self.EXIT_GRACE_S)
        self._processes = []

    def _track(self, pids: Sequence[int]) -> None:
        """Remember the workers' processes when they run on this machine, in a Ray this pool
        started: Ray ends them asynchronously, and on a loaded machine one outlived its shutdown."""
        import psutil

        if not (self._started_ray and self.address is None):
            return
        for pid in pids:
            try:
                self._processes.append(psutil.Process(pid))  # keeps its start time: a reused pid is not it
            except psutil.NoSuchProcess:
                pass

    def _replace(self, slot: int, failed_starts: int = 0) -> None:
        import ray

        try:
            ray.kill(self.actors[slot])
        except Exception:
            pass
        self.actors[slot] = self._remote.remote(self._spec, self._basis_ref)
        self.stats[slot].restarts += 1
        # No work until it has started: the first evaluation's deadline would otherwise
        # include the process start and the model load.
        self._starting[self.actors[slot].ready.remote()] = (slot, time.perf_counter(), failed_starts)

    def _start_failed(self, ref, why: str) -> None:
        slot, _, failed = self._starting.pop(ref)
        if failed + 1 >= 3:
            raise RuntimeError(f"worker {slot} failed to start 3 times in a row; the last time: {why}")
        log.warning("worker %d failed to start (%s); starting it again", slot, why)
        self._replace(slot, failed + 1)

    # -- scheduling --------------------------------------------------------------------------
    def _free_slots(self) -> list[int]:
        busy = {v[0] for v in self._inflight.values()} | {v[0] for v in self._starting.values()}
        return [i for i in range(self.num_workers) if i not in busy]

    def _dispatch(self) -> None:
        for slot in self._free_slots():
            if not self._queue:
                return
            key, x, split, attempt = self._queue.popleft()
            ref = self.actors[slot].run.remote(x, split)
            self._inflight[ref] = (slot, key, x, split, time.perf_counter(), attempt)

    def submit(self, key: Any, x: Any, split: str) -> None:
        """Queue one evaluation; it starts as soon as a worker is free."""
        self._queue.append((key, x, split, 0))
        self._dispatch()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._inflight) + len(self._queue)

    def next_result(self) -> tuple[Any, Result]:
        """Block until an evaluation finishes (or is given up on); returns its key and result."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError, WorkerCrashedError

        while not self._done:
            if not self._inflight and not self._starting:
                raise RuntimeError("next_result() with nothing submitted")
            deadlines = {r: v[4] + self._hang for r, v in self._inflight.items()}
            deadlines.update({r: v[1] + self.start_timeout_s for r, v in self._starting.items()})
            first = min(deadlines, key=deadlines.__getitem__)
            wait = max(0.0, deadlines[first] - time.perf_counter())
            ready, _ = ray.wait(list(deadlines), num_returns=1, timeout=wait)
            if not ready and first in self._starting:
                self._start_failed(first, f"not started after {self.start_timeout_s:g} s")
                continue
            if not ready:  # the oldest evaluation ran past its deadline: its worker hangs
                self._lost(first, "timeout", f"no result after {self._hang:g} s; the worker was replaced")
                continue
            ref = ready[0]
            if ref in self._starting:
                try:
                    pid = ray.get(ref)
                except Exception as e:  # the model did not load, or the process died starting
                    last = (str(e).strip().splitlines() or [""])[-1][:300]
                    self._start_failed(ref, f"{type(e).__name__}: {last}")
                    continue
                self._track([pid])
                del self._starting[ref]
                self._dispatch()
                continue
            slot, key, x, split, started, attempt = self._inflight[ref]
            try:
                result, busy, _pid = ray.get(ref)
            except (RayActorError, WorkerCrashedError, GetTimeoutError) as e:
                self._lost(ref, "worker_lost", f"the worker died ({type(e).__name__}) and was replaced")
                continue
            except RayTaskError as e:  # an exception outside the task plugins (they return Failures)
                del self._inflight[ref]
                self._done.append((key, Failure("raised", None, str(e).strip().splitlines()[-1][:300])))
                self._dispatch()
                continue
            del self._inflight[ref]
            self.stats[slot].busy_s += busy
            self.stats[slot].evaluations += 1
            self._done.append((key, result))
            self._dispatch()
        return self._done.popleft()

    def _lost(self, ref, reason: str, message: str) -> None:
        slot, key, x, split, started, attempt = self._inflight.pop(ref)
        # A replacement costs a process start and a model load: at scale the operator wants
        # to see each one and why, not only the count in the metrics.
        then = "its evaluation is tried once more" if attempt < 1 else "its evaluation counts as failed"
        log.warning("worker %d (%s evaluation): %s; %s", slot, split, message, then)
        self._replace(slot)
        if attempt < 1:
            self._queue.appendleft((key, x, split, attempt + 1))  # once more, first in line
        else:
            self._done.append((key, Failure(reason, None, message)))
        self._dispatch()

    def map(self, items: Sequence[tuple[Any, str]]) -> list[Result]:
        """Evaluate ``(x, split)`` items on all workers at once; results in the items' order."""
        for i, (x, split) in enumerate(items):
            self.submit(("map", i), x, split)
        out: dict[int, Result] = {}
        while len(out) < len(items):
            key, result = self.next_result()
            out[key[1]] = result
        return [out[i] for i in range(len(items))]

    def utilisation(self) -> dict[str, Any]:
        """Per worker slot: busy seconds, evaluations, restarts, busy / wall since the pool started."""
        return _utilisation(self.stats, self.t_start)
