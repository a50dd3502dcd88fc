"""``cycleqd evidence ROOT... --reference search=cycleqd``: methods compared over builds and seeds.

A *method* is what a run's Hydra overrides say, the build, the seed and the overrides every
run shares left out (``search=cmaes``, ``+ablation=no_mutation``). For each method: its final
model's test mean over its runs (mean ± sd), its difference to the reference method with a
95% bootstrap interval, its opt-split evaluations and wall time. The runs of one build and
seed are paired; over one build the interval redraws the test items (the runs' items
together), over several it redraws the builds, then each build's seeds, then the items
(:func:`cycleqd.stats.hierarchical_bootstrap`), since a finding on one build of the models
may not hold on another. The reference runs' static merges and best expert are rows too. A
plot shows each method's best mean opt score against evaluations.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from cycleqd.analysis.compare import find_runs
from cycleqd.errors import ConfigError
from cycleqd.fileio import read_json, read_stored_text, write_bytes
from cycleqd.protocols import mean_score
from cycleqd.stats import differences, hierarchical_bootstrap, paired_bootstrap
from cycleqd.tables import format_table


@dataclass
class Method:
    """The runs of one method, by (build, seed)."""

    label: str
    runs: dict[tuple[int, int], Path] = field(default_factory=dict)


def _overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def methods(roots: list[Path]) -> dict[str, Method]:
    """The finished runs under ``roots``, grouped into methods."""
    runs = [r for root in roots for r in find_runs(Path(root))]
    if not runs:
        raise FileNotFoundError(f"no finished runs under {[str(r) for r in roots]}")
    overrides = {
        r: [o for o in _overrides(r) if not o.startswith(("seed=", "build=", "quiet=", "hydra."))] for r in runs
    }
    shared = set.intersection(*(set(o) for o in overrides.values()))
    out: dict[str, Method] = {}
    for r in runs:
        label = " ".join(o for o in overrides[r] if o not in shared) or "(default)"
        cfg = OmegaConf.load(r / ".hydra" / "config.yaml")
        key = (int(cfg.get("build", 0)), int(cfg.seed))  # a run from before builds: build 0
        m = out.setdefault(label, Method(label))
        if key in m.runs:
            raise ConfigError(
                "seed", f"two runs of {label!r} with build {key[0]}, seed {key[1]}: {m.runs[key]} and {r}"
            )
        m.runs[key] = r
    _same_weights_per_build([r for m in out.values() for r in m.runs.values()])
    return out


# Two runs of one build score its experts alike on test, up to a near-tie that another thread
# count may flip; builds of the same recipe differ by points (README: 61-62 % against 63-73 %).
SAME_BUILD_TOLERANCE = 0.02


def _same_weights_per_build(runs: list[Path]) -> None:
    """Refuse to pair runs that claim one build but hold other weights: the same build number
    trained on two machines (the embedded recipes round differently on each), seen by the
    experts' test scores."""
    first: dict[int, tuple[Path, dict]] = {}
    for r in runs:
        summary = read_json(r / "summary.json", "summary")
        experts = summary.get("experts") or {}
        build = int(OmegaConf.load(r / ".hydra" / "config.yaml").get("build", 0))
        if build not in first:
            first[build] = (r, experts)
            continue
        other, seen = first[build]
        gaps = [
            abs(experts[e][t] - seen[e][t])
            for e in experts.keys() & seen.keys()
            for t in experts[e].keys() & seen[e].keys()
        ]
        if gaps and max(gaps) > SAME_BUILD_TOLERANCE:
            raise ConfigError(
                "build",
                f"runs of build {build} hold different experts (their test scores differ by up to "
                f"{100 * max(gaps):.1f} points): {other} and {r}; a build's runs must share its weights "
                "(made on one machine), so give one of them another build number",
            )


def _test_mean(scores: dict[str, float]) -> float:
    return 100 * mean_score(scores)


def _row(label: str, means: list[float], diff: dict | None, evaluations: Any, wall: Any, builds: int = 1) -> dict:
    sd = float(np.std(means, ddof=1)) if len(means) > 1 else 0.0
    return {
        "method": label,
        "builds": builds,
        "seeds": len(means),
        "test_mean": float(np.mean(means)),
        "sd": sd,
        "diff": diff,
        "opt_evaluations": evaluations,
        "wall_s": wall,
    }


