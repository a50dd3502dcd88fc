"""Provisioning a run: the base model and experts (built, found or loaded), their SVD bases,
the representation of elites (task vectors, or genomes over the bases), the loop, and the
evaluator's workers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cycleqd.core.evolve import CycleQD
from cycleqd.core.genome import Basis, cached_expert_basis, place_basis, truncated_basis
from cycleqd.core.mutation import expert_svds
from cycleqd.core.operators import DenseOperators, GenomeOperators, Operators
from cycleqd.core.taskvector import TaskVector
from cycleqd.evaluation.workers import Worker, WorkerSpec
from cycleqd.models.experts import expert_vectors
from cycleqd.models.loading import default_device, load_model
from cycleqd.models.providers import ExpertPaths, cache_of, locate
from cycleqd.run.components import Components
from cycleqd.run.store import EliteStore

log = logging.getLogger(__name__)


@dataclass
class Provisioned:
    """What a run computes with: the resident base model, the experts' task vectors and bases,
    the operators, the loop, and the models the archives are seeded with."""

    base_dir: Path
    model: Any
    tokenizer: Any
    experts: dict[str, TaskVector]
    touched: tuple[str, ...]  # the parameters some expert changes: what evaluation swaps in
    basis: Basis | None  # genome=true: the experts' SVD bases, which genomes are coefficients over
    basis_files: dict[str, str]  # task → where its basis is cached (load_run reads genome elites with them)
    operators: Operators
    seeds: dict[str, Any]  # task → its expert, as the archives hold it
    qd: CycleQD
    kept: dict[str, dict[str, float]] | None = None  # a truncated basis: what each expert's keeps (energy, rank)


def provision(cfg: DictConfig, c: Components, store: EliteStore) -> Provisioned:
    """Build or find the base model and experts, load them, and make the loop."""
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base_dir, expert_dirs, fmt = locate(c.model, c.experts, c.tasks)
    model, tokenizer = load_model(base_dir, cfg.device or default_device())
    experts = expert_vectors(
        model, expert_dirs, fmt, key="experts.paths" if isinstance(c.experts, ExpertPaths) else "experts"
    )
    touched = tuple(dict.fromkeys(n for tv in experts.values() for n in tv))
    # The experts' SVDs, once per expert content, cached beside the models.
    root = cache_of(c.model)
    parts, basis_files = {}, {}
    embeddings = bool(getattr(c.mutation, "include_embeddings", False))
    for t in c.names:
        parts[t], key = cached_expert_basis(
            experts[t],
            root,
            lambda tv, t=t: expert_svds(tv, include_embeddings=embeddings, desc=f"SVD of expert {t}"),
            variant="embeddings" if embeddings else "",
        )
        basis_files[t] = str(root / "bases" / f"{key[:32]}.safetensors")
    kept: dict[str, dict[str, float]] = {}
    truncation = c.truncation
    if c.genome and truncation is not None and not truncation.exact:
        for t in c.names:
            parts[t], kept[t], basis_files[t] = truncated_basis(parts[t], truncation, basis_files[t])
        log.info(
            "truncated bases (%s): %s",
            truncation.variant(),
            ", ".join(
                f"{t} keeps {100 * k['energy']:.2f} % of its energy in {100 * k['rank']:.1f} % of its directions"
                for t, k in kept.items()
            ),
        )
    if c.genome:
        basis = Basis(c.names, parts)
        operators: Operators = GenomeOperators(c.crossover, c.mutation, basis)
        archives = c.archives.with_solution_dim(basis.length)
        seeds: dict[str, Any] = {t: basis.expert(t) for t in c.names}
    else:
        basis = None
        operators = DenseOperators(c.crossover, c.mutation, {t: parts[t].svds for t in c.names}, store)
        archives = c.archives
        seeds = dict(experts)
    qd = CycleQD(
        archives=archives, operators=operators, children_per_generation=cfg.children_per_generation, seed=cfg.seed
    )
    return Provisioned(
        base_dir, model, tokenizer, experts, touched, basis, basis_files, operators, seeds, qd, kept or None
    )


def start_evaluator(cfg: DictConfig, c: Components, p: Provisioned) -> None:
    """Start the run's evaluator: this process (its resident model), or a pool of workers built from the spec."""
    pool = c.evaluator
    spec = WorkerSpec(
        base_dir=str(p.base_dir),
        device=cfg.device,
        threads=cfg.threads,
        eval_batch_size=cfg.eval_batch_size,
        tasks=OmegaConf.to_container(cfg.task, resolve=True),
        touched=p.touched,
        timeout_s=pool.timeout_s,
        seed=cfg.seed,
        opt_items=c.search.name == "m2n2",  # M2N2's fitness is shared over the opt items
    )
    local = None
    if pool.needs_local_worker:
        if p.basis is not None:
            log.info("expert bases: %s", place_basis(p.basis, next(p.model.parameters()).device))
        local = Worker(
            p.model,
            p.tokenizer,
            c.tasks,
            list(p.touched),
            p.basis,
            eval_batch_size=cfg.eval_batch_size,
            timeout_s=pool.timeout_s,
            opt_items=spec.opt_items,
        )
    pool.start(local, spec, p.basis)
