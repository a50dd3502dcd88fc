"""``cycleqd compare SWEEP_DIR``: one table across the runs of a sweep (or any folder of runs)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cycleqd import tables
from cycleqd.errors import ConfigError
from cycleqd.fileio import read_json, write_text
from cycleqd.protocols import mean_score


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(d) if isinstance(d, list) else d
    return out


def find_runs(root: Path) -> list[Path]:
    return sorted(
        {p.parent for p in Path(root).rglob("summary.json") if (p.parent / ".hydra" / "config.yaml").is_file()}
    )


def compare(root: str | Path) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: the config keys that differ between runs, then scores and archive stats."""
    runs = find_runs(Path(root))
    if not runs:
        raise FileNotFoundError(f"no finished runs (summary.json + .hydra/config.yaml) under {str(root)!r}")
    from cycleqd.run.configs import load_config

    configs = [_flatten(OmegaConf.to_container(load_config(r))) for r in runs]
    keys = sorted({k for c in configs for k in c})
    # A key set in some runs only, with one value wherever set, comes with a group option
    # (search.sigma0 with search=cmaes): the option's own key already tells the runs apart.
    differing = [k for k in keys if len({json.dumps(c[k], default=str) for c in configs if k in c}) > 1]
    summaries = [read_json(r / "summary.json", "summary") for r in runs]
    tasks = summaries[0]["tasks"]
    header = ["run", *differing, *[f"final_{t}" for t in tasks], "final_mean", "best_expert_mean"]
    baselines = sorted({b for s in summaries for b in s["baselines"]})
    header += [f"{b}_mean" for b in baselines] + ["coverage_mean", "qd_score_sum", "generations"]
    rows = []
    for r, c, s in zip(runs, configs, summaries):
        row = [str(r.relative_to(root)) or "."] + [c.get(k) for k in differing]
        row += [s["final"][t] for t in tasks] + [
            mean_score(s["final"], tasks),
            max(mean_score(e, tasks) for e in s["experts"].values()),
        ]
        row += [mean_score(s["baselines"][b], tasks) if b in s["baselines"] else None for b in baselines]
        arch = s["archives"].values()  # a comparison search (search=cmaes|random) has none
        row += [
            sum(a["coverage"] for a in arch) / len(arch) if arch else None,
            sum(a["qd_score"] for a in arch) if arch else None,
            s["generations"],
        ]
        rows.append(row)
    return header, rows


def aggregate(header: list[str], rows: list[list[Any]], by: str) -> tuple[list[str], list[list[Any]]]:
    """Rows grouped over the config key ``by`` (``seed``: the runs of one configuration that
    differ only in seed): per group the runs and, for each score, ``mean ± sd`` (sample sd)."""
    first_score = next(i for i, h in enumerate(header) if h.startswith("final_"))
    if by not in header[1:first_score]:
        differing = ", ".join(header[1:first_score]) or "none"
        raise ConfigError("--by", f"the runs do not differ in {by!r} (the config keys that differ: {differing})")
    keys = [i for i in range(1, first_score) if header[i] != by]
    groups: dict[tuple, list[list[Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(json.dumps(row[i], default=str) for i in keys), []).append(row)
    out_header = [header[i] for i in keys] + ["runs", by] + header[first_score:]
    out = []
    for members in groups.values():
        row = [members[0][i] for i in keys] + [len(members), ",".join(str(m[header.index(by)]) for m in members)]
        for j in range(first_score, len(header)):
            values = [m[j] for m in members if isinstance(m[j], (int, float)) and m[j] is not None]
            if not values:
                row.append(None)
            elif len(values) == 1:
                row.append(f"{values[0]:.3f}")
            else:
                mu = sum(values) / len(values)
                sd = (sum((v - mu) ** 2 for v in values) / (len(values) - 1)) ** 0.5
                row.append(f"{mu:.3f} ± {sd:.3f}")
        out.append(row)
    return out_header, out


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """The sweep's table: every column right-aligned, numbers to three decimals."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    return "\n".join(tables.format_table(header, cells, align=">" * len(header), sep="  "))


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    write_text(path, buf.getvalue())
