"""A run directory as the report reads it: whatever of it can be read, finished or not, with a
note for each part that is missing or damaged and why. Nothing in the directory is written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cycleqd.errors import CycleQDError
from cycleqd.fileio import read_stored_text, stored

METRICS = "metrics.jsonl"


@dataclass
class RunView:
    """What the report shows of one run.

    Attributes:
        run_dir: The run directory.
        tasks: The run's tasks, in config order.
        search: ``cycleqd`` or the comparison search's name.
        experiment: The run's ``experiment_name``.
        summary: ``summary.json``, or None while the run is in progress (or if it failed).
        elites: One row per (archive, elite) of the last checkpoint (:func:`load_run`'s table),
            or None for a run without archives.
        archives: Task → its pyribs archive.
        kind: The archives' kind (``grid``, ``cvt``, ``dns``).
        candidates: The record of every evaluated model (:func:`load_candidates`), or None.
        metrics: ``metrics.jsonl``'s lines (one per generation).
        front: ``front.json`` (each pool's opt front scored on test), or None.
        weights: Elite id → expert → its weight (genome runs whose bases are at hand).
        notes: One line per part that could not be shown, saying why.
    """

    run_dir: Path
    tasks: list[str]
    search: str = "cycleqd"
    experiment: str = ""
    summary: dict[str, Any] | None = None
    elites: Any = None
    archives: dict[str, Any] = field(default_factory=dict)
    kind: str = "grid"
    candidates: Any = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    front: dict[str, Any] | None = None
    weights: dict[int, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def elite_ids(self) -> list[int]:
        """Every elite held by some archive, once, in id order."""
        return [] if self.elites is None or not len(self.elites) else sorted({int(i) for i in self.elites["id"]})

    def candidate(self, model_id: int) -> dict[str, Any] | None:
        """The record's row of ``model_id`` (its first evaluation), or None."""
        if self.candidates is None or not len(self.candidates):
            return None
        rows = self.candidates[self.candidates["id"] == model_id]
        return None if rows.empty else rows.iloc[0].to_dict()

    def test_scores(self, model_id: int) -> dict[str, float] | None:
        """A model's test scores where the run measured them: a model on the search's opt front
        (``front.json``), the elite chosen as the final model, or an expert."""
        for entry in ((self.front or {}).get("pools", {}).get("search") or {}).get("front", []):
            if entry.get("id") == model_id and entry.get("test"):
                return entry["test"]
        final = (self.summary or {}).get("final_elites") or {}
        if final.get("chosen") == "elite" and f"elite:{model_id}" in (final.get("candidates") or {}):
            return self.summary.get("final")  # this elite is the run's final model
        row = self.candidate(model_id)
        origin = (row or {}).get("origin") or ""
        if origin.startswith("expert:") and self.summary:
            return (self.summary.get("experts") or {}).get(origin.split(":", 1)[1])
        return None


def _config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ".hydra" / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}


def _metrics(run_dir: Path, notes: list[str]) -> list[dict[str, Any]]:
    if stored(run_dir / METRICS) is None:
        notes.append(f"{METRICS}: none yet, so no curves")
        return []
    out = []
    for n, text in enumerate(read_stored_text(run_dir / METRICS).splitlines(), 1):
        try:
            out.append(json.loads(text))
        except ValueError:
            notes.append(f"{METRICS} line {n}: skipped (not JSON: a line cut short)")
    return out


def _json(path: Path, what: str, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        notes.append(f"{path.name}: damaged ({e}), so no {what}")
        return None


def read_view(run_dir: str | Path) -> RunView:
    """Read ``run_dir`` for the report (see :class:`RunView`); a part that cannot be read is
    left out with a note.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory (no ``.hydra/config.yaml``,
            no checkpoint and no record).
    """
    from cycleqd.analysis.candidates import load_candidates
    from cycleqd.analysis.rundata import load_run

    run_dir = Path(run_dir)
    cfg = _config(run_dir)
    if not cfg and not (run_dir / "checkpoint").is_dir() and not (run_dir / "candidates.jsonl").is_file():
        raise FileNotFoundError(
            f"{str(run_dir)!r} is not a run directory (no .hydra/config.yaml, checkpoint or record)"
        )
    notes: list[str] = []
    summary = _json(run_dir / "summary.json", "final table", notes)
    if summary is None and not any("summary.json" in n for n in notes):
        notes.append("summary.json: none: the run is in progress or stopped early, so no final table yet")
    tasks = list((summary or {}).get("tasks") or (cfg.get("task") or {}))
    search = (summary or {}).get("search") or (cfg.get("search") or {}).get("name") or "cycleqd"
    view = RunView(
        run_dir=run_dir,
        tasks=tasks,
        search=str(search),
        experiment=str(cfg.get("experiment_name", "")),
        summary=summary,
        kind=str((cfg.get("archive") or {}).get("kind", "grid")),
        notes=notes,
    )
    view.metrics = _metrics(run_dir, notes)
    view.front = _json(run_dir / "front.json", "Pareto front on test", notes)
    try:
        run = load_run(run_dir)
        view.elites, view.archives = run.elites, run.archives
        view.tasks = view.tasks or run.tasks
        if run.genome and len(run.elites):
            try:
                table = run.expert_weights()
                view.weights = {
                    int(r["id"]): {t: float(r[f"weight_{t}"]) for t in run.tasks} for _, r in table.iterrows()
                }
            except (FileNotFoundError, CycleQDError) as e:
                notes.append(f"expert weights: not shown ({str(e).splitlines()[0]})")
    except (FileNotFoundError, CycleQDError) as e:
        notes.append(f"archives: not shown ({str(e).splitlines()[0]})")
    view.candidates = load_candidates(run_dir)
    notes.extend(view.candidates.attrs.get("notes", []))
    if not len(view.candidates):
        view.candidates = None
        notes.append("lineage: not shown (no record of evaluated models)")
    failed = (summary or {}).get("failed") or {}
    for what, why in failed.items():
        notes.append(f"{what}: failed ({str(why).splitlines()[0][:160]})")
    return view