def table(roots: list[Path], reference: str) -> list[dict]:
    """One row per method, then the reference runs' best expert and static merges."""
    ms = methods(roots)
    if reference not in ms:
        raise ConfigError("--reference", f"no method {reference!r}; the methods are: {', '.join(sorted(ms))}")
    ref = ms[reference]
    summaries = {
        label: {s: read_json(p / "summary.json", "summary") for s, p in m.runs.items()} for label, m in ms.items()
    }
    items = {
        label: {s: read_json(p / "test_items.json", "test items") for s, p in m.runs.items()} for label, m in ms.items()
    }

    def versus(model_items: dict[tuple[int, int], dict], key: str) -> dict | None:
        common = sorted(set(model_items) & set(ref.runs))
        if not common or any(key not in model_items[k] or "final" not in items[reference][k] for k in common):
            return None
        by_build: dict[int, list] = {}
        for k in common:
            by_build.setdefault(k[0], []).append(differences(model_items[k][key], items[reference][k]["final"]))
        if len(by_build) == 1:
            return paired_bootstrap(next(iter(by_build.values())))
        return hierarchical_bootstrap(list(by_build.values()))

    rows = []
    for label in [reference, *sorted(set(ms) - {reference})]:
        ss = summaries[label]
        diff = None if label == reference else versus(items[label], "final")
        rows.append(
            _row(
                label,
                [_test_mean(s["final"]) for s in ss.values()],
                diff,
                int(np.mean([s.get("opt_evaluations", s["evaluations"]) for s in ss.values()])),
                float(np.mean([s["wall_time_s"] for s in ss.values()])),
                builds=len({b for b, _ in ss}),
            )
        )
    ss = summaries[reference]
    ref_builds = len({b for b, _ in ss})
    first = next(iter(ss.values()))
    # the best expert chosen on the opt split, as every choice is (a comparison search does
    # not score the experts on opt: with one as the reference, there is no such row)
    if first.get("experts_opt"):
        best = max(first["experts_opt"], key=lambda t: _test_mean(first["experts_opt"][t]))
        rows.append(
            _row(
                f"expert: {best} (best on opt)",
                [_test_mean(s["experts"][best]) for s in ss.values()],
                versus(items[reference], f"expert:{best}"),
                None,
                None,
                builds=ref_builds,
            )
        )
    for b in first["baselines"]:
        rows.append(
            _row(
                f"static: {b}",
                [_test_mean(s["baselines"][b]) for s in ss.values() if b in s["baselines"]],
                versus(items[reference], f"baseline:{b}"),
                None,
                None,
                builds=ref_builds,
            )
        )
    return rows


def format_rows(rows: list[dict], reference: str) -> str:
    cells = []
    for r in rows:
        d = r["diff"]
        cells.append(
            [
                r["method"][:44],
                str(r.get("builds", 1)),
                str(r["seeds"]),
                f"{r['test_mean']:10.1f} ± {r['sd']:4.1f}",
                f"{100 * d['diff']:+.1f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]" if d else "—",
                str(r["opt_evaluations"]) if r["opt_evaluations"] is not None else "—",
                f"{r['wall_s']:.0f}" if r["wall_s"] is not None else "—",
            ]
        )
    header = ["method", "builds", "runs", "test mean ± sd", "− reference [95% CI]", "opt evals", "wall s"]
    lines = format_table(header, cells, align="<>>>>>>", widths=[44, 6, 5, 17, 37, 10, 8], rule=True)
    lines.append(
        f"(test split, points; reference: {reference}; differences paired by build and seed, their intervals redrawn"
    )
    lines.append(
        " over builds, then seeds, then test prompts (one build: prompts); the static merges and the expert are"
    )
    lines.append(" those of the reference's runs)")
    return "\n".join(lines)


def curves(roots: list[Path]) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Each method's best mean opt score (points) against evaluations, one curve per seed
    (in seed order).

    A CycleQD run's log ends with its last generation, or with the rounds of its
    refinement (``final.refine``); where the final step spent evaluations after the last
    line (the merge's scales), the curve ends with the final model's opt mean at the run's
    opt evaluations."""
    out = {}
    for label, m in methods(roots).items():
        for _, path in sorted(m.runs.items()):
            ev, best = [], []
            for line in read_stored_text(path / "metrics.jsonl").splitlines():
                rec = json.loads(line)
                if "best_opt_mean" in rec:
                    ev.append(rec["evaluations"])
                    best.append(100 * rec["best_opt_mean"])
            s = read_json(path / "summary.json", "summary")
            end, final = s.get("opt_evaluations"), s.get("final_opt")
            if end and final and ev and end > ev[-1]:
                ev.append(end)
                best.append(max(best[-1], _test_mean(final)))  # the opt split's mean, in points
            out.setdefault(label, []).append((np.array(ev), np.array(best)))
    return out


def plot(roots: list[Path], path: Path) -> Path:
    """The curves of :func:`curves`, mean over seeds with their range shaded, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, runs in sorted(curves(roots).items()):
        n = min(len(e) for e, _ in runs)
        ev = runs[0][0][:n]
        ys = np.stack([b[:n] for _, b in runs])
        (line,) = ax.plot(ev, ys.mean(0), label=label)
        ax.fill_between(ev, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("evaluations (opt split)")
    ax.set_ylabel("best mean score so far, opt split (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def save_png(fig, path: Path) -> Path:
    """``fig`` as a PNG at ``path`` (written durably), the figure closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_bytes(path, buf.getvalue())
    return path
