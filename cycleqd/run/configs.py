"""Composing configs the way ``cycleqd run`` does — the configs shipped in the package
(``conf/``, installed as ``cycleqd.conf``), command-line overrides, ``-m`` sweeps — with Hydra's own errors
turned into one-line :class:`~cycleqd.errors.ConfigError` s naming the key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

import cycleqd.conf
from cycleqd.errors import ConfigError, DamagedFile

# The configs live in the top-level conf/ folder, installed as the package cycleqd.conf.
CONF_DIR = str(Path(cycleqd.conf.__file__).resolve().parent)


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def _hydra_error(e: Exception, overrides: Sequence[str]) -> ConfigError:
    """One line for an exception Hydra raised while parsing overrides or composing."""
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(e)
    if isinstance(e, OverrideParseException):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
        for o in overrides:
            try:
                parser.parse_override(o)
            except Exception:
                return ConfigError(
                    o.split("=", 1)[0].lstrip("+~"), f"cannot parse the override {o!r} ({_first_line(text)})"
                )
        return ConfigError("", _first_line(text))
    if isinstance(e, MissingConfigException):
        m = re.search(r"Could not (?:load|find) '([^']+)/([^'/]+)'", text)
        if m:
            group, option = m.group(1), m.group(2)
            return ConfigError(
                group.replace("/", "."),
                f"no config {option!r} in group {group!r} (options: {', '.join(group_options(group))})",
            )
        return ConfigError("", _first_line(text))
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        cause = _first_line(str(e.__cause__)) if e.__cause__ else _first_line(text)
        if "not in struct" in cause:
            return ConfigError(key, f"no such key (to add one, write +{key}=...)")
        return ConfigError(key, cause)
    m = re.search(r"Ambiguous value for argument '([^=']+)=([^']*)'", text)
    if m:
        return ConfigError(m.group(1), f"ambiguous value {m.group(2)!r}: a list is [a,b]; a sweep needs -m")
    return ConfigError("", _first_line(text))


def group_options(group: str) -> list[str]:
    from hydra.core.global_hydra import GlobalHydra

    try:
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
    except Exception:
        return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def compose(overrides: Sequence[str] = (), *, config_name: str = "config", hydra_config: bool = False) -> DictConfig:
    """The config ``cycleqd run`` would compose from ``overrides``.

    Raises:
        ConfigError: an override that Hydra rejects (unknown key, group option, syntax).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = list(overrides)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        try:
            return hydra_compose(config_name, overrides=overrides, return_hydra_config=hydra_config)
        except ConfigError:
            raise
        except Exception as e:
            raise _hydra_error(e, overrides) from None


def sweep(overrides: Sequence[str]) -> list[list[str]]:
    """The override lists of the jobs a ``-m`` run would launch (Hydra's basic sweeper rule;
    with another sweeper, the overrides without their sweeps).

    Raises:
        ConfigError: an override that cannot be parsed.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        if any(o.key_or_group == "hydra/sweeper" for o in parsed):
            return [[o.input_line for o in parsed if not o.is_sweep_override()]]
        return BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]
    except Exception as e:
        raise _hydra_error(e, overrides) from None


def load_config(run_dir: str | Path) -> DictConfig:
    """The resolved config of a run directory (``.hydra/config.yaml``), with named errors."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no .hydra/config.yaml: not a cycleqd run directory")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:
        raise DamagedFile(path, f"not a readable YAML config ({type(e).__name__})") from None
    if not isinstance(cfg, DictConfig) or "task" not in cfg:
        raise DamagedFile(path, "not a cycleqd config (no task section)")
    return cfg
