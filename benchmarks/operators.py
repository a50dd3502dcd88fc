"""Operator throughput: crossover and SVD mutation on dense vs factored (LoRA) task
vectors, and the factored SVD against the dense one, side by side in one run.

    python benchmarks/operators.py [--dim 1024] [--rank 8] [--layers 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from cycleqd.core.crossover import MergeCrossover
from cycleqd.core.mutation import SVDMutation, expert_svds, svd_dense, svd_lowrank
from cycleqd.core.taskvector import LowRank, TaskVector


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    g = torch.Generator().manual_seed(0)
    names = [f"model.layers.{i}.mlp.{m}.weight" for i in range(a.layers) for m in ("up_proj", "down_proj")]

    def lora() -> TaskVector:
        return TaskVector(
            {
                n: LowRank(torch.randn(a.dim, a.rank, generator=g), torch.randn(a.rank, a.dim, generator=g) / a.dim)
                for n in names
            }
        )

    lora_parents = [lora(), lora()]
    dense_parents = [tv.dense() for tv in lora_parents]
    lora_expert, dense_expert = lora_parents[0], dense_parents[0]
    cross = MergeCrossover(granularity="layer")
    mut = SVDMutation(scale=0.1)
    rows = []
    rows.append(
        (
            "SVD of one expert (all modules)",
            timed(lambda: expert_svds(dense_expert), 1),
            timed(lambda: expert_svds(lora_expert), a.repeats),
        )
    )
    svd_d, svd_l = expert_svds(dense_expert), expert_svds(lora_expert)
    rows.append(
        (
            "crossover of 2 parents",
            timed(lambda: cross(dense_parents, g), a.repeats),
            timed(lambda: cross(lora_parents, g), a.repeats),
        )
    )
    child_d, child_l = cross(dense_parents, g), cross(lora_parents, g)
    rows.append(
        (
            "SVD mutation of a child",
            timed(lambda: mut(child_d, svd_d, g), a.repeats),
            timed(lambda: mut(child_l, svd_l, g), a.repeats),
        )
    )
    one = lora_expert[names[0]]
    rows.append(
        (
            "SVD of one module",
            timed(lambda: svd_dense(one.dense()), a.repeats),
            timed(lambda: svd_lowrank(one), a.repeats),
        )
    )
    mb = lambda tv: tv.numel() * 4 / 2**20  # noqa: E731
    print(f"{len(names)} modules of {a.dim}x{a.dim}, LoRA rank {a.rank}, {torch.get_num_threads()} threads")
    print(f"{'operation':36s}{'dense (ms)':>12s}{'factored (ms)':>15s}{'ratio':>8s}")
    for name, d, f in rows:
        print(f"{name:36s}{1e3 * d:12.2f}{1e3 * f:15.2f}{d / f:8.1f}")
    print(
        f"{'stored size of one child (MiB)':36s}{mb(child_d):12.2f}{mb(child_l):15.2f}{mb(child_d) / mb(child_l):8.1f}"
    )


if __name__ == "__main__":
    main()
