"""``cycleqd pack ROOT --out DIR``: the evidence of finished runs without their models: what
``cycleqd evidence``, ``heldout`` and ``report`` read of each run (its Hydra config, summary,
scored fronts, held-out results, and, compressed, its per-item test results, curves and record
of evaluated models), a few hundred KB a run where the run directory holds tens of MB. Results kept
beside the docs that cite them stay readable by the commands shown there, after the model cache
and the runs themselves are gone."""

from __future__ import annotations

import gzip
from pathlib import Path

from cycleqd.analysis.compare import find_runs
from cycleqd.fileio import read_json, stored, write_bytes, write_json

# Hydra's own hydra.yaml is left out: it holds the machine's paths and nothing a reader needs.
KEPT = (".hydra/config.yaml", ".hydra/overrides.yaml", "front.json")
COMPRESSED = ("test_items.json", "metrics.jsonl", "candidates.jsonl")


def pack(root: str | Path, out: str | Path) -> list[Path]:
    """Copy each finished run under ``root`` to the same place under ``out``, packed (see the
    module's docstring); returns the packed runs. ``root`` itself is only read.

    Raises:
        FileNotFoundError: no finished run under ``root``.
    """
    root, out = Path(root), Path(out)
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"no finished runs (summary.json + .hydra/config.yaml) under {str(root)!r}")
    packed = []
    for run in runs:
        target = out / run.relative_to(root)
        for name in KEPT:
            if (run / name).is_file():
                write_bytes(target / name, (run / name).read_bytes())
        summary = read_json(run / "summary.json", "summary")
        # the base model as its cache entry's name: where this machine kept it is no evidence
        summary["base_model"] = Path(str(summary.get("base_model", ""))).name
        write_json(target / "summary.json", summary)
        for path in sorted((run / "heldout").glob("*.json")):
            write_bytes(target / "heldout" / path.name, path.read_bytes())
        for name in COMPRESSED:
            at = stored(run / name)
            if at is None:
                continue
            data = at.read_bytes() if at.suffix == ".gz" else gzip.compress(at.read_bytes(), 9, mtime=0)
            write_bytes(target / f"{name}.gz", data)
        packed.append(target)
    return packed


def size(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
