"""What a run leaves for people to read: one pyribs heatmap per archive and the table
mapping archive cells to elites."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cycleqd.archives import CyclicArchives
from cycleqd.fileio import write_bytes, write_text


def heatmaps(archives: CyclicArchives, run_dir: Path) -> dict[str, Path]:
    """``heatmaps/<task>.png`` for each archive (quality = that task's score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ribs.visualize import grid_archive_heatmap

    out = {}
    for task, archive in archives.archives.items():
        fig, ax = plt.subplots(figsize=(5, 4))
        if archive.measure_dim == 1 and len(archive) == 1:
            _heatmap_1d_single(archive, ax)  # pyribs 0.12 fails on a 1-D archive holding one elite
        else:
            grid_archive_heatmap(archive, ax=ax, vmin=0.0, vmax=1.0, cmap="viridis")
        d = archives.descriptors(task)
        ax.set_xlabel(f"{d[0]} score")
        if len(d) > 1:
            ax.set_ylabel(f"{d[1]} score")
        ax.set_title(f"archive {task}: quality = {task} score")
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
    for task, archive in archives.archives.items():
        data = archive.data()
        cells = archive.int_to_grid_index(data["index"])
        for j in range(len(data["index"])):
            rows.append(
                ",".join(
                    [
                        task,
                        "-".join(str(int(c)) for c in cells[j]),
                        f"{data['objective'][j]:.6f}",
                        "-".join(f"{m:.6f}" for m in data["measures"][j]),
                        str(int(data["id"][j])),
                        str(int(data["generation"][j])),
                        *[f"{s:.6f}" for s in data["scores"][j]],
                    ]
                )
            )
    path = Path(run_dir) / "elites" / "table.csv"
    write_text(path, "\n".join(rows) + "\n")
    return path
