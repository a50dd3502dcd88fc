"""Models: the character tokenizer, loading base models and experts, and the
batched greedy :class:`HFTextModel` that task evaluators see."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

# Per-shard progress bars on every load of a candidate drown the run's own progress.
hf_logging.disable_progress_bar()

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII plus newline.

    Built from the ``tokenizers`` library so it saves as ``tokenizer.json`` and
    ``AutoTokenizer.from_pretrained`` loads it without any custom code.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = list(dict.fromkeys(string.printable[:95] + "\n"))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        padding_side="left",
    )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
    """Load a causal LM and its tokenizer from a transformers directory."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model path {str(path)!r} has no config.json: not a transformers model directory")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.to(device or default_device()).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


class HFTextModel:
    """Batched greedy generation with a transformers model (left padding, KV cache).

    The model object stays resident; the evolution loop writes candidate weights
    into it in place between calls.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        batch_size: Prompts per forward batch.
        add_bos: Prepend the BOS token (what the embedded model was trained with).
    """

    def __init__(
        self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, *, batch_size: int = 256, add_bos: bool = True
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.add_bos = add_bos

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        # Single-token stop strings become EOS ids, so generation ends early on them.
        eos_ids = [tok.eos_token_id]
        for s in stop:
            ids = tok.encode(s, add_special_tokens=False)
            if len(ids) == 1:
                eos_ids.append(ids[0])
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: dict[int, str] = {}
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            texts = [(tok.bos_token if self.add_bos else "") + prompts[i] for i in idx]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = self.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos_ids,
                pad_token_id=tok.pad_token_id,
                use_cache=True,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            for i, row in zip(idx, tok.batch_decode(new, skip_special_tokens=True)):
                for s in stop:
                    row = row.split(s, 1)[0]
                results[i] = row
        return [results[i] for i in range(len(prompts))]
