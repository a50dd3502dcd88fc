"""What a method's pool is worth to users who pick their own model from it, over builds and
seeds: ``cycleqd evidence`` prints it for runs made with ``final.front=true``.

- **Preference score.** For each weighting of the tasks (:func:`cycleqd.analysis.preference.weightings`:
  Dirichlet(1) draws and the one-hot ones), the pool's model with the best weighted opt score
  is chosen, and its weighted test score counts; a run's value is the mean over weightings.
  It is a weighted mean of the chosen models' per-item test results, so its interval redraws
  the test prompts too: the per-item values :func:`preference_items` builds go through
  :func:`cycleqd.stats.hierarchical_bootstrap` as a final model's do (builds, seeds, prompts).
- **Regret.** Per weighting, how far a method's chosen model falls below the best of every
  pool compared on the same build and seed, averaged.
- **Hypervolume** of the test scores of the pool's opt front (the front is chosen on opt;
  reference point the origin: :mod:`cycleqd.core.pareto`), in points of the unit cube
  (× 100); its interval redraws builds, then seeds.

The static merges' pool (every grid point) and the experts are rows too, from the reference
method's runs; every search's pool counts the experts as well (whoever runs a merge search
holds them), so that a search is credited only with what it adds to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cycleqd.analysis.evidence import methods, save_png
from cycleqd.analysis.preference import choose, weightings
from cycleqd.core.pareto import hypervolume
from cycleqd.errors import ConfigError
from cycleqd.fileio import read_json
from cycleqd.run.front import FILE
from cycleqd.stats import differences, hierarchical_bootstrap
from cycleqd.tables import format_table


@dataclass
class Pool:
    """A pool's opt front as a run scored it: keys, opt and test scores (candidates × tasks,
    NaN where the test evaluation failed) and per-item test results by key."""

    keys: list[str]
    opt: np.ndarray
    test: np.ndarray
    items: dict[str, dict[str, list[float]]]
    size: int
    tasks: list[str]
    holds_experts: bool = False  # the experts are among the pool's models (CycleQD seeds its archives with them)


def load_fronts(run_dir: Path) -> dict[str, Pool]:
    """A run's pools (``front.json``) with their per-item test results (``test_items.json``)."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {FILE}; run it with final.front=true")
    data = read_json(path, "fronts")
    items = read_json(Path(run_dir) / "test_items.json", "test items")
    tasks = data["tasks"]
    out = {}
    for name, pool in data["pools"].items():
        front = pool["front"]
        keys = [e["key"] for e in front]
        test = np.array([[np.nan] * len(tasks) if e["test"] is None else [e["test"][t] for t in tasks] for e in front])
        out[name] = Pool(
            keys,
            np.array([[e["opt"][t] for t in tasks] for e in front]).reshape(len(front), len(tasks)),
            test.reshape(len(front), len(tasks)),
            {k: items[f"front:{k}"] for k in keys if f"front:{k}" in items},
            pool["size"],
            tasks,
            name == "experts" or (name == "search" and _seeded_with_experts(Path(run_dir))),
        )
    return out


def _seeded_with_experts(run_dir: Path) -> bool:
    from cycleqd.run import record

    return any(str(x.get("origin", "")).startswith("expert:") for x in record.read(run_dir)[0])


def preference_values(pool: Pool, weights: np.ndarray, name: str = "pool") -> np.ndarray:
    """Per weighting, the weighted test score of the pool's model chosen on opt (a model that
    failed on test scores 0)."""
    picks = choose(pool.opt, weights, name)
    return np.einsum("wk,wk->w", weights, np.nan_to_num(pool.test[picks]))


def preference_items(pool: Pool, weights: np.ndarray, name: str = "pool") -> dict[str, np.ndarray] | None:
    """Per-item values whose test mean (mean over tasks of the mean over items) is the pool's
    preference score: task ``t``'s item ``i`` is ``K · mean_w w_t · x[m_w, t, i]``, ``m_w`` the
    model chosen for weighting ``w``. None where a chosen model has no per-item results."""
    picks = choose(pool.opt, weights, name)
    keys = [pool.keys[i] for i in picks]
    if any(k not in pool.items for k in keys):
        return None
    tasks = pool.tasks
    k = len(tasks)
    return {
        t: k
        * np.mean([w[j] * np.asarray(pool.items[key][t], dtype=np.float64) for w, key in zip(weights, keys)], axis=0)
        for j, t in enumerate(tasks)
    }


