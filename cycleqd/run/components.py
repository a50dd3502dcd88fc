"""From a composed config to checked components, before any model exists.

:func:`build` constructs every component the config names — tasks (with their data),
crossover, mutation, archives, evaluator, logger, the final aggregation and the
baselines grid — and checks the model and expert settings and paths. The first bad
value raises a one-line :class:`~cycleqd.errors.ConfigError` naming its key.
``cycleqd run dry_run=true`` runs exactly this and stops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cycleqd.checks import describe, matches, require
from cycleqd.core.archives import ArchiveSpec, CyclicArchives
from cycleqd.core.baselines import BaselineSpec, StaticMerge
from cycleqd.errors import ConfigError
from cycleqd.protocols import Measure
from cycleqd.run.final import FinalSpec
from cycleqd.run.moved import fill_targets, upgrade_targets

# Every top-level key of config.yaml, with the type its value must have.
SETTINGS: dict[str, Any] = {
    "experiment_name": str,
    "seed": int,
    "build": int,
    "generations": int,
    "children_per_generation": int,
    "checkpoint_every": int,
    "eval_batch_size": int,
    "device": str | None,
    "threads": int | None,
    "quiet": bool,
    "progress_every_s": float,
    "dry_run": bool,
    "genome": str | bool,
}
GROUPS = (
    "model",
    "experts",
    "task",
    "crossover",
    "mutation",
    "archive",
    "evaluator",
    "logger",
    "final",
    "baselines",
    "search",
    "basis",
)
MINIMUM = {
    "seed": 0,
    "build": 0,
    "generations": 1,
    "children_per_generation": 1,
    "checkpoint_every": 0,
    "eval_batch_size": 1,
    "threads": 1,
    "progress_every_s": 0,
}


@dataclass(frozen=True)
class Components:
    """Everything a run is made of, built from its config, models aside."""

    tasks: list
    crossover: Any
    mutation: Any
    archives: CyclicArchives
    evaluator: Any
    logger: Any
    final: FinalSpec
    baselines: dict[str, BaselineSpec]
    genome: bool
    model: Any  # where the base model comes from (cycleqd.models.providers)
    experts: Any  # where the experts come from
    warnings: tuple[str, ...] = ()
    search: Any = None  # a cycleqd.core.searches.Search; None: CycleQD
    truncation: Any = None  # a cycleqd.core.truncation.Truncation of the experts' bases; None: exact

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]


def plain(node: Any) -> Any:
    """A config node as plain Python (dicts, lists), resolved."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def instantiate_node(node: Any, key: str) -> Any:
    """``hydra.utils.instantiate(node)``, with any failure as one ConfigError naming ``key``
    (or the nested key Hydra reports)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(key, f"must be a mapping with a _target_ (the class to build), got {plain(node)!r}")
    for missing in sorted(OmegaConf.missing_keys(node)):  # keyed from the config's root, or from node's
        raise ConfigError(
            missing if missing.startswith(f"{key}.") else f"{key}.{missing}", "must be set (the config leaves it ???)"
        )
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as e:
        text = str(e)
        m = re.search(r"full_key: (\S+)\s*$", text)
        where = m.group(1) if m else key
        cause = e.__cause__
        if isinstance(cause, ConfigError):
            raise cause.under(where) from None
        if text.startswith("Error locating target"):
            target = re.search(r"'([^']+)'", text)
            why = re.search(r"(\w+Error\(.*?\))", str(cause)) if cause else None
            detail = f" ({why.group(1)})" if why else ""
            raise ConfigError(
                f"{where}._target_", f"cannot import {target.group(1) if target else '?'!r}{detail}"
            ) from None
        if isinstance(cause, TypeError):
            _argument_error(cause, where, OmegaConf.select(node, f"{where[len(key) + 1 :]}._target_".lstrip(".")))
        raise ConfigError(where, _one_line(cause or e)) from None
    except ConfigError as e:
        raise e.under(key) from None
    except Exception as e:
        raise ConfigError(key, _one_line(e)) from None


def _argument_error(e: TypeError, where: str, target: Any) -> None:
    """A constructor's complaint about its arguments as the config key at fault: an unknown
    key, or one that must be set (the config files set every value; Python holds no defaults)."""
    import inspect

    from hydra.utils import get_object

    text = str(e)
    unknown = re.search(r"unexpected keyword argument '(\w+)'", text)
    missing = re.findall(r"'(\w+)'", text.split("missing", 1)[1]) if "required" in text and "missing" in text else []
    if not (unknown or missing) or not isinstance(target, str):
        return
    try:
        params = [
            p.name
            for p in inspect.signature(get_object(target)).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
    except Exception:
        return
    if unknown:
        raise ConfigError(f"{where}.{unknown.group(1)}", f"unknown key (the keys are {', '.join(params)})") from None
    raise ConfigError(f"{where}.{missing[0]}", "must be set (the config has no value for it)") from None


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _setting(cfg: DictConfig, key: str) -> Any:
    from omegaconf.errors import MissingMandatoryValue

    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue:
        raise ConfigError(key, "must be set (the config leaves it ???)") from None
    except Exception as e:
        raise ConfigError(key, _one_line(e)) from None


def check_resolvable(cfg: DictConfig) -> None:
    """Every interpolation of the config (``${...}``) resolves."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    for key in cfg:
        if key == "hydra":
            continue
        try:
            node = cfg[key]
            if isinstance(node, (DictConfig, ListConfig)):
                OmegaConf.to_container(node, resolve=True)
        except MissingMandatoryValue:
            continue  # a required value left ???: named where it is read
        except OmegaConfBaseException as e:
            raise ConfigError(getattr(e, "full_key", None) or str(key), _one_line(e)) from None


