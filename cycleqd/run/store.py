"""The on-disk elite store: one safetensors file per elite task vector plus a small JSON
record of its provenance, each written durably (temp → fsync → rename).

The store never deletes on its own: the runner calls :meth:`EliteStore.collect` after a
committed checkpoint, so a file that a checkpoint names is never gone when that
checkpoint is resumed. Checksums of the files it wrote go into the checkpoint's
manifest, and reads verify them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Mapping

from cycleqd.core.elite import EliteRecord
from cycleqd.core.taskvector import TaskVector
from cycleqd.errors import DamagedFile
from cycleqd.fileio import remove, write_json


class EliteStore:
    """Task vectors by integer id under ``root`` (``elite-<id>.safetensors`` + ``.json``).

    Args:
        root: The directory (created if missing).
        checksums: SHA-256 by file name of files written by an earlier process (a
            checkpoint's manifest); reads of those files are verified against it.
    """

    def __init__(self, root: str | Path, checksums: Mapping[str, str] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.checksums: dict[str, str] = dict(checksums or {})

    def path(self, elite_id: int) -> Path:
        return self.root / f"elite-{elite_id:06d}.safetensors"

    def files(self, elite_id: int) -> tuple[str, str]:
        p = self.path(elite_id)
        return p.name, p.with_suffix(".json").name

    def put(self, tv: TaskVector, record: EliteRecord) -> None:
        """Write the elite's task vector, then its record (both durable)."""
        p = self.path(record.id)
        self.checksums[p.name] = tv.save(p, metadata={"id": str(record.id)})
        self.checksums[p.with_suffix(".json").name] = write_json(p.with_suffix(".json"), asdict(record))

    def _read(self, name: str) -> bytes:
        p = self.root / name
        if not p.is_file():
            if name in self.checksums:
                raise DamagedFile(
                    p,
                    "missing, though the checkpoint names it (a run still going may have replaced that checkpoint: load it again)",
                )
            raise KeyError(f"elite {int(name[6:12])} is not in the store {str(self.root)!r}")
        data = p.read_bytes()
        want = self.checksums.get(name)
        if want is not None and hashlib.sha256(data).hexdigest() != want:
            raise DamagedFile(p, "its checksum differs from the one the checkpoint recorded")
        return data

    def get(self, elite_id: int) -> TaskVector:
        """The elite's task vector.

        Raises:
            KeyError: the store has no file for ``elite_id``.
            DamagedFile: the file is truncated or its checksum is wrong.
        """
        name = self.files(elite_id)[0]
        return TaskVector.from_bytes(self._read(name), self.root / name)

    def record(self, elite_id: int) -> dict[str, Any]:
        name = self.files(elite_id)[1]
        try:
            return json.loads(self._read(name))
        except ValueError as e:
            raise DamagedFile(self.root / name, f"not valid JSON ({e})") from None

    def ids(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.root.glob("elite-*.safetensors")}

    def manifest(self, ids: Iterable[int]) -> dict[str, str]:
        """File name → SHA-256 of every file of the elites ``ids`` (what a checkpoint names)."""
        out = {}
        for i in sorted(ids):
            for name in self.files(i):
                if name not in self.checksums:
                    raise KeyError(f"elite {i} was never written to the store {str(self.root)!r}")
                out[name] = self.checksums[name]
        return out

    def verify(self, manifest: Mapping[str, str]) -> None:
        """Check that every file of ``manifest`` is present with its checksum.

        Raises:
            DamagedFile: a file is missing or differs from its checksum.
        """
        for name, want in manifest.items():
            p = self.root / name
            if not p.is_file():
                raise DamagedFile(p, "the checkpoint names it but it is missing")
            if hashlib.sha256(p.read_bytes()).hexdigest() != want:
                raise DamagedFile(p, "its checksum differs from the one the checkpoint recorded")
        self.checksums.update(manifest)

    def collect(self, keep: Iterable[int]) -> None:
        """Delete the files of every elite not in ``keep``."""
        keep = set(keep)
        for i in self.ids() - keep:
            for name in self.files(i):
                remove(self.root / name)
                self.checksums.pop(name, None)
        for p in self.root.glob("elite-*.json"):  # a record whose tensor file never landed
            if int(p.stem.split("-")[1]) not in keep:
                remove(p)
