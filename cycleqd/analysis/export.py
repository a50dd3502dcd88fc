"""Export an elite (or the final merge) as a transformers model directory or a peft
LoRA adapter that loads with ``from_pretrained`` and no cycleqd installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cycleqd.analysis.rundata import RunData, load_run
from cycleqd.core.mutation import svd_of
from cycleqd.core.taskvector import LowRank, TaskVector
from cycleqd.fileio import write_directory


def resolve_elite(run: RunData, spec: str) -> tuple[TaskVector, dict[str, Any]]:
    """``spec`` is an elite id, ``best:<task>`` (best elite of that task's archive) or ``final``."""
    if spec == "final":
        path = run.run_dir / "final.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{run.run_dir} has no final.safetensors: the run has not finished")
        return TaskVector.load(path), {"elite": "final", "scores_test": run.summary.get("final", {})}
    if spec.startswith("best:"):
        task = spec.split(":", 1)[1]
        if task not in run.archives:
            raise ValueError(f"--elite {spec!r}: no archive {task!r}; the run's tasks are {run.tasks}")
        rows = run.elites[run.elites["archive"] == task]
        elite_id = int(rows.loc[rows["objective"].idxmax(), "id"])
    else:
        try:
            elite_id = int(spec)
        except ValueError:
            raise ValueError(f"--elite must be an id, best:<task> or final; got {spec!r}") from None
        if elite_id not in set(run.elites["id"]):
            raise ValueError(f"--elite {elite_id}: no archive of {run.run_dir} holds this elite")
    row = run.elites[run.elites["id"] == elite_id].iloc[0]
    provenance = {
        "elite": elite_id,
        "generation": int(row["generation"]),
        "origin": row["origin"],
        "parents": list(row["parents"]),
        "scores": {t: float(row[f"score_{t}"]) for t in run.tasks},
    }
    return run.vector(elite_id), provenance


def _base_dir(run: RunData) -> Path:
    base = run.summary.get("base_model")
    if not base or not Path(base).is_dir():
        raise FileNotFoundError(f"the run's base model {base!r} is not on this machine (summary.json: base_model)")
    return Path(base)


def export_hf(run: RunData, tv: TaskVector, out: Path, provenance: dict[str, Any]) -> Path:
    """θ0 + τ as a transformers directory (safetensors, config, tokenizer, model card)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = _base_dir(run)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, d in tv.items():
            p = params[name]
            delta = d.dense() if isinstance(d, LowRank) else d
            p.copy_((p.float() + delta.float()).to(p.dtype))
    return _write_dir(
        out,
        provenance,
        run,
        lambda tmp: (model.save_pretrained(tmp), AutoTokenizer.from_pretrained(base).save_pretrained(tmp)),
    )


def lora_factors(tv: TaskVector, rank: int | None) -> tuple[dict[str, LowRank], dict[str, float]]:
    """Each delta as ``B A`` of rank ≤ ``rank`` (truncated SVD for dense ones), and the
    fraction of its squared Frobenius norm that the factors keep."""
    out, kept = {}, {}
    for name, d in tv.items():
        if len(d.shape) != 2:
            raise ValueError(f"parameter {name!r} is not a matrix: a LoRA adapter cannot hold its delta")
        s = svd_of(d)
        k = len(s.S) if rank is None else min(rank, len(s.S))
        if k == 0:
            continue
        out[name] = LowRank(s.U[:, :k] * s.S[:k], s.Vh[:k])
        total = float((s.S**2).sum())
        kept[name] = float((s.S[:k] ** 2).sum()) / total if total > 0 else 1.0
    return out, kept


def export_peft(
    run: RunData, tv: TaskVector, out: Path, provenance: dict[str, Any], rank: int | None
) -> tuple[Path, dict[str, float]]:
    """τ as a peft LoRA adapter (``lora_alpha = r`` per module, so the scale is 1)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    if not tv.is_factored and rank is None:
        raise ValueError("a full-weight elite needs --rank for its truncated-SVD LoRA")
    factors, kept = lora_factors(tv, rank)
    modules = {name.removesuffix(".weight"): f for name, f in factors.items()}
    ranks = {m: f.rank for m, f in modules.items()}
    r = max(ranks.values())
    cfg = LoraConfig(
        r=r,
        lora_alpha=r,
        target_modules=sorted({m.split(".")[-1] for m in modules}),
        rank_pattern={f"^{m}$": k for m, k in ranks.items()},
        alpha_pattern={f"^{m}$": k for m, k in ranks.items()},
        lora_dropout=0.0,
        base_model_name_or_path=str(_base_dir(run)),
        task_type="CAUSAL_LM",
    )
    tensors = {}
    for m, f in modules.items():
        tensors[f"base_model.model.{m}.lora_A.weight"] = f.A.contiguous()
        tensors[f"base_model.model.{m}.lora_B.weight"] = f.B.contiguous()

    def write(tmp: Path) -> None:
        cfg.save_pretrained(tmp)
        save_file(tensors, tmp / "adapter_model.safetensors")

    provenance = {**provenance, "lora_rank": rank, "energy_kept": kept}
    return _write_dir(out, provenance, run, write), kept


