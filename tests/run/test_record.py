"""The record of every evaluated model (candidates.jsonl): one line per opt evaluation, the
archives' elites among them with their genomes, lineage and operators, any search's
candidates, and a damaged or missing record read with a note (crash-exactness: the crash
tests compare it as part of the run's fingerprint)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from cycleqd.analysis.candidates import load_candidates
from cycleqd.analysis.rundata import load_run
from cycleqd.protocols import Failure
from cycleqd.run import record
from tests.runs import cli
from tests.tiny import tiny_overrides


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _check_loop_record(run_dir: Path, genome: bool) -> None:
    table, summary, run = load_candidates(run_dir), _summary(run_dir), load_run(run_dir)
    assert table.attrs["notes"] == []
    assert list(table["evaluation"]) == list(range(summary["opt_evaluations"]))  # every opt evaluation, in order
    assert table["id"].is_unique
    tasks = summary["tasks"]
    rows = table.set_index("id")
    assert list(table["origin"][: len(tasks)]) == [f"expert:{t}" for t in tasks]
    for _, e in run.elites.iterrows():  # each elite: its scores, the archive that took it, its genome
        r = rows.loc[e["id"]]
        assert all(r[f"score_{t}"] == e[f"score_{t}"] for t in tasks)
        assert e["archive"] in r["archives"]
        if genome:
            assert np.array_equal(r["genome"], run.solution(e["id"]).astype(np.float32))
        else:
            assert r["genome"] is None
    children = table[table["origin"].str.startswith("child:")]
    assert len(children) == summary["generations"]
    for _, c in children.iterrows():
        assert all(p in rows.index and rows.loc[p, "evaluation"] < c["evaluation"] for p in c["parents"])
        weights = c["operators"]["crossover"]["weights"]
        assert len(weights) == len(c["parents"]) == 2
        for group in weights[0]:  # normalised per layer group (crossover=cycleqd_layer, scale [1, 1])
            assert math.isclose(sum(w[group] for w in weights), 1.0, rel_tol=1e-9)
        assert c["operators"]["mutation"]["along"] == c["origin"].split(":", 1)[1]
    final = table[table["origin"].str.startswith("final:")]
    assert len(final) == summary["opt_evaluations"] - summary["evaluations"]


def test_a_genome_run_records_every_model_it_evaluated(lively_genome_run: Path):
    _check_loop_record(lively_genome_run, genome=True)


def test_a_task_vector_run_records_scores_and_lineage(lively_run: Path):
    _check_loop_record(lively_run, genome=False)


def test_a_search_records_each_candidate_with_its_coefficients(tmp_path: Path, cache: Path):
    run_dir = tmp_path / "run"
    cli("run", *tiny_overrides(cache, 4), "search=cmaes", "search.batch_size=4", f"hydra.run.dir={run_dir}")
    table, summary = load_candidates(run_dir), _summary(run_dir)
    assert list(table["evaluation"]) == list(range(summary["evaluations"]))
    assert set(table["origin"]) == {"cmaes"}
    dims = {len(c) for c in table["coefficients"]}
    assert len(dims) == 1 and dims.pop() % len(summary["tasks"]) == 0
    assert table["mean_score"].max() == summary["final_elites"]["opt_mean"]  # its final model is its best candidate


def test_a_damaged_or_missing_record_is_read_with_a_note(tmp_path: Path, lively_genome_run: Path):
    copy = tmp_path / "copy"
    shutil.copytree(lively_genome_run, copy)
    n = len((copy / "candidates.jsonl").read_text().splitlines())
    with (copy / "candidates.jsonl").open("a") as f:
        f.write('{"evaluation": 9')  # a line cut short
    before = (copy / "candidates.jsonl").read_bytes()
    table = load_candidates(copy)
    assert len(table) == n and table.attrs["notes"] == [
        f"candidates.jsonl line {n + 1}: skipped (Expecting ',' delimiter: line 1 column 17 (char 16))"
    ]
    assert (copy / "candidates.jsonl").read_bytes() == before  # reading changes nothing
    with (copy / "candidates.f32").open("r+b") as f:  # the genomes' file cut short
        f.truncate(f.seek(0, 2) - 4)
    table = load_candidates(copy)
    assert table["genome"].iloc[-1] is None and table["genome"].iloc[0] is not None
    assert table.attrs["notes"][-1].startswith("candidates.f32: ends before the genome of evaluation")
    (copy / "candidates.jsonl").unlink()
    table = load_candidates(copy)
    assert len(table) == 0 and "none (a run made before the record existed" in table.attrs["notes"][0]


def test_a_resume_keeps_the_lines_and_genomes_of_the_checkpoint_s_evaluations(tmp_path: Path):
    rec = record.CandidateRecord(tmp_path)
    genomes = [np.arange(n, dtype=np.float32) + 10 * n for n in (3, 5, 4)]
    rec.append(record.line(i, {"a": 0.5}, id=i, origin="x", genome=g) for i, g in enumerate(genomes[:2]))
    rec.append([record.line(2, Failure("timeout", "a", "slow"), id=2, origin="x", genome=genomes[2])])
    lines, _ = record.read(tmp_path)
    assert [x["genome"] for x in lines] == [{"at": 0, "n": 3}, {"at": 3, "n": 5}, {"at": 8, "n": 4}]
    assert lines[2]["scores"] is None and lines[2]["failure"]["reason"] == "timeout"
    with rec.path.open("a") as f:
        f.write('{"evaluation": 3, "id"')  # a crash mid-line
    rec.truncate(2)
    lines, notes = record.read(tmp_path)
    assert [x["evaluation"] for x in lines] == [0, 1] and notes == []
    assert rec.vectors.stat().st_size == 8 * 4  # the third genome went with its line
    assert all(np.array_equal(record.genome_of(record.vectors(tmp_path), x), g) for x, g in zip(lines, genomes))
    rec.append([record.line(2, {"a": 0.7}, id=2, origin="x", genome=genomes[2])])
    assert record.read(tmp_path)[0][-1]["genome"] == {"at": 8, "n": 4}