def with_experts(pool: Pool, experts: Pool) -> Pool:
    """``pool`` with the experts added (every user of a merge search holds them): the front of
    the two together; of models with equal opt scores, the pool's own."""
    from cycleqd.core.pareto import non_dominated

    keys = pool.keys + experts.keys
    opt, test = np.vstack([pool.opt, experts.opt]), np.vstack([pool.test, experts.test])
    keep = non_dominated(opt)
    size = pool.size + (0 if pool.holds_experts else experts.size)
    return Pool([keys[i] for i in keep], opt[keep], test[keep], {**experts.items, **pool.items}, size, pool.tasks, True)


def _front_hypervolume(pool: Pool) -> float:
    scored = pool.test[~np.isnan(pool.test).any(axis=1)]
    return 100 * hypervolume(scored) if len(scored) else 0.0


def _by_build(values: dict[tuple[int, int], Any]) -> list[list[Any]]:
    builds: dict[int, list] = {}
    for (b, _), v in sorted(values.items()):
        builds.setdefault(b, []).append(v)
    return list(builds.values())


def _scalar_interval(values: dict[tuple[int, int], float]) -> dict:
    """Builds, then seeds, redrawn: each run one value (a one-item "task" for the bootstrap)."""
    return hierarchical_bootstrap([[{"v": np.array([v])} for v in b] for b in _by_build(values)])


