"""Config checks that run before any compute, each error naming the key and the value."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the value."""


def _positive_int(cfg: DictConfig, key: str) -> None:
    value = cfg
    for part in key.split("."):
        value = value[part]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first bad value found in ``cfg``."""
    _positive_int(cfg, "generations")
    _positive_int(cfg, "children_per_generation")
    _positive_int(cfg, "eval_batch_size")
    if not cfg.task or len(cfg.task) < 2:
        raise ConfigError(f"task: CycleQD needs at least 2 tasks, got {list(cfg.task or [])}")
    for name, t in cfg.task.items():
        if "_target_" not in t:
            raise ConfigError(f"task.{name}: no _target_ (the class that implements the task)")
        m = t.get("measure") or {}
        bins, low, high = m.get("bins", 15), m.get("low", 0.0), m.get("high", 1.0)
        if not isinstance(bins, int) or bins < 1:
            raise ConfigError(f"task.{name}.measure.bins must be a positive integer, got {bins!r}")
        if not low < high:
            raise ConfigError(f"task.{name}.measure: empty range, low={low!r} is not below high={high!r}")
        if t.get("path") is not None and not Path(str(t.path)).is_file():
            raise ConfigError(f"task.{name}.path: {str(t.path)!r} does not exist")
    lo, hi = cfg.archive.alpha
    if not 0 < lo <= hi:
        raise ConfigError(f"archive.alpha must satisfy 0 < low <= high, got {[lo, hi]}")
    if cfg.model.kind == "hf":
        _model_dir("model.path", cfg.model.path)
    if cfg.experts.kind == "paths":
        _expert_paths(cfg)


def _model_dir(key: str, path) -> Path:
    p = Path(str(path))
    if not p.is_dir():
        raise ConfigError(f"{key}: {str(p)!r} does not exist")
    return p


def _expert_paths(cfg: DictConfig) -> None:
    paths = cfg.experts.paths
    fmt = cfg.experts.format
    if fmt not in ("full", "lora"):
        raise ConfigError(f"experts.format must be 'full' or 'lora', got {fmt!r}")
    missing = [t for t in cfg.task if t not in paths]
    if missing:
        raise ConfigError(f"experts.paths has no expert for tasks {missing}")
    base_cfg = json.loads((Path(cfg.model.path) / "config.json").read_text()) if cfg.model.kind == "hf" else None
    targets = {}
    for task in cfg.task:
        d = _model_dir(f"experts.paths.{task}", paths[task])
        if fmt == "full":
            cfg_file = d / "config.json"
            if not cfg_file.is_file():
                raise ConfigError(f"experts.paths.{task}: {str(d)!r} has no config.json (not a transformers model)")
            ec = json.loads(cfg_file.read_text())
            if base_cfg is not None:
                for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"):
                    if ec.get(k) != base_cfg.get(k):
                        raise ConfigError(
                            f"experts.paths.{task}: {k}={ec.get(k)!r} differs from the base model's {base_cfg.get(k)!r}"
                        )
        else:
            ac = d / "adapter_config.json"
            if not ac.is_file():
                raise ConfigError(f"experts.paths.{task}: {str(d)!r} has no adapter_config.json (not a peft adapter)")
            targets[task] = sorted(json.loads(ac.read_text()).get("target_modules") or [])
    if len({tuple(v) for v in targets.values()}) > 1:
        raise ConfigError(f"experts.paths: LoRA experts target different modules: {targets}")
