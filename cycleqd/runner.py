"""One CycleQD run, from a composed config to the run directory's contract files:
models and experts → task vectors → evolution → final model and baselines → summary."""

from __future__ import annotations

import json
import logging
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cycleqd.archives import CyclicArchives
from cycleqd.evaluation import ResidentModel
from cycleqd.evolve import CycleQD
from cycleqd.models import HFTextModel, default_device, load_model
from cycleqd.mutation import expert_svds
from cycleqd.select import aggregate_best
from cycleqd.store import EliteStore, write_atomic
from cycleqd.taskvector import TaskVector
from cycleqd.validate import validate

log = logging.getLogger(__name__)


def build_tasks(cfg: DictConfig) -> list:
    if not cfg.task:
        raise ValueError("config has no tasks: select some with task=[a,b,...]")
    return [instantiate(cfg.task[name], _convert_="all") for name in cfg.task]


def locate_models(cfg: DictConfig, tasks: list) -> tuple[Path, dict[str, Path], str]:
    """Base model directory, expert directory per task, and the experts' format (full | lora).

    ``experts.kind: train`` fine-tunes (once, cached) one expert per task from the base;
    ``experts.kind: paths`` takes them from disk.
    """
    from cycleqd.embedded import EmbeddedRecipe, cache_root, ensure_embedded, ensure_experts

    root = Path(cfg.model.cache_dir) if cfg.model.get("cache_dir") else cache_root()
    trained = cfg.experts.kind == "train"
    if cfg.model.kind == "embedded":
        if not trained:
            raise ValueError("model.kind=embedded needs experts trained from it (experts=embedded_full or embedded_lora)")
        weights = cfg.model.pretrain_weights or {}
        recipe = EmbeddedRecipe(
            model=instantiate(cfg.model.shape),
            pretrain=instantiate(cfg.model.pretrain),
            pretrain_weights=tuple(float(weights.get(t.name, 1.0)) for t in tasks),
            pretrain_examples=cfg.model.pretrain_examples,
            expert=instantiate(cfg.experts.recipe, _convert_="all"),
            expert_examples=cfg.experts.examples,
        )
        built = ensure_embedded(recipe, tasks, root)
        return built.base, built.experts, recipe.expert.kind
    if cfg.model.kind == "smollm2":
        from cycleqd.smollm2 import ensure_smollm2

        base, base_key = ensure_smollm2(root)
    else:
        base, base_key = Path(cfg.model.path), str(Path(cfg.model.path).resolve())
    if trained:
        expert = instantiate(cfg.experts.recipe, _convert_="all")
        return base, ensure_experts(base, base_key, expert, cfg.experts.examples, tasks, root), expert.kind
    return base, {t.name: Path(cfg.experts.paths[t.name]) for t in tasks}, cfg.experts.format


def expert_vectors(base_model, paths: Mapping[str, Path], fmt: str) -> dict[str, TaskVector]:
    if fmt == "lora":
        return {t: TaskVector.from_peft(p) for t, p in paths.items()}
    from transformers import AutoModelForCausalLM

    base_sd = {k: v.detach().cpu() for k, v in base_model.state_dict().items()}
    out = {}
    for t, p in paths.items():
        tuned = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).state_dict()
        out[t] = TaskVector.between(base_sd, tuned)
        del tuned
    return out


