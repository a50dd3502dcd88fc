"""The notebooks run, top to bottom, against a run the tests make."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]


def _execute(name: str, params: dict) -> nbformat.NotebookNode:
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    # papermill-style: the injected values come after the defaults and win
    cell.source += "\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    return nb


@pytest.mark.parametrize("name", ["archive_explorer.ipynb", "select_elites.ipynb"])
def test_committed_without_outputs(name: str):
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_archive_explorer_runs(cli_run: Path):
    nb = _execute("archive_explorer.ipynb", {"run_dir": str(cli_run), "sweep_dir": str(cli_run.parent)})
    # the report's figures (plotly): one per archive, the lineage, the curves, the fronts
    figures = [
        o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {})
    ]
    assert len(figures) == 3 + 3


@pytest.mark.parametrize("fixture", ["cli_run", "lively_run"], ids=["genomes", "task vector files"])
def test_select_elites_runs_and_reloads_exactly(fixture: str, request, tmp_path: Path):
    run_dir = request.getfixturevalue(fixture)
    nb = _execute("select_elites.ipynb", {"run_dir": str(run_dir), "out_dir": str(tmp_path)})
    assert list(tmp_path.glob("elite-*/model.safetensors"))
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
