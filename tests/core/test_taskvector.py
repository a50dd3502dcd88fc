"""Unit tests of cycleqd.core.taskvector: TaskVector, LowRank, linear_combination, storage, peft import."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from cycleqd.core.taskvector import LowRank, TaskVector, as_dense, concat_lowrank, linear_combination


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _lowrank(m: int, n: int, r: int, gen: torch.Generator) -> LowRank:
    return LowRank(torch.randn(m, r, generator=gen), torch.randn(r, n, generator=gen))


# -- LowRank -----------------------------------------------------------------------


def test_lowrank_shape_rank_dense():
    g = _gen()
    B, A = torch.randn(5, 2, generator=g), torch.randn(2, 7, generator=g)
    lr = LowRank(B, A)
    assert lr.shape == torch.Size((5, 7))
    assert lr.rank == 2
    torch.testing.assert_close(lr.dense(), B @ A)
    torch.testing.assert_close(lr.scale(-3.0).dense(), -3.0 * (B @ A))


@pytest.mark.parametrize(
    "B_shape, A_shape",
    [((5, 2), (3, 7)), ((5,), (1, 7)), ((5, 2), (2, 7, 1))],
)
def test_lowrank_shape_validation(B_shape, A_shape):
    with pytest.raises(ValueError, match=r"LowRank needs B \(out, r\) and A \(r, in\)"):
        LowRank(torch.zeros(B_shape), torch.zeros(A_shape))


def test_concat_lowrank_sums_products():
    g = _gen(1)
    terms = [_lowrank(4, 6, r, g) for r in (1, 2, 3)]
    c = concat_lowrank(terms)
    assert c.rank == 6
    torch.testing.assert_close(c.dense(), sum(t.B @ t.A for t in terms))


# -- between ------------------------------------------------------------------------


def test_between_keeps_changed_float_params_only():
    g = _gen(2)
    base = {
        "w": torch.randn(3, 4, generator=g),
        "same": torch.randn(5, generator=g),
        "ids": torch.arange(6),
        "bias": torch.randn(4, generator=g),
    }
    tuned = {
        "w": base["w"] + torch.randn(3, 4, generator=g),
        "same": base["same"].clone(),
        "ids": base["ids"] + 1,  # changed, but not floating point
        "bias": base["bias"] * 2,
    }
    tv = TaskVector.between(base, tuned)
    assert set(tv) == {"w", "bias"}
    torch.testing.assert_close(tv["w"], tuned["w"] - base["w"], rtol=0, atol=0)
    torch.testing.assert_close(tv["bias"], base["bias"], rtol=0, atol=0)
    assert not tv.is_factored


def test_between_upcasts_half_precision():
    base = {"w": torch.tensor([1.0, 2.0], dtype=torch.float16)}
    tuned = {"w": torch.tensor([1.5, 2.0], dtype=torch.float16)}
    tv = TaskVector.between(base, tuned)
    assert tv["w"].dtype == torch.float32
    torch.testing.assert_close(tv["w"], torch.tensor([0.5, 0.0]))


def test_between_shape_mismatch_names_parameter():
    base = {"layer.weight": torch.zeros(3, 4)}
    tuned = {"layer.weight": torch.zeros(4, 3)}
    with pytest.raises(ValueError, match=r"'layer\.weight'"):
        TaskVector.between(base, tuned)


def test_between_extra_tuned_parameter_is_error():
    with pytest.raises(ValueError, match="extra"):
        TaskVector.between({"a": torch.zeros(2)}, {"a": torch.ones(2), "extra": torch.ones(2)})


# -- TaskVector helpers -------------------------------------------------------------


def test_numel_scale_dense_and_is_factored():
    g = _gen(3)
    lr = _lowrank(6, 5, 2, g)
    d = torch.randn(4, 3, generator=g)
    tv = TaskVector({"f": lr, "d": d})
    assert tv.is_factored
    assert tv.numel() == 6 * 2 + 2 * 5 + 12
    s = tv.scale(0.5)
    assert isinstance(s["f"], LowRank)
    torch.testing.assert_close(s["f"].dense(), 0.5 * lr.dense())
    torch.testing.assert_close(s["d"], 0.5 * d)
    dn = tv.dense()
    assert not dn.is_factored
    torch.testing.assert_close(dn["f"], lr.B @ lr.A)
    assert len(tv) == 2 and set(tv) == {"f", "d"}


# -- linear_combination --------------------------------------------------------------


def test_linear_combination_dense_matches_hand_sum():
    g = _gen(4)
    v = [TaskVector({"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g)}) for _ in range(3)]
    w = [0.2, -1.5, 0.7]
    out = linear_combination(v, w)
    assert set(out) == {"a", "b"}
    for name in ("a", "b"):
        expected = 0.2 * v[0][name] + (-1.5) * v[1][name] + 0.7 * v[2][name]
        torch.testing.assert_close(out[name], expected)


def test_linear_combination_missing_param_counts_as_zero():
    v1 = TaskVector({"a": torch.ones(2, 2), "only1": torch.full((3,), 2.0)})
    v2 = TaskVector({"a": torch.full((2, 2), 3.0)})
    out = linear_combination([v1, v2], [0.5, 2.0])
    torch.testing.assert_close(out["a"], torch.full((2, 2), 0.5 + 6.0))
    torch.testing.assert_close(out["only1"], torch.full((3,), 1.0))


def test_linear_combination_factored_stays_lowrank():
    g = _gen(5)
    ranks = (1, 2, 3)
    v = [TaskVector({"w": _lowrank(6, 4, r, g)}) for r in ranks]
    w = [0.3, -0.4, 1.1]
    out = linear_combination(v, w)
    assert isinstance(out["w"], LowRank)
    assert out["w"].rank == sum(ranks)
    expected = sum(wi * (vi["w"].B @ vi["w"].A) for wi, vi in zip(w, v))
    torch.testing.assert_close(out["w"].dense(), expected)


def test_linear_combination_mixed_densifies():
    g = _gen(6)
    lr = _lowrank(4, 3, 2, g)
    d = torch.randn(4, 3, generator=g)
    out = linear_combination([TaskVector({"w": lr}), TaskVector({"w": d})], [2.0, -1.0])
    assert isinstance(out["w"], torch.Tensor)
    torch.testing.assert_close(out["w"], 2.0 * (lr.B @ lr.A) - d)


def test_linear_combination_per_parameter_weights():
    g = _gen(7)
    v = [TaskVector({"x": torch.randn(3, generator=g), "y": _lowrank(3, 3, 1, g)}) for _ in range(2)]
    w = [{"x": 0.25, "y": 2.0}, {"x": 0.75, "y": -1.0}]
    out = linear_combination(v, w)
    torch.testing.assert_close(out["x"], 0.25 * v[0]["x"] + 0.75 * v[1]["x"])
    torch.testing.assert_close(out["y"].dense(), 2.0 * v[0]["y"].dense() - v[1]["y"].dense())


def test_linear_combination_length_mismatch():
    with pytest.raises(ValueError, match="2 task vectors but 1 weights"):
        linear_combination([TaskVector({}), TaskVector({})], [1.0])


# -- save / load -------------------------------------------------------------------


def test_save_load_round_trip_dense(tmp_path):
    g = _gen(8)
    tv = TaskVector({"a.weight": torch.randn(3, 4, generator=g), "a.bias": torch.randn(4, generator=g)})
    path = tmp_path / "sub" / "tv.safetensors"
    tv.save(path, metadata={"id": "7"})
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == {"a.weight", "a.bias"}
        assert f.metadata() == {"id": "7"}
    back = TaskVector.load(path)
    assert set(back) == set(tv)
    for k in tv:
        assert torch.equal(back[k], tv[k])
    # no temp files left behind
    assert [p.name for p in path.parent.iterdir()] == ["tv.safetensors"]


def test_save_load_round_trip_factored(tmp_path):
    g = _gen(9)
    lr = _lowrank(5, 6, 2, g)
    d = torch.randn(2, 2, generator=g)
    tv = TaskVector({"m.q_proj.weight": lr, "m.norm.weight": d})
    path = tmp_path / "f.safetensors"
    tv.save(path)
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == {"m.q_proj.weight::B", "m.q_proj.weight::A", "m.norm.weight"}
        assert torch.equal(f.get_tensor("m.q_proj.weight::B"), lr.B)
        assert torch.equal(f.get_tensor("m.q_proj.weight::A"), lr.A)
    back = TaskVector.load(path)
    assert set(back) == set(tv)
    assert isinstance(back["m.q_proj.weight"], LowRank)
    assert torch.equal(back["m.q_proj.weight"].B, lr.B)
    assert torch.equal(back["m.q_proj.weight"].A, lr.A)
    assert torch.equal(back["m.norm.weight"], d)


# -- from_peft ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(cfg)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"], lora_dropout=0.0, init_lora_weights=False
    )
    peft_model = get_peft_model(model, lora)
    adapter_dir = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(adapter_dir)
    merged = {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
    return adapter_dir, base, merged


def test_from_peft_matches_merged_weights(peft_adapter):
    adapter_dir, base, merged = peft_adapter
    tv = TaskVector.from_peft(adapter_dir)
    expected_names = {f"model.layers.{i}.{m}.weight" for i in range(2) for m in ("self_attn.q_proj", "mlp.up_proj")}
    assert set(tv) == expected_names
    assert tv.is_factored
    for name in expected_names:
        d = tv[name]
        assert isinstance(d, LowRank)
        assert d.rank == 4
        assert d.shape == base[name].shape
        torch.testing.assert_close(d.dense(), merged[name] - base[name], atol=1e-6, rtol=0)
    # every parameter the merge changed is in the task vector
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed == expected_names
    # the dense task vector of the merge is the same thing
    between = TaskVector.between(base, merged)
    for name in expected_names:
        torch.testing.assert_close(as_dense(tv[name]), between[name], atol=1e-6, rtol=0)


def test_from_peft_rejects_non_adapter_dirs(tmp_path, peft_adapter):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        TaskVector.from_peft(tmp_path)
    adapter_dir, _, _ = peft_adapter
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    bad = tmp_path / "ia3"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    with pytest.raises(ValueError, match="IA3"):
        TaskVector.from_peft(bad)


def _peft_roundtrip(tmp_path, seed: int, **patterns):
    """A tiny Llama with a saved LoRA adapter: (task vector read back, merged weights, base weights)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(cfg)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "up_proj"],
        lora_dropout=0.0,
        init_lora_weights=False,
        **patterns,
    )
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(tmp_path)
    merged = peft_model.merge_and_unload().state_dict()
    return TaskVector.from_peft(tmp_path), merged, base


def test_from_peft_rank_and_alpha_patterns(tmp_path):
    """Per-module rank/alpha overrides give the per-module scale alpha_m / r_m."""
    tv, merged, base = _peft_roundtrip(
        tmp_path, 1, rank_pattern={"model.layers.1.self_attn.q_proj": 2}, alpha_pattern={"up_proj": 3}
    )
    assert tv["model.layers.1.self_attn.q_proj.weight"].rank == 2
    assert tv["model.layers.0.self_attn.q_proj.weight"].rank == 4
    for name, d in tv.items():
        torch.testing.assert_close(d.dense(), merged[name] - base[name], atol=1e-6, rtol=0)


def test_from_peft_regex_rank_pattern(tmp_path):
    tv, merged, base = _peft_roundtrip(tmp_path, 2, rank_pattern={"^model.layers.1.self_attn.q_proj": 2})
    assert tv["model.layers.1.self_attn.q_proj.weight"].rank == 2  # peft did apply the pattern
    for name, d in tv.items():
        torch.testing.assert_close(d.dense(), merged[name] - base[name], atol=1e-6, rtol=0)
