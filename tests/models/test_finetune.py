"""Expert fine-tuning: finite loops on small data, recipes checked at construction."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from cycleqd.errors import ConfigError
from cycleqd.models.finetune import ExpertRecipe, Training, _batches, train
from cycleqd.models.loading import char_tokenizer


def _tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg), tok


def test_fewer_examples_than_the_batch_size_still_trains():
    model, tok = _tiny_model()
    pairs = [("1+1=", "2"), ("2+2=", "4"), ("3+4=", "7")]
    batch = next(_batches(tok, list(pairs), 64, random.Random(0), answer_only=True))
    assert batch[0].shape[0] == 3  # every pair, in one batch
    before = [p.detach().clone() for p in model.parameters()]
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(
            loss=train(model, tok, pairs, Training(steps=3, batch_size=64), list(model.parameters()), answer_only=True)
        ),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "training on 3 examples with batch_size 64 never finished"
    assert torch.isfinite(torch.tensor(result["loss"]))
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_no_examples_is_an_error_not_a_hang():
    _, tok = _tiny_model()
    with pytest.raises(ValueError, match="no training pairs"):
        next(_batches(tok, [], 8, random.Random(0), answer_only=True))


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"steps": 0}, "steps: must be >= 1"),
        ({"batch_size": 0}, "batch_size: must be >= 1"),
        ({"lr": -1.0}, "lr: must be > 0"),
        ({"lr": "fast"}, "lr: must be a finite number"),
    ],
)
def test_training_settings_are_checked(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        Training(**kwargs)


def test_expert_recipe_names_nested_fields():
    with pytest.raises(ConfigError, match=r"training.warmup: must be >= 0, got -1"):
        ExpertRecipe(training={"warmup": -1})
    with pytest.raises(ConfigError, match="kind: must be 'full' or 'lora'"):
        ExpertRecipe(kind="qlora")