class Run:
    """Everything one run holds in memory: tasks, the resident model, experts, the loop."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        validate(cfg)
        torch.manual_seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.tasks = build_tasks(cfg)
        self.names = [t.name for t in self.tasks]
        base_dir, expert_dirs, fmt = locate_models(cfg, self.tasks)
        self.base_dir = base_dir
        self.model, tokenizer = load_model(base_dir, cfg.device or default_device())
        self.experts = expert_vectors(self.model, expert_dirs, fmt)
        touched = list(dict.fromkeys(n for tv in self.experts.values() for n in tv))
        self.resident = ResidentModel(self.model, touched)
        self.text_model = HFTextModel(self.model, tokenizer, batch_size=cfg.eval_batch_size)
        self.evaluator = instantiate(cfg.evaluator)
        self.svds = {t: expert_svds(tv) for t, tv in self.experts.items()}
        self.store = EliteStore(self.run_dir / "elites")
        archives = CyclicArchives(
            tasks=self.names,
            measures={t.name: t.measure for t in self.tasks},
            sampling=cfg.archive.sampling,
            alpha=tuple(cfg.archive.alpha),
            seed=cfg.seed,
        )
        self.qd = CycleQD(
            archives=archives,
            store=self.store,
            crossover=instantiate(cfg.crossover),
            mutation=instantiate(cfg.mutation),
            expert_svds=self.svds,
            children_per_generation=cfg.children_per_generation,
            seed=cfg.seed,
        )
        self.logger = instantiate(cfg.logger)
        self.experts_opt: dict[str, dict[str, float]] = {}

    def evaluate(self, tv: TaskVector | None, split: str) -> dict[str, float]:
        with self.resident.applied(tv):
            return self.evaluator(self.text_model, self.tasks, split)

    # -- phases -------------------------------------------------------------------
    def seed_archives(self) -> None:
        self.experts_opt = {t: self.evaluate(tv, "opt") for t, tv in self.experts.items()}
        self.qd.seed(self.experts, self.experts_opt)

    def evolve(self, t_start: float, elapsed_before: float = 0.0) -> None:
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(
            total=cfg.generations,
            initial=self.qd.generation,
            desc="cycleqd",
            disable=cfg.quiet or not sys.stderr.isatty(),
            dynamic_ncols=True,
        )
        while self.qd.generation < cfg.generations:
            t0 = time.perf_counter()
            candidates = self.qd.ask()
            scores = [self.evaluate(c.vector, "opt") for c in candidates]
            quality = candidates[0].quality_task
            self.qd.tell(candidates, scores)
            stats = self.qd.archives.stats()
            seconds = time.perf_counter() - t0
            self.logger.log(
                {
                    "generation": self.qd.generation - 1,
                    "quality_task": quality,
                    "evaluations": self.qd.evaluations,
                    "archives": stats,
                    "seconds": seconds,
                    "evaluations_per_s": len(candidates) / seconds,
                    "elapsed_s": elapsed_before + time.perf_counter() - t_start,
                }
            )
            bar.set_postfix(
                q=quality,
                evals_s=f"{len(candidates) / seconds:.1f}",
                cov=",".join(f"{s['coverage']:.2f}" for s in stats.values()),
            )
            bar.update(1)
            if cfg.checkpoint_every and self.qd.generation % cfg.checkpoint_every == 0:
                self.checkpoint(elapsed_before + time.perf_counter() - t_start)
        bar.close()

    def checkpoint(self, elapsed: float) -> None:
        """Everything ``resume`` needs besides the config and the elite files, written atomically."""
        state = {"qd": self.qd.state_dict(), "elapsed_s": elapsed, "experts_opt": self.experts_opt}
        path = self.run_dir / "checkpoint" / "state.pkl"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(state))
        tmp.replace(path)

    def baselines(self) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
        """Static merges of the experts: each configured method's parameters are chosen on
        the opt split from its grid (``scales`` × ``density`` × ``gamma``), and the chosen
        merge is reported on the test split."""
        import itertools

        from cycleqd.merging import Merge

        out, chosen = {}, {}
        experts = [self.experts[t] for t in self.names]
        for name, spec in (self.cfg.baselines or {}).items():
            method = spec.get("method", "linear")
            scales = list(spec.get("scales") or [])
            if not scales or (method == "slerp" and len(experts) != 2):
                continue
            grid = list(itertools.product(scales, list(spec.get("density") or [0.5]), list(spec.get("gamma") or [0.01])))
            merges = {}
            for lam, density, gamma in grid:
                merge = Merge(method, density=density, gamma=gamma)
                gen = torch.Generator().manual_seed(self.cfg.seed)
                merges[(lam, density, gamma)] = merge(experts, [lam] * len(experts), gen)
            opt = {k: self.evaluate(tv, "opt") for k, tv in merges.items()}
            best = max(grid, key=lambda k: (_mean(opt[k]), -abs(k[0] - 0.5)))
            out[name] = self.evaluate(merges[best], "test")
            chosen[name] = {
                "method": method,
                "scale": best[0],
                "density": best[1] if method != "linear" else None,
                "gamma": best[2] if method == "breadcrumbs" else None,
                "opt_mean": {str(k): _mean(v) for k, v in opt.items()},
            }
        return out, chosen

    def final_model(self) -> tuple[TaskVector, dict[str, Any]]:
        """The aggregated model: each archive's best elite merged, its overall scale chosen on the opt split.

        Normalised merge weights shrink each skill's task vector to about 1/K of its
        elite's; the task-arithmetic baseline chooses its λ on the opt split, and the
        final model gets the same freedom (``final.scales: [1.0]`` is the plain merge).
        """
        merged, info = aggregate_best(self.qd.archives, self.store, self.cfg.final.method)
        scales = list(self.cfg.final.scales) or [1.0]
        opt = {s: self.evaluate(merged.scale(s), "opt") for s in scales} if len(scales) > 1 else {scales[0]: None}
        best = scales[0] if len(scales) == 1 else max(scales, key=lambda s: (_mean(opt[s]), -abs(s - 1.0)))
        info["scale"] = best
        if len(scales) > 1:
            info["opt_mean"] = {s: _mean(v) for s, v in opt.items()}
        return merged.scale(best), info

    def heatmaps(self) -> dict[str, Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from ribs.visualize import grid_archive_heatmap

        out = {}
        for task, archive in self.qd.archives.archives.items():
            fig, ax = plt.subplots(figsize=(5, 4))
            if archive.measure_dim == 1 and len(archive) == 1:
                _heatmap_1d_single(archive, ax)  # pyribs 0.12 fails on a 1-D archive holding one elite
            else:
                grid_archive_heatmap(archive, ax=ax, vmin=0.0, vmax=1.0, cmap="viridis")
            d = self.qd.archives.descriptors(task)
            ax.set_xlabel(f"{d[0]} score")
            if len(d) > 1:
                ax.set_ylabel(f"{d[1]} score")
            ax.set_title(f"archive {task}: quality = {task} score")
            path = self.run_dir / "heatmaps" / f"{task}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            out[task] = path
        return out

    def elite_table(self) -> None:
        rows = ["archive,cell,objective,measures,id,generation," + ",".join(f"score_{t}" for t in self.names)]
        for task, archive in self.qd.archives.archives.items():
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
                            str(int(data["solution"][j][0])),
                            str(int(data["generation"][j])),
                            *[f"{s:.6f}" for s in data["scores"][j]],
                        ]
                    )
                )
        write_atomic(self.run_dir / "elites" / "table.csv", "\n".join(rows) + "\n")


def _heatmap_1d_single(archive, ax) -> None:
    import numpy as np

    values = np.full((1, archive.cells), np.nan)
    data = archive.data()
    values[0, int(archive.int_to_grid_index(data["index"])[0][0])] = data["objective"][0]
    mesh = ax.pcolormesh(archive.boundaries[0], [0, 1], values, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_yticks([])
    ax.figure.colorbar(mesh, ax=ax)


def _mean(scores: Mapping[str, float]) -> float:
    return sum(scores.values()) / len(scores)


def run(cfg: DictConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Execute (or resume) one run in ``run_dir`` and return its summary."""
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    r = Run(cfg, run_dir)
    ckpt = run_dir / "checkpoint" / "state.pkl"
    r.logger.start(run_dir, OmegaConf.to_container(cfg, resolve=True))
    if resume:
        if not ckpt.is_file():
            raise FileNotFoundError(f"{run_dir} has no checkpoint/state.pkl to resume from")
        state = pickle.loads(ckpt.read_bytes())
        r.qd.load_state_dict(state["qd"])
        r.experts_opt = state["experts_opt"]
        elapsed_before = state["elapsed_s"]
        r.logger.truncate(r.qd.generation)
    else:
        if (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()
        r.seed_archives()
        elapsed_before = 0.0
        r.checkpoint(elapsed_before)
    r.evolve(t_start, elapsed_before)
    r.checkpoint(elapsed_before + time.perf_counter() - t_start)

    final_tv, final_info = r.final_model()
    summary = {
        "tasks": r.names,
        "generations": r.qd.generation,
        "evaluations": r.qd.evaluations,
        "experts": {t: r.evaluate(tv, "test") for t, tv in r.experts.items()},
        "base": r.evaluate(None, "test"),
    }
    baselines, chosen = r.baselines()
    summary["baselines"] = baselines
    summary["final"] = r.evaluate(final_tv, "test")
    summary["final_opt"] = r.evaluate(final_tv, "opt")
    summary["final_elites"] = final_info
    summary["baseline_choices"] = chosen
    summary["experts_opt"] = r.experts_opt
    summary["archives"] = r.qd.archives.stats()
    summary["wall_time_s"] = elapsed_before + time.perf_counter() - t_start
    summary["base_model"] = str(r.base_dir)
    final_tv.save(run_dir / "final.safetensors", metadata={"elites": json.dumps(final_info)})
    r.elite_table()
    images = r.heatmaps()
    r.logger.log_images(images)
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    r.logger.finish(summary)
    return summary
