"""Task vectors: per-parameter weight deltas τ = θ_expert − θ_base.

Full fine-tunes give dense deltas; LoRA experts give factored deltas
``B @ A`` (:class:`LowRank`) that stay factored through storage, crossover and
mutation, so a LoRA population never pays for an m×n matrix per module.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save

from cycleqd.errors import DamagedFile
from cycleqd.fileio import write_bytes


@dataclass(frozen=True)
class LowRank:
    """A factored delta ``B @ A`` with ``B`` of shape ``(out, r)`` and ``A`` of shape ``(r, in)``."""

    B: torch.Tensor
    A: torch.Tensor

    def __post_init__(self) -> None:
        if self.B.ndim != 2 or self.A.ndim != 2 or self.B.shape[1] != self.A.shape[0]:
            raise ValueError(
                f"LowRank needs B (out, r) and A (r, in); got {tuple(self.B.shape)} and {tuple(self.A.shape)}"
            )

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.B.shape[0], self.A.shape[1]))

    @property
    def rank(self) -> int:
        return self.B.shape[1]

    def dense(self) -> torch.Tensor:
        return self.B @ self.A

    def scale(self, c: float) -> "LowRank":
        return LowRank(self.B * c, self.A)


Delta = Union[torch.Tensor, LowRank]


def concat_lowrank(terms: Sequence[LowRank]) -> LowRank:
    """Σ B_i A_i as one factored delta: ``[B_1 … B_n] @ [A_1; …; A_n]`` (ranks add)."""
    return LowRank(torch.cat([t.B for t in terms], dim=1), torch.cat([t.A for t in terms], dim=0))


def as_dense(delta: Delta) -> torch.Tensor:
    return delta.dense() if isinstance(delta, LowRank) else delta


def _pattern_key(patterns: Mapping[str, object], module: str) -> str | None:
    """The key of peft's ``rank_pattern``/``alpha_pattern`` that applies to ``module`` (peft's regex rule)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


