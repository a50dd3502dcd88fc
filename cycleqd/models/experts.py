"""Where the base model and the experts come from, and their task vectors, checked
against the base before any training of children or evolution starts."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from cycleqd.core.taskvector import LowRank, TaskVector
from cycleqd.errors import ConfigError


def locate_models(cfg: DictConfig, tasks: list) -> tuple[Path, dict[str, Path], str]:
    """Base model directory, expert directory per task, and the experts' format (full | lora).

    ``experts.kind: train`` fine-tunes (once, cached) one expert per task from the base;
    ``experts.kind: paths`` takes them from disk.
    """
    from cycleqd.models.embedded import EmbeddedRecipe, cache_root, ensure_embedded, ensure_experts

    root = Path(cfg.model.cache_dir) if cfg.model.get("cache_dir") else cache_root()
    trained = cfg.experts.kind == "train"
    if cfg.model.kind == "embedded":
        weights = cfg.model.pretrain_weights or {}
        recipe = EmbeddedRecipe(
            model=instantiate(cfg.model.shape),
            pretrain=instantiate(cfg.model.pretrain),
            pretrain_weights=tuple(float(weights.get(t.name, 1.0)) for t in tasks),
            pretrain_examples=cfg.model.pretrain_examples,
            expert=instantiate(cfg.experts.recipe, _convert_="all"),
            expert_examples=cfg.experts.examples,
        )
        built = ensure_embedded(recipe, tasks, root)
        return built.base, built.experts, recipe.expert.kind
    if cfg.model.kind == "smollm2":
        from cycleqd.models.smollm2 import ensure_smollm2

        base, base_key = ensure_smollm2(root)
    else:
        base, base_key = Path(cfg.model.path), str(Path(cfg.model.path).resolve())
    if trained:
        expert = instantiate(cfg.experts.recipe, _convert_="all")
        return base, ensure_experts(base, base_key, expert, cfg.experts.examples, tasks, root), expert.kind
    return base, {t.name: Path(cfg.experts.paths[t.name]) for t in tasks}, cfg.experts.format


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