def check_settings(cfg: DictConfig) -> list[str]:
    """The top-level scalars: types and ranges. Returns warnings (a device this machine lacks)."""
    check_resolvable(cfg)
    unknown = [k for k in cfg if k not in SETTINGS and k not in GROUPS and k != "hydra"]
    if unknown:
        raise ConfigError(str(unknown[0]), "not a cycleqd setting (see `cycleqd run --cfg job` for the keys)")
    for key, tp in SETTINGS.items():
        value = _setting(cfg, key)
        require(matches(value, tp), key, f"must be {describe(tp)}, got {value!r}")
        if key in MINIMUM and value is not None:
            require(value >= MINIMUM[key], key, f"must be >= {MINIMUM[key]}, got {value}")
    require(bool(cfg.experiment_name), "experiment_name", "must be a non-empty name")
    warnings = []
    if cfg.device is not None:
        require(
            re.fullmatch(r"cpu|mps|cuda(:\d+)?", cfg.device) is not None,
            "device",
            f"must be null, cpu, cuda, cuda:N or mps, got {cfg.device!r}",
        )
        if cfg.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                warnings.append(
                    f"device={cfg.device}: this machine has no CUDA device (the run itself will refuse to start here)"
                )
    return warnings


def build_tasks(cfg: DictConfig) -> list:
    """Each task of ``cfg.task``, built and with its evaluation data drawn or read."""
    upgrade_targets(cfg)
    node = _setting(cfg, "task")
    require(
        isinstance(node, DictConfig) and len(node) >= 2,
        "task",
        f"CycleQD needs at least 2 tasks, got {list(node or [])}",
    )
    tasks = []
    for key in node:
        t = instantiate_node(node[key], f"task.{key}")
        require(
            getattr(t, "name", None) == key,
            f"task.{key}.name",
            f"must equal its key {key!r}, got {getattr(t, 'name', None)!r}",
        )
        require(
            callable(getattr(t, "evaluate", None)),
            f"task.{key}",
            f"{type(t).__name__} has no evaluate(model, split) method",
        )
        try:
            t.measure = Measure.of(getattr(t, "measure", None))
        except ConfigError as e:
            raise e.under(f"task.{key}") from None
        except AttributeError:
            raise ConfigError(f"task.{key}.measure", "cannot be set on this task object") from None
        if hasattr(t, "prepare"):
            try:
                t.prepare()
            except ConfigError as e:
                raise e.under(f"task.{key}") from None
            except Exception as e:
                raise ConfigError(f"task.{key}", _one_line(e)) from None
        tasks.append(t)
    return tasks


def _final(cfg: DictConfig) -> FinalSpec:
    final = instantiate_node(_setting(cfg, "final"), "final")
    require(
        isinstance(final, FinalSpec),
        "final",
        f"must build a {FinalSpec.__module__}.FinalSpec, got {type(final).__name__}",
    )
    return final


def _baselines(cfg: DictConfig, n_experts: int) -> dict[str, BaselineSpec]:
    node = _setting(cfg, "baselines")
    if node is None:
        return {}
    require(
        isinstance(node, DictConfig), "baselines", f"must be a mapping of name to static merge, got {plain(node)!r}"
    )
    out = {}
    for name in node:
        key = f"baselines.{name}"
        if node[name] is None:
            continue  # `baselines.<name>: null` switches a baseline off
        merge = instantiate_node(node[name], key)
        require(
            isinstance(merge, StaticMerge),
            key,
            f"must build a {StaticMerge.__module__}.StaticMerge, got {type(merge).__name__}",
        )
        if not merge.scales:
            continue  # as does `scales: []`
        try:
            merge.check_experts(n_experts)
        except ConfigError as e:
            raise e.under(key) from None
        out[str(name)] = merge.spec(str(name))
    return out


def _archives(cfg: DictConfig, tasks: list) -> CyclicArchives:
    spec = instantiate_node(_setting(cfg, "archive"), "archive")
    require(
        isinstance(spec, ArchiveSpec),
        "archive",
        f"must build a {ArchiveSpec.__module__}.ArchiveSpec, got {type(spec).__name__}",
    )
    try:
        return spec.build([t.name for t in tasks], {t.name: t.measure for t in tasks}, cfg.seed)
    except ConfigError as e:
        raise e.under("archive") from None


