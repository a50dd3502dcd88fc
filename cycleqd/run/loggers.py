"""Run loggers: ``metrics.jsonl`` (the default) and Weights & Biases."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from cycleqd.fileio import write_text


class JsonlLogger:
    """Appends one JSON object per generation (or per round of a refinement or a comparison
    search) to ``<run_dir>/metrics.jsonl``."""

    def __init__(self, run_dir: str | Path | None = None) -> None:
        self.path = Path(run_dir or ".") / "metrics.jsonl"

    def start(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"

    def truncate(self, generations: int) -> None:
        """Keep the lines of generations before ``generations`` (a resumed run rewrites what
        came after its checkpoint; a line cut short by a crash goes too)."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["generation"] < generations:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
        write_text(self.path, "".join(kept))

    def log(self, metrics: Mapping[str, Any]) -> None:
        # Synced before the checkpoint that follows it, so a committed generation never lacks its line.
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def log_images(self, images: Mapping[str, Path]) -> None:
        pass

    def finish(self, summary: Mapping[str, Any]) -> None:
        pass


class WandbLogger(JsonlLogger):
    """Also sends metrics, heatmaps and the final table to wandb (``mode: offline`` needs no login).

    Args:
        project: wandb project.
        mode: ``online``, ``offline`` or ``disabled``; the ``WANDB_MODE`` variable wins when set.
    """

    def __init__(self, project: str = "cycleqd", mode: str = "offline", **kwargs: Any) -> None:
        super().__init__()
        self.project, self.mode, self.kwargs = project, mode, kwargs
        self.run = None

    def start(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        super().start(run_dir, config)
        import wandb

        self.run = wandb.init(
            project=self.project,
            mode=os.environ.get("WANDB_MODE", self.mode),
            dir=str(run_dir),
            config=dict(config),
            **self.kwargs,
        )

    def log(self, metrics: Mapping[str, Any]) -> None:
        super().log(metrics)
        flat = {}
        for k, v in metrics.items():
            if isinstance(v, Mapping):
                for k2, v2 in v.items():
                    if isinstance(v2, Mapping):
                        flat.update({f"{k}/{k2}/{k3}": v3 for k3, v3 in v2.items()})
                    else:
                        flat[f"{k}/{k2}"] = v2
            elif isinstance(v, (int, float)):
                flat[k] = v
        self.run.log(flat, step=int(metrics["generation"]))

    def log_images(self, images: Mapping[str, Path]) -> None:
        import wandb

        self.run.log({f"heatmap/{k}": wandb.Image(str(p)) for k, p in images.items()})

    def finish(self, summary: Mapping[str, Any]) -> None:
        import wandb

        tasks = summary["tasks"]
        rows = [[f"expert:{n}", *[s[t] for t in tasks]] for n, s in summary["experts"].items()]
        rows += [[f"baseline:{n}", *[s[t] for t in tasks]] for n, s in summary["baselines"].items()]
        rows.append(["cycleqd", *[summary["final"][t] for t in tasks]])
        self.run.log({"final_table": wandb.Table(columns=["model", *tasks], data=rows)})
        self.run.finish()