def _write_dir(out: Path, provenance: dict[str, Any], run: RunData, write) -> Path:
    """The model, its card and its provenance, written whole into ``out`` or not at all."""

    def fill(tmp: Path) -> None:
        write(tmp)
        (tmp / "README.md").write_text(model_card(run, provenance))
        (tmp / "cycleqd.json").write_text(json.dumps(provenance, indent=2, default=str))

    try:
        return write_directory(out, fill)
    except FileExistsError:
        raise FileExistsError(f"--out {str(out)!r} exists and is not empty") from None


def model_card(run: RunData, provenance: dict[str, Any]) -> str:
    tasks = run.tasks
    lines = [
        "---",
        "library_name: transformers",
        "tags: [cycleqd, model-merging, quality-diversity]",
        "---",
        "",
        f"# CycleQD elite {provenance.get('elite')}",
        "",
        f"Evolved by cycleqd (CycleQD, Kuroki et al., ICLR 2025) in run `{run.run_dir.name}`.",
        "",
        f"- origin: {provenance.get('origin', 'final merge of the archives best elites')}",
        f"- generation: {provenance.get('generation', '-')}",
        f"- parents: {list(provenance.get('parents', []))}",
        f"- base model: `{run.summary.get('base_model')}`",
    ]
    if provenance.get("lora_rank") is not None:
        lines.append(f"- LoRA rank {provenance['lora_rank']} (truncated SVD of a full-weight elite)")
    kept = provenance.get("scores_truncated") or {}
    if kept:
        lines += ["", "| task | score of this rank-r adapter (optimisation split) |", "| --- | --- |"]
        lines += [f"| {t} | {100 * kept[t]:.1f} |" for t in tasks if t in kept]
    scores = provenance.get("scores") or {}
    if scores:
        lines += ["", "| task | score (optimisation split) |", "| --- | --- |"]
        lines += [f"| {t} | {100 * scores[t]:.1f} |" for t in tasks if t in scores]
    test = provenance.get("scores_test") or {}
    if test:
        lines += ["", "| task | score (held-out test split) |", "| --- | --- |"]
        lines += [f"| {t} | {100 * test[t]:.1f} |" for t in tasks if t in test]
    cfg = run.run_dir / ".hydra" / "config.yaml"
    if cfg.is_file():
        lines += ["", "## Run config", "", "```yaml", cfg.read_text().strip(), "```"]
    return "\n".join(lines) + "\n"


def _scores(run: RunData, tv: TaskVector) -> dict[str, float]:
    """Opt-split scores of θ0 + ``tv`` on the run's own tasks."""
    from cycleqd.errors import EvaluationFailed
    from cycleqd.evaluation.scoring import ResidentModel, score_tasks
    from cycleqd.models.loading import HFTextModel, load_model
    from cycleqd.protocols import Failure
    from cycleqd.run.components import build_tasks
    from cycleqd.run.configs import load_config

    tasks = build_tasks(load_config(run.run_dir))
    model, tokenizer = load_model(_base_dir(run))
    resident = ResidentModel(model, list(tv))
    with resident.applied(tv):
        result = score_tasks(HFTextModel(model, tokenizer), tasks, "opt")
    if isinstance(result, Failure):
        raise EvaluationFailed(f"scoring the truncated adapter failed: {result}")
    return dict(result)


def export(run_dir: str | Path, elite: str, fmt: str, out: str | Path, rank: int | None = None) -> Path:
    """Export ``elite`` of ``run_dir`` to ``out`` as ``fmt`` (``hf`` or ``peft``)."""
    run = load_run(run_dir)
    tv, provenance = resolve_elite(run, elite)
    if fmt == "hf":
        return export_hf(run, tv, Path(out), provenance)
    if fmt == "peft":
        if rank is not None:
            # What the truncation keeps, in scores: θ0 + the rank-r delta on the run's tasks.
            factors, _ = lora_factors(tv, rank)
            provenance = {**provenance, "scores_truncated": _scores(run, TaskVector(factors))}
        return export_peft(run, tv, Path(out), provenance, rank)[0]
    raise ValueError(f"--format must be hf or peft, got {fmt!r}")
