"""The embedded default: a tiny Llama pretrained on the demo tasks' text, and one
expert per task fine-tuned from it. Built once, cached on disk under a key that is
the hash of everything that made it; a changed recipe rebuilds, the same one reuses.

    python -m cycleqd.models.embedded        # build (or find) the default and print the expert matrix
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from cycleqd.checks import check_fields, require
from cycleqd.fileio import build_atomically
from cycleqd.models.finetune import ExpertRecipe, Training, build_expert, train
from cycleqd.models.loading import char_tokenizer

log = logging.getLogger(__name__)

RECIPE_VERSION = 1  # bump when the training code changes what a recipe produces


@dataclass(frozen=True)
class TinyLlama:
    """Shape of the embedded base model (a transformers ``LlamaConfig``)."""

    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 64

    def __post_init__(self) -> None:
        check_fields(self)
        for f in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
        ):
            require(getattr(self, f) >= 1, f, f"must be >= 1, got {getattr(self, f)}")
        require(
            self.hidden_size % self.num_attention_heads == 0,
            "hidden_size",
            f"{self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}",
        )


# The demo's base and experts (build 0 of conf/experiment/demo.yaml's recipe), laid out as the
# cache lays them out: a run whose recipe is theirs copies them instead of training for minutes,
# so the demo starts from the same weights on every machine (training them again on another
# machine gives other weights: CPU kernels round differently over hundreds of steps).
SHIPPED = Path(__file__).with_name("shipped")


def cache_root() -> Path:
    return Path(os.environ.get("CYCLEQD_CACHE", Path.home() / ".cache" / "cycleqd"))


def _mixture(tasks: Sequence, weights: Sequence[float], n: int, seed: int) -> list[tuple[str, str]]:
    total = sum(weights)
    out: list[tuple[str, str]] = []
    for t, w in zip(tasks, weights):
        out += t.train_examples(int(round(n * w / total)), seed)
    return out


@dataclass(frozen=True)
class EmbeddedRecipe:
    """Everything that determines the embedded base and experts (the cache key)."""

    model: TinyLlama = field(default_factory=TinyLlama)
    pretrain: Training = field(default_factory=Training)
    pretrain_weights: tuple[float, ...] = (1.0, 1.0, 1.0)
    pretrain_examples: int = 40000
    expert: ExpertRecipe = field(default_factory=ExpertRecipe)
    expert_examples: int = 20000


def _task_key(task) -> dict:
    # The descriptor axis and how an answer is scored do not change the training data;
    # everything else can (training examples exclude the evaluation splits' prompts, so their sizes count).
    d = {k: v for k, v in vars(task).items() if not k.startswith("_") and k not in ("measure", "credit")}
    return {"class": type(task).__qualname__, **d}


def build_base(recipe: EmbeddedRecipe, tasks: Sequence, out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = char_tokenizer()
    m = recipe.model
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_attention_heads,
        max_position_embeddings=m.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(recipe.pretrain.seed)
    model = LlamaForCausalLM(config)
    pairs = _mixture(tasks, recipe.pretrain_weights, recipe.pretrain_examples, recipe.pretrain.seed)
    t0 = time.perf_counter()
    # Loss on answers only: the prompts are random strings, modelling them teaches nothing.
    loss = train(
        model,
        tokenizer,
        pairs,
        recipe.pretrain,
        list(model.parameters()),
        answer_only=True,
        desc="pretraining the base",
    )
    log.info("pretrained base: loss %.3f in %.0fs", loss, time.perf_counter() - t0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _key(obj) -> str:
    blob = json.dumps({**obj, "version": RECIPE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Embedded:
    """Where a built embedded default lives: the base model and one expert per task."""

    base: Path
    experts: dict[str, Path]


def _shipped(entry: str, tmp: Path) -> dict | None:
    """Copy the shipped cache entry ``entry`` (``base-<key>``, ``experts-<key>``) into ``tmp``;
    its recipe, or None where none ships under that key."""
    src = SHIPPED / entry
    if not (src / "recipe.json").is_file():
        return None
    shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("recipe.json"))
    log.info("%s: the weights that ship with cycleqd (model.shipped=false trains them here)", entry)
    return json.loads((src / "recipe.json").read_text())


def ensure_embedded(
    recipe: EmbeddedRecipe, tasks: Sequence, root: Path | None = None, shipped: bool = True
) -> Embedded:
    """Build (or find in the cache) the embedded base and its experts.

    The base is keyed by the model shape, pretraining and the tasks' data; the
    experts additionally by the expert recipe, so changing how experts are trained
    reuses the base. Each entry is built in a temporary sibling and renamed into
    place: an interrupted build never leaves a half-written entry behind. With
    ``shipped``, an entry missing from the cache that ships with cycleqd under the same key
    (:data:`SHIPPED`: the demo's) is copied into it instead of being trained.
    """
    root = Path(root) if root is not None else cache_root()
    task_keys = [_task_key(t) for t in tasks]
    base_meta = {
        "model": asdict(recipe.model),
        "pretrain": asdict(recipe.pretrain),
        "pretrain_weights": recipe.pretrain_weights,
        "pretrain_examples": recipe.pretrain_examples,
        "tasks": task_keys,
    }
    base_key = _key(base_meta)

    def make_base(tmp: Path) -> dict:
        if shipped and _shipped(f"base-{base_key}", tmp) is not None:
            return base_meta
        build_base(recipe, tasks, tmp)
        return base_meta

    base = build_atomically(root / f"base-{base_key}", make_base)
    return Embedded(
        base=base,
        experts=ensure_experts(base, base_key, recipe.expert, recipe.expert_examples, tasks, root, shipped),
    )


def ensure_experts(
    base: Path,
    base_key: str,
    expert: ExpertRecipe,
    examples: int,
    tasks: Sequence,
    root: Path,
    shipped: bool = False,
) -> dict[str, Path]:
    """Build (or find in the cache) one expert per task fine-tuned from ``base``; task name →
    directory (``shipped``: copied from the entry that ships under the same key, if any)."""
    meta = {
        "base": base_key,
        "expert": asdict(expert),
        "expert_examples": examples,
        "tasks": [_task_key(t) for t in tasks],
    }

    def make_experts(tmp: Path) -> dict:
        if shipped and _shipped(f"experts-{_key(meta)}", tmp) is not None:
            return meta
        for task in tasks:
            build_expert(expert, examples, base, task, tmp / task.name)
        return meta

    experts = build_atomically(Path(root) / f"experts-{_key(meta)}", make_experts)
    return {t.name: experts / t.name for t in tasks}
