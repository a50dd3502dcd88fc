"""The run's summary: a frozen record of what ``summary.json`` holds, its writer, and the
table ``cycleqd run``, ``resume`` and ``show`` print from it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cycleqd.fileio import write_json
from cycleqd.protocols import mean_score
from cycleqd.tables import format_table


@dataclass(frozen=True)
class Summary:
    """What a finished run reports (``summary.json``, whose presence marks the run finished).

    Scores are utilities in [0, 1] (a lower-is-better task's mapped by its range): ``experts``,
    ``base``, ``baselines`` and ``final`` on the test split, ``final_opt`` and ``experts_opt`` on
    the opt split, where every choice was made."""

    tasks: list[str]
    measures: dict[str, dict[str, Any]]  # each task's axis (cycleqd.protocols.Measure's fields)
    search: str
    generations: int
    evaluations: int
    opt_evaluations: int  # every opt evaluation that chose the final model (the budget of a comparison)
    experts: dict[str, dict[str, float]]
    base: dict[str, float] | None
    baselines: dict[str, dict[str, float] | None]
    final: dict[str, float] | None
    final_opt: dict[str, float] | None
    final_vs: dict[str, dict[str, Any]]  # test-mean difference final − model, with its 95% paired bootstrap interval
    final_elites: dict[str, Any]  # how the final model was chosen (cycleqd.run.final)
    baseline_choices: dict[str, Any]
    experts_opt: dict[str, dict[str, float]]
    archives: dict[str, dict[str, float]]
    range_warnings: list[str]  # experts' opt scores outside a descriptor range (the archives lump such models)
    failures: dict[str, Any]
    failed: dict[str, str]
    wall_time_s: float
    base_model: str
    # a truncated basis (cycleqd.core.truncation): its settings, and per expert the fraction of
    # its energy (Σ S²) and of its directions it keeps; None: the exact bases
    basis: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def write(self, run_dir: Path) -> None:
        write_json(Path(run_dir) / "summary.json", self.as_dict())


def _lower_is_better(summary: dict) -> dict:
    """Task → its Measure, for the tasks whose scores are lower-is-better."""
    from cycleqd.protocols import Measure

    return {t: Measure(**m) for t, m in (summary.get("measures") or {}).items() if m.get("direction") == "min"}


def score_cells(s: dict | None, tasks: list[str], lower: dict | None = None) -> list[str]:
    """A model's cells: each task's score in points (a lower-is-better task's as its own score,
    from its utility), then the mean over utilities; dashes for a model without scores."""
    lower = lower or {}
    if not s:
        return ["—"] * (len(tasks) + 1)
    cells = [f"{lower[t].score(s[t]):.4g}" if t in lower else f"{100 * s[t]:.1f}" for t in tasks]
    return cells + [f"{100 * mean_score(s, tasks):.1f}"]


def score_table(
    rows: list[tuple[str, dict | None, str]],
    tasks: list[str],
    lower: dict | None = None,
    note: str = "",
    rule: bool = False,
) -> list[str]:
    """Models' scores as table lines: ``(name, scores, note)`` per row, a column per task and the mean."""
    lower = lower or {}
    header = ["model", *((t[:9] + "↓" if t in lower else t[:10]) for t in tasks), "mean", note]
    cells = [[name, *score_cells(s, tasks, lower), text] for name, s, text in rows]
    width = max(len(r[0]) for r in rows) + 2
    return format_table(
        header, cells, align="<" + ">" * (len(tasks) + 1) + "~", widths=[width, *[11] * len(tasks), 9], rule=rule
    )


def _difference(d: dict | None) -> str:
    if not d:
        return ""
    lo, hi = d["ci"]
    return f"  {100 * d['diff']:+6.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _final_line(info: dict) -> list[str]:
    """Which model the final step chose, and on what opt means."""
    if "chosen" not in info:  # a run from before the final step chose
        return []
    return _chosen_line(info) + _refine_line(info.get("refine"))


def _chosen_line(info: dict) -> list[str]:
    merge = f"the merge of each archive's best ({info['method']} weights) at scale {info['scale']:g}"
    if "candidates" not in info:
        return [f"final model: {merge}"]
    m = info["candidates"]["merge"]
    elite, e = next((k, v) for k, v in info["candidates"].items() if k != "merge")
    m_text = "failed" if m is None else f"{100 * m:.1f}"
    if info["chosen"] == "elite":
        return [
            f"final model: {elite.replace(':', ' ')}, the best elite by mean (opt mean {100 * e:.1f}; {merge}: {m_text})"
        ]
    return [
        f"final model: {merge} (opt mean {m_text}; the best elite by mean, {elite.replace(':', ' ')}: {100 * e:.1f})"
    ]


def _refine_line(r: dict | None) -> list[str]:
    if not r:
        return []
    found = "every candidate failed" if r["opt_mean"] is None else f"best opt mean {100 * r['opt_mean']:.1f}"
    verdict = "kept" if r["applied"] else "not kept"
    return [
        f"  refined by CMA-ES over per-layer expert coefficients: {r['evaluations']} opt evaluations, {found}, {verdict}"
    ]


def _basis_line(b: dict | None) -> list[str]:
    if not b:
        return []
    kept = ", ".join(
        f"{t} {100 * k['energy']:.2f} % ({100 * k['rank']:.1f} % of directions)" for t, k in b["kept"].items()
    )
    size = f", {b['bytes'] / 2**20:.1f} MiB" if b.get("bytes") else ""
    return [f"truncated bases (energy {b['energy']}, rank {b['rank']}, {b['dtype']}{size}): energy kept {kept}"]


def format_summary(summary: dict) -> str:
    """The run's scores (held-out test split) as a plain-text table."""
    tasks = summary["tasks"]
    vs = summary.get("final_vs") or {}
    rows = [(f"expert: {n}", s, vs.get(f"expert:{n}")) for n, s in summary["experts"].items()]
    rows += [(f"baseline: {n}", s, vs.get(f"baseline:{n}")) for n, s in summary["baselines"].items()]
    search = summary.get("search", "cycleqd")
    rows.append((f"{search} (final)", summary["final"], None))
    lower = _lower_is_better(summary)
    width = max(len(r[0]) for r in rows) + 2
    lines = score_table(
        [(name, s, _difference(d)) for name, s, d in rows],
        tasks,
        lower,
        note="  final − model [95% CI]" if vs else "",
        rule=True,
    )
    if vs:
        lines.append("(test-mean points; paired bootstrap over the test prompts, stratified by task)")
    if lower:
        lines.append(
            "↓ lower is better, shown as the task's own score; the mean and differences count its utility "
            + ", ".join(f"({m.high:g} − {t}) / {m.high - m.low:g}" for t, m in lower.items())
        )
    lines.append("")
    if search == "cycleqd":
        lines.append(
            f"generations {summary['generations']}, evaluations {summary['evaluations']}, wall time {summary['wall_time_s']:.0f}s"
        )
        lines += _final_line(summary.get("final_elites") or {})
        lines += _basis_line(summary.get("basis"))
    else:
        lines.append(
            f"search {search} over per-layer merge coefficients: {summary['evaluations']} opt evaluations, "
            f"wall time {summary['wall_time_s']:.0f}s"
        )
    failures = summary.get("failures") or {}
    if failures.get("count"):
        lines.append(
            f"failed evaluations {failures['count']}: "
            + ", ".join(f"{k} {v}" for k, v in failures["by_reason"].items())
        )
    for what, why in (summary.get("failed") or {}).items():
        lines.append(f"FAILED {what}: {why}")
    if summary["archives"]:
        lines += format_table(
            ["archive", "coverage", "qd_score", "best", "elites"],
            [
                [t, f"{a['coverage']:.3f}", f"{a['qd_score']:.2f}", f"{100 * a['best']:.1f}", str(a["num_elites"])]
                for t, a in summary["archives"].items()
            ],
            align="<>>>>",
            widths=[width, 11, 11, 9, 9],
        )
    lines += [f"descriptor range: {line}" for line in summary.get("range_warnings") or []]
    return "\n".join(lines)
