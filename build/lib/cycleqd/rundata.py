"""Reading a finished (or checkpointed) run back: summary, archives, elite table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cycleqd import checkpoint
from cycleqd.fileio import read_json
from cycleqd.store import EliteStore


@dataclass(frozen=True)
class RunData:
    """A run directory, loaded.

    Attributes:
        run_dir: Where it lives.
        summary: ``summary.json`` (empty if the run has not finished).
        archives: Task name → its pyribs ``GridArchive``.
        elites: One row per (archive, elite): id, archive, cell, objective, measures, the
            K task scores (``score_<task>``, optimisation split), generation, parents, origin.
        store: The elite store of the run.
    """

    run_dir: Path
    summary: dict[str, Any]
    archives: dict[str, Any]
    elites: Any  # pandas.DataFrame
    store: EliteStore

    @property
    def tasks(self) -> list[str]:
        return list(self.archives)


def load_run(run_dir: str | Path) -> RunData:
    """Load ``run_dir``'s summary, K archives and elite table.

    Raises:
        FileNotFoundError: ``run_dir`` has no checkpoint (not a run directory).
        DamagedFile: the checkpoint, the summary or an elite record is damaged.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    ckpt = checkpoint.load(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{str(run_dir)!r} has no checkpoint/state.ckpt: not a cycleqd run directory")
    cyclic = ckpt.state["qd"]["archives"]
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path, "summary") if summary_path.is_file() else {}
    store = EliteStore(run_dir / "elites", checksums=ckpt.elites)
    rows = []
    for task, archive in cyclic.archives.items():
        data = archive.data()
        cells = archive.int_to_grid_index(data["index"])
        for j in range(len(data["index"])):
            elite_id = int(data["solution"][j][0])
            rec = store.record(elite_id)
            rows.append(
                {
                    "id": elite_id,
                    "archive": task,
                    "cell": tuple(int(c) for c in cells[j]),
                    "objective": float(data["objective"][j]),
                    "measures": tuple(float(m) for m in data["measures"][j]),
                    **{f"score_{t}": float(s) for t, s in zip(cyclic.tasks, data["scores"][j])},
                    "generation": int(data["generation"][j]),
                    "parents": tuple(rec["parents"]),
                    "origin": rec["origin"],
                }
            )
    elites = pd.DataFrame(rows)
    if len(elites):
        elites["mean_score"] = elites[[f"score_{t}" for t in cyclic.tasks]].mean(axis=1)
    return RunData(run_dir=run_dir, summary=summary, archives=dict(cyclic.archives), elites=elites, store=store)
