"""What a run leaves for people to read: one pyribs heatmap per archive and the table
mapping archive cells to elites."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cycleqd.core.archives import CyclicArchives
from cycleqd.fileio import write_bytes, write_text


def heatmaps(archives: CyclicArchives, run_dir: Path) -> dict[str, Path]:
    """``heatmaps/<task>.png`` for each archive (quality = that task's score): pyribs' grid or
    CVT heatmap for one or two descriptors, its parallel axes plot for more (and for dns,
    which has no cells), one line per elite coloured by its quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ribs.visualize import cvt_archive_heatmap, grid_archive_heatmap, parallel_axes_plot

    out = {}
    for task, archive in archives.archives.items():
        d = archives.descriptors(task)
        axes = len(d) > 2 or archives.kind == "dns"
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(d)), 4) if axes else (5, 4))
        if axes:
            unit = " (fraction of its range)" if archives.kind == "dns" else ""
            parallel_axes_plot(
                archive,
                ax=ax,
                measure_order=[(j, f"{t}{unit}") for j, t in enumerate(d)],
                vmin=0.0,
                vmax=1.0,
                cmap="viridis",
            )
        elif archive.measure_dim == 1 and len(archive) == 1 and archives.kind == "grid":
            _heatmap_1d_single(archive, ax)  # pyribs 0.12 fails on a 1-D archive holding one elite
        elif archives.kind == "cvt":
            cvt_archive_heatmap(archive, ax=ax, vmin=0.0, vmax=1.0, cmap="viridis", lw=0.2)
        else:
            grid_archive_heatmap(archive, ax=ax, vmin=0.0, vmax=1.0, cmap="viridis")
        if not axes:
            ax.set_xlabel(f"{d[0]} score")
            if len(d) > 1:
                ax.set_ylabel(f"{d[1]} score")
        ax.set_title(f"archive {task}: quality = {task} score", pad=24 if axes else 6)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        path = Path(run_dir) / "heatmaps" / f"{task}.png"
        write_bytes(path, buf.getvalue())
        out[task] = path
    return out


def _heatmap_1d_single(archive, ax) -> None:
    values = np.full((1, archive.cells), np.nan)
    data = archive.data()
    values[0, int(archive.int_to_grid_index(data["index"])[0][0])] = data["objective"][0]
    mesh = ax.pcolormesh(archive.boundaries[0], [0, 1], values, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_yticks([])
    ax.figure.colorbar(mesh, ax=ax)


def elite_table(archives: CyclicArchives, run_dir: Path) -> Path:
    """``elites/table.csv``: one row per (archive, elite) with its cell, objective, measures and scores."""
    rows = ["archive,cell,objective,measures,id,generation," + ",".join(f"score_{t}" for t in archives.tasks)]
    for r in archives.rows():
        cell, measures = "-".join(str(c) for c in r["cell"]), "-".join(f"{m:.6f}" for m in r["measures"])
        scores = [f"{r['scores'][t]:.6f}" for t in archives.tasks]
        rows.append(
            ",".join(
                [r["archive"], cell, f"{r['objective']:.6f}", measures, str(r["id"]), str(r["generation"]), *scores]
            )
        )
    path = Path(run_dir) / "elites" / "table.csv"
    write_text(path, "\n".join(rows) + "\n")
    return path
