"""``cycleqd pack``: a packed run reads back as the run does for the evidence, the curves and
the record of evaluated models, at a fraction of its size; the runs themselves are only read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cycleqd.analysis.candidates import load_candidates
from cycleqd.analysis.evidence import curves, table
from cycleqd.analysis.pack import pack, size
from tests.analysis.test_report import tree
from tests.runs import cli, one_line_error


def test_a_packed_run_reads_back_as_the_run(lively_genome_run: Path, tmp_path: Path):
    before = tree(lively_genome_run.parent)
    (packed,) = pack(lively_genome_run.parent, tmp_path / "packed")
    assert tree(lively_genome_run.parent) == before
    assert packed == tmp_path / "packed" / lively_genome_run.name
    assert (packed / "candidates.jsonl.gz").is_file() and not (packed / "candidates.jsonl").exists()
    assert size(packed) < size(lively_genome_run) / 10
    assert table([tmp_path / "packed"], "(default)") == table([lively_genome_run.parent], "(default)")
    (a,), (b,) = curves([tmp_path / "packed"]).values(), curves([lively_genome_run.parent]).values()
    assert len(a) == len(b) == 1 and all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    ours, theirs = load_candidates(packed), load_candidates(lively_genome_run)
    cols = ["id", "origin", "parents", "mean_score"]
    assert ours[cols].equals(theirs[cols]) and ours["genome"].isna().all()  # no models: their genomes stay behind


def test_pack_names_a_folder_without_finished_runs(tmp_path: Path):
    proc = cli("pack", str(tmp_path), "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode == 1 and "no finished runs" in one_line_error(proc)
