"""Checkpoints: everything ``cycleqd resume`` needs besides the config and the elite
files, committed as one durable file that also lists (with SHA-256) the elite files
it needs. A checkpoint is either wholly there or wholly the previous one.

File layout: one header line ``cycleqd-checkpoint <format> <sha256 of the payload>``,
then the payload, a pickle of ``{"state": ..., "elites": {file name: sha256}}``.
The payload holds pyribs archives and RNG states, so it is a pickle: load only
checkpoints you trust, as with any pickle.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from cycleqd.errors import DamagedFile
from cycleqd.fileio import write_bytes
from cycleqd.run.moved import new_module

FORMAT = 1
MAGIC = b"cycleqd-checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint: the runner's state and the elite files it needs."""

    state: dict[str, Any]
    elites: dict[str, str]

    @property
    def generation(self) -> int:
        """CycleQD's generations done (0 in a comparison search's checkpoint)."""
        return int(self.state["qd"]["generation"]) if "qd" in self.state else 0

    @property
    def search(self) -> dict[str, Any] | None:
        """A comparison search's state (:meth:`cycleqd.core.searches.CoefficientSearch.state_dict`), or None."""
        return self.state.get("search")

    @property
    def search_name(self) -> str:
        return self.search["name"] if self.search is not None else "cycleqd"

    def where(self) -> str:
        """How far the run had got: ``generation 12`` or, for a search, ``evaluation 56``."""
        return f"evaluation {self.search['done']}" if self.search is not None else f"generation {self.generation}"


class _Unpickler(pickle.Unpickler):
    """Reads checkpoints written before cycleqd's modules moved into subpackages."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(new_module(module, name), name)


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoint" / "state.ckpt"


def commit(run_dir: str | Path, state: Mapping[str, Any], elites: Mapping[str, str]) -> None:
    """Write the checkpoint of ``run_dir`` durably, replacing the previous one in one step."""
    payload = pickle.dumps({"state": dict(state), "elites": dict(elites)}, protocol=pickle.HIGHEST_PROTOCOL)
    header = MAGIC + b" %d %s\n" % (FORMAT, hashlib.sha256(payload).hexdigest().encode())
    write_bytes(checkpoint_path(run_dir), header + payload)


def load(run_dir: str | Path) -> Checkpoint | None:
    """The committed checkpoint of ``run_dir``, or None if it has none.

    Raises:
        DamagedFile: the checkpoint file is truncated, corrupt or of another format.
    """
    path = checkpoint_path(run_dir)
    if not path.is_file():
        return None
    data = path.read_bytes()
    head, _, payload = data.partition(b"\n")
    parts = head.split(b" ")
    if len(parts) != 3 or parts[0] != MAGIC:
        raise DamagedFile(path, "no cycleqd checkpoint header")
    if parts[1] != str(FORMAT).encode():
        raise DamagedFile(path, f"checkpoint format {parts[1].decode(errors='replace')}, this cycleqd reads {FORMAT}")
    if hashlib.sha256(payload).hexdigest().encode() != parts[2]:
        raise DamagedFile(path, "truncated or corrupt (its checksum does not match)")
    try:
        content = _Unpickler(io.BytesIO(payload)).load()
    except Exception as e:  # a checksum-valid payload that does not unpickle: another cycleqd's classes
        raise DamagedFile(path, f"cannot be read by this cycleqd ({type(e).__name__}: {e})") from None
    return Checkpoint(state=content["state"], elites=content["elites"])
