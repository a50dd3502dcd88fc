"""Fine-tuning experts from a base model: full weights (a chosen subset) or a peft
LoRA adapter, on one task's training pairs, with the loss on the answer only."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cycleqd.checks import check_fields, require
from cycleqd.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Training:
    """One training phase: AdamW with linear warm-up and cosine decay."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)
        for key in ("steps", "batch_size"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.warmup >= 0, "warmup", f"must be >= 0, got {self.warmup}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")


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

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.kind in ("full", "lora"), "kind", f"must be 'full' or 'lora', got {self.kind!r}")
        if self.kind == "full":
            require(len(self.trainable) > 0, "trainable", "must name at least one parameter-name fragment")
        else:
            require(len(self.target_modules) > 0, "target_modules", "must name at least one module")
            require(self.lora_rank >= 1, "lora_rank", f"must be >= 1, got {self.lora_rank}")
            require(self.lora_alpha > 0, "lora_alpha", f"must be > 0, got {self.lora_alpha}")
        if isinstance(self.training, dict):
            try:
                object.__setattr__(self, "training", Training(**self.training))
            except ConfigError as e:
                raise e.under("training") from None
            except TypeError as e:
                raise ConfigError("training", str(e)) from None


def _seq_ids(tokenizer, prompt: str, answer: str) -> tuple[list[int], int]:
    r"""Token ids of ``[bos] prompt answer \n`` and how many of them belong to the prompt.

    Prompt and answer are tokenised apart, as generation sees them: the model is
    trained to continue exactly the prompt tokens it will be given.
    """
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    head += tokenizer.encode(prompt, add_special_tokens=False)
    tail = tokenizer.encode(answer + "\n", add_special_tokens=False)
    return head + tail, len(head)


def _batches(tokenizer, pairs: list[tuple[str, str]], batch_size: int, rng: random.Random, answer_only: bool):
    """Yield (input_ids, attention_mask, labels) batches forever, reshuffling each epoch.

    With fewer pairs than ``batch_size`` every batch holds all of them (an epoch that
    yields nothing would loop forever).
    """
    if not pairs:
        raise ValueError("no training pairs: nothing to fine-tune on")
    batch_size = min(batch_size, len(pairs))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    while True:
        rng.shuffle(pairs)
        for i in range(0, len(pairs) - batch_size + 1, batch_size):
            seqs = [_seq_ids(tokenizer, p, a) for p, a in pairs[i : i + batch_size]]
            width = max(len(ids) for ids, _ in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for row, (s, n_prompt) in enumerate(seqs):
                ids[row, : len(s)] = torch.tensor(s)
                mask[row, : len(s)] = 1
                start = n_prompt if answer_only else 0
                labels[row, start : len(s)] = ids[row, start : len(s)]
            yield ids, mask, labels


def train(
    model, tokenizer, pairs: list[tuple[str, str]], cfg: Training, params, *, answer_only: bool, desc: str = "training"
) -> float:
    """Train ``params`` of ``model`` on ``pairs``; returns the final loss (progress shown as ``desc``)."""
    from cycleqd.progress import Progress

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
    with Progress(desc, cfg.steps, "step") as progress:
        for _ in range(cfg.steps):
            ids, mask, labels = next(batches)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            progress.update()
    model.eval()
    return float(loss.detach())


def build_expert(ex: ExpertRecipe, examples: int, base_dir: Path, task, out: Path) -> None:
    """Fine-tune one expert for ``task`` from the model in ``base_dir`` and save it to ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    pairs = task.train_examples(examples, ex.training.seed + 1)
    t0 = time.perf_counter()
    if ex.kind == "full":
        for name, p in model.named_parameters():
            p.requires_grad_(any(s in name for s in ex.trainable))
        params = [p for p in model.parameters() if p.requires_grad]
        loss = train(model, tokenizer, pairs, ex.training, params, answer_only=True, desc=f"expert {task.name}")
        for p in model.parameters():
            p.requires_grad_(True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    elif ex.kind == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=ex.lora_rank, lora_alpha=ex.lora_alpha, target_modules=list(ex.target_modules), lora_dropout=0.0
        )
        model = get_peft_model(model, cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        loss = train(model, tokenizer, pairs, ex.training, params, answer_only=True, desc=f"expert {task.name} (LoRA)")
        model.save_pretrained(out)
    else:
        raise ValueError(f"expert.kind must be 'full' or 'lora', got {ex.kind!r}")
    log.info("expert %s: loss %.3f in %.0fs", task.name, loss, time.perf_counter() - t0)
