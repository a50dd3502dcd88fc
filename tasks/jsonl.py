"""Tasks from a JSONL file of your own: one item a line, ``{"split": "opt"|"test",
"prompt": ..., "answer": ...}`` scored by exact match, or ``{"split", "prompt",
"tests"}`` scored by running the generated Python code followed by ``tests`` (asserts)
in a fresh interpreter (MBPP-style pass@1)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cycleqd.protocols import Measure, TextModel
from tasks.base import SPLITS


@dataclass
class JsonlTask:
    """A task whose evaluation items are read from ``path``.

    Args:
        name: Task name.
        path: JSONL file; each line has ``split`` (``opt`` or ``test``) and ``prompt``,
            plus ``answer`` (``scorer: exact``) or ``tests`` (``scorer: python_tests``).
        scorer: ``exact`` or ``python_tests``.
        max_new_tokens: Generation budget per item.
        stop: Strings that end a generation.
        timeout_s: Per-item time limit of ``python_tests``.
        measure: Descriptor axis of this task's score.
    """

    name: str
    path: str
    scorer: str = "exact"
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    timeout_s: float = 10.0
    measure: Measure = field(default_factory=Measure)

    def __post_init__(self) -> None:
        if isinstance(self.measure, dict):
            self.measure = Measure(**self.measure)
        if self.scorer not in ("exact", "python_tests"):
            raise ValueError(f"task {self.name!r}: scorer must be 'exact' or 'python_tests', got {self.scorer!r}")
        self._items: dict[str, list[dict]] | None = None

    def split(self, split: str) -> list[dict]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if self._items is None:
            items: dict[str, list[dict]] = {s: [] for s in SPLITS}
            key = "answer" if self.scorer == "exact" else "tests"
            for n, line in enumerate(Path(self.path).read_text().splitlines(), 1):
                if not line.strip():
                    continue
                item = json.loads(line)
                missing = [k for k in ("split", "prompt", key) if k not in item]
                if missing or item["split"] not in SPLITS:
                    raise ValueError(f"{self.path}:{n}: needs 'split' in {SPLITS}, 'prompt' and {key!r}; missing {missing}")
                items[item["split"]].append(item)
            self._items = items
        if not self._items[split]:
            raise ValueError(f"task {self.name!r}: {self.path} has no items with split {split!r}")
        return self._items[split]

    def score(self, output: str, item: dict) -> float:
        if self.scorer == "exact":
            return float(output.strip() == str(item["answer"]).strip())
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(output + "\n\n" + item["tests"] + "\n")
        try:
            proc = subprocess.run([sys.executable, f.name], capture_output=True, timeout=self.timeout_s)
            return float(proc.returncode == 0)
        except subprocess.TimeoutExpired:
            return 0.0
        finally:
            Path(f.name).unlink(missing_ok=True)

    def evaluate(self, model: TextModel, split: str = "opt") -> float:
        items = self.split(split)
        outputs = model.generate([i["prompt"] for i in items], max_new_tokens=self.max_new_tokens, stop=tuple(self.stop))
        return sum(self.score(o, i) for o, i in zip(outputs, items)) / len(items)
