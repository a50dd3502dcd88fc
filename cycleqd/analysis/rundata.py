"""Reading a finished (or checkpointed) run back: summary, archives, elite table, and
any elite's task vector (from the elite store, or from its genome and the experts' bases)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cycleqd.core.archives import CyclicArchives
from cycleqd.core.taskvector import TaskVector
from cycleqd.fileio import read_json
from cycleqd.run import checkpoint
from cycleqd.run.store import EliteStore


@dataclass(frozen=True)
class RunData:
    """A run directory, loaded.

    Attributes:
        run_dir: Where it lives.
        summary: ``summary.json`` (empty if the run has not finished).
        archives: Task name → its pyribs archive (``GridArchive``, ``CVTArchive`` or ``DNSArchive``).
        elites: One row per (archive, elite): id, archive, cell, objective, measures, the
            K task scores (``score_<task>``, optimisation split), generation, parents, origin.
        store: The elite store of the run (empty when its elites are genomes).
        genome: Whether the archives' solutions are genomes (else elite ids).
        bases: Task → the file of its expert's basis (what a genome is read against).
    """

    run_dir: Path
    summary: dict[str, Any]
    archives: dict[str, Any]
    elites: Any  # pandas.DataFrame
    store: EliteStore
    genome: bool = False
    bases: dict[str, str] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return list(self.archives)

    def solution(self, elite_id: int) -> np.ndarray:
        """The archive solution of ``elite_id`` (its genome, or its id).

        Raises:
            KeyError: no archive holds this elite.
        """
        for archive in self.archives.values():
            data = archive.data(["id", "solution"])
            hit = np.flatnonzero(data["id"] == elite_id)
            if len(hit):
                return data["solution"][hit[0]]
        raise KeyError(f"no archive of {str(self.run_dir)!r} holds elite {elite_id}")

    def vector(self, elite_id: int) -> TaskVector:
        """The task vector of elite ``elite_id``.

        Raises:
            KeyError: no archive holds it.
            DamagedFile: its file, or a basis file, is damaged.
            FileNotFoundError: a basis file is gone (the model cache was cleared).
        """
        if not self.genome:
            self.solution(elite_id)
            return self.store.get(elite_id)
        return self.basis().task_vector(self.solution(elite_id))

    def expert_weights(self):
        """One row per elite (``id``) of a genome run: ``weight_<task>``, how much of each
        expert it holds (:meth:`cycleqd.core.genome.Basis.expert_weights`; 1 = the expert), and
        ``weight_sum``. Where the good merges lie, and how far the search wandered from them.

        Raises:
            ValueError: the run's elites are task vectors, not genomes.
        """
        import pandas as pd

        if not self.genome:
            raise ValueError(
                f"{str(self.run_dir)!r} keeps its elites as task vectors, not genomes: expert weights are read from genomes (genome=true)"
            )
        basis = self.basis()
        rows = {}
        for archive in self.archives.values():
            data = archive.data(["id", "solution"])
            for i, sol in zip(data["id"], data["solution"]):
                rows.setdefault(int(i), basis.expert_weights(sol))
        table = pd.DataFrame([{"id": i, **{f"weight_{t}": w for t, w in ws.items()}} for i, ws in sorted(rows.items())])
        table["weight_sum"] = table[[f"weight_{t}" for t in self.tasks]].sum(axis=1)
        return table

    def basis(self):
        """The experts' bases this run's genomes are coefficients of (read from the model cache)."""
        from cycleqd.core.genome import Basis, ExpertBasis

        parts = {}
        for task in self.tasks:
            path = Path(self.bases.get(task, ""))
            if not path.is_file():
                raise FileNotFoundError(
                    f"the basis of expert {task!r} ({str(path)!r}) is gone; "
                    f"`cycleqd resume {self.run_dir}` with the same model cache rebuilds it"
                )
            parts[task] = ExpertBasis.load(path)
        return Basis(self.tasks, parts)


def load_run(run_dir: str | Path) -> RunData:
    """Load ``run_dir``'s summary, K archives and elite table.

    Raises:
        FileNotFoundError: ``run_dir`` has no checkpoint (not a run directory).
        DamagedFile: the checkpoint or the summary is damaged.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    ckpt = checkpoint.load(run_dir)
    if ckpt is None or ckpt.search is not None:
        summary_path = run_dir / "summary.json"
        if ckpt is not None:
            search = ckpt.search_name
        else:  # a search run written before searches kept checkpoints
            search = (
                read_json(summary_path, "summary").get("search", "cycleqd") if summary_path.is_file() else "cycleqd"
            )
        if search != "cycleqd":
            raise FileNotFoundError(
                f"{str(run_dir)!r} is a search={search} run: it has no archives or elites, only its final model (final.safetensors)"
            )
        raise FileNotFoundError(f"{str(run_dir)!r} has no checkpoint/state.ckpt: not a cycleqd run directory")
    cyclic = CyclicArchives.from_state(ckpt.state["qd"]["archives"])
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path, "summary") if summary_path.is_file() else {}
    store = EliteStore(run_dir / "elites", checksums=ckpt.elites)
    rows = [
        {
            "id": r["id"],
            "archive": r["archive"],
            "cell": r["cell"],
            "objective": r["objective"],
            "measures": r["measures"],
            **{f"score_{t}": v for t, v in r["scores"].items()},
            "generation": r["generation"],
            "parents": r["parents"],
            # seeding offers the experts first, in task order; generation g breeds from archive g mod K
            "origin": f"expert:{cyclic.tasks[r['id']]}"
            if r["generation"] < 0
            else f"child:{cyclic.quality_task(r['generation'])}",
        }
        for r in cyclic.rows()
    ]
    elites = pd.DataFrame(rows)
    if len(elites):
        elites["mean_score"] = elites[[f"score_{t}" for t in cyclic.tasks]].mean(axis=1)
    return RunData(
        run_dir=run_dir,
        summary=summary,
        archives=dict(cyclic.archives),
        elites=elites,
        store=store,
        genome=bool(ckpt.state.get("genome")),
        bases=dict(ckpt.state.get("bases") or {}),
    )
