"""End-to-end runs on a tiny embedded model: the run directory contract, resume, LoRA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from cycleqd.analysis.rundata import load_run
from cycleqd.run.runner import run
from tests.tiny import TASKS, compose_tiny

REPO = Path(__file__).resolve().parents[2]


def _score_map(d, tasks=TASKS):
    assert set(d) == set(tasks)
    for v in d.values():
        assert isinstance(v, float) and 0.0 <= v <= 1.0


def test_run_directory_contract(cli_run: Path):
    summary = json.loads((cli_run / "summary.json").read_text())
    assert summary["tasks"] == list(TASKS)
    assert summary["generations"] == 4
    # 3 experts seeded + 1 child per generation
    assert summary["evaluations"] == 3 + 4
    assert isinstance(summary["wall_time_s"], float) and summary["wall_time_s"] > 0
    assert set(summary["experts"]) == set(TASKS)
    for scores in summary["experts"].values():
        _score_map(scores)
    assert set(summary["baselines"]) == {
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "model_stock",
    }
    for scores in summary["baselines"].values():
        _score_map(scores)
    assert summary["baseline_choices"]["task_arithmetic"]["scale"] in (0.5, 1.0)
    _score_map(summary["final"])
    assert set(summary["archives"]) == set(TASKS)
    for a in summary["archives"].values():
        assert set(a) >= {"coverage", "qd_score", "best", "num_elites"}
        assert 0 < a["coverage"] <= 1 and a["num_elites"] >= 1 and 0 <= a["best"] <= 1

    lines = [json.loads(x) for x in (cli_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["generation"] for m in lines] == [0, 1, 2, 3]
    assert [m["quality_task"] for m in lines] == [TASKS[g % 3] for g in range(4)]
    assert [m["evaluations"] for m in lines] == [4, 5, 6, 7]
    for m in lines:
        assert set(m["archives"]) == set(TASKS) and m["seconds"] > 0

    table = (cli_run / "elites" / "table.csv").read_text().splitlines()
    assert table[0].startswith("archive,cell,objective,measures,id")
    ids = {int(row.split(",")[4]) for row in table[1:]}
    assert sum(a["num_elites"] for a in summary["archives"].values()) == len(table) - 1
    # the default operators are linear in the experts' bases: elites are genomes held by the archives
    loaded = load_run(cli_run)
    assert loaded.genome and not list((cli_run / "elites").glob("elite-*"))
    assert set(loaded.elites["id"]) == ids
    for i in ids:
        assert len(loaded.solution(i)) == loaded.basis().length
        assert set(loaded.vector(i)) == set(loaded.vector(0))
    for t in TASKS:
        assert (cli_run / "heatmaps" / f"{t}.png").read_bytes()[:4] == b"\x89PNG"
    assert (cli_run / ".hydra" / "config.yaml").is_file()
    assert (cli_run / "checkpoint" / "state.ckpt").is_file()


def test_show_prints_the_table(cli_run: Path):
    out = subprocess.run(
        [sys.executable, "-m", "cycleqd.cli", "show", str(cli_run)], capture_output=True, text=True, check=True
    ).stdout
    assert (
        "expert: addition" in out
        and "baseline: task_arithmetic" in out
        and "cycleqd (final)" in out
        and "archive" in out
    )
    summary = json.loads((cli_run / "summary.json").read_text())
    final_mean = 100 * sum(summary["final"].values()) / 3
    assert f"{final_mean:.1f}" in out
    # every expert score outside its task's descriptor range is named, with the bound it passes
    measures = summary["measures"]
    outside = [
        (e, t, "high" if v > measures[t]["high"] else "low")
        for e, by in summary["experts_opt"].items()
        for t, v in by.items()
        if not measures[t]["low"] <= v <= measures[t]["high"]
    ]
    assert outside, "the tiny experts score below the demo's reversal and sorting ranges"
    assert len(summary["range_warnings"]) == len(outside)
    for (e, t, end), line in zip(outside, summary["range_warnings"]):
        assert line.startswith(f"expert {e} scores") and f"task.{t}.measure.{end}=" in line
        assert f"descriptor range: {line}" in out


def test_help_show_and_compare_import_no_model_or_archive_library(cli_run: Path, tmp_path: Path):
    """pyribs, torch and transformers take seconds to import; `cycleqd --help`, `show` and
    `compare` need none of them, and the package's public names still load on first use."""
    code = f"""
import contextlib, io, sys
import cycleqd
from cycleqd.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    main(["--help"]); main(["show", {str(cli_run)!r}]); main(["compare", {str(cli_run.parent)!r}, "--csv", {str(tmp_path / "c.csv")!r}])
heavy = sorted(m for m in ("ribs", "torch", "transformers", "peft") if m in sys.modules)
from cycleqd import CyclicArchives, load_run
print(heavy, "cycleqd (final)" in out.getvalue(), load_run.__module__, CyclicArchives.__module__, "ribs" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[-2] == "[] True cycleqd.analysis.rundata cycleqd.core.archives True"
    assert (tmp_path / "c.csv").is_file()


def test_show_rejects_a_directory_without_summary(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "cycleqd.cli", "show", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "summary.json" in proc.stderr


def test_resume_continues_exactly(tmp_path: Path, cache: Path):
    """Running 2 generations and resuming to 6 gives the same archives as running 6 at once."""
    straight = run(compose_tiny(cache, generations=6), tmp_path / "straight")

    cfg = compose_tiny(cache, generations=2)
    run(cfg, tmp_path / "resumed")
    cfg.generations = 6
    resumed = run(cfg, tmp_path / "resumed", resume=True)

    assert resumed["generations"] == 6 and resumed["evaluations"] == straight["evaluations"]
    assert resumed["archives"] == straight["archives"]
    assert resumed["final"] == straight["final"]
    a = [json.loads(x)["archives"] for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x)["archives"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert a == b


def test_lora_experts_stay_factored(tmp_path: Path, cache: Path):
    """As task-vector files (rank growing with each mutation) and as genomes (rank bounded by the experts')."""
    summary = run(compose_tiny(cache, "experts=embedded_lora", "genome=false", generations=3), tmp_path / "lora")
    assert summary["generations"] == 3
    elites = sorted((tmp_path / "lora" / "elites").glob("elite-*.safetensors"))
    assert elites
    with safe_open(str(elites[-1]), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.endswith("::A") or k.endswith("::B") for k in keys)
    run(compose_tiny(cache, "experts=embedded_lora", generations=3), tmp_path / "genome")
    loaded = load_run(tmp_path / "genome")
    basis = loaded.basis()
    for i in set(loaded.elites["id"]):
        tv = basis.factored(loaded.solution(i))
        assert tv.is_factored and max(d.rank for d in tv.values()) <= 3 * 8  # three rank-8 experts
        dense = loaded.vector(i)  # at these tiny widths a dense delta is smaller than rank 24, so export takes it
        for name, d in tv.items():
            assert torch.allclose(d.dense(), dense[name], atol=1e-6)


def test_cache_reuses_and_rebuilds(tmp_path: Path):
    from cycleqd.models.embedded import EmbeddedRecipe, ExpertRecipe, TinyLlama, Training, ensure_embedded
    from cycleqd.run.components import build_tasks

    tasks = build_tasks(compose_tiny(tmp_path))
    recipe = EmbeddedRecipe(
        model=TinyLlama(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        pretrain=Training(steps=3, batch_size=8),
        pretrain_examples=200,
        expert=ExpertRecipe(training=Training(steps=2, batch_size=8)),
        expert_examples=50,
    )
    first = ensure_embedded(recipe, tasks, tmp_path)
    stamp = (first.base / "recipe.json").stat().st_mtime_ns
    again = ensure_embedded(recipe, tasks, tmp_path)
    assert again == first and (first.base / "recipe.json").stat().st_mtime_ns == stamp

    changed = EmbeddedRecipe(**{**recipe.__dict__, "expert": ExpertRecipe(training=Training(steps=3, batch_size=8))})
    rebuilt = ensure_embedded(changed, tasks, tmp_path)
    assert rebuilt.base == first.base  # the base recipe did not change
    assert rebuilt.experts["addition"] != first.experts["addition"]
    assert not list(tmp_path.glob(".building-*"))
