"""The Ray evaluator pool: the same run as the local evaluator in sync mode, every worker
busy in async mode, dead and hung workers replaced, resume after a driver crash, and no
process left behind."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from cycleqd.run import checkpoint
from tests.runs import Started, cli, run_fingerprint
from tests.tiny import lively_overrides

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the ray extra")
G = 12


def _args(cache: Path, run_dir: Path, *extra: str, generations: int = G) -> list[str]:
    return [*lively_overrides(cache, generations), "checkpoint_every=4", *extra, f"hydra.run.dir={run_dir}"]


def _ray_processes(core_only: bool = False) -> set[str]:
    """Ray's processes on this machine, as "pid args" (core: the raylet and the GCS server)."""
    # -ww: without it ps cuts lines at 80 columns when piped, and a long install path hides the name
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout.splitlines()
    found = set()
    for line in out:
        pid, _, args = line.strip().partition(" ")
        if "raylet" in args or "gcs_server" in args or (not core_only and args.startswith("ray::")):
            found.add(f"{pid} {args[:60]}")
    return found


def _left_after(before: set[str], grace_s: float = 30.0, core_only: bool = False) -> set[str]:
    """Ray's processes not in ``before`` once they have had ``grace_s`` to exit: ``ray.kill``
    and the raylet's end reach the actors asynchronously, later on a loaded machine."""
    deadline = time.time() + grace_s
    while (left := _ray_processes(core_only) - before) and time.time() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture(scope="module")
def ray_sync(tmp_path_factory, cache) -> Path:
    run_dir = tmp_path_factory.mktemp("ray") / "sync"
    before = _ray_processes()
    cli("run", *_args(cache, run_dir, "evaluator=ray"))
    assert not _left_after(before)  # the pool shut down the Ray it started
    return run_dir


def test_sync_pool_is_the_local_run(ray_sync: Path, tmp_path: Path, cache: Path):
    """Two workers, a generation of two children told in ask order: the run the local
    evaluator makes with children_per_generation=2, to the last digit."""
    local = tmp_path / "local"
    cli("run", *_args(cache, local, "children_per_generation=2"))
    assert run_fingerprint(ray_sync) == run_fingerprint(local)
    metrics = [json.loads(x) for x in (ray_sync / "metrics.jsonl").read_text().splitlines()]
    assert all(len(m["workers"]["busy_s"]) == 2 for m in metrics)
    assert (
        sum(metrics[-1]["workers"]["evaluations"]) == json.loads((ray_sync / "summary.json").read_text())["evaluations"]
    )


def test_close_ends_every_worker_process_even_one_that_outlives_ray(ray_sync: Path, cache: Path):
    """A worker process that Ray's shutdown does not end (one was left on a loaded machine)
    is killed by the pool's close; the actors' own processes are gone too."""
    import psutil

    from cycleqd.evaluation.pool import RayPool
    from cycleqd.evaluation.workers import WorkerSpec

    base = next(cache.glob("base-*"))  # built by ray_sync's run
    pool = RayPool(num_workers=1)
    pool.start(None, WorkerSpec(str(base), "cpu", 1, 8, {}, (), None), None)
    actors = list(pool._processes)
    assert len(actors) == 1 and actors[0].cmdline()[0].startswith("ray::_Actor")
    # Stands in for the worker that outlived Ray: it ignores SIGTERM and is no Ray child.
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]
    )
    try:
        pool._processes.append(psutil.Process(stubborn.pid))
        t0 = time.monotonic()
        pool.close()
        # bounded by the grace, plus Ray's shutdown: seconds here, up to a minute on a loaded machine
        assert stubborn.wait(timeout=5) == -signal.SIGKILL and time.monotonic() - t0 < 2 * RayPool.EXIT_GRACE_S + 60
    finally:
        stubborn.kill()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in actors)


@pytest.mark.slow  # Ray's processes start and stop several times: about 35–65 s each
def test_driver_killed_mid_run_resumes_to_the_same_run(ray_sync: Path, tmp_path: Path, cache: Path):
    run_dir = tmp_path / "run"
    env = {"CYCLEQD_FAULT_AFTER": "generation 6", "CYCLEQD_FAULT_AT": "1:kill"}
    proc = cli("run", *_args(cache, run_dir, "evaluator=ray"), env=env, check=False)
    assert proc.returncode == -signal.SIGKILL and checkpoint.load(run_dir).generation == 4
    # Ray's core dies with its driver (its agents follow within about a minute)
    assert not _left_after(set(), core_only=True), _ray_processes()
    cli("resume", str(run_dir))
    assert run_fingerprint(run_dir) == run_fingerprint(ray_sync)


