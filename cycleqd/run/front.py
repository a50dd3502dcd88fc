"""The run's pools on the test split (``final.front: true``): of each pool of models the run
scored on the opt split, the models that no other model of the pool beats on every task there,
each scored once on test, into ``front.json``.

A user picks from a pool for a weighting of the tasks of their own: the model with the best
weighted opt score. For a weighting whose every weight is positive that model lies on the
pool's opt front, and for a one-hot weighting a model on the front is as good on opt as the
best; so the front on test is all it takes to report what each user would get, every choice
made on opt (:mod:`cycleqd.analysis.worth`), and its test scores give the pool's hypervolume.

The pools:

- ``search``: every model the search evaluated (``candidates.jsonl``): CycleQD's experts,
  children and final merges, or a comparison search's candidates. A run with task vectors in
  files (``genome=false``) keeps only its archives' elites, so its pool is those;
- ``static``: every grid point of every static merge (``baselines``);
- ``experts``: the experts, whose test scores the run has already (a comparison search does
  not score them on opt, so its run has no such pool).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cycleqd.core.baselines import PARAMETERS, grid_merge
from cycleqd.core.pareto import non_dominated
from cycleqd.core.searches import LayerCoefficients
from cycleqd.progress import Progress
from cycleqd.protocols import Failure, Result
from cycleqd.run import record

FILE = "front.json"


def _pool(entries: list[dict], tasks: Sequence[str]) -> list[dict]:
    """The entries of ``entries`` (each with its ``opt`` scores) on the pool's opt front."""
    if not entries:
        return []
    opt = np.array([[e["opt"][t] for t in tasks] for e in entries])
    return [entries[i] for i in non_dominated(opt)]


def search_pool(
    run_dir: Path,
    names: Sequence[str],
    experts: Mapping[str, Any],
    basis: Any,
    search: str,
    store: Any,
    alive: set[int],
) -> tuple[list[dict], int]:
    """The record's scored models, each with a ``model()`` that makes it, and the number of
    scored models the record cannot make (those of a ``genome=false`` run that left the
    archives: ``alive`` holds the ids its ``store`` still has)."""
    lines, _ = record.read(run_dir)
    numbers = record.vectors(run_dir)
    space = LayerCoefficients(names, experts, basis) if search != "cycleqd" else None
    out, unmade = [], 0
    for x in lines:
        if not x.get("scores"):
            continue
        make: Callable[[], Any] | None = None
        if isinstance(x.get("genome"), Mapping):
            make = lambda x=x: record.genome_of(numbers, x)  # noqa: E731
        elif "coefficients" in x and space is not None and not x["origin"].startswith("final:"):
            make = lambda x=x: space.child(np.asarray(x["coefficients"]))  # noqa: E731
        elif x["id"] in alive:
            make = lambda x=x: store.get(x["id"])  # noqa: E731
        if make is None:
            unmade += 1
            continue
        out.append(
            {"key": f"search:{x['id']}", "id": x["id"], "origin": x["origin"], "opt": x["scores"], "model": make}
        )
    return out, unmade


def run_search_pool(run: Any) -> tuple[list[dict], int]:
    """:func:`search_pool` of a run in progress (:class:`cycleqd.run.runner.Run`)."""
    search = run.c.search.name
    alive = run.qd.archives.alive_ids() if run.basis is None and search == "cycleqd" else set()
    return search_pool(run.run_dir, run.names, run.experts, run.basis, search, run.store, alive)


def static_pool(experts: Sequence[Any], choices: Mapping[str, Any], seed: int) -> list[dict]:
    """Every grid point of every static merge that was scored on opt (``choices``: the run's
    ``baseline_choices``; ``experts``: the task vectors in the run's task order)."""
    out = []
    for name, chosen in choices.items():
        for point in chosen.get("grid", []):
            if point["opt"] is None:
                continue
            at = (point["scale"], *(point[k] for k in PARAMETERS))
            label = ",".join(f"{k}={point[k]}" for k in ("scale", *PARAMETERS) if chosen.get(k, 0) is not None)
            out.append(
                {
                    "key": f"static:{name}@{label}",
                    "method": chosen["method"],
                    **{k: point[k] for k in ("scale", *PARAMETERS)},
                    "opt": point["opt"],
                    "model": lambda m=chosen["method"], at=at: grid_merge(m, at, experts, seed),
                }
            )
    return out


def pools_on_test(
    run: Any, choices: Mapping[str, Any], experts_test: Mapping[str, Result]
) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
    """``front.json``'s content, and the front models' per-item test results (``test_items.json``
    keys ``front:<pool>:<model>``). ``choices``: the static merges' (``baseline_choices``)."""
    tasks = run.names
    searched, unmade = run_search_pool(run)
    pools = {
        "search": (searched, unmade),
        "static": (static_pool([run.experts[t] for t in tasks], choices, run.cfg.seed), 0),
    }
    experts = [
        {"key": f"experts:{t}", "task": t, "opt": dict(run.experts_opt[t]), "result": experts_test[t]}
        for t in tasks
        if t in run.experts_opt and not isinstance(run.experts_opt[t], Failure) and t in experts_test
    ]
    if experts:
        pools["experts"] = (experts, 0)
    fronts = {name: _pool(entries, tasks) for name, (entries, _) in pools.items()}
    todo = [e for f in fronts.values() for e in f if "result" not in e]
    with Progress("each pool's opt front on test", len(todo), "evaluation") as progress:
        results = run.scores([(e["model"](), "test") for e in todo])
        progress.update(len(todo))
    for e, r in zip(todo, results):
        e["result"] = r
    out: dict[str, Any] = {"tasks": list(tasks), "pools": {}}
    items: dict[str, dict[str, list[float]]] = {}
    for name, front in fronts.items():
        entries = []
        for e in front:
            r = e.pop("result")
            e.pop("model", None)
            if isinstance(r, Failure):
                e["test"], e["failure"] = None, str(r)
            else:
                e["test"] = dict(r)
                if getattr(r, "per_item", None) and set(r.per_item) == set(tasks):
                    items[f"front:{e['key']}"] = r.per_item
            entries.append(e)
        out["pools"][name] = {"size": len(pools[name][0]), "unmade": pools[name][1], "front": entries}
    return out, items
