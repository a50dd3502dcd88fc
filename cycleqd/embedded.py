"""The embedded default: a tiny Llama pretrained on the demo tasks' text, and one
expert per task fine-tuned from it. Built once, cached on disk under a key that is
the hash of everything that made it; a changed recipe rebuilds, the same one reuses.

    python -m cycleqd.embedded        # build (or find) the default and print the expert matrix
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from cycleqd.models import char_tokenizer

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


@dataclass(frozen=True)
class Training:
    """One training phase: AdamW with linear warm-up and cosine decay."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class ExpertRecipe:
    """How each expert is fine-tuned from the base.

    ``kind: full`` trains the parameters whose names contain one of ``trainable``
    (MLP-only by default: gentle, partial fine-tunes keep merges working);
    ``kind: lora`` trains a peft LoRA adapter on the modules in ``target_modules``.
    """

    kind: str = "full"
    trainable: tuple[str, ...] = ("mlp",)
    target_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    lora_rank: int = 8
    lora_alpha: int = 16
    training: Training = field(default_factory=lambda: Training(steps=200, lr=5e-4, warmup=10))


def cache_root() -> Path:
    return Path(os.environ.get("CYCLEQD_CACHE", Path.home() / ".cache" / "cycleqd"))


def _seq(prompt: str, answer: str) -> str:
    return prompt + answer + "\n"


def _batches(tokenizer, pairs: list[tuple[str, str]], batch_size: int, rng: random.Random, answer_only: bool):
    """Yield (input_ids, attention_mask, labels) batches forever, reshuffling each epoch."""
    while True:
        rng.shuffle(pairs)
        for i in range(0, len(pairs) - batch_size + 1, batch_size):
            chunk = pairs[i : i + batch_size]
            texts = [tokenizer.bos_token + _seq(p, a) for p, a in chunk]
            tokenizer.padding_side = "right"
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            tokenizer.padding_side = "left"
            labels = enc["input_ids"].clone()
            labels[enc["attention_mask"] == 0] = -100
            if answer_only:
                for row, (p, _) in enumerate(chunk):
                    labels[row, : 1 + len(p)] = -100
            yield enc["input_ids"], enc["attention_mask"], labels


def train(model, tokenizer, pairs: list[tuple[str, str]], cfg: Training, params, *, answer_only: bool) -> float:
    """Train ``params`` of ``model`` on ``pairs``; returns the final loss."""
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    batches = _batches(tokenizer, list(pairs), cfg.batch_size, random.Random(cfg.seed), answer_only)
    loss = torch.tensor(float("nan"))
    for _ in range(cfg.steps):
        ids, mask, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return float(loss.detach())


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
    # The descriptor axis does not change the training data; everything else can
    # (training examples exclude the evaluation splits' prompts, so their sizes count).
    d = {k: v for k, v in vars(task).items() if not k.startswith("_") and k != "measure"}
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
    loss = train(model, tokenizer, pairs, recipe.pretrain, list(model.parameters()), answer_only=True)
    log.info("pretrained base: loss %.3f in %.0fs", loss, time.perf_counter() - t0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_expert(recipe: EmbeddedRecipe, base_dir: Path, task, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    ex = recipe.expert
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    tokenizer = char_tokenizer()
    pairs = task.train_examples(recipe.expert_examples, ex.training.seed + 1)
    t0 = time.perf_counter()
    if ex.kind == "full":
        for name, p in model.named_parameters():
            p.requires_grad_(any(s in name for s in ex.trainable))
        params = [p for p in model.parameters() if p.requires_grad]
        loss = train(model, tokenizer, pairs, ex.training, params, answer_only=True)
        for p in model.parameters():
            p.requires_grad_(True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    elif ex.kind == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=ex.lora_rank, lora_alpha=ex.lora_alpha, target_modules=list(ex.target_modules), lora_dropout=0.0)
        model = get_peft_model(model, cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        loss = train(model, tokenizer, pairs, ex.training, params, answer_only=True)
        model.save_pretrained(out)
    else:
        raise ValueError(f"expert.kind must be 'full' or 'lora', got {ex.kind!r}")
    log.info("expert %s: loss %.3f in %.0fs", task.name, loss, time.perf_counter() - t0)


def _key(obj) -> str:
    blob = json.dumps({**obj, "version": RECIPE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _build_atomically(target: Path, build) -> Path:
    """Run ``build(tmp_dir)`` and rename the result to ``target``; reuse ``target`` if complete."""
    if (target / "recipe.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        meta = build(tmp)
        (tmp / "recipe.json").write_text(json.dumps(meta, indent=2, default=str))
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same build first
            if not (target / "recipe.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(frozen=True)
class Embedded:
    """Where a built embedded default lives: the base model and one expert per task."""

    base: Path
    experts: dict[str, Path]


def ensure_embedded(recipe: EmbeddedRecipe, tasks: Sequence, root: Path | None = None) -> Embedded:
    """Build (or find in the cache) the embedded base and its experts.

    The base is keyed by the model shape, pretraining and the tasks' data; the
    experts additionally by the expert recipe, so changing how experts are trained
    reuses the base. Each entry is built in a temporary sibling and renamed into
    place: an interrupted build never leaves a half-written entry behind.
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
        build_base(recipe, tasks, tmp)
        return base_meta

    base = _build_atomically(root / f"base-{base_key}", make_base)
    expert_meta = {"base": base_key, "expert": asdict(recipe.expert), "expert_examples": recipe.expert_examples, "tasks": task_keys}

    def make_experts(tmp: Path) -> dict:
        for task in tasks:
            build_expert(recipe, base, task, tmp / task.name)
        return expert_meta

    experts = _build_atomically(root / f"experts-{_key(expert_meta)}", make_experts)
    return Embedded(base=base, experts={t.name: experts / t.name for t in tasks})