def table(roots: list[Path], reference: str, n: int = 32, seed: int = 0) -> dict[str, Any]:
    """The preference and hypervolume rows, one per method's search pool, then the reference
    runs' static merges and experts; with the weightings' count and seed."""
    ms = methods(roots)
    if reference not in ms:
        raise ConfigError("--reference", f"no method {reference!r}; the methods are: {', '.join(sorted(ms))}")
    pools: dict[str, dict[tuple[int, int], Pool]] = {}
    for label, m in ms.items():
        fronts = {k: load_fronts(p) for k, p in m.runs.items() if (p / FILE).is_file()}
        if fronts:
            pools[label] = {k: f["search"] for k, f in fronts.items()}
        if label == reference:
            for extra, row in (("static", "static merges (every grid point)"), ("experts", "experts")):
                got = {k: f[extra] for k, f in fronts.items() if extra in f and len(f[extra].keys)}
                if got:
                    pools[row] = got
    if reference not in pools:
        raise FileNotFoundError(f"the runs of {reference!r} have no {FILE}: run them with final.front=true")
    # Every user of a search over merges of the experts holds the experts too: each search's
    # pool counts them (from the reference's runs of the same build and seed; CycleQD's has them)
    experts = pools.get("experts", {})
    for label in [x for x in pools if x in ms]:
        pools[label] = {r: with_experts(p, experts[r]) if r in experts else p for r, p in pools[label].items()}
    k = next(iter(pools[reference].values())).opt.shape[1]
    w = weightings(k, n, seed)
    values = {
        label: {r: preference_values(p, w, f"{label} {r}") for r, p in runs.items()} for label, runs in pools.items()
    }
    ref_items = {r: preference_items(p, w) for r, p in pools[reference].items()}
    rows = []
    searches = [reference, *sorted(set(ms) & set(pools) - {reference})]
    for label in [*searches, *(p for p in pools if p not in ms)]:
        runs = pools[label]
        pref = {r: float(100 * v.mean()) for r, v in values[label].items()}
        hv = {r: _front_hypervolume(p) for r, p in runs.items()}
        common = sorted(set(runs) & set(pools[reference]))
        best = {r: np.max([values[x][r] for x in pools if r in values[x]], axis=0) for r in runs}
        diff = hv_diff = None
        if label != reference and common:
            mine = {r: preference_items(runs[r], w) for r in common}
            if all(mine[r] is not None and ref_items[r] is not None for r in common):
                paired = {r: differences(mine[r], ref_items[r]) for r in common}
                diff = hierarchical_bootstrap(_by_build(paired))
            hv_diff = _scalar_interval({r: hv[r] - _front_hypervolume(pools[reference][r]) for r in common})
        rows.append(
            {
                "method": label,
                "builds": len({b for b, _ in runs}),
                "runs": len(runs),
                "preference": float(np.mean(list(pref.values()))),
                "preference_sd": float(np.std(list(pref.values()), ddof=1)) if len(pref) > 1 else 0.0,
                "diff": diff,
                "regret": float(np.mean([100 * (best[r] - values[label][r]).mean() for r in runs])),
                "hypervolume": float(np.mean(list(hv.values()))),
                "hv_diff": hv_diff,
                "front": float(np.mean([len(p.keys) for p in runs.values()])),
                "pool": float(np.mean([p.size for p in runs.values()])),
            }
        )
    first = min(pools[reference])
    return {
        "weightings": {"dirichlet": n, "one_hot": k, "seed": seed},
        "rows": rows,
        # for the plot: each pool's preference score per weighting (points, mean over its runs),
        # and its opt front's test scores on the first build and seed of the reference
        "per_weighting": {label: (100 * np.mean(list(values[label].values()), axis=0)).tolist() for label in pools},
        "fronts": {
            label: {"run": list(first), "test": (100 * runs[first].test).tolist()}
            for label, runs in pools.items()
            if first in runs
        },
        "tasks": next(iter(pools[reference].values())).tasks,
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    """Two panels as a PNG: each pool's preference score per weighting (one dot per weighting,
    its mean marked), and each pool's opt front on test over the first two tasks (one build
    and seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["per_weighting"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    rng = np.random.default_rng(0)
    for i, label in enumerate(labels):
        v = np.asarray(result["per_weighting"][label])
        left.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=10, alpha=0.6)
        left.hlines(v.mean(), i - 0.3, i + 0.3, color="black")
    left.set_xticks(range(len(labels)), [lb[:22] for lb in labels], rotation=20, ha="right", fontsize=8)
    left.set_ylabel("weighted test score of the pick (%)")
    left.set_title("one dot per weighting of the tasks", fontsize=9)
    a, b = result["tasks"][:2]
    for label, front in result["fronts"].items():
        pts = np.asarray(front["test"])
        if len(pts):
            order = np.argsort(pts[:, 0])
            right.plot(pts[order, 0], pts[order, 1], marker="o", ms=4, lw=0.8, label=label[:30])
    right.set_xlabel(f"{a}, test (%)")
    right.set_ylabel(f"{b}, test (%)")
    right.set_title(
        "each pool's opt front on test (build %d, seed %d)" % tuple(next(iter(result["fronts"].values()))["run"]),
        fontsize=9,
    )
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return save_png(fig, path)


def _ci(d: dict | None, scale: float = 100) -> str:
    if d is None:
        return "—"
    return f"{scale * d['diff']:+.1f} [{scale * d['ci'][0]:+.1f}, {scale * d['ci'][1]:+.1f}]"


def format_table_rows(result: dict[str, Any], reference: str) -> str:
    rows = result["rows"]
    cells = [
        [
            r["method"][:40],
            str(r["builds"]),
            str(r["runs"]),
            f"{r['preference']:.1f} ± {r['preference_sd']:.1f}",
            _ci(r["diff"]),
            f"{r['regret']:.1f}",
            f"{r['hypervolume']:.2f}",
            _ci(r["hv_diff"], 1),
            f"{r['front']:.0f} / {r['pool']:.0f}",
        ]
        for r in rows
    ]
    header = [
        "pool",
        "builds",
        "runs",
        "preference",
        "− reference [95% CI]",
        "regret",
        "test HV",
        "− reference [95% CI]",
        "front / pool",
    ]
    lines = format_table(header, cells, align="<>>>>>>>>", widths=[32], sep="  ", rule=True)
    wt = result["weightings"]
    lines += [
        f"(test split, points; reference: {reference}; each pool's model chosen on opt for {wt['dirichlet']}",
        f" Dirichlet(1) weightings (seed {wt['seed']}) and the {wt['one_hot']} one-hot ones. preference: the chosen",
        " models' mean weighted test score, its difference paired by build and seed and redrawn over builds, seeds",
        " and test prompts; regret: the mean shortfall from the best pool per weighting; test HV: hypervolume × 100",
        " of the opt front's test scores from the origin, its difference redrawn over builds and seeds; each",
        " search's pool holds the experts too, as every user of it does; front / pool: models on the opt front",
        " and in the pool, per run)",
    ]
    return "\n".join(lines)
