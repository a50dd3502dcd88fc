"""Elites for downstream use: load_run, selection strategies, export to HF and peft."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cycleqd.analysis.export import export
from cycleqd.analysis.rundata import load_run
from cycleqd.analysis.selection import pareto_front, select_elites
from tests.tiny import TASKS

# Generation exactly as the evaluator does it (length-sorted batches, left padding, BOS,
# newline as a stop token), importing nothing of cycleqd or tasks.
STANDALONE = r"""
import json, sys
sys.modules["cycleqd"] = None  # any import of cycleqd fails: the export must stand alone
sys.modules["tasks"] = None
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, prompts_file, max_new = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(model_dir)
tok.padding_side = "left"
out = {}
for task, prompts in json.loads(open(prompts_file).read()).items():
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts = [tok.bos_token + prompts[i] for i in order]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    nl = tok.encode("\n", add_special_tokens=False)[0]
    with torch.inference_mode():
        gen = model.generate(**enc, max_new_tokens=max_new[task], do_sample=False,
                             eos_token_id=[tok.eos_token_id, nl], pad_token_id=tok.pad_token_id)
    rows = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    res = [None] * len(prompts)
    for i, r in zip(order, rows):
        res[i] = r.split("\n", 1)[0]
    out[task] = res
print(json.dumps(out))
"""


def _tasks(run_dir: Path):
    from omegaconf import OmegaConf

    from cycleqd.run.components import build_tasks

    return build_tasks(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))


def test_load_run_tables_every_elite(cli_run: Path):
    run = load_run(cli_run)
    assert run.tasks == list(TASKS) and set(run.archives) == set(TASKS)
    table = (cli_run / "elites" / "table.csv").read_text().splitlines()[1:]
    assert len(run.elites) == len(table)
    assert {"id", "archive", "cell", "objective", "measures", "generation", "parents", "mean_score"} <= set(
        run.elites.columns
    )
    for _, row in run.elites.iterrows():
        assert row["objective"] == pytest.approx(row[f"score_{row['archive']}"])
        if row["generation"] >= 0:
            assert len(row["parents"]) == 2 and row["origin"].startswith("child:")


def test_selection_strategies(cli_run: Path):
    run = load_run(cli_run)
    unique = run.elites.drop_duplicates("id")
    best = select_elites(run, "best")
    for t, (_, row) in zip(TASKS, best.iterrows()):
        assert row["chosen_for"] == t and row[f"score_{t}"] == unique[f"score_{t}"].max()
    top = select_elites(run, "topk", k=3)
    assert list(top["mean_score"]) == sorted(unique["mean_score"], reverse=True)[:3]
    final = select_elites(run, "final")
    assert final["weight"].sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="strategy"):
        select_elites(run, "random")


def test_pareto_front_oracle():
    s = np.array([[1, 0], [0, 1], [0.5, 0.5], [0.4, 0.4], [1, 0]])
    front = pareto_front(s)
    assert front == [0, 1, 2, 4]  # [0.4, 0.4] is dominated by [0.5, 0.5]; ties are both kept


def test_exported_hf_model_scores_what_the_archive_recorded(cli_run: Path, tmp_path: Path):
    run = load_run(cli_run)
    child = run.elites[run.elites["generation"] >= 0]
    row = (child if len(child) else run.elites).iloc[0]
    out = export(cli_run, str(int(row["id"])), "hf", tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    card = (out / "README.md").read_text()
    assert f"elite {int(row['id'])}" in card and "parents" in card

    tasks = _tasks(cli_run)
    prompts = {t.name: [p for p, _ in t.split("opt")] for t in tasks}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    max_new = json.dumps({t.name: t.max_new_tokens for t in tasks})
    proc = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(out), str(tmp_path / "prompts.json"), max_new],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs = json.loads(proc.stdout.strip().splitlines()[-1])
    for t in tasks:
        items = t.split("opt")
        score = sum(t.score(o, a) for o, (_, a) in zip(outputs[t.name], items)) / len(items)
        assert score == row[f"score_{t.name}"], t.name


def test_peft_export_of_a_full_weight_elite_is_its_truncated_svd(cli_run: Path, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = load_run(cli_run)
    elite_id = int(run.elites["id"].iloc[0])
    tv = run.vector(elite_id)
    out = export(cli_run, str(elite_id), "peft", tmp_path / "peft", rank=2)
    meta = json.loads((out / "cycleqd.json").read_text())
    assert all(0.0 < v <= 1.0 for v in meta["energy_kept"].values())
    assert set(meta["scores_truncated"]) == set(TASKS)
    assert "rank-r adapter" in (out / "README.md").read_text()

    base_dir = run.summary["base_model"]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, out).merge_and_unload().state_dict()
    for name, d in tv.items():
        U, S, Vh = torch.linalg.svd(d.float(), full_matrices=False)
        oracle = U[:, :2] @ torch.diag(S[:2]) @ Vh[:2]
        torch.testing.assert_close(merged[name] - base_sd[name], oracle, atol=1e-5, rtol=1e-4)


def test_export_errors_name_the_problem(cli_run: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="no archive 'nope'"):
        export(cli_run, "best:nope", "hf", tmp_path / "x")
    with pytest.raises(ValueError, match="needs --rank"):
        export(cli_run, "best:addition", "peft", tmp_path / "y")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("keep me")
    with pytest.raises(FileExistsError):
        export(cli_run, "final", "hf", tmp_path / "full")
    assert (tmp_path / "full" / "f").read_text() == "keep me"


def test_evaluate_command_scores_an_exported_model_on_a_new_task(cli_run: Path, tmp_path: Path):
    out = export(cli_run, "best:reversal", "hf", tmp_path / "m")
    overrides = [
        "task=[reversal,sorting]",
        "task.reversal.n_opt=24",
        "task.reversal.n_test=24",
        "task.sorting.n_opt=24",
        "task.sorting.n_test=24",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "cycleqd.cli", "evaluate", str(out), *overrides, "--split", "opt"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    scores = json.loads(proc.stdout.strip().splitlines()[-1])
    run = load_run(cli_run)
    rows = run.elites[run.elites["archive"] == "reversal"]
    best = rows.loc[rows["objective"].idxmax()]
    assert scores["reversal"] == best["score_reversal"] and scores["sorting"] == best["score_sorting"]


def test_baselines_command_runs_the_static_merges_alone(cache: Path):
    from tests.tiny import tiny_overrides

    proc = subprocess.run(
        [sys.executable, "-m", "cycleqd.cli", "baselines", *tiny_overrides(cache)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    for name in ("expert: addition", "baseline: task_arithmetic", "baseline: ties", "baseline: breadcrumbs"):
        assert name in proc.stdout
    assert "scale=" in proc.stdout


def test_an_elite_exports_to_the_same_weights_from_either_representation(
    lively_run: Path, lively_genome_run: Path, tmp_path: Path
):
    """The two lively runs hold the same elites (same ids, same cells); exported, each is the same model."""
    from safetensors.torch import load_file

    dense, genome = load_run(lively_run), load_run(lively_genome_run)
    assert not dense.genome and genome.genome
    expert = int(dense.elites[dense.elites["generation"] < 0]["id"].iloc[0])
    child = int(dense.elites[dense.elites["generation"] >= 0]["id"].iloc[0])
    for i in (expert, child):
        a = export(lively_run, str(i), "hf", tmp_path / f"dense-{i}")
        b = export(lively_genome_run, str(i), "hf", tmp_path / f"genome-{i}")
        wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
