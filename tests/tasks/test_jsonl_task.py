"""JSONL tasks: exact match and Python assert-tests scoring (generated code contained), bad files named."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from cycleqd.evaluation.sandbox import Limits, run_python
from cycleqd.tasks.jsonl import JsonlTask

needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None and not os.environ.get("CYCLEQD_REQUIRE_SANDBOX"),
    reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap",
)


class Canned:
    """A TextModel that answers from a dict."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def generate(self, prompts, *, max_new_tokens, stop=()):
        return [self.answers[p] for p in prompts]


def _write(path: Path, items: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    return path


def test_exact_match_per_split(tmp_path: Path):
    f = _write(
        tmp_path / "t.jsonl",
        [
            {"split": "opt", "prompt": "a", "answer": "1"},
            {"split": "opt", "prompt": "b", "answer": "2"},
            {"split": "test", "prompt": "c", "answer": "3"},
        ],
    )
    task = JsonlTask(name="t", path=str(f))
    model = Canned({"a": "1", "b": "x", "c": " 3 "})
    assert task.evaluate(model, "opt") == 0.5
    assert task.evaluate(model, "test") == 1.0


@needs_bwrap
def test_python_tests_run_the_generated_code(tmp_path: Path):
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
    f = _write(
        tmp_path / "code.jsonl",
        [
            {"split": "opt", "prompt": "right", "tests": tests},
            {"split": "opt", "prompt": "wrong", "tests": tests},
            {"split": "opt", "prompt": "loops", "tests": tests},
        ],
    )
    task = JsonlTask(name="coding", path=str(f), scorer="python_tests", timeout_s=2)
    model = Canned(
        {
            "right": "def add(a, b):\n    return a + b",
            "wrong": "def add(a, b):\n    return a - b",
            "loops": "def add(a, b):\n    while True: pass",
        }
    )
    assert task.evaluate(model, "opt") == pytest.approx(1 / 3)


def test_bad_lines_and_empty_splits_are_named(tmp_path: Path):
    f = _write(tmp_path / "bad.jsonl", [{"split": "opt", "prompt": "a"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*missing \['answer'\]"):
        JsonlTask(name="t", path=str(f)).split("opt")
    f = _write(tmp_path / "only_opt.jsonl", [{"split": "opt", "prompt": "a", "answer": "1"}])
    with pytest.raises(ValueError, match="no items with split 'test'"):
        JsonlTask(name="t", path=str(f)).split("test")
    with pytest.raises(ValueError, match="scorer"):
        JsonlTask(name="t", path=str(f), scorer="bleu")


CONTAINED = {
    "infinite loop": "def add(a, b):\n    while True:\n        pass",
    "fork bomb": "import os\nwhile True:\n    os.fork()\ndef add(a, b):\n    return a + b",
    "huge allocation": "blob = bytearray(10**11)\ndef add(a, b):\n    return a + b",
    "write outside": "open({outside!r}, 'w').write('escaped')\ndef add(a, b):\n    return a + b",
    "delete outside": "import os\nos.remove({victim!r})\ndef add(a, b):\n    return a + b",
}


@needs_bwrap
@pytest.mark.parametrize("what", list(CONTAINED))
def test_generated_code_is_contained_and_scored_zero(tmp_path: Path, what: str):
    outside, victim = tmp_path / "escaped.txt", tmp_path / "victim.txt"
    victim.write_text("keep me")
    code = CONTAINED[what].format(outside=str(outside), victim=str(victim))
    f = _write(
        tmp_path / "code.jsonl",
        [
            {"split": "opt", "prompt": "bad", "tests": "assert add(2, 3) == 5"},
            {"split": "opt", "prompt": "good", "tests": "assert add(2, 3) == 5"},
        ],
    )
    task = JsonlTask(name="coding", path=str(f), scorer="python_tests", timeout_s=3, memory_mb=512)
    start = time.perf_counter()
    score = task.evaluate(Canned({"bad": code, "good": "def add(a, b):\n    return a + b"}), "opt")
    assert score == 0.5  # the misbehaving item scores 0, the good one 1
    assert time.perf_counter() - start < 120  # stopped by timeout_s=3, not run on (wide: a loaded machine is slow)
    assert not outside.exists() and victim.read_text() == "keep me"


@needs_bwrap
def test_generated_code_sees_no_secrets_and_writes_only_its_scratch_dir(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CYCLEQD_TEST_SECRET", "hunter2")
    code = (
        "import os\n"
        "assert 'CYCLEQD_TEST_SECRET' not in os.environ\n"
        "open('notes.txt', 'w').write('scratch is fine')\n"
        "assert open('notes.txt').read() == 'scratch is fine'\n"
    )
    outcome = run_python(code, Limits(timeout_s=10))
    assert outcome.passed, outcome.stderr
