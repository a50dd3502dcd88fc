"""A non-editable install works anywhere: the configs and task plugins ship inside the package,
under cycleqd's name only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.runs import REPO


def test_a_wheel_installed_elsewhere_runs_from_any_directory(tmp_path: Path):
    src, wheels, target, elsewhere = tmp_path / "src", tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A copy of the sources, so the build leaves nothing in the repository.
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("cycleqd", "tasks", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "warning" not in (build.stdout + build.stderr).lower(), build.stderr[-3000:]  # the packaging is clean
    (wheel,) = wheels.glob("cycleqd-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    # one top-level name, cycleqd (no `tasks` or `conf` of its own in site-packages)
    assert {n.split("/")[0] for n in names if not n.startswith("cycleqd-")} == {"cycleqd"}
    configs = {str(p.relative_to(REPO)) for p in (REPO / "conf").rglob("*.yaml")}
    assert (
        configs and {n.removeprefix("cycleqd/") for n in names if n.endswith(".yaml")} == configs
    )  # every config group ships
    shipped = REPO / "cycleqd" / "models" / "shipped"
    weights = {str(p.relative_to(REPO)) for p in shipped.rglob("*") if p.is_file()}
    assert len(weights) == 6 + 1 + 3 * 5 and weights <= set(
        names
    )  # the base, the experts (recipe + 3 models), every file
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (target / "cycleqd" / "conf" / "config.yaml").is_file()
    script = (
        "import sys, cycleqd\n"
        f"assert cycleqd.__file__.startswith({str(target)!r}), cycleqd.__file__\n"
        "from cycleqd.cli import main\n"
        "main(['run', 'dry_run=true'])\n"
        "main(['run', 'dry_run=true', 'experiment=smollm2', 'crossover=ties'])\n"
        "main(['run', 'dry_run=true', 'task.addition._target_=tasks.addition.Addition'])\n"  # a config of the flat layout
    )
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("config valid") == 3, proc.stdout
    assert (
        "task.addition._target_: tasks.addition.Addition has moved to cycleqd.tasks.addition.Addition"
        in proc.stdout + proc.stderr
    )
    assert not any(elsewhere.iterdir())  # a dry run writes nothing
