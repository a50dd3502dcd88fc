"""Elites as genomes (coefficients over the experts' SVD bases) against task vectors,
side by side in one run: bytes per elite at the Llama-3-8B shape, time to make and to
materialise a child, and the demo's run directory in both representations.

    python benchmarks/genome.py [--dim 1024] [--layers 8] [--demo-generations 300] [--skip-demo]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cycleqd.core.crossover import MergeCrossover
from cycleqd.core.genome import Basis, ExpertBasis
from cycleqd.core.mutation import SVDMutation, expert_svds
from cycleqd.core.operators import DenseOperators, GenomeOperators
from cycleqd.core.taskvector import LowRank, TaskVector, as_dense

GIB, MIB = 2**30, 2**20


def timed(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def llama3_8b_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter shapes of Llama-3-8B, from its config on the meta device (no weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def paper_scale_table() -> None:
    shapes = llama3_8b_shapes()
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    mutated = {n: s for n, s in shapes.items() if len(s) == 2 and "embed" not in n and "lm_head" not in n}
    numel = sum(int(np.prod(s)) for s in shapes.values())
    # Full fine-tunes change every parameter: a coefficient per singular direction of each
    # mutated matrix, one per other parameter; three experts.
    full = 3 * (sum(min(s) for s in mutated.values()) + len(shapes) - len(mutated))
    lora = 3 * sum(16 for n in mutated if any(t in n for t in targets))
    basis_full = sum(s[0] * min(s) + min(s) + min(s) * s[1] for s in mutated.values()) + sum(
        int(np.prod(s)) for n, s in shapes.items() if n not in mutated
    )
    basis_lora = sum(16 * (s[0] + 1 + s[1]) for n, s in mutated.items() if any(t in n for t in targets))
    print(f"Llama-3-8B shape ({numel / 1e9:.2f} B parameters, from LlamaConfig on the meta device), three experts")
    print(f"{'elite as':44s}{'numbers':>16s}{'bytes':>14s}")
    print(f"{'task vector, dense bf16':44s}{numel:16,d}{numel * 2 / GIB:11.1f} GiB")
    print(f"{'genome, full-weight experts (float32)':44s}{full:16,d}{full * 4 / MIB:11.1f} MiB")
    print(f"{'genome, LoRA r=16 experts (float32)':44s}{lora:16,d}{lora * 4 / MIB:11.2f} MiB")
    print(f"ratio dense / genome: full {numel * 2 / (full * 4):,.0f}x, LoRA {numel * 2 / (lora * 4):,.0f}x")
    print(
        f"basis each evaluator holds once per expert (float32): full {basis_full * 4 / GIB:.1f} GiB, "
        f"LoRA r=16 {basis_lora * 4 / MIB:.0f} MiB"
    )


def _experts(dim: int, layers: int, rank: int | None, g: torch.Generator) -> dict[str, TaskVector]:
    names = [f"model.layers.{i}.mlp.{m}.weight" for i in range(layers) for m in ("up_proj", "down_proj")]
    out = {}
    for t in "abc":
        if rank is None:
            out[t] = TaskVector({n: torch.randn(dim, dim, generator=g) / dim for n in names})
        else:
            out[t] = TaskVector(
                {
                    n: LowRank(torch.randn(dim, rank, generator=g), torch.randn(rank, dim, generator=g) / dim)
                    for n in names
                }
            )
    return out


def operator_table(dim: int, layers: int, repeats: int) -> None:
    print(
        f"\nMaking and materialising one child: {2 * layers} modules of {dim}x{dim}, three experts, {torch.get_num_threads()} threads"
    )
    print(f"{'experts':14s}{'operation':34s}{'task vector (ms)':>18s}{'genome (ms)':>13s}")
    g = torch.Generator().manual_seed(0)
    crossover, mutation = MergeCrossover(granularity="layer"), SVDMutation(scale=0.1)
    for label, rank in (("full rank", None), ("LoRA r=8", 8)):
        experts = _experts(dim, layers, rank, g)
        svds = {t: expert_svds(tv) for t, tv in experts.items()}
        basis = Basis(list(experts), {t: ExpertBasis.of(experts[t], svds[t]) for t in experts})
        dense_ops, genome_ops = (
            DenseOperators(crossover, mutation, svds, store=None),
            GenomeOperators(crossover, mutation, basis),
        )
        tv_parents, c_parents = [experts["a"], experts["b"]], [basis.expert("a"), basis.expert("b")]
        # children of children, so the task-vector path pays for what a run carries (LoRA ranks grow)
        for _ in range(3):
            tv_parents = [dense_ops.child(tv_parents, "a", g), dense_ops.child(tv_parents, "b", g)]
            c_parents = [genome_ops.child(c_parents, "a", g), genome_ops.child(c_parents, "b", g)]
        tv_child, c_child = dense_ops.child(tv_parents, "c", g), genome_ops.child(c_parents, "c", g)
        base = {n: torch.zeros(dim, dim) for n in experts["a"]}
        rows = [
            (
                "crossover + mutation",
                timed(lambda: dense_ops.child(tv_parents, "c", g), repeats),
                timed(lambda: genome_ops.child(c_parents, "c", g), repeats),
            ),
            (
                "materialise θ0 + τ",
                timed(lambda: [base[n].add(as_dense(d)) for n, d in tv_child.items()], repeats),
                timed(lambda: [base[n].add(basis.delta(c_child, n)) for n in base], repeats),
            ),
        ]
        for op, a, b in rows:
            print(f"{label:14s}{op:34s}{1e3 * a:18.1f}{1e3 * b:13.1f}")
        size_tv = tv_child.numel() * 4
        print(f"{label:14s}{'bytes of the child':34s}{size_tv / MIB:15.2f} MiB{c_child.nbytes / 1024:9.1f} KiB")


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def demo_table(generations: int) -> None:
    from cycleqd.analysis.rundata import load_run

    print(f"\nThe demo, {generations} generations (experiment=demo), each representation in turn")
    print(
        f"{'experts':16s}{'elites as':14s}{'run directory':>16s}{'bytes per elite':>18s}{'max LoRA rank':>15s}{'final mean':>12s}"
    )
    env = {**os.environ, "WANDB_MODE": "disabled"}
    with tempfile.TemporaryDirectory() as tmp:
        for experts in ("embedded_full", "embedded_lora"):
            for genome in ("false", "true"):
                run_dir = Path(tmp) / f"{experts}-{genome}"
                cmd = [
                    sys.executable,
                    "-m",
                    "cycleqd.cli",
                    "run",
                    f"experts={experts}",
                    f"genome={genome}",
                    f"generations={generations}",
                    "quiet=true",
                    f"hydra.run.dir={run_dir}",
                ]
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                run = load_run(run_dir)
                ids = sorted(set(run.elites["id"]))
                if genome == "true":
                    per_elite = 4 * len(run.solution(ids[0]))
                    basis = run.basis()
                    vectors = [basis.factored(run.solution(i)) for i in ids]
                else:
                    files = [p for p in (run_dir / "elites").glob("elite-*")]
                    per_elite = sum(p.stat().st_size for p in files) / len(ids)
                    vectors = [run.vector(i) for i in ids]
                ranks = [d.rank for tv in vectors for d in tv.values() if isinstance(d, LowRank)]
                mean = 100 * sum(run.summary["final"].values()) / len(run.summary["final"])
                rank = str(max(ranks)) if ranks and experts.endswith("lora") else "-"
                print(
                    f"{experts:16s}{'genome' if genome == 'true' else 'task vectors':14s}{_du(run_dir) / MIB:12.1f} MiB"
                    f"{per_elite / 1024:14.1f} KiB{rank:>15s}{mean:12.1f}"
                )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--demo-generations", type=int, default=300)
    p.add_argument("--skip-demo", action="store_true")
    a = p.parse_args()
    paper_scale_table()
    operator_table(a.dim, a.layers, a.repeats)
    if not a.skip_demo:
        demo_table(a.demo_generations)


if __name__ == "__main__":
    main()
