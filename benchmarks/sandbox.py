"""What the sandbox costs and how well its deadline holds, side by side in one run: the
wall time of scoring one MBPP-style item (a sandbox start, the judge, the candidate and
its tests) alone and with items scored in parallel, and how far past ``timeout_s`` a run
that hangs with a child holding its pipes returns.

    python benchmarks/sandbox.py [--items 40] [--workers 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from cycleqd.evaluation.sandbox import Limits, check, run_tests
from cycleqd.tables import format_table

CODE = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
HANG = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
    "time.sleep(300)\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    limits = Limits(timeout_s=10)
    check(limits)
    rows = []
    for workers in (1, args.workers):
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            passed = list(pool.map(lambda _: run_tests(CODE, TESTS, limits).passed, range(args.items)))
        seconds = time.perf_counter() - start
        assert all(passed)
        rows.append([f"{args.items} items, {workers} at once", f"{1000 * seconds / args.items:.0f} ms per item"])
    overshoot = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        outcome = run_tests(HANG, TESTS, Limits(timeout_s=2))
        overshoot.append(time.perf_counter() - start - 2)
        assert outcome.timed_out
    rows.append(
        [f"hang with a pipe-holding child, timeout_s=2 ({args.repeats} runs)",
         f"returns {statistics.median(overshoot):.2f} s past it (max {max(overshoot):.2f} s)"]
    )  # fmt: skip
    print("\n".join(format_table(["what", "wall time"], rows, align="<~", sep="  ", rule=True)))


if __name__ == "__main__":
    main()
