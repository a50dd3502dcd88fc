"""Checkpoints: everything ``cycleqd resume`` needs besides the config and the elite
files, committed as one durable file that also lists (with SHA-256) the elite files
it needs. A checkpoint is either wholly there or wholly the previous one.

File layout (format 2): one header line ``cycleqd-checkpoint 2 <sha256 of the payload>``,
then the payload, a safetensors file: its arrays are the state's arrays and tensors, its
metadata ``"state"`` the rest of the state as JSON, each array written in place as
``{"$array": key}`` (``{"$tensor": key}`` for a torch tensor; ``{"$float": "inf"}`` for a
non-finite number, which JSON lacks). The state is data, not objects: the loops'
``state_dict`` and ``load_state_dict`` (:class:`cycleqd.core.evolve.CycleQD`,
:class:`cycleqd.core.searches.CoefficientSearch`) write and read it, so moving or renaming
a class leaves every checkpoint readable, and reading one runs no code from it.

Format 1 (a pickle of the same state with objects in it) is still read: its objects are
turned into format 2's data as it loads.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from cycleqd.core.evolve import candidate_data
from cycleqd.core.searches import cma_es_state
from cycleqd.errors import DamagedFile
from cycleqd.fileio import write_bytes
from cycleqd.protocols import result_data
from cycleqd.run.moved import new_module

FORMAT = 2
READS = (1, 2)  # the formats this cycleqd reads
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


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoint" / "state.ckpt"


def commit(run_dir: str | Path, state: Mapping[str, Any], elites: Mapping[str, str]) -> None:
    """Write the checkpoint of ``run_dir`` durably, replacing the previous one in one step.

    ``state`` is plain data: mappings with string keys, lists, strings, numbers, booleans,
    None, numpy arrays and torch tensors."""
    payload = encode({"state": dict(state), "elites": dict(elites)})
    header = MAGIC + b" %d %s\n" % (FORMAT, hashlib.sha256(payload).hexdigest().encode())
    write_bytes(checkpoint_path(run_dir), header + payload)


def load(run_dir: str | Path) -> Checkpoint | None:
    """The committed checkpoint of ``run_dir``, or None if it has none.

    Raises:
        DamagedFile: the checkpoint file is truncated, corrupt or of a format this cycleqd does not read.
    """
    path = checkpoint_path(run_dir)
    if not path.is_file():
        return None
    data = path.read_bytes()
    head, _, payload = data.partition(b"\n")
    parts = head.split(b" ")
    if len(parts) != 3 or parts[0] != MAGIC:
        raise DamagedFile(path, "no cycleqd checkpoint header")
    version = parts[1].decode(errors="replace")
    if version not in {str(v) for v in READS}:
        raise DamagedFile(
            path,
            f"checkpoint format {version}, this cycleqd reads formats {', '.join(map(str, READS))}: "
            "resume it with the cycleqd that wrote it",
        )
    if hashlib.sha256(payload).hexdigest().encode() != parts[2]:
        raise DamagedFile(path, "truncated or corrupt (its checksum does not match)")
    try:
        content = decode(payload) if version == "2" else _format_1(payload)
    except Exception as e:  # a checksum-valid payload that does not read: written by another cycleqd
        raise DamagedFile(path, f"cannot be read by this cycleqd ({type(e).__name__}: {e})") from None
    return Checkpoint(state=content["state"], elites=content["elites"])


# -- format 2: JSON and arrays -----------------------------------------------------------
def encode(tree: Mapping[str, Any]) -> bytes:
    """``tree`` as a safetensors file: its arrays as tensors, the rest as JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}

    def plain(x: Any, where: str) -> Any:
        if isinstance(x, Mapping):
            bad = [k for k in x if not isinstance(k, str)]
            if bad:
                raise TypeError(f"checkpoint {where}: key {bad[0]!r} is not a string")
            return {k: plain(v, f"{where}.{k}" if where else k) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, (np.ndarray, torch.Tensor)):
            key = str(len(tensors))
            is_array = isinstance(x, np.ndarray)
            t = torch.from_numpy(np.ascontiguousarray(x)) if is_array else x.detach().cpu()
            tensors[key] = t.contiguous().clone()  # safetensors refuses tensors that share memory
            return {"$array" if is_array else "$tensor": key}
        if isinstance(x, (bool, np.bool_)):
            return bool(x)
        if isinstance(x, (int, np.integer)):
            return int(x)
        if isinstance(x, (float, np.floating)):
            return float(x) if math.isfinite(x) else {"$float": str(float(x))}
        if x is None or isinstance(x, str):
            return x
        raise TypeError(f"checkpoint {where}: a {type(x).__name__} is not plain data")

    state = json.dumps(plain(tree, ""), allow_nan=False, separators=(",", ":"))
    return save_tensors(tensors, metadata={"state": state})


def decode(payload: bytes) -> dict[str, Any]:
    """The tree that :func:`encode` wrote."""
    tensors = load_tensors(payload)
    metadata = _metadata(payload)

    def back(x: Any) -> Any:
        if isinstance(x, dict):
            if len(x) == 1:
                ((key, value),) = x.items()
                if key == "$array":
                    return tensors[value].numpy()
                if key == "$tensor":
                    return tensors[value]
                if key == "$float":
                    return float(value)
            return {k: back(v) for k, v in x.items()}
        if isinstance(x, list):
            return [back(v) for v in x]
        return x

    return back(json.loads(metadata["state"]))


def _metadata(payload: bytes) -> dict[str, str]:
    n = int.from_bytes(payload[:8], "little")  # safetensors: an 8-byte header length, then its JSON header
    return json.loads(payload[8 : 8 + n])["__metadata__"]


# -- format 1: a pickle of objects ---------------------------------------------------------
def _format_1(payload: bytes) -> dict[str, Any]:
    """A format-1 checkpoint, its objects turned into format 2's data."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:  # modules moved into subpackages
            return super().find_class(new_module(module, name), name)

    content = Unpickler(io.BytesIO(payload)).load()
    state = dict(content["state"])
    if "qd" in state:
        qd = dict(state["qd"])
        qd["archives"] = qd["archives"].state_dict()
        qd["gen"] = np.asarray(qd["gen"])
        qd["pending"] = [candidate_data(c) for c in qd.get("pending", [])]
        state["qd"] = qd
        state["experts_opt"] = {t: result_data(r) for t, r in state.get("experts_opt", {}).items()}
    if "search" in state:
        search = dict(state["search"])
        search["rng"] = search["rng"].bit_generator.state
        search["es"] = None if search["es"] is None else cma_es_state(search["es"])
        if search["best_result"] is not None:
            search["best_result"] = result_data(search["best_result"])
        state["search"] = search
    return {"state": state, "elites": content["elites"]}
