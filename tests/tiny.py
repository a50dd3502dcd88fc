"""A tiny embedded setup (seconds to build) shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from cycleqd.run.configs import CONF_DIR

TASKS = ("addition", "reversal", "sorting")


def tiny_overrides(cache: Path, generations: int = 4, tasks: tuple[str, ...] = TASKS) -> list[str]:
    out = [
        f"model.cache_dir={cache}",
        "model.shape.hidden_size=32",
        "model.shape.intermediate_size=64",
        "model.shape.num_hidden_layers=2",
        "model.shape.num_attention_heads=2",
        "model.pretrain.steps=40",
        "model.pretrain_examples=3000",
        "experts.examples=600",
        "experts.recipe.training.steps=15",
        f"generations={generations}",
        "checkpoint_every=2",
        "quiet=true",
        "threads=1",
        "baselines.task_arithmetic.scales=[0.5,1.0]",
    ]
    for t in tasks:
        out += [f"task.{t}.n_opt=24", f"task.{t}.n_test=24"]
    return out


def compose_tiny(cache: Path, *extra: str, generations: int = 4):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=tiny_overrides(cache, generations) + list(extra))


def lively_overrides(cache: Path, generations: int = 24) -> list[str]:
    """The tiny setup trained a little longer, with partial-credit tasks and bold operators:
    its archives keep replacing and evicting elites (what crash and resume tests need)."""
    out = tiny_overrides(cache, generations)
    out = [
        o
        for o in out
        if not o.startswith(("model.pretrain.steps", "experts.recipe.training.steps", "checkpoint_every"))
    ]
    out += [
        "model.pretrain.steps=150",
        "experts.recipe.training.steps=40",
        "experts.recipe.training.lr=3e-3",
        "checkpoint_every=5",
        "crossover=cycleqd_layer",
        "crossover.sigma=0.3",
        "mutation.scale=1.0",
        "baselines.ties.scales=[1.0]",
        "baselines.dare_linear.scales=[]",
        "baselines.dare_ties.scales=[]",
        "baselines.breadcrumbs.scales=[]",
    ]
    for t, cls in (("addition", "PartialAddition"), ("reversal", "PartialReversal"), ("sorting", "PartialSorting")):
        out += [
            f"task.{t}._target_=tests.plugins.partial_tasks.{cls}",
            f"task.{t}.measure.low=0.0",
            f"task.{t}.measure.high=1.0",
        ]
    return out


def compose_lively(cache: Path, *extra: str, generations: int = 10):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=lively_overrides(cache, generations) + list(extra))
