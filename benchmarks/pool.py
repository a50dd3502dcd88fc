"""Evaluation throughput of the demo's children: the local evaluator against Ray pools,
side by side in one run, and the driver's peak memory over a long Ray run.

    python benchmarks/pool.py [--children 24] [--rss-generations 100 600] [--skip-rss]

Every pool scores the same children (genomes bred from the demo's experts) on the
optimisation split, one CPU thread per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cycleqd.run.configs import compose
from cycleqd.run.runner import Run


def children(run: Run, n: int) -> list:
    """``n`` children of the demo's experts, bred as a run breeds them."""
    gen = torch.Generator().manual_seed(0)
    pool = [run.basis.expert(t) for t in run.names]
    for i in range(n):
        q = run.names[i % len(run.names)]
        pool.append(run.operators.child([pool[-1], pool[-2]], q, gen))
    return pool[len(run.names) :]


def measure(label: str, overrides: list[str], n: int) -> dict:
    cfg = compose(["threads=1", "quiet=true", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(cfg, Path(tmp))
        run.setup()  # models, bases, and the pool's workers, built before the clock starts
        try:
            kids = children(run, n)
            pool = run.pool
            run.scores([(kids[0], "opt")])  # warm-up: first-call costs stay out of the figure
            pool.stats = [type(s)() for s in pool.stats]
            pool.t_start = t0 = time.perf_counter()
            if getattr(pool, "mode", "sync") == "async":
                for i, x in enumerate(kids):
                    if pool.in_flight >= pool.num_workers:
                        pool.next_result()
                    pool.submit(i, x, "opt")
                while pool.in_flight:
                    pool.next_result()
            else:
                width = getattr(pool, "num_workers", 1)
                for i in range(0, n, width):
                    run.scores([(x, "opt") for x in kids[i : i + width]])
            wall = time.perf_counter() - t0
            util = pool.utilisation()["utilisation"]
        finally:
            run.pool.close()
    return {"label": label, "evals_s": n / wall, "per_eval_ms": 1e3 * wall / n, "utilisation": util}


def driver_rss(generations: int) -> tuple[float, float]:
    """Peak RSS (MiB) of the driver of a Ray run of ``generations`` (sync, two workers), and its wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "cycleqd.cli",
            "run",
            "evaluator=ray",
            "threads=1",
            f"generations={generations}",
            "quiet=true",
            f"hydra.run.dir={tmp}/run",
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, env={**os.environ, "WANDB_MODE": "disabled"}, check=True, capture_output=True)
        last = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])
        return last["driver_peak_rss_mb"], time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--children", type=int, default=24)
    p.add_argument("--rss-generations", type=int, nargs="*", default=[100, 600])
    p.add_argument("--skip-rss", action="store_true")
    a = p.parse_args()
    rows = [
        measure("local, 1 thread", [], a.children),
        measure("Ray, 1 worker", ["evaluator=ray", "evaluator.num_workers=1"], a.children),
        measure("Ray, 2 workers, sync", ["evaluator=ray", "evaluator.num_workers=2"], a.children),
        measure(
            "Ray, 2 workers, async", ["evaluator=ray", "evaluator.num_workers=2", "evaluator.mode=async"], a.children
        ),
    ]
    base = rows[0]["evals_s"]
    print(
        f"The demo's evaluation ({a.children} children, 3 tasks x 256 prompts each, opt split), "
        f"{os.cpu_count()} CPU cores, 1 thread per worker"
    )
    print(f"{'evaluator':24s}{'evals/s':>9s}{'ms/eval':>9s}{'vs local':>10s}  worker utilisation")
    for r in rows:
        print(
            f"{r['label']:24s}{r['evals_s']:9.2f}{r['per_eval_ms']:9.0f}{r['evals_s'] / base:9.2f}x  "
            + ", ".join(f"{u:.0%}" for u in r["utilisation"])
        )
    print(
        f"Ray overhead per evaluation at 1 worker: {100 * (rows[1]['per_eval_ms'] / rows[0]['per_eval_ms'] - 1):+.1f}%"
    )
    print(
        f"2 workers against 1 worker: sync {rows[2]['evals_s'] / rows[1]['evals_s']:.2f}x, "
        f"async {rows[3]['evals_s'] / rows[1]['evals_s']:.2f}x"
    )
    if not a.skip_rss:
        print("\nDriver peak RSS of a Ray run (sync, 2 workers), by generations")
        for g in a.rss_generations:
            rss, wall = driver_rss(g)
            print(f"{g:6d} generations: {rss:8.0f} MiB  ({wall:.0f} s)")


if __name__ == "__main__":
    main()
