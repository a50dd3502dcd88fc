"""What names the flat layout's modules (cycleqd 0.1) still works: a config's ``_target_``
and a checkpoint written before the modules moved into subpackages."""

from __future__ import annotations

import hashlib
import logging
import pickle

from omegaconf import OmegaConf

from cycleqd.core.elite import EliteRecord
from cycleqd.core.evolve import Candidate
from cycleqd.run import checkpoint
from cycleqd.run.components import instantiate_node
from cycleqd.run.moved import MODULES, new_path, upgrade_targets


def test_every_old_module_names_a_module_that_exists():
    import importlib

    for old, new in MODULES.items():
        assert importlib.import_module(new).__name__ == new, old


def test_old_targets_are_rewritten_in_place_with_a_warning_naming_the_key(caplog):
    cfg = OmegaConf.create({
        "crossover": {"_target_": "cycleqd.crossover.MethodCrossover", "merge": {"_target_": "cycleqd.merging.Merge", "method": "ties"}},
        "task": {"addition": {"_target_": "tasks.addition.Addition"}, "mine": {"_target_": "tasks.mine.Mine"}},
        "mutation": {"_target_": "cycleqd.core.mutation.SVDMutation"},
    })  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="cycleqd.run.moved"):
        upgrade_targets(cfg)
    assert cfg.crossover._target_ == "cycleqd.core.crossover.MethodCrossover"
    assert cfg.crossover.merge._target_ == "cycleqd.core.merging.Merge"
    assert cfg.task.addition._target_ == "cycleqd.tasks.addition.Addition"
    assert cfg.task.mine._target_ == "tasks.mine.Mine"  # a user's own package called tasks is theirs
    assert cfg.mutation._target_ == "cycleqd.core.mutation.SVDMutation"
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3
    assert any(
        m.startswith("crossover.merge._target_: cycleqd.merging.Merge has moved to cycleqd.core.merging.Merge")
        for m in warned
    )
    merge = instantiate_node(cfg.crossover.merge, "crossover.merge")
    assert type(merge).__module__ == "cycleqd.core.merging"


def test_names_that_left_their_module_follow_it():
    assert new_path("cycleqd.store.EliteRecord") == "cycleqd.core.elite.EliteRecord"
    assert new_path("cycleqd.store.EliteStore") == "cycleqd.run.store.EliteStore"
    assert new_path("cycleqd.select.select_elites") == "cycleqd.analysis.selection.select_elites"
    assert new_path("cycleqd.select.aggregate_best") == "cycleqd.core.aggregation.aggregate_best"


def test_a_checkpoint_pickled_with_the_old_module_paths_loads(tmp_path):
    state = {
        "pending": [Candidate(3, 1, "addition", (0, 1), None)],
        "record": EliteRecord(3, 1, "child:addition", (0, 1), {"addition": 0.5}),
    }
    payload = pickle.dumps({"state": state, "elites": {}}, protocol=0)
    # protocol 0 names each class as "module\nname": write what the flat layout wrote
    old = payload.replace(b"cycleqd.core.evolve\n", b"cycleqd.evolve\n").replace(
        b"cycleqd.core.elite\nEliteRecord", b"cycleqd.store\nEliteRecord"
    )
    assert old != payload and b"cycleqd.core" not in old
    path = checkpoint.checkpoint_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(checkpoint.MAGIC + b" 1 %s\n" % (hashlib.sha256(old).hexdigest().encode()) + old)
    loaded = checkpoint.load(tmp_path)
    assert loaded.state["pending"] == state["pending"] and type(loaded.state["pending"][0]) is Candidate
    assert loaded.state["record"] == state["record"]