def build(cfg: DictConfig) -> Components:
    """Build and check every component of ``cfg``; no model is loaded, built or trained.

    Raises:
        ConfigError: the first bad value, its key named.
    """
    check_resolvable(cfg)  # before fill_targets reads kinds, so a bad ${...} is named, not raised raw
    fill_targets(cfg)
    upgrade_targets(cfg)
    warnings = check_settings(cfg)
    tasks = build_tasks(cfg)
    crossover = instantiate_node(_setting(cfg, "crossover"), "crossover")
    require(
        callable(crossover), "crossover", f"{type(crossover).__name__} is not callable as crossover(parents, generator)"
    )
    mutation = instantiate_node(_setting(cfg, "mutation"), "mutation")
    require(
        callable(mutation), "mutation", f"{type(mutation).__name__} is not callable as mutation(child, svds, generator)"
    )
    evaluator = instantiate_node(_setting(cfg, "evaluator"), "evaluator")
    logger = instantiate_node(_setting(cfg, "logger"), "logger")
    archives = _archives(cfg, tasks)
    final = _final(cfg)
    baselines = _baselines(cfg, len(tasks))
    genome = _genome(cfg, crossover, mutation)
    truncation = _truncation(cfg, genome)
    search = _search(cfg)
    model, experts = check_models(cfg, tasks)
    return Components(
        tasks,
        crossover,
        mutation,
        archives,
        evaluator,
        logger,
        final,
        baselines,
        genome,
        model,
        experts,
        tuple(warnings),
        search,
        truncation,
    )


def _search(cfg: DictConfig) -> Any:
    """The search of the run (``search=``; CycleQD when the config has none)."""
    from cycleqd.core.searches import Search

    node = _setting(cfg, "search")
    if node is None:
        return Search()
    search = instantiate_node(node, "search")
    require(
        isinstance(search, Search), "search", f"must build a cycleqd.core.searches.Search, got {type(search).__name__}"
    )
    return search


def _genome(cfg: DictConfig, crossover: Any, mutation: Any) -> bool:
    """Whether elites are genomes (coefficients over the experts' SVD bases)."""
    from cycleqd.core.operators import linear_in_genome

    setting = cfg.genome
    require(setting in ("auto", True, False), "genome", f"must be auto, true or false, got {setting!r}")
    linear = linear_in_genome(crossover, mutation)
    if setting is True:
        require(
            linear,
            "genome",
            "true needs operators linear in the experts' SVD bases "
            "(the paper's crossover or linear merge, SVD mutation without max_rank); "
            f"{type(crossover).__name__}/{type(mutation).__name__} are not: use genome=auto or false",
        )
    return linear if setting == "auto" else bool(setting)


def _truncation(cfg: DictConfig, genome: bool) -> Any:
    """How much of the experts' bases the run keeps (``basis:``; exact where a config has none)."""
    from cycleqd.core.truncation import Truncation

    node = _setting(cfg, "basis")
    if node is None:
        return Truncation()
    truncation = instantiate_node(node, "basis")
    require(
        isinstance(truncation, Truncation),
        "basis",
        f"must build a cycleqd.core.truncation.Truncation, got {type(truncation).__name__}",
    )
    require(
        truncation.exact or genome,
        "basis",
        "a truncated basis is what genomes are coefficients over, and this run keeps task vectors "
        "(genome=false, or operators not linear in the bases): leave basis.energy, rank and dtype at their defaults",
    )
    device = cfg.device or ""
    if truncation.dtype == "bfloat16" and device.startswith("cuda"):
        import torch

        require(
            not torch.cuda.is_available() or torch.cuda.is_bf16_supported(),
            "basis.dtype",
            f"bfloat16: {device} has no bfloat16 arithmetic (a GPU before Ampere); use float16 or float32",
        )
    return truncation


# -- models and experts ---------------------------------------------------------------------------


def check_models(cfg: DictConfig, tasks: list) -> tuple[Any, Any]:
    """The model and experts groups, built and checked against each other and the tasks (from
    config files: no weights are read)."""
    from cycleqd.models.providers import BASE_MODELS, EXPERTS, check_pair

    model = instantiate_node(_setting(cfg, "model"), "model")
    require(
        isinstance(model, BASE_MODELS),
        "model",
        f"must build one of {[c.__name__ for c in BASE_MODELS]}, got {type(model).__name__}",
    )
    experts = instantiate_node(_setting(cfg, "experts"), "experts")
    require(
        isinstance(experts, EXPERTS),
        "experts",
        f"must build one of {[c.__name__ for c in EXPERTS]}, got {type(experts).__name__}",
    )
    check_pair(model, experts, tasks)
    return model, experts
