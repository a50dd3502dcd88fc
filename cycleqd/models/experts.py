"""The experts' task vectors, checked against the base model before any training of children
or evolution starts."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from cycleqd.core.taskvector import LowRank, TaskVector
from cycleqd.errors import ConfigError


def expert_vectors(
    base_model: torch.nn.Module, paths: Mapping[str, Path], fmt: str, key: str = "experts.paths"
) -> dict[str, TaskVector]:
    """Each expert's task vector, checked against the base model's parameters.

    Raises:
        ConfigError: an expert names a parameter the base lacks or has another shape
            (keyed ``<key>.<task>``).
    """
    params = {n: p for n, p in base_model.named_parameters()}
    out = {}
    if fmt == "lora":
        for t, p in paths.items():
            try:
                out[t] = TaskVector.from_peft(p)
            except (ValueError, FileNotFoundError) as e:
                raise ConfigError(f"{key}.{t}", str(e)) from None
    else:
        from transformers import AutoModelForCausalLM

        base_sd = {k: v.detach().cpu() for k, v in base_model.state_dict().items()}
        for t, p in paths.items():
            try:
                tuned = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).state_dict()
                out[t] = TaskVector.between(base_sd, tuned)
            except (ValueError, OSError, RuntimeError) as e:
                raise ConfigError(f"{key}.{t}", str(e).strip().splitlines()[0]) from None
            del tuned
    for t, tv in out.items():
        check_against(tv, params, f"{key}.{t}")
    return out


def check_against(tv: TaskVector, params: Mapping[str, torch.Tensor], key: str) -> None:
    """Every delta of ``tv`` names a parameter of ``params`` and has its shape."""
    for name, d in tv.items():
        if name not in params:
            raise ConfigError(key, f"touches {name!r}, which the base model does not have")
        want = tuple(params[name].shape)
        got = tuple(d.shape) if not isinstance(d, LowRank) else (d.B.shape[0], d.A.shape[1])
        if got != want:
            raise ConfigError(key, f"delta of {name!r} has shape {got}, the base model's parameter {want}")
    if len(tv) == 0:
        raise ConfigError(key, "is identical to the base model (an empty task vector)")
