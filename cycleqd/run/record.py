"""The record of every model a run's search evaluated: ``candidates.jsonl``, one line per opt
evaluation, in the order the search was told them.

The archives keep only their elites. Picking a model for another weighting of the tasks, a
Pareto front, or a lineage back to the experts needs every model the search saw, so that a
pool of candidates is the run's, not only its survivors. A line holds:

- ``evaluation``: its place among the search's opt evaluations (0 for the first expert);
- ``id``, ``origin`` (``expert:<task>``, ``child:<quality task>``, or the comparison search's
  name), ``generation`` (−1 for an expert), ``parents`` (ids) and ``operators`` (what the
  crossover drew and the mutation's settings);
- ``scores`` (task → opt score; null for a failed evaluation, whose ``failure`` says why),
  ``per_item`` (task → one number per opt item, where the task gives them) and ``archives``
  (the archives that took it when it was offered);
- the model, where it is a vector: ``coefficients`` (a comparison search's per-layer expert
  coefficients, inline), or ``genome`` (coefficients over the experts' bases: ``{"at": i,
  "n": n}``, float32 numbers ``i`` to ``i + n`` of ``candidates.f32``, raw little-endian, so
  that the lines stay small to read and a genome is read only when wanted). A run with task
  vectors in files (``genome=false``) keeps the lineage and scores but not the model: its
  elites are in ``elites/``.

Written with the run's durable-write rules: each genome, then its line, is synced before the
checkpoint that counts it is committed, and a resumed run first drops the lines past its
checkpoint (and a line cut short by a crash) and the genomes past the lines it keeps, so the
files of a killed and resumed run are the files of one that ran through.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from cycleqd.fileio import read_stored_text, stored, write_text
from cycleqd.protocols import Failure, Result

FILE = "candidates.jsonl"
VECTORS = "candidates.f32"  # the genomes, one after another
_F32 = np.dtype("<f4")


def line(
    evaluation: int,
    result: Result,
    *,
    id: int,
    origin: str,
    generation: int = -1,
    parents: Sequence[int] = (),
    operators: Mapping[str, Any] | None = None,
    archives: Mapping[str, int] | None = None,
    genome: np.ndarray | None = None,
    coefficients: np.ndarray | None = None,
) -> dict[str, Any]:
    """One model's line (see the module's docstring); ``archives``: pyribs' add status per archive."""
    out: dict[str, Any] = {
        "evaluation": evaluation,
        "id": id,
        "origin": origin,
        "generation": generation,
        "parents": [int(p) for p in parents],
        "operators": dict(operators or {}),
    }
    if isinstance(result, Failure):
        out["scores"] = None
        out["failure"] = {"reason": result.reason, "task": result.task, "message": result.message}
    else:
        out["scores"] = {t: float(v) for t, v in result.items()}
        per_item = getattr(result, "per_item", None)
        if per_item:
            out["per_item"] = {t: [float(v) for v in vs] for t, vs in per_item.items()}
    out["archives"] = sorted(t for t, s in (archives or {}).items() if s > 0)
    if genome is not None:
        out["genome"] = np.asarray(genome, dtype=_F32)  # placed in candidates.f32 by append()
    if coefficients is not None:
        out["coefficients"] = [float(v) for v in coefficients]
    return out


class CandidateRecord:
    """``<run_dir>/candidates.jsonl``, appended as the search is told its results."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / FILE
        self.vectors = Path(run_dir) / VECTORS

    def truncate(self, evaluations: int) -> None:
        """Keep the lines of the first ``evaluations`` evaluations and their genomes (a resumed
        run writes the rest again; a line cut short by a crash goes too)."""
        kept, end = [], 0
        if self.path.is_file():
            for text in self.path.read_text().splitlines():
                try:
                    x = json.loads(text)
                    if x["evaluation"] < evaluations:
                        kept.append(text + "\n")
                        if isinstance(x.get("genome"), dict):
                            end = max(end, x["genome"]["at"] + x["genome"]["n"])
                except (ValueError, KeyError, TypeError):
                    continue
            write_text(self.path, "".join(kept))
        if self.vectors.is_file():
            with self.vectors.open("r+b") as f:
                f.truncate(end * _F32.itemsize)
                os.fsync(f.fileno())

    def append(self, lines: Iterable[Mapping[str, Any]]) -> None:
        """Write each line's genome to the vectors file, then the lines; both synced before
        the checkpoint that follows, so a committed evaluation never lacks either."""
        lines = [dict(x) for x in lines]
        if not lines:
            return
        genomes = [x for x in lines if isinstance(x.get("genome"), np.ndarray)]
        if genomes:
            with self.vectors.open("ab") as f:
                at = f.tell() // _F32.itemsize
                for x in genomes:
                    g = x["genome"]
                    f.write(g.tobytes())
                    x["genome"] = {"at": at, "n": int(g.size)}
                    at += int(g.size)
                f.flush()
                os.fsync(f.fileno())
        with self.path.open("a") as f:
            f.write("".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines))
            f.flush()
            os.fsync(f.fileno())


def vectors(run_dir: str | Path) -> np.ndarray:
    """The vectors file's numbers, mapped once (empty where there is none)."""
    path = Path(run_dir) / VECTORS
    if not path.is_file() or path.stat().st_size < _F32.itemsize:
        return np.zeros(0, dtype=_F32)
    return np.memmap(path, dtype=_F32, mode="r")


def genome_of(numbers: np.ndarray, entry: Mapping[str, Any]) -> np.ndarray | None:
    """The genome a line names, from :func:`vectors` (None: the line holds none, or the file
    ends before it)."""
    at = entry.get("genome")
    if not isinstance(at, Mapping) or len(numbers) < at["at"] + at["n"]:
        return None
    return np.array(numbers[at["at"] : at["at"] + at["n"]])


def read(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The lines of a run's record and a note for each one that could not be read (a line cut
    short, a line that is not a model's); no file: no lines and a note that says so."""
    path = Path(run_dir) / FILE
    if stored(path) is None:
        return [], [f"{FILE}: none (a run made before the record existed, or one that has not evaluated yet)"]
    lines, notes = [], []
    for n, text in enumerate(read_stored_text(path).splitlines(), 1):
        try:
            x = json.loads(text)
            if not isinstance(x, dict) or "evaluation" not in x or "id" not in x:
                raise ValueError("not a model's line")
            lines.append(x)
        except ValueError as e:
            notes.append(f"{FILE} line {n}: skipped ({str(e).splitlines()[0][:80]})")
    return lines, notes
