"""A task no search saw: ``cycleqd heldout ROOT... --task reversal_long``.

A user with a new task takes the run's models as they are and picks one by trying them on a
few examples of their own. For each finished run under the roots, every model of its search's
pool (``candidates.jsonl``: :func:`cycleqd.run.front.search_pool`), with the experts added where
the search did not evaluate them (every user of a merge search holds its experts, as in the
preference table of :mod:`cycleqd.analysis.worth`), is scored on the first
``n_opt`` (default 32) items of the held-out task's opt split; the best of them (the first
among equals) is scored on its test split. So are the run's final model, its experts and its
static merges (each at the grid point it chose on the run's own tasks). Each run's results go
into ``<run_dir>/heldout/<task>.json`` (reused when there, with the same ``n_opt``), nothing
else in the run directory changes, and :func:`table` compares the methods as ``cycleqd
evidence`` does: paired by build and seed, redrawn over builds, seeds and test prompts.

The held-out task is a config of the ``task`` group (``conf/task/<name>.yaml``), e.g.
``reversal_long`` or ``sorting_long`` (longer strings than any model was trained on, with partial credit):
a skill near the searched ones that none of them is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cycleqd.analysis.evidence import methods
from cycleqd.core.baselines import PARAMETERS, grid_merge
from cycleqd.core.taskvector import TaskVector
from cycleqd.errors import ConfigError, EvaluationFailed
from cycleqd.fileio import read_json, write_json
from cycleqd.protocols import Failure
from cycleqd.stats import differences, hierarchical_bootstrap
from cycleqd.tables import format_table

FOLDER = "heldout"


def heldout_task(spec: str, n_opt: int) -> Any:
    """The held-out task ``spec`` names, its opt split cut to ``n_opt`` items: a config of the
    ``task`` group (``conf/task/<spec>.yaml``), or a YAML file of one's own in the same form
    (one key, the task's name, holding its ``_target_`` and settings)."""
    from omegaconf import DictConfig, OmegaConf, open_dict

    from cycleqd.run.components import instantiate_node
    from cycleqd.run.configs import CONF_DIR

    path = Path(spec) if spec.endswith((".yaml", ".yml")) else Path(CONF_DIR) / "task" / f"{spec}.yaml"
    if not path.is_file():
        raise ConfigError("--task", f"no task config {spec!r} (conf/task/{spec}.yaml, or a YAML file)")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig) or len(cfg) != 1:
        raise ConfigError("--task", f"{str(path)!r} must hold one task under its name, as conf/task/*.yaml do")
    (name,) = list(cfg)
    node = cfg[name]
    with open_dict(node):
        node["n_opt"] = n_opt
    task = instantiate_node(node, f"task.{name}")
    getattr(task, "prepare", lambda: None)()
    return task


def score_run(run_dir: Path, name: str, n_opt: int = 32) -> dict[str, Any]:
    """The held-out results of one finished run (see the module's docstring), written to and
    read from ``<run_dir>/heldout/<name>.json``.

    Raises:
        EvaluationFailed: the held-out task failed on every model of the pool, or on a chosen
            model's test split (the task and the run named).
    """
    from cycleqd.evaluation.workers import Worker
    from cycleqd.run.components import build
    from cycleqd.run.configs import load_config
    from cycleqd.run.front import search_pool
    from cycleqd.run.provision import provision
    from cycleqd.run.store import EliteStore

    task = heldout_task(name, n_opt)
    name = task.name
    out_path = Path(run_dir) / FOLDER / f"{name}.json"
    if out_path.is_file():
        done = read_json(out_path, "held-out results")
        if done.get("n_opt") == n_opt and done.get("experts_in_pool"):
            return done
    cfg = load_config(run_dir)
    c = build(cfg)
    store = EliteStore(Path(run_dir) / "elites")
    p = provision(cfg, c, store)
    worker = Worker(p.model, p.tokenizer, [task], list(p.touched), p.basis, eval_batch_size=cfg.eval_batch_size)

    def score(x: Any, split: str, what: str) -> Any:
        result = worker.score(x, split)
        if isinstance(result, Failure) and split == "test":
            raise EvaluationFailed(f"held-out task {name!r} failed on the test split of {what} in {run_dir}: {result}")
        return result

    summary = read_json(Path(run_dir) / "summary.json", "summary")
    alive = _alive(Path(run_dir)) if c.search.name == "cycleqd" and p.basis is None else set()
    pool, unmade = search_pool(Path(run_dir), c.names, p.experts, p.basis, c.search.name, store, alive)
    if not any(str(e["origin"]).startswith("expert:") for e in pool):
        pool += [{"key": f"experts:{t}", "origin": f"expert:{t}", "model": lambda t=t: p.experts[t]} for t in c.names]
    opt = [score(e["model"](), "opt", e["key"]) for e in pool]
    values = [None if isinstance(r, Failure) else r[name] for r in opt]
    if all(v is None for v in values):
        raise EvaluationFailed(f"held-out task {name!r} failed on every model of {run_dir}'s pool, e.g. {opt[0]}")
    pick = int(np.argmax([-1.0 if v is None else v for v in values]))

    def entry(x: Any, what: str) -> dict[str, Any]:
        r = score(x, "test", what)
        return {"test": r[name], "items": r.per_item[name]}

    experts = [p.experts[t] for t in c.names]
    static = {}
    for b, chosen in summary.get("baseline_choices", {}).items():
        at = (chosen["scale"], *(chosen[k] if chosen.get(k) is not None else _default(k) for k in PARAMETERS))
        static[b] = entry(grid_merge(chosen["method"], at, experts, cfg.seed), f"static merge {b}")
    final = TaskVector.load(Path(run_dir) / "final.safetensors")
    result = {
        "task": name,
        "n_opt": n_opt,
        "experts_in_pool": True,
        "pool": {
            "size": len(pool),
            "unmade": unmade,
            "pick": pool[pick]["key"],
            "origin": pool[pick]["origin"],
            "opt": values[pick],
            **entry(pool[pick]["model"](), pool[pick]["key"]),
        },
        "final": entry(final, "the final model"),
        "experts": {t: entry(p.experts[t], f"expert {t}") for t in c.names},
        "static": static,
    }
    write_json(out_path, result)
    return result


