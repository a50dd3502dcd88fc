"""Start-up time of the ``cycleqd`` commands that only read files (``--help``, ``show``,
``compare``), side by side in one run with the imports a search needs (``cycleqd run``
imports ``cycleqd.run.runner`` before any work) and with ``import ribs`` alone.

    python benchmarks/startup.py [--run RUN_DIR] [--repeats 5]

Each figure is the median wall time of a fresh interpreter, the command run to its end.
Without ``--run``, a tiny run (an embedded model of width 32, about a minute to build and
run on 2 cores) gives ``show`` and ``compare`` something to read.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The tiny setup of the end-to-end tests: seconds to build, a real finished run.
TINY = [
    "model.shape.hidden_size=32", "model.shape.intermediate_size=64", "model.shape.num_hidden_layers=2",
    "model.shape.num_attention_heads=2", "model.pretrain.steps=40", "model.pretrain_examples=3000",
    "experts.examples=600", "experts.recipe.training.steps=15", "generations=2", "quiet=true", "threads=1",
    *(f"task.{t}.{split}=24" for t in ("addition", "reversal", "sorting") for split in ("n_opt", "n_test")),
]  # fmt: skip


def seconds(code: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a finished run directory (default: make a tiny one)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run
        if run_dir is None:
            run_dir = Path(tmp) / "sweep" / "run"
            cmd = [
                sys.executable,
                "-m",
                "cycleqd.cli",
                "run",
                *TINY,
                f"model.cache_dir={tmp}/cache",
                f"hydra.run.dir={run_dir}",
            ]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cli = "from cycleqd.cli import main; main({!r})"
        rows = [
            ("cycleqd --help", cli.format(["--help"])),
            ("cycleqd show RUN", cli.format(["show", str(run_dir)])),
            ("cycleqd compare SWEEP", cli.format(["compare", str(run_dir.parent), "--csv", f"{tmp}/compare.csv"])),
            ("import cycleqd.run.runner (what run needs)", "import cycleqd.run.runner"),
            ("import ribs", "import ribs"),
            ("python -c pass", "pass"),
        ]
        measured = [(label, seconds(code, args.repeats)) for label, code in rows]
    reference = dict(measured)["import cycleqd.run.runner (what run needs)"]
    print(f"median of {args.repeats} fresh interpreters")
    print(f"{'command':40s}{'seconds':>10s}{'/ runner import':>17s}")
    for label, s in measured:
        print(f"{label:40s}{s:10.2f}{s / reference:17.2f}")


if __name__ == "__main__":
    main()
