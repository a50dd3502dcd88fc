"""What a run's report weighs and how fast it opens: the page's bytes by part (plotly.js, the
figures, the elites' details and lineages), the time ``cycleqd report`` takes to write it, and
the time headless Chromium takes from navigation to every figure drawn, over repeated loads.

    python benchmarks/report.py [RUN_DIR] [--repeats 5]     (RUN_DIR: the newest demo run)

Needs Debian's chromium and chromium-driver, and selenium (the dev extra).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cycleqd.analysis.report.page import write_report
from cycleqd.tables import format_table


def newest_demo() -> Path:
    runs = list(Path("archives/demo").glob("*/summary.json"))
    if not runs:
        raise SystemExit("no demo run under archives/demo: run `make demo` first, or name a run directory")
    return max(runs, key=lambda p: p.stat().st_mtime).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    run_dir = Path(args.run_dir) if args.run_dir else newest_demo()
    out = Path(tempfile.mkdtemp()) / "report.html"
    t = time.perf_counter()
    write_report(run_dir, out)
    write_s = time.perf_counter() - t
    page = out.read_text()
    parts = {
        name: len(m.group(1).encode())
        for name in ("FIGURES", "DETAIL", "LINEAGE", "TEMPLATE")
        if (m := re.search(rf"const {name} = (\{{.*?\}});\n", page, re.S))
    }
    script = re.search(r"<head>.*?<script>(.*?)</script>", page, re.S)
    parts["plotly.js"] = len(script.group(1).encode()) if script else 0
    total = out.stat().st_size
    rows = [[k, f"{v / 2**20:.2f}"] for k, v in parts.items()] + [["page", f"{total / 2**20:.2f}"]]
    print(f"run: {run_dir}  (cycleqd report wrote it in {write_s:.1f} s)")
    print("\n".join(format_table(["part", "MiB"], rows, align="<>", sep="  ")))

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's tests/
    from tests.browser import chromium

    driver = chromium()
    loads, drawn = [], []
    try:
        for _ in range(args.repeats):
            driver.get("about:blank")
            driver.get(out.as_uri())
            for _ in range(600):
                if driver.execute_script("return document.body && document.body.dataset.drawn === '1'"):
                    break
                time.sleep(0.05)
            timing = driver.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                "const d = performance.getEntriesByName('drawn')[0];"
                "return [n.loadEventEnd, d ? d.startTime : null];"
            )
            loads.append(timing[0] / 1000)
            drawn.append((timing[1] or float("nan")) / 1000)
    finally:
        driver.quit()
    print()
    print(
        "\n".join(
            format_table(
                ["headless Chromium", "min s", "median s", "max s"],
                [
                    [name, f"{min(v):.2f}", f"{statistics.median(v):.2f}", f"{max(v):.2f}"]
                    for name, v in (("load event", loads), ("every figure drawn", drawn))
                ],
                align="<>>>",
                sep="  ",
            )
        )
    )
    print(f"({args.repeats} loads from disk, navigation start to each event)")


if __name__ == "__main__":
    main()