class TaskVector(Mapping[str, Delta]):
    """An immutable mapping from parameter name to its delta (dense tensor or :class:`LowRank`).

    Names are the base model's ``state_dict`` keys, so a task vector applies to any
    model of the same architecture. They are kept sorted: operators that draw random
    numbers per parameter draw them in this order, which must not depend on where the
    vector came from (safetensors files come back in an order that varies by process).
    """

    def __init__(self, deltas: Mapping[str, Delta]) -> None:
        self._deltas = {k: deltas[k] for k in sorted(deltas)}

    def __getitem__(self, name: str) -> Delta:
        return self._deltas[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._deltas)

    def __len__(self) -> int:
        return len(self._deltas)

    def __repr__(self) -> str:
        kind = "factored" if self.is_factored else "dense"
        return f"TaskVector({len(self)} params, {kind}, {self.numel():,} stored numbers)"

    @property
    def is_factored(self) -> bool:
        return any(isinstance(d, LowRank) for d in self._deltas.values())

    def numel(self) -> int:
        return sum(d.B.numel() + d.A.numel() if isinstance(d, LowRank) else d.numel() for d in self._deltas.values())

    def scale(self, c: float) -> "TaskVector":
        return TaskVector({k: d.scale(c) if isinstance(d, LowRank) else d * c for k, d in self._deltas.items()})

    def dense(self) -> "TaskVector":
        return TaskVector({k: as_dense(d) for k, d in self._deltas.items()})

    # -- construction -------------------------------------------------------------
    @classmethod
    def between(cls, base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor]) -> "TaskVector":
        """Dense task vector ``tuned − base`` over the floating parameters that changed."""
        missing = sorted(set(tuned) - set(base))
        if missing:
            raise ValueError(f"tuned model has parameters the base lacks: {missing[:5]}")
        out = {}
        for name, w in tuned.items():
            b = base[name]
            if w.shape != b.shape:
                raise ValueError(f"parameter {name!r}: tuned shape {tuple(w.shape)} != base shape {tuple(b.shape)}")
            if w.is_floating_point() and not torch.equal(w, b):
                out[name] = w.float() - b.float()
        return cls(out)

    @classmethod
    def from_peft(cls, adapter_dir: str | Path) -> "TaskVector":
        """Factored task vector of a peft LoRA adapter directory (no densifying).

        Each module's delta ``(alpha / r) · B A`` becomes ``LowRank(scale · B, A)``
        keyed by the base weight's name (``…q_proj.weight``).
        """
        adapter_dir = Path(adapter_dir)
        cfg_path = adapter_dir / "adapter_config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{str(adapter_dir)!r} has no adapter_config.json: not a peft adapter")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("peft_type") != "LORA":
            raise ValueError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not LORA")
        if cfg.get("use_rslora") or cfg.get("use_dora"):
            raise ValueError(f"{cfg_path}: rsLoRA/DoRA adapters are not supported")
        weights = load_file(adapter_dir / "adapter_model.safetensors")
        r, alpha = cfg["r"], cfg["lora_alpha"]
        ranks, alphas = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
        out: dict[str, Delta] = {}
        for key, a in weights.items():
            if ".lora_A." not in key and not key.endswith(".lora_A.weight"):
                continue
            module = key.split(".lora_A")[0]
            b = weights[key.replace("lora_A", "lora_B")]
            name = module.removeprefix("base_model.model.") + ".weight"
            short = module.removeprefix("base_model.model.")
            mr = ranks[k] if (k := _pattern_key(ranks, short)) else r
            ma = alphas[k] if (k := _pattern_key(alphas, short)) else alpha
            out[name] = LowRank(b.float() * (ma / mr), a.float())
        if not out:
            raise ValueError(f"{adapter_dir}: adapter holds no lora_A/lora_B weights")
        return cls(out)

    # -- storage ------------------------------------------------------------------
    def save(self, path: str | Path, metadata: Mapping[str, str] | None = None) -> str:
        """Write to one safetensors file, durably and atomically; returns the file's SHA-256.

        Raises:
            WriteFailed: the file could not be written (a full disk); ``path`` is unchanged.
        """
        tensors: dict[str, torch.Tensor] = {}
        for name, d in self._deltas.items():
            if isinstance(d, LowRank):
                tensors[f"{name}::B"] = d.B.contiguous()
                tensors[f"{name}::A"] = d.A.contiguous()
            else:
                tensors[name] = d.contiguous()
        return write_bytes(path, save(tensors, metadata=dict(metadata or {})))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "TaskVector":
        """Read a task vector written by :meth:`save`.

        Raises:
            FileNotFoundError: no file at ``path``.
            DamagedFile: the file is truncated or not a task vector.
        """
        if not Path(path).is_file():
            raise FileNotFoundError(f"no task vector file at {str(path)!r}")
        return cls.from_bytes(Path(path).read_bytes(), path, device)

    @classmethod
    def from_bytes(
        cls, data: bytes, source: str | Path = "<bytes>", device: str | torch.device = "cpu"
    ) -> "TaskVector":
        """Parse the contents of a file written by :meth:`save` (``source`` names it in errors).

        Raises:
            DamagedFile: the bytes are truncated or not a task vector.
        """
        try:
            raw = load(data)
        except SafetensorError as e:
            raise DamagedFile(source, f"not a readable safetensors file ({e})") from None
        out: dict[str, Delta] = {}
        for key, t in raw.items():
            t = t.to(device)
            if key.endswith("::B"):
                name = key[:-3]
                if f"{name}::A" not in raw:
                    raise DamagedFile(source, f"{name!r} has a B factor and no A factor")
                out[name] = LowRank(t, raw[f"{name}::A"].to(device))
            elif not key.endswith("::A"):
                out[key] = t
        return cls(out)

    def is_finite(self) -> bool:
        """Whether every stored number is finite (no NaN or inf)."""
        for d in self._deltas.values():
            parts = (d.B, d.A) if isinstance(d, LowRank) else (d,)
            if not all(bool(torch.isfinite(p).all()) for p in parts):
                return False
        return True


def linear_combination(vectors: Sequence[TaskVector], weights: Sequence[float | Mapping[str, float]]) -> TaskVector:
    """Σ_i w_i τ_i, parameter by parameter.

    ``weights[i]`` is a number, or a mapping from parameter name to number (per-layer
    coefficients). A parameter missing from a vector counts as a zero delta. Factored
    deltas stay factored (their ranks add); a parameter that is factored in one vector
    and dense in another is densified.
    """
    if len(vectors) != len(weights):
        raise ValueError(f"{len(vectors)} task vectors but {len(weights)} weights")
    names = list(dict.fromkeys(n for v in vectors for n in v))
    out: dict[str, Delta] = {}
    for name in names:
        terms = []
        for v, w in zip(vectors, weights):
            if name in v:
                c = float(w[name]) if isinstance(w, Mapping) else float(w)
                terms.append(v[name].scale(c) if isinstance(v[name], LowRank) else v[name] * c)
        if all(isinstance(t, LowRank) for t in terms):
            out[name] = terms[0] if len(terms) == 1 else concat_lowrank(terms)
        else:
            out[name] = sum(as_dense(t) for t in terms)
    return TaskVector(out)
