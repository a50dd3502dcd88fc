"""Elites as coefficients: the genome.

With the paper's operators every model the loop makes is, weight by weight,

    τ[W] = Σ_q U_q diag(c_q[W] ⊙ S_q) V_qᵀ      W mutated (2-D; embeddings only with mutation.include_embeddings): U S Vᵀ = SVD of τ_q[W]
    τ[W] = Σ_q c_q[W] · τ_q[W]                    any other W: one coefficient per expert

with ``c`` a flat vector of fixed length (:class:`Basis`). Expert q is ``c_q = 1`` and every
other expert's coefficients 0; a crossover with weights ``w_i[W]`` makes
``Σ_i w_i[W] c_i``; the SVD mutation along expert q adds ``r`` to ``c_q[W]``. This is exact:
the dense path computes the same sums, only in another basis. A LoRA child's rank is
bounded by the sum of the experts' ranks, forever.

Not linear in this basis, so kept on the dense/factored path: entry-wise merges (TIES,
DARE, breadcrumbs, SLERP), Gaussian mutation, and SVD mutation with ``max_rank``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from cycleqd.core.mutation import SVD
from cycleqd.core.taskvector import Delta, LowRank, TaskVector, as_dense
from cycleqd.errors import DamagedFile
from cycleqd.fileio import write_bytes


@dataclass(frozen=True)
class ExpertBasis:
    """One expert's part of the basis: the SVD of each delta the mutation moves along
    (``svds``) and every other delta as it is (``deltas``), both sorted by name (the
    mutation draws its numbers in this order, whatever order a file came back in)."""

    svds: dict[str, SVD]
    deltas: dict[str, Delta]

    def __post_init__(self) -> None:
        object.__setattr__(self, "svds", {n: self.svds[n] for n in sorted(self.svds)})
        object.__setattr__(self, "deltas", {n: self.deltas[n] for n in sorted(self.deltas)})

    @classmethod
    def of(cls, expert: TaskVector, svds: Mapping[str, SVD]) -> "ExpertBasis":
        return cls({n: svds[n] for n in expert if n in svds}, {n: d for n, d in expert.items() if n not in svds})

    def names(self) -> list[str]:
        return sorted([*self.svds, *self.deltas])

    def save(self, path: str | Path) -> str:
        tensors = {}
        for n, s in self.svds.items():
            tensors.update({f"{n}::U": s.U.contiguous(), f"{n}::S": s.S.contiguous(), f"{n}::Vh": s.Vh.contiguous()})
        for n, d in self.deltas.items():
            if isinstance(d, LowRank):
                tensors.update({f"{n}::B": d.B.contiguous(), f"{n}::A": d.A.contiguous()})
            else:
                tensors[n] = d.contiguous()
        return write_bytes(path, save(tensors))

    @classmethod
    def load(cls, path: str | Path) -> "ExpertBasis":
        """Raises: DamagedFile (a truncated or foreign file)."""
        try:
            raw = load(Path(path).read_bytes())
        except SafetensorError as e:
            raise DamagedFile(path, f"not a readable basis file ({e})") from None
        svds, deltas = {}, {}
        for key, t in raw.items():
            name, _, part = key.partition("::")
            if part == "U":
                svds[name] = SVD(t, raw[f"{name}::S"], raw[f"{name}::Vh"])
            elif part == "B":
                deltas[name] = LowRank(t, raw[f"{name}::A"])
            elif part == "":
                deltas[name] = t
        return cls(svds, deltas)


def content_hash(tv: TaskVector) -> str:
    """SHA-256 of a task vector's names, shapes and numbers: the key of its cached basis."""
    h = hashlib.sha256()
    for name, d in tv.items():
        parts = (d.B, d.A) if isinstance(d, LowRank) else (d,)
        h.update(name.encode())
        for p in parts:
            h.update(str(tuple(p.shape)).encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cached_expert_basis(expert: TaskVector, root: str | Path, make_svds, variant: str = "") -> tuple[ExpertBasis, str]:
    """The expert's basis from ``root/bases/<content hash>.safetensors``, computed with
    ``make_svds(expert)`` and written there the first time. Returns it and its key.
    ``variant`` names what else decides the basis (which weights ``make_svds`` takes): bases
    of one expert that differ in it are cached apart."""
    key = content_hash(expert)
    if variant:
        key = hashlib.sha256(f"{key}|{variant}".encode()).hexdigest()
    path = Path(root) / "bases" / f"{key[:32]}.safetensors"
    if path.is_file():
        try:
            return ExpertBasis.load(path), key
        except DamagedFile:
            pass  # a damaged cache entry is recomputed and replaced
    basis = ExpertBasis.of(expert, make_svds(expert))
    basis.save(path)
    return basis, key


def truncated_basis(part: ExpertBasis, truncation, exact_file: str | Path) -> tuple[ExpertBasis, dict[str, float], str]:
    """``part`` cut to ``truncation`` (a :class:`cycleqd.core.truncation.Truncation`): its kept
    directions in its dtype, the deltas kept whole in that dtype too; cached beside the exact
    basis file under the truncation's name, so a run's genomes are read back (``load_run``,
    ``cycleqd export``, resume) against the basis they were made in. Returns it, what it keeps
    (:meth:`Truncation.apply`) and its file."""
    svds, kept = truncation.apply(part.svds)
    deltas = {
        n: LowRank(d.B.to(truncation.torch_dtype), d.A.to(truncation.torch_dtype))
        if isinstance(d, LowRank)
        else d.to(truncation.torch_dtype)
        for n, d in part.deltas.items()
    }
    out = ExpertBasis(svds, deltas)
    exact_file = Path(exact_file)
    tag = hashlib.sha256(f"{exact_file.stem}|{truncation.variant()}".encode()).hexdigest()[:32]
    path = exact_file.parent / f"{tag}.safetensors"
    if not path.is_file():
        out.save(path)
    return out, kept, str(path)


@dataclass(frozen=True)
class Block:
    """Where the coefficients of expert ``task`` for parameter ``name`` sit in a genome."""

    task: str
    name: str
    start: int
    size: int
    directional: bool  # True: one coefficient per singular direction; False: one scalar

    @property
    def stop(self) -> int:
        return self.start + self.size


class Basis:
    """The experts' deltas as the coordinates of the genome.

    Args:
        tasks: Task names, in the run's order (the genome's block order).
        parts: Each task's :class:`ExpertBasis`: the parameters it holds SVDs of get
            directional blocks, its other deltas one scalar each.
    """

    def __init__(self, tasks: Sequence[str], parts: Mapping[str, ExpertBasis]) -> None:
        self.tasks = list(tasks)
        self.svds = {q: dict(parts[q].svds) for q in self.tasks}
        self.deltas: dict[tuple[str, str], Delta] = {}
        self.blocks: list[Block] = []
        start = 0
        for q in self.tasks:
            for name in parts[q].names():
                if name in self.svds[q]:
                    size, directional = int(self.svds[q][name].S.shape[0]), True
                else:
                    size, directional = 1, False
                    self.deltas[(q, name)] = parts[q].deltas[name]
                self.blocks.append(Block(q, name, start, size, directional))
                start += size
        self.length = start
        self.names = sorted({b.name for b in self.blocks})
        self._by_name: dict[str, list[Block]] = {}
        for b in self.blocks:
            self._by_name.setdefault(b.name, []).append(b)
        self._index = {(b.task, b.name): b for b in self.blocks}
        self._energy: tuple[np.ndarray, dict[str, np.ndarray]] | None = None  # expert_weights' weights, made once

    def block(self, task: str, name: str) -> Block:
        return self._index[(task, name)]

    def expert(self, task: str) -> np.ndarray:
        """The genome of expert ``task``: 1 on its blocks, 0 elsewhere."""
        c = np.zeros(self.length, dtype=np.float32)
        for b in self.blocks:
            if b.task == task:
                c[b.start : b.stop] = 1.0
        return c

    def expert_weights(self, c: np.ndarray) -> dict[str, float]:
        """How much of each expert genome ``c`` holds: its coefficients on the expert's blocks,
        averaged with the energy each carries in the expert's task vector (``S_j²`` for a
        singular direction, ``‖δ‖²`` for a scalar). The expert itself is 1 on its own task and
        0 on the others, ``w`` times it is ``w``, and a crossover of experts gets its weights;
        the SVD mutation only adds, so a lineage's weights grow."""
        if self._energy is None:
            energy = np.zeros(self.length)
            for b in self.blocks:
                if b.directional:
                    energy[b.start : b.stop] = self.svds[b.task][b.name].S.detach().double().cpu().numpy() ** 2
                else:
                    energy[b.start] = float(as_dense(self.deltas[(b.task, b.name)]).double().pow(2).sum())
            own = {
                q: np.concatenate([np.arange(b.start, b.stop) for b in self.blocks if b.task == q]) for q in self.tasks
            }
            self._energy = (energy, own)
        energy, own = self._energy
        c = np.asarray(c, dtype=np.float64)
        return {q: float(c[i] @ energy[i] / energy[i].sum()) for q, i in own.items()}

    def spread(self, per_name: Mapping[str, float]) -> np.ndarray:
        """A per-parameter weight as a per-coefficient vector (every block of ``name`` gets it)."""
        out = np.empty(self.length, dtype=np.float64)
        for b in self.blocks:
            out[b.start : b.stop] = per_name[b.name]
        return out

    # -- from coefficients to weights ---------------------------------------------------
    def delta(self, c: np.ndarray | torch.Tensor, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """τ[name] of genome ``c``, dense, in float32 on ``device``."""
        c = torch.as_tensor(np.asarray(c), dtype=torch.float32)
        out = None
        left, right = [], []
        for b in self._by_name[name]:
            coef = c[b.start : b.stop].to(device)
            if b.directional:
                s = self.svds[b.task][name]
                # a truncated basis may be stored in 16 bits: every product is taken in float32
                left.append(s.U.to(device).float() * (coef * s.S.to(device).float()))
                right.append(s.Vh.to(device).float())
            else:
                term = as_dense(self.deltas[(b.task, name)]).to(device).float() * coef[0]
                out = term if out is None else out + term
        if left:
            # One product for all experts' directions: [U_1 c_1 S_1 | U_2 c_2 S_2 | …] @ [V_1ᵀ; V_2ᵀ; …]
            prod = torch.cat(left, dim=1) @ torch.cat(right, dim=0)
            out = prod if out is None else out + prod
        return out

    def factored(self, c: np.ndarray) -> TaskVector:
        """Genome ``c`` as a task vector: factored (rank Σ k_q) where every term is directional."""
        c_t = torch.as_tensor(np.asarray(c), dtype=torch.float32)
        out: dict[str, Delta] = {}
        for name in self.names:
            blocks = self._by_name[name]
            if all(b.directional for b in blocks):
                svds = [self.svds[b.task][name] for b in blocks]
                Bs = [s.U.float() * (c_t[b.start : b.stop] * s.S.float()) for b, s in zip(blocks, svds)]
                As = [s.Vh.float() for s in svds]
                out[name] = LowRank(torch.cat(Bs, dim=1), torch.cat(As, dim=0))
            else:
                out[name] = self.delta(c, name)
        return TaskVector(out)

    def task_vector(self, c: np.ndarray) -> TaskVector:
        """Genome ``c`` as a task vector to save or export: each delta factored where that is
        smaller (a sum of low-rank terms), dense otherwise."""
        factored = self.factored(c)
        out: dict[str, Delta] = {}
        for name, d in factored.items():
            small = isinstance(d, LowRank) and d.rank * (d.shape[0] + d.shape[1]) < d.shape[0] * d.shape[1]
            out[name] = d if small else as_dense(d)
        return TaskVector(out)

    def view(self, c: np.ndarray) -> "GenomeView":
        return GenomeView(self, c)

    def to(self, device: torch.device | str) -> "Basis":
        """Move the bases to ``device`` (once: materialising a child then reads nothing from the host)."""
        self.svds = {
            q: {n: SVD(s.U.to(device), s.S.to(device), s.Vh.to(device)) for n, s in svds.items()}
            for q, svds in self.svds.items()
        }
        self.deltas = {
            k: LowRank(d.B.to(device), d.A.to(device)) if isinstance(d, LowRank) else d.to(device)
            for k, d in self.deltas.items()
        }
        return self

    def nbytes(self) -> int:
        """Bytes the basis holds (what each evaluator keeps resident, once)."""

        def size(t: torch.Tensor) -> int:
            return t.numel() * t.element_size()

        n = sum(size(s.U) + size(s.S) + size(s.Vh) for svds in self.svds.values() for s in svds.values())
        n += sum(size(d.B) + size(d.A) if isinstance(d, LowRank) else size(d) for d in self.deltas.values())
        return n


def place_basis(basis: Basis, device: torch.device) -> str:
    """Move the bases to a CUDA ``device`` when they fit in half its free memory; otherwise
    (or on a CPU) leave them in host memory, from where each module's factors are copied
    when a child is written. Returns where they are, in words."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if basis.nbytes() < free // 2:
            basis.to(device)
            return f"{basis.nbytes() / 2**30:.1f} GiB on {device}"
        return f"{basis.nbytes() / 2**30:.1f} GiB in host memory, streamed to {device}"
    return f"{basis.nbytes() / 2**30:.2f} GiB in host memory"


class GenomeView(Mapping[str, torch.Tensor]):
    """A genome seen as a task vector whose deltas are computed when read (on the reader's
    device, via :meth:`delta`), so a resident model is written without a dense copy of τ."""

    def __init__(self, basis: Basis, c: np.ndarray) -> None:
        self.basis, self.c = basis, np.asarray(c)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.basis.delta(self.c, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.basis.names)

    def __len__(self) -> int:
        return len(self.basis.names)

    def delta(self, name: str, device: torch.device | str) -> torch.Tensor:
        return self.basis.delta(self.c, name, device)

    def is_finite(self) -> bool:
        return bool(np.isfinite(self.c).all())
