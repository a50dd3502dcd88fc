"""``cycleqd report``: the page of a tiny run, its figures against the run's own files, bad
input (a run in progress, one from before the record, a damaged record line, failed tasks)
still making a page with a note and changing nothing in the run directory, and a sweep index."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np

from cycleqd.analysis.report import figures
from cycleqd.analysis.report.page import render, write_report
from cycleqd.analysis.report.view import read_view
from cycleqd.analysis.rundata import load_run
from tests.runs import cli, one_line_error


def tree(run_dir: Path) -> dict[str, str]:
    """Every file of a run directory and its digest."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    (to / "report.html").unlink(missing_ok=True)
    return to


def figures_of(page: str) -> dict:
    """The page's figures, as embedded (plotly JSON)."""
    return json.loads(re.search(r"const FIGURES = (\{.*?\});\n", page, re.S).group(1))


def values(x) -> list:
    """A plotly JSON array: a list, or a base64 typed array (``{"dtype", "bdata"}``)."""
    if isinstance(x, dict) and "bdata" in x:
        return np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"])).tolist()
    return list(x)


def test_the_page_is_self_contained_and_shows_every_elite(lively_genome_run: Path, tmp_path: Path):
    before = tree(lively_genome_run)
    out = write_report(lively_genome_run, tmp_path / "page.html")
    page = out.read_text()
    assert tree(lively_genome_run) == before  # only read
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"?https?:", page)  # nothing fetched at view time
    run = load_run(lively_genome_run)
    figs = figures_of(page)
    for task, archive in run.archives.items():
        markers = [t for t in figs[f"archive-{task}"]["data"] if t["type"] == "scatter"]
        assert sorted(values(markers[0]["customdata"])) == sorted(archive.data("id"))
    ids = set(run.elites["id"])
    detail = json.loads(re.search(r"const DETAIL = (\{.*?\});\n", page, re.S).group(1))
    assert {int(i) for i in detail} == ids
    assert "cycleqd export" in detail[str(min(ids))]
    assert "final-table" in page and "cycleqd (final)" in page


def test_a_lineage_reaches_the_experts_through_the_records_parents(lively_genome_run: Path):
    view = read_view(lively_genome_run)
    record = {int(i): tuple(p) for i, p in zip(view.candidates["id"], view.candidates["parents"])}
    child = max(i for i in view.elite_ids if record[i])
    # oracle: the ancestors by a direct walk of the record
    seen, todo = set(), [child]
    while todo:
        i = todo.pop()
        if i not in seen:
            seen.add(i)
            todo.extend(record[i])
    assert set(figures.ancestry(view, child)) == seen
    fig = figures.lineage_figure(view, child)
    nodes = fig.data[2]
    assert set(nodes.customdata) == seen
    assert "star" in nodes.marker.symbol  # an expert among them
    path_end = (fig.data[1].x[-1], fig.data[1].y[-1])
    experts = {i for i in seen if not record[i]}
    assert any((nodes.x[j], nodes.y[j]) == path_end for j, i in enumerate(nodes.customdata) if i in experts)


def test_a_run_in_progress_from_before_the_record_still_gets_a_page(lively_genome_run: Path, tmp_path: Path):
    run = copy_run(lively_genome_run, tmp_path / "run")
    (run / "summary.json").unlink()
    (run / "candidates.jsonl").unlink()
    before = tree(run)
    page = render(run)
    assert tree(run) == before
    assert "summary.json: none: the run is in progress" in page
    assert "candidates.jsonl: none" in page and "lineage: not shown" in page
    assert "The run has not finished: no final table yet." in page
    assert 'id="archive-addition"' in page or "id='archive-addition'" in page


def test_a_damaged_record_line_is_skipped_with_a_note(lively_genome_run: Path, tmp_path: Path):
    run = copy_run(lively_genome_run, tmp_path / "run")
    lines = (run / "candidates.jsonl").read_text().splitlines()
    lines[5] = lines[5][: len(lines[5]) // 2]
    (run / "candidates.jsonl").write_text("\n".join(lines) + "\n")
    before = tree(run)
    page = render(run)
    assert tree(run) == before
    assert "candidates.jsonl line 6: skipped" in page


def test_a_run_whose_tasks_failed_names_them(tmp_path: Path, cache: Path, monkeypatch):
    from cycleqd.run.runner import run
    from tests.scenarios.test_faults import FAULTY
    from tests.tiny import compose_lively

    monkeypatch.setenv("FAULTY", "raise:2:test")
    run(compose_lively(cache, FAULTY, generations=2), tmp_path / "run")
    page = render(tmp_path / "run")
    assert "expert:reversal: failed (raised (sorting): RuntimeError: plugin bug" in page


def test_a_comparison_search_has_a_page_without_archives(tmp_path: Path, lively_genome_run: Path):
    run = copy_run(lively_genome_run, tmp_path / "run")
    shutil.rmtree(run / "checkpoint")
    page = render(run)
    assert "archives: not shown" in page and "Pareto front" in page


def test_a_sweep_gets_an_index_linking_each_run(lively_genome_run: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    for n in ("0", "1"):
        copy_run(lively_genome_run, sweep / n)
    index = write_report(sweep)
    text = index.read_text()
    assert "<table id='compare'>" in text
    assert "href='0/report.html'" in text and "href='1/report.html'" in text
    assert (sweep / "0" / "report.html").is_file()


def test_the_command_names_a_directory_that_is_not_a_run(tmp_path: Path):
    proc = cli("report", str(tmp_path / "nowhere"), check=False)
    assert proc.returncode == 1
    assert "nowhere" in one_line_error(proc) and "no such directory" in one_line_error(proc)


def test_more_than_two_measures_draw_parallel_coordinates(tmp_path: Path):
    import pandas as pd

    from cycleqd.analysis.report.view import RunView

    tasks = ["a", "b", "c", "d"]
    rng = np.random.default_rng(0)
    rows = [
        {"archive": "a", "id": i, "generation": i, **{f"score_{t}": float(rng.random()) for t in tasks}}
        for i in range(7)
    ]
    view = RunView(run_dir=tmp_path, tasks=tasks, elites=pd.DataFrame(rows))
    (trace,) = figures.archive_figure(view, "a").data
    assert trace.type == "parcoords"
    assert [d.label for d in trace.dimensions] == ["b", "c", "d", "a"]
    assert list(trace.dimensions[0]["values"]) == [r["score_b"] for r in rows]


def test_embedded_data_cannot_close_its_script_element():
    from cycleqd.analysis.report.page import _js

    value = {"note": "a task named </script><script>alert(1)</script>", "n": [1, 2]}
    text = _js(value)
    assert "</" not in text and json.loads(text) == value
