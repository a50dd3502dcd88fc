"""The demo's base and experts ship with cycleqd: a run of the demo's recipe copies them into
its cache and trains nothing; model.shipped=false, or any other recipe, trains them here."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cycleqd.models import embedded
from cycleqd.models.providers import locate
from cycleqd.run.components import build
from cycleqd.run.configs import CONF_DIR


class Trained(Exception):
    pass


def _refuse_training(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise Trained

    monkeypatch.setattr(embedded, "build_base", refuse)
    monkeypatch.setattr(embedded, "build_expert", refuse)


def _locate(cache: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=demo", f"model.cache_dir={cache}", *overrides])
    c = build(cfg)
    return locate(c.model, c.experts, c.tasks)


def test_the_demo_recipe_takes_the_shipped_weights_and_trains_nothing(tmp_path: Path, monkeypatch):
    _refuse_training(monkeypatch)
    base, experts, kind = _locate(tmp_path)
    assert base.parent == tmp_path and kind == "full"  # copied into the run's cache, as a build would be
    shipped = sorted(p.name for p in embedded.SHIPPED.iterdir())
    assert shipped == sorted(p.name for p in tmp_path.iterdir()), (
        "the demo's recipe no longer matches the weights that ship"
    )
    for entry in shipped:
        for f in (embedded.SHIPPED / entry).rglob("*"):
            if f.is_file():
                assert (tmp_path / entry / f.relative_to(embedded.SHIPPED / entry)).read_bytes() == f.read_bytes()
    assert set(experts) == {"addition", "reversal", "sorting"}
    assert all((d / "model.safetensors").is_file() for d in experts.values())


@pytest.mark.parametrize("overrides", [["model.shipped=false"], ["build=1"], ["experts.recipe.training.steps=299"]])
def test_another_recipe_or_shipped_false_trains_here(tmp_path: Path, monkeypatch, overrides: list[str]):
    _refuse_training(monkeypatch)
    with pytest.raises(Trained):
        _locate(tmp_path, *overrides)


def test_shipped_must_be_a_boolean(tmp_path: Path):
    with pytest.raises(Exception, match="model.shipped: must be true or false, got 'yes'"):
        _locate(tmp_path, "model.shipped=yes")
