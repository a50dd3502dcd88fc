"""Tasks from a JSONL file of your own: one item a line, ``{"split": "opt"|"test",
"prompt": ..., "answer": ...}`` scored by exact match, or ``{"split", "prompt",
"tests"}`` scored by running the generated Python code followed by ``tests`` (asserts)
against it in a sandbox the code cannot reach out of or forge its verdict in (MBPP-style
pass@1; see :mod:`cycleqd.evaluation.sandbox`)."""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

from cycleqd.checks import check_fields, require
from cycleqd.errors import ConfigError
from cycleqd.evaluation.sandbox import Limits, check, run_tests
from cycleqd.protocols import ItemTask, Measure, TextModel
from cycleqd.tasks.base import SPLITS


@dataclass
class JsonlTask(ItemTask):
    """A task whose evaluation items are read from ``path``.

    Args:
        name: Task name.
        path: JSONL file; each line has ``split`` (``opt`` or ``test``) and ``prompt``,
            plus ``answer`` (``scorer: exact``) or ``tests`` (``scorer: python_tests``).
        scorer: ``exact`` or ``python_tests``.
        max_new_tokens: Generation budget per item.
        stop: Strings that end a generation.
        timeout_s: Per-item wall-clock (and CPU-time) limit of ``python_tests``.
        memory_mb: Per-item memory limit of ``python_tests``.
        workers: Items of ``python_tests`` scored at once (separate sandboxes).
        sandbox: The rest of :class:`~cycleqd.evaluation.sandbox.Limits` for ``python_tests``
            (``disk_mb``, ``file_mb``, ``max_processes``, ``python``, ``allow_root``).
        measure: Descriptor axis of this task's score.
    """

    name: str
    path: str
    scorer: str = "exact"
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    timeout_s: float = 10.0
    memory_mb: int = 1024
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    sandbox: dict = field(default_factory=dict)
    measure: Measure = field(default_factory=Measure)

    def __post_init__(self) -> None:
        self.measure = Measure.of(self.measure)
        check_fields(self)
        require(
            self.scorer in ("exact", "python_tests"),
            "scorer",
            f"must be 'exact' or 'python_tests', got {self.scorer!r}",
        )
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        self.limits = self._limits()
        self._items: dict[str, list[dict]] | None = None

    def _limits(self) -> Limits:
        own = {"timeout_s", "cpu_s", "memory_mb"}
        keys = sorted(f.name for f in fields(Limits) if f.name not in own)
        for key in self.sandbox:
            if key in own:
                task_key = "memory_mb" if key == "memory_mb" else "timeout_s"  # cpu_s follows timeout_s
                raise ConfigError(f"sandbox.{key}", f"set the task's {task_key} instead")
            require(key in keys, f"sandbox.{key}", f"unknown key (the keys are {', '.join(keys)})")
        try:
            return Limits(
                timeout_s=self.timeout_s,
                cpu_s=max(1, math.ceil(self.timeout_s)),
                memory_mb=self.memory_mb,
                **self.sandbox,
            )
        except ConfigError as e:
            raise e if e.key in own else e.under("sandbox") from None

    def prepare(self) -> None:
        """Read the file and check both splits now, before any model exists; for
        ``python_tests``, check that the sandbox runs here."""
        if self.scorer == "python_tests":
            try:
                check(self.limits)
            except ConfigError as e:
                raise e.under("sandbox") from None
        require(Path(self.path).is_file(), "path", f"{str(self.path)!r} does not exist")
        for split in SPLITS:
            try:
                self.split(split)
            except ValueError as e:
                raise ConfigError("path", str(e)) from None

    def split(self, split: str) -> list[dict]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if self._items is None:
            items: dict[str, list[dict]] = {s: [] for s in SPLITS}
            key = "answer" if self.scorer == "exact" else "tests"
            if not Path(self.path).is_file():
                raise FileNotFoundError(f"path: {self.path!r} does not exist")
            for n, line in enumerate(Path(self.path).read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{self.path}:{n}: not valid JSON ({e})") from None
                if not isinstance(item, dict):
                    raise ValueError(f"{self.path}:{n}: each line must be a JSON object")
                missing = [k for k in ("split", "prompt", key) if k not in item]
                if missing or item["split"] not in SPLITS:
                    raise ValueError(
                        f"{self.path}:{n}: needs 'split' in {SPLITS}, 'prompt' and {key!r}; missing {missing}"
                    )
                items[item["split"]].append(item)
            self._items = items
        if not self._items[split]:
            raise ValueError(f"task {self.name!r}: {self.path} has no items with split {split!r}")
        return self._items[split]

    def score(self, output: str, item: dict) -> float:
        if self.scorer == "exact":
            return float(output.strip() == str(item["answer"]).strip())
        return float(run_tests(output, item["tests"], self.limits).passed)

    def evaluate_items(self, model: TextModel, split: str = "opt") -> list[float]:
        """Each item's score (0 or 1) on ``split``, in file order."""
        items = self.split(split)
        outputs = model.generate(
            [i["prompt"] for i in items], max_new_tokens=self.max_new_tokens, stop=tuple(self.stop)
        )
        if self.scorer == "exact" or self.workers == 1:
            return [float(self.score(o, i)) for o, i in zip(outputs, items)]
        with ThreadPoolExecutor(self.workers) as pool:
            return [float(s) for s in pool.map(self.score, outputs, items)]
