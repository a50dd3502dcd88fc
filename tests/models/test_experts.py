"""Experts are checked against the base model before any child is made."""

from __future__ import annotations

import pytest
import torch

from cycleqd.core.taskvector import LowRank, TaskVector
from cycleqd.errors import ConfigError
from cycleqd.models.experts import check_against

PARAMS = {"model.layers.0.mlp.up_proj.weight": torch.zeros(8, 4), "model.norm.weight": torch.zeros(4)}


def test_matching_experts_pass():
    check_against(
        TaskVector({"model.layers.0.mlp.up_proj.weight": LowRank(torch.ones(8, 2), torch.ones(2, 4))}),
        PARAMS,
        "experts.paths.a",
    )
    check_against(TaskVector({"model.norm.weight": torch.ones(4)}), PARAMS, "experts.paths.a")


@pytest.mark.parametrize(
    "tv,needle",
    [
        (
            TaskVector({"model.layers.0.mlp.up_proj.weight": torch.ones(4, 8)}),
            r"experts.paths.a: delta of 'model.layers.0.mlp.up_proj.weight' has shape \(4, 8\), the base model's parameter \(8, 4\)",
        ),
        (
            TaskVector({"model.layers.0.mlp.up_proj.weight": LowRank(torch.ones(16, 2), torch.ones(2, 4))}),
            r"has shape \(16, 4\)",
        ),
        (
            TaskVector({"model.layers.9.mlp.up_proj.weight": torch.ones(8, 4)}),
            "touches 'model.layers.9.mlp.up_proj.weight', which the base model does not have",
        ),
        (TaskVector({}), "identical to the base model"),
    ],
)
def test_experts_of_another_shape_are_named(tv, needle):
    with pytest.raises(ConfigError, match=needle):
        check_against(tv, PARAMS, "experts.paths.a")
