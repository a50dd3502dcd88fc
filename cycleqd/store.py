"""The on-disk elite store: one safetensors file per elite task vector, written
atomically, plus a small JSON record of its provenance. Files of elites that no
archive holds any more are removed (the run directory does not grow with every
child, unlike the reference code's full checkpoints)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from cycleqd.taskvector import TaskVector


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_atomically(target: Path, build: Callable[[Path], dict]) -> Path:
    """Reuse ``target`` if complete, else run ``build(tmp_dir)`` and rename the result to ``target``.

    ``build`` returns metadata, written last as ``recipe.json``: its presence marks a
    complete entry, so an interrupted build never passes for a finished one.
    """
    if (target / "recipe.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        meta = build(tmp)
        (tmp / "recipe.json").write_text(json.dumps(meta, indent=2, default=str))
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same build first
            if not (target / "recipe.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(frozen=True)
class EliteRecord:
    """Provenance of one stored model: where it came from and what it scored (opt split)."""

    id: int
    generation: int
    origin: str  # "expert:<task>", "child", ...
    parents: tuple[int, ...]
    scores: dict[str, float]


class EliteStore:
    """Task vectors by integer id under ``root`` (``elite-<id>.safetensors`` + ``.json``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, elite_id: int) -> Path:
        return self.root / f"elite-{elite_id:06d}.safetensors"

    def put(self, tv: TaskVector, record: EliteRecord) -> None:
        tv.save(self.path(record.id), metadata={"id": str(record.id)})
        write_atomic(self.path(record.id).with_suffix(".json"), json.dumps(asdict(record)))

    def get(self, elite_id: int) -> TaskVector:
        p = self.path(elite_id)
        if not p.is_file():
            raise KeyError(f"elite {elite_id} is not in the store {str(self.root)!r}")
        return TaskVector.load(p)

    def record(self, elite_id: int) -> dict[str, Any]:
        return json.loads(self.path(elite_id).with_suffix(".json").read_text())

    def ids(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.root.glob("elite-*.safetensors")}

    def keep_only(self, alive: Iterable[int]) -> None:
        """Delete the elites not in ``alive``."""
        alive = set(alive)
        for i in self.ids() - alive:
            self.path(i).unlink(missing_ok=True)
            self.path(i).with_suffix(".json").unlink(missing_ok=True)