def test_async_keeps_the_quality_cycling_per_child(tmp_path: Path, cache: Path):
    run_dir = tmp_path / "async"
    cli(
        "run",
        *_args(cache, run_dir, "evaluator=ray", "evaluator.mode=async", "children_per_generation=1", generations=24),
    )
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["generation"] for m in metrics] == list(range(24))
    assert Counter(m["quality_task"] for m in metrics) == {"addition": 8, "reversal": 8, "sorting": 8}
    last = metrics[-1]["workers"]
    assert sum(last["evaluations"]) == 3 + 24 and all(n > 0 for n in last["evaluations"])
    assert all(0 < u <= 1 for u in last["utilisation"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["generations"] == 24 and summary["evaluations"] == 27


@pytest.mark.slow  # Ray's processes start and stop several times: about 35–65 s each
def test_dead_and_hung_workers_are_replaced_and_their_child_tried_again(tmp_path: Path, cache: Path):
    run_dir = tmp_path / "faults"
    sorting = "task.sorting._target_=tests.plugins.faulty.FaultySorting"
    # opt evaluations counted across processes: the 5th kills its worker, the retry (6th)
    # succeeds; the 8th and its retry (9th) both kill theirs: a failed evaluation; the 11th hangs.
    env = {"WORKER_FAULTS": f"{tmp_path / 'count'}:die:5,8,9", "CYCLEQD_FAULT_LOG": ""}
    cli("run", *_args(cache, run_dir, "evaluator=ray", sorting), env=env)
    failures = [
        f for line in (run_dir / "metrics.jsonl").read_text().splitlines() for f in json.loads(line).get("failures", [])
    ]
    assert [f["reason"] for f in failures] == ["worker_lost"]
    workers = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["workers"]
    assert sum(workers["restarts"]) == 3
    log = (run_dir / "cli.log").read_text()  # each replacement is logged with its reason and what became of the child
    assert (
        log.count("and was replaced; its evaluation is tried once more") == 2
        and log.count("and was replaced; its evaluation counts as failed") == 1
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failures"] == {"count": 1, "by_reason": {"worker_lost": 1}} and summary["generations"] == G

    # The replacement takes longer to start than an evaluation may take: its start must not
    # count against the retried child's deadline (it did, and every retry timed out in turn).
    hung = tmp_path / "hung"
    env = {"WORKER_FAULTS": f"{tmp_path / 'count2'}:hang:5", "WORKER_SLOW_START": "20"}
    # about a minute alone, 370 s on a loaded machine. Without the configured deadline
    # the hang would last the default three hours, far past this timeout.
    cli(
        "run",
        *_args(cache, hung, "evaluator=ray", sorting, "evaluator.hang_timeout_s=15", generations=4),
        env=env,
        timeout=1200,
    )
    replaced = [
        line.split(" - ", 1)[1]
        for line in (hung / "cli.log").read_text().splitlines()
        if "[cycleqd.evaluation.pool][WARNING]" in line
    ]
    assert len(replaced) == 1 and replaced[0].endswith(
        "(opt evaluation): no result after 15 s; the worker was replaced; its evaluation is tried once more"
    ), replaced
    workers = json.loads((hung / "metrics.jsonl").read_text().splitlines()[-1])["workers"]
    assert sum(workers["restarts"]) == 1
    assert json.loads((hung / "summary.json").read_text())["failures"]["count"] == 0  # the retry succeeded


@pytest.mark.slow  # Ray's processes start and stop several times: about 35–65 s each
def test_ctrl_c_checkpoints_and_leaves_no_process(tmp_path: Path, cache: Path):
    run_dir = tmp_path / "run"
    before = _ray_processes()
    proc = Started(
        [
            "run",
            *_args(
                cache, run_dir, "evaluator=ray", "evaluator.mode=async", "children_per_generation=1", generations=30
            ),
        ]
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 5):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Resume with: cycleqd resume" in err, err[-3000:]
    assert not _left_after(before)  # nothing of this run's Ray is left
    ckpt = checkpoint.load(run_dir)
    assert ckpt.generation >= 5 and ckpt.state["qd"]["pending"]  # the children in flight, to evaluate again
    cli("resume", str(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["generations"] == 30 and summary["evaluations"] == 33


def test_a_pool_joins_an_existing_cluster(tmp_path: Path, cache: Path):
    """`ray start --head`, then `evaluator.address=auto`: the run uses that cluster and leaves it up."""
    ray_bin = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_ADDRESS": ""}
    subprocess.run(
        [str(ray_bin), "start", "--head", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        run_dir = tmp_path / "run"
        cli("run", *_args(cache, run_dir, "evaluator=ray", "evaluator.address=auto", generations=2))
        assert json.loads((run_dir / "summary.json").read_text())["generations"] == 2
        assert _ray_processes(core_only=True)  # the cluster it joined is still there
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True, timeout=120)
