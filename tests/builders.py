"""Builders the unit tests share: toy experts of a two-layer model and their genome basis."""

from __future__ import annotations

import torch

from cycleqd.core.genome import Basis, ExpertBasis
from cycleqd.core.mutation import expert_svds
from cycleqd.core.taskvector import LowRank, TaskVector

TASKS = ["a", "b", "c"]
SHAPES = {
    "model.embed_tokens.weight": (12, 6),
    "model.layers.0.self_attn.q_proj.weight": (6, 6),
    "model.layers.0.mlp.up_proj.weight": (10, 6),
    "model.layers.0.post_attention_layernorm.weight": (6,),
    "model.layers.1.self_attn.q_proj.weight": (6, 6),
    "model.layers.1.mlp.down_proj.weight": (6, 10),
}


def toy_experts(kind: str) -> dict[str, TaskVector]:
    """Three experts over SHAPES, dense or (kind="lora") factored, seeded."""
    out = {}
    for k, t in enumerate(TASKS):
        g = torch.Generator().manual_seed(10 + k)
        deltas = {}
        for name, shape in SHAPES.items():
            if kind == "lora" and len(shape) == 2 and "embed" not in name:
                deltas[name] = LowRank(
                    torch.randn(shape[0], 3, generator=g) * 0.3, torch.randn(3, shape[1], generator=g) * 0.3
                )
            else:
                deltas[name] = torch.randn(shape, generator=g) * 0.1
        out[t] = TaskVector(deltas)
    return out


def toy_setup(kind: str):
    """The toy experts, their SVDs and their genome basis."""
    experts = toy_experts(kind)
    svds = {t: expert_svds(tv) for t, tv in experts.items()}
    basis = Basis(TASKS, {t: ExpertBasis.of(experts[t], svds[t]) for t in TASKS})
    return experts, svds, basis
