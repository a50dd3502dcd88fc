"""Crash consistency: a run killed at any moment — while evolving, inside a write, in the
final phase — resumes to exactly what an uninterrupted run gives; signals checkpoint;
one writer per run directory; a full disk is named and resumable."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cycleqd.run import checkpoint
from cycleqd.run.lock import RunLock
from tests.conftest import LIVELY_GENERATIONS
from tests.runs import Started, cli, one_line_error, run_fingerprint
from tests.tiny import lively_overrides

G = LIVELY_GENERATIONS


def _args(cache: Path, run_dir: Path, genome: bool = False) -> list[str]:
    return [
        *lively_overrides(cache, G),
        "checkpoint_every=4",
        f"genome={str(genome).lower()}",
        f"hydra.run.dir={run_dir}",
    ]


def _last_point(log: Path) -> str:
    lines = log.read_text().splitlines() if log.is_file() else []
    return lines[-1].split(" ", 1)[1] if lines else "(before any fault point)"


def test_killed_at_random_moments_resumes_to_the_uninterrupted_run(tmp_path: Path, cache: Path, lively_run: Path):
    """A chain of SIGKILLs at seeded random fault points (and one at a random time), each
    followed by `cycleqd resume`, ends in the same archives, elite files and summary."""
    rng = random.Random(20261130)
    run_dir = tmp_path / "run"
    kills: list[str] = []
    step = 0
    final_kills = 0
    while (len(kills) < 10 or final_kills < 2) and step < 25:
        log = tmp_path / f"faults-{step}.log"
        env = {"CYCLEQD_FAULT_LOG": str(log)}
        ckpt = checkpoint.load(run_dir) if (run_dir / "checkpoint").exists() else None
        done = ckpt.generation if ckpt else -1
        if done < G:
            # A moment reachable from the checkpoint: a few points after a generation not yet committed.
            # The first run dies while seeding, before any checkpoint exists. Then one kill in
            # three falls before the next checkpoint (the run rolls back to the last one) and two
            # after it (the chain moves on); "generation g" marks the start of generation g.
            start = max(done, 0) if step % 3 == 1 else min(done + 4 - done % 4, G - 1)
            env["CYCLEQD_FAULT_AFTER"] = f"generation {rng.randint(start, min(start + 3, G - 1))}" if step else ""
            env["CYCLEQD_FAULT_AT"] = f"{rng.randint(1, 12)}:kill"
            if step in (1, 3):  # surely one kill inside the checkpoint's write and one inside an elite's
                stage = rng.choice(["half written", "before rename", "after rename"])
                env["CYCLEQD_FAULT_AFTER"] = f"write {'state.ckpt' if step == 1 else 'elite-*'}: {stage}"
                env["CYCLEQD_FAULT_AT"] = "1:kill"
        else:
            env["CYCLEQD_FAULT_AFTER"] = "final: start"
            env["CYCLEQD_FAULT_AT"] = f"{rng.randint(1, 30)}:kill"  # the final phase has 34 fault points
            final_kills += 1
        if not env["CYCLEQD_FAULT_AFTER"]:
            del env["CYCLEQD_FAULT_AFTER"]
        args = _args(cache, run_dir) if step == 0 else ["resume", str(run_dir)]
        if step == 0:
            args = ["run", *args]
        if step == 5:  # one kill at a random time instead of a fault point
            del env["CYCLEQD_FAULT_AT"]
            env.pop("CYCLEQD_FAULT_AFTER", None)
            proc = Started(args, env)
            # Sent from outside once the run has passed a random number of fault points (of the
            # ≈200 this resume passes), it lands between two of them, inside the run however fast
            # the machine: a 1-5 s sleep from the start outlasted a whole resume (≈4 s) on a fast one.
            passed, started = rng.randint(1, 120), time.time()
            while proc.poll() is None and time.time() - started < 300:
                if log.is_file() and log.read_text().count("\n") >= passed:
                    break
                time.sleep(0.01)
            proc.kill()
            proc.communicate(timeout=60)
        else:
            proc = Started(args, env)
            proc.communicate(timeout=600)
        step += 1
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, f"step {step} exited {proc.returncode}"
        kills.append(_last_point(log))
    assert len(kills) >= 10 and final_kills >= 2, kills
    assert kills[0] == "evaluate on opt", kills  # seeding, before the first checkpoint
    assert any(k.startswith("write state.ckpt") for k in kills) and any(k.startswith("write elite") for k in kills), (
        kills
    )

    cli("resume", str(run_dir))
    assert run_fingerprint(run_dir) == run_fingerprint(lively_run), kills
    assert not list(run_dir.rglob(".*.tmp"))


@pytest.mark.slow  # eleven processes, about 100 s: it runs in `make test-slow` (CI runs both)
def test_a_killed_search_resumes_to_the_uninterrupted_search(tmp_path: Path, cache: Path):
    """CMA-ES commits its state after every round of candidates: killed before its first
    checkpoint, inside each step of a checkpoint's write and in the final phase, it resumes
    to the result of an uninterrupted search, draw for draw."""
    batch = 4
    args = [*lively_overrides(cache, 10), "search=cmaes", f"search.batch_size={batch}", "genome=true"]
    whole = tmp_path / "whole"
    cli("run", *args, f"hydra.run.dir={whole}")
    budget = json.loads((whole / "summary.json").read_text())["evaluations"]
    assert budget >= 3 * batch

    # A round's fault points: "evaluation <done>", one per candidate, then the checkpoint's write.
    half, before, after = batch + 2, batch + 3, batch + 4
    chain = [
        (
            "evaluation 0",
            random.Random(1).randint(2, batch + 1),
            "evaluate on opt",
            None,
        ),  # no checkpoint yet: starts over
        (f"evaluation {batch}", half, "write state.ckpt: half written", batch),  # the old checkpoint stands
        (f"evaluation {batch}", after, "write state.ckpt: after rename", 2 * batch),
        (f"evaluation {2 * batch}", before, "write state.ckpt: before rename", 2 * batch),
        ("final: start", random.Random(2).randint(2, 20), None, budget),
    ]
    run_dir = tmp_path / "run"
    for i, (armed, at, point, done) in enumerate(chain):
        log = tmp_path / f"faults-{i}.log"
        env = {"CYCLEQD_FAULT_LOG": str(log), "CYCLEQD_FAULT_AFTER": armed, "CYCLEQD_FAULT_AT": f"{at}:kill"}
        proc = (
            cli("run", *args, f"hydra.run.dir={run_dir}", env=env, check=False)
            if i == 0
            else cli("resume", str(run_dir), env=env, check=False)
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        assert point is None or _last_point(log) == point, (i, _last_point(log))
        ckpt = checkpoint.load(run_dir)
        assert (ckpt.search["done"] if ckpt else None) == done, i
    line = one_line_error(cli("resume", str(run_dir), "search.name=random", check=False))
    assert "search: the checkpoint is of search=cmaes" in line, line

    cli("resume", str(run_dir))
    assert run_fingerprint(run_dir) == run_fingerprint(whole)
    assert "already finished" in cli("resume", str(run_dir)).stderr
    line = one_line_error(cli("resume", str(run_dir), f"search.evaluations={budget - 1}", check=False))
    assert (
        f"search.evaluations: the checkpoint is at evaluation {budget}, past this config's budget of {budget - 1} evaluations"
        in line
    ), line
    cli("resume", str(run_dir), f"search.evaluations={budget + batch}")  # a larger budget continues the search
    assert (
        json.loads((run_dir / "summary.json").read_text())["evaluations"]
        == checkpoint.load(run_dir).search["done"]
        == budget + batch
    )


def test_a_full_disk_is_named_and_the_run_resumes(tmp_path: Path, cache: Path, lively_genome_run: Path):
    run_dir = tmp_path / "run"
    proc = cli(
        "run",
        *_args(cache, run_dir, genome=True),
        env={"CYCLEQD_FAULT_AFTER": "generation 10", "CYCLEQD_FAULT_AT": "4:enospc"},
        check=False,
    )
    line = one_line_error(proc)
    assert "cannot write" in line and str(run_dir) in line and "No space left on device" in line, line
    assert checkpoint.load(run_dir).generation == 8
    cli("resume", str(run_dir))
    assert run_fingerprint(run_dir) == run_fingerprint(lively_genome_run)


def _wait_for_generation(run_dir: Path, n: int, proc: Started) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError("the run did not reach generation %d" % n)


def test_sigint_and_sigterm_finish_the_generation_and_checkpoint(tmp_path: Path, cache: Path, lively_genome_run: Path):
    run_dir = tmp_path / "run"
    for sig, step in ((signal.SIGINT, 3), (signal.SIGTERM, 15)):
        args = ["run", *_args(cache, run_dir, genome=True)] if sig == signal.SIGINT else ["resume", str(run_dir)]
        proc = Started(args, {})
        _wait_for_generation(run_dir, step, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        lines = [x for x in err.splitlines() if x.strip() and not x.startswith("[")]
        assert len(lines) == 1 and f"cycleqd resume {run_dir}" in lines[0] and sig.name in lines[0], err[-3000:]
        done = checkpoint.load(run_dir).generation
        assert done >= step and len((run_dir / "metrics.jsonl").read_text().splitlines()) == done, (done, err[-2000:])
    cli("resume", str(run_dir))
    assert run_fingerprint(run_dir) == run_fingerprint(lively_genome_run)


def test_sigint_stops_a_search_after_its_round_with_a_checkpoint(tmp_path: Path, cache: Path):
    run_dir = tmp_path / "run"
    args = [
        "run",
        *lively_overrides(cache, 10),
        "search=cmaes",
        "search.batch_size=4",
        "search.evaluations=400",
        "genome=true",
        f"hydra.run.dir={run_dir}",
    ]
    proc = Started(args, {})
    _wait_for_generation(run_dir, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    done = checkpoint.load(run_dir).search["done"]
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("[")]
    assert (
        len(lines) == 1
        and f"SIGINT: stopped at evaluation {done} of 400" in lines[0]
        and f"cycleqd resume {run_dir}" in lines[0]
    ), err[-3000:]
    assert 8 <= done < 400 and len((run_dir / "metrics.jsonl").read_text().splitlines()) == done // 4


def test_one_writer_per_run_directory(tmp_path: Path, lively_run: Path):
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-r", str(lively_run), str(run_dir)], check=True)
    with RunLock(run_dir):
        for args in (
            ["resume", str(run_dir), "generations=45"],
            ["run", f"hydra.run.dir={run_dir}", *lively_overrides(Path("unused"))],
        ):
            line = one_line_error(cli(*args, check=False))
            assert f"in use by pid {os.getpid()} on host" in line and str(run_dir) in line, line
    # A lock left by a process that died: the kernel released it, the file remains; resume goes on.
    (run_dir / ".lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "since": "yesterday"}))
    out = cli("resume", str(run_dir)).stdout
    assert "cycleqd (final)" in out


def test_a_fresh_run_refuses_a_directory_holding_a_run(tmp_path: Path, cache: Path, lively_run: Path):
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-r", str(lively_run), str(run_dir)], check=True)
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    line = one_line_error(cli("run", *_args(cache, run_dir), "seed=3", check=False))
    assert line.startswith("cycleqd run: hydra.run.dir:") and "cycleqd resume" in line, line
    assert (run_dir / ".hydra" / "config.yaml").read_text() == config  # nothing was overwritten
