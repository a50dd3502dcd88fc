"""Where the modules of cycleqd's flat layout (0.1) live now, so that what names them still
works: a config's ``_target_`` (``cycleqd.crossover.MergeCrossover``, ``tasks.addition.Addition``)
and a checkpoint written before the move.

A config's old path is rewritten to the new one with a warning naming the key; nothing else
reads this table.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# old module → new module
MODULES = {
    "cycleqd.archives": "cycleqd.core.archives",
    "cycleqd.baselines": "cycleqd.core.baselines",
    "cycleqd.crossover": "cycleqd.core.crossover",
    "cycleqd.evolve": "cycleqd.core.evolve",
    "cycleqd.genome": "cycleqd.core.genome",
    "cycleqd.merging": "cycleqd.core.merging",
    "cycleqd.mutation": "cycleqd.core.mutation",
    "cycleqd.operators": "cycleqd.core.operators",
    "cycleqd.searches": "cycleqd.core.searches",
    "cycleqd.select": "cycleqd.core.aggregation",
    "cycleqd.taskvector": "cycleqd.core.taskvector",
    "cycleqd.evaluation": "cycleqd.evaluation.scoring",
    "cycleqd.pool": "cycleqd.evaluation.pool",
    "cycleqd.sandbox": "cycleqd.evaluation.sandbox",
    "cycleqd.workers": "cycleqd.evaluation.workers",
    "cycleqd.embedded": "cycleqd.models.embedded",
    "cycleqd.experts": "cycleqd.models.experts",
    "cycleqd.finetune": "cycleqd.models.finetune",
    "cycleqd.models": "cycleqd.models.loading",
    "cycleqd.smollm2": "cycleqd.models.smollm2",
    "cycleqd.checkpoint": "cycleqd.run.checkpoint",
    "cycleqd.components": "cycleqd.run.components",
    "cycleqd.configs": "cycleqd.run.configs",
    "cycleqd.lock": "cycleqd.run.lock",
    "cycleqd.loggers": "cycleqd.run.loggers",
    "cycleqd.reports": "cycleqd.run.reports",
    "cycleqd.runner": "cycleqd.run.runner",
    "cycleqd.stopping": "cycleqd.run.stopping",
    "cycleqd.store": "cycleqd.run.store",
    "cycleqd.compare": "cycleqd.analysis.compare",
    "cycleqd.evidence": "cycleqd.analysis.evidence",
    "cycleqd.export": "cycleqd.analysis.export",
    "cycleqd.rundata": "cycleqd.analysis.rundata",
    # the task plugins were installed as a top-level package called `tasks`
    "tasks.addition": "cycleqd.tasks.addition",
    "tasks.base": "cycleqd.tasks.base",
    "tasks.jsonl": "cycleqd.tasks.jsonl",
    "tasks.lm_eval": "cycleqd.tasks.lm_eval",
    "tasks.reversal": "cycleqd.tasks.reversal",
    "tasks.sorting": "cycleqd.tasks.sorting",
}
# names that left their module when it moved: old module.name → new module
NAMES = {
    "cycleqd.store.EliteRecord": "cycleqd.core.elite",
    "cycleqd.components.BaselineSpec": "cycleqd.core.baselines",
    "cycleqd.select.STRATEGIES": "cycleqd.analysis.selection",
    "cycleqd.select.pareto_front": "cycleqd.analysis.selection",
    "cycleqd.select.select_elites": "cycleqd.analysis.selection",
}


def new_module(module: str, name: str) -> str:
    """The module that holds ``name`` now, for a module of the flat layout (else ``module``)."""
    return NAMES.get(f"{module}.{name}") or MODULES.get(module, module)


def new_path(path: str) -> str:
    """A dotted ``module.name`` path as it reads now (unchanged where nothing moved)."""
    module, _, name = path.rpartition(".")
    return f"{new_module(module, name)}.{name}" if module else path


def upgrade_targets(node: Any, key: str = "") -> None:
    """Rewrite, in place, every ``_target_`` of the config ``node`` that names a moved module,
    logging one warning per key."""
    from omegaconf import DictConfig, ListConfig, read_write

    if isinstance(node, DictConfig):
        items = [(str(k), node._get_node(k)) for k in node.keys()]
    elif isinstance(node, ListConfig):
        items = [(str(i), node._get_node(i)) for i in range(len(node))]
    else:
        return
    for k, child in items:
        where = f"{key}.{k}" if key else k
        if k == "_target_" and isinstance(node, DictConfig) and not child._is_interpolation():
            if child._is_missing():
                continue  # left ???: named where the component is built
            old = node[k]
            new = new_path(old) if isinstance(old, str) else old
            if new != old:
                log.warning(
                    "%s: %s has moved to %s; the old path still works, this config may name the new one",
                    where,
                    old,
                    new,
                )
                with read_write(node):
                    node[k] = new
        elif isinstance(child, (DictConfig, ListConfig)):
            upgrade_targets(child, where)


# Config groups that became components (a ``_target_``): a config written before (a run
# directory's .hydra/config.yaml, an experiment file of one's own) names none, and gets the
# class its values always meant, with the values later versions added at what they were then.
_GROUP_TARGETS = {
    "final": "cycleqd.run.final.FinalSpec",
    "archive": "cycleqd.core.archives.ArchiveSpec",
}
_KIND_TARGETS = {
    "model": {
        "embedded": "cycleqd.models.providers.EmbeddedModel",
        "smollm2": "cycleqd.models.providers.SmolLM2Model",
        "hf": "cycleqd.models.providers.PretrainedModel",
    },
    "experts": {"train": "cycleqd.models.providers.TrainedExperts", "paths": "cycleqd.models.providers.ExpertPaths"},
}
_ADDED = {
    "final": {"choice": "opt", "refine": 0, "refine_sigma0": 0.1},
    "model": {"cache_dir": None},
}
# Top-level settings added since; a config written before them meant these values.
_ADDED_SETTINGS = {"build": 0}


def fill_targets(cfg: Any) -> None:
    """Give, in place, each component group of ``cfg`` that has no ``_target_`` the class its
    values mean (``baselines.<name>``: a static merge; ``model``/``experts``: by ``kind``)."""
    from omegaconf import DictConfig, open_dict

    def fill(node: Any, target: str | None, added: dict | None = None) -> None:
        if not isinstance(node, DictConfig) or "_target_" in node or target is None:
            return
        with open_dict(node):
            node["_target_"] = target
            for k, v in (added or {}).items():
                if k not in node:
                    node[k] = v

    with open_dict(cfg):
        for key, value in _ADDED_SETTINGS.items():
            if key not in cfg:
                cfg[key] = value
    for group, target in _GROUP_TARGETS.items():
        fill(cfg.get(group), target, _ADDED.get(group))
    for group, by_kind in _KIND_TARGETS.items():
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            fill(node, by_kind.get(node.get("kind")), _ADDED.get(group))
    baselines = cfg.get("baselines")
    if isinstance(baselines, DictConfig):
        for name in baselines:
            fill(baselines.get(name), "cycleqd.core.baselines.StaticMerge")