def _alive(run_dir: Path) -> set[int]:
    """The elites in a ``genome=false`` run's archives at its last checkpoint (their files kept)."""
    from cycleqd.core.archives import CyclicArchives
    from cycleqd.run import checkpoint

    ckpt = checkpoint.load(run_dir)
    return CyclicArchives.from_state(ckpt.state["qd"]["archives"]).alive_ids() if ckpt is not None else set()


def _default(key: str) -> float:
    from cycleqd.core.merging import Merge

    return getattr(Merge, key)


def table(roots: list[Path], reference: str, name: str, n_opt: int = 32) -> list[dict[str, Any]]:
    """One row per method's pool pick and final model, then the reference runs' experts and
    static merges: the held-out task's test score (points), with the difference to the
    reference method's pool pick and its interval."""
    ms = methods(roots)
    if reference not in ms:
        raise ConfigError("--reference", f"no method {reference!r}; the methods are: {', '.join(sorted(ms))}")
    results = {label: {k: score_run(p, name, n_opt) for k, p in m.runs.items()} for label, m in ms.items()}
    name = next(iter(results[reference].values()))["task"]
    ref = {k: {name: r["pool"]["items"]} for k, r in results[reference].items()}

    def row(label: str, got: dict[tuple[int, int], dict]) -> dict[str, Any]:
        values = [100 * g["test"] for g in got.values()]
        common = sorted(set(got) & set(ref))
        diff = None
        if common:
            builds: dict[int, list] = {}
            for k in common:
                builds.setdefault(k[0], []).append(differences({name: got[k]["items"]}, ref[k]))
            diff = hierarchical_bootstrap(list(builds.values()))
        return {
            "task": name,
            "model": label,
            "builds": len({b for b, _ in got}),
            "runs": len(got),
            "test": float(np.mean(values)),
            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "diff": diff,
        }

    rows = []
    for label in [reference, *sorted(set(ms) - {reference})]:
        rows.append(row(f"{label}: pool's pick", {k: r["pool"] for k, r in results[label].items()}))
        rows.append(row(f"{label}: final model", {k: r["final"] for k, r in results[label].items()}))
    first = next(iter(results[reference].values()))
    for t in first["experts"]:
        rows.append(row(f"expert: {t}", {k: r["experts"][t] for k, r in results[reference].items()}))
    for b in first["static"]:
        rows.append(row(f"static: {b}", {k: r["static"][b] for k, r in results[reference].items() if b in r["static"]}))
    rows[0]["diff"] = None
    return rows


def format_rows(rows: list[dict[str, Any]], reference: str, name: str, n_opt: int) -> str:
    cells = [
        [
            r["model"][:48],
            str(r["builds"]),
            str(r["runs"]),
            f"{r['test']:.1f} ± {r['sd']:.1f}",
            "—"
            if r["diff"] is None
            else f"{100 * r['diff']['diff']:+.1f} [{100 * r['diff']['ci'][0]:+.1f}, {100 * r['diff']['ci'][1]:+.1f}]",
        ]
        for r in rows
    ]
    header = ["model", "builds", "runs", f"{name} test", "− reference's pick [95% CI]"]
    lines = format_table(header, cells, align="<>>>>", widths=[40], sep="  ", rule=True)
    lines += [
        f"(held-out task {name}, test split, points; a pool's pick: its model best on the first {n_opt} items of",
        f" {name}'s opt split; reference: {reference}; differences paired by build and seed, redrawn over builds,",
        " seeds and test prompts; the experts and static merges are the reference runs')",
    ]
    return "\n".join(lines)
