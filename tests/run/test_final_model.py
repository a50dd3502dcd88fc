"""The final model: the merge or the best elite, chosen on opt, and its CMA-ES refinement."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors import safe_open

from cycleqd.analysis.evidence import curves
from cycleqd.analysis.rundata import load_run
from cycleqd.core.taskvector import TaskVector, linear_combination
from cycleqd.run.final import FinalSpec
from tests.runs import cli, run_fingerprint
from tests.tiny import lively_overrides


def test_refinement_settings_are_checked():
    from cycleqd.errors import ConfigError
    from cycleqd.run.components import _final
    from tests.run.test_hydra import _compose

    for bad, message in (
        ("final.refine=1.5", "final.refine: must be an integer >= 0 (opt evaluations; 0: none), got 1.5"),
        ("final.refine_sigma0=0", "final.refine_sigma0: must be a number > 0, got 0"),
        (
            "+final.refine_steps=3",
            "final.refine_steps: unknown key (the keys are choice, method, scales, refine, refine_sigma0, front)",
        ),
        ("~final.refine", "final.refine: must be set (the config has no value for it)"),
    ):
        with pytest.raises(ConfigError) as e:
            _final(_compose(bad))
        assert str(e.value) == message
    assert _final(_compose("final.refine=50")).opt_evaluations == 3 + 50


def spec(scales=(1.0,), choice="opt", refine=0, refine_sigma0=0.1) -> FinalSpec:
    return FinalSpec(choice=choice, method="quality", scales=scales, refine=refine, refine_sigma0=refine_sigma0)


def _layered(seed: int) -> TaskVector:
    """A task vector over two transformer blocks and a parameter outside them."""
    gen = torch.Generator().manual_seed(seed)
    return TaskVector(
        {n: torch.randn(4, 4, generator=gen) for n in ("model.layers.0.w", "model.layers.1.w", "lm_head.weight")}
    )


REFINE_EXPERTS = {"a": _layered(10), "b": _layered(11)}


def _refine(
    final: FinalSpec,
    model: TaskVector,
    before: float | None,
    target: TaskVector,
    failing: bool = False,
    info: dict | None = None,
    log: list | None = None,
) -> tuple[TaskVector, dict, Any]:
    """``refine`` over two experts, every task scored by closeness to ``target`` (or
    every evaluation failing), after a search of 7 generations and 30 evaluations whose best
    mean was 0.05; ``log`` gets the lines the run logs."""
    from cycleqd.protocols import Failure
    from cycleqd.run.final import refine

    evaluated = []

    def scores(items):
        evaluated.extend(items)
        if failing:
            return [Failure("raised", None, "boom") for _ in items]
        return [
            {t: float(torch.exp(-sum(((m[n] - target[n]) ** 2).sum() for n in target) / 50)) for t in REFINE_EXPERTS}
            for m, _ in items
        ]

    run = SimpleNamespace(
        c=SimpleNamespace(final=final), names=list(REFINE_EXPERTS), experts=REFINE_EXPERTS, basis=None, cfg=SimpleNamespace(seed=0),
        scores=scores, check_stop=lambda: None, qd=SimpleNamespace(generation=7, evaluations=30, next_id=40),
        books=SimpleNamespace(best_opt_mean=0.05, elapsed=1.0, record=SimpleNamespace(append=lambda ls: recorded.extend(ls))),
        logger=SimpleNamespace(log=(log if log is not None else []).append),
    )  # fmt: skip
    recorded: list[dict] = []
    info = {} if info is None else info
    first = 30 + len(info.get("opt_mean", {}))  # after the loop's 30 evaluations and the merge's scales
    out = refine(run, model, before, info)
    assert len(evaluated) == final.refine and {split for _, split in evaluated} <= {"opt"}
    # each refinement candidate is recorded, with its coefficients
    assert [x["evaluation"] for x in recorded] == list(range(first, first + final.refine))
    assert all(x["origin"] == "final:refine" and "coefficients" in x for x in recorded)
    return out, info, scores([(out, "opt")])[0]


def test_the_refinement_climbs_from_the_chosen_model_and_keeps_only_a_gain():
    from cycleqd.core.crossover import layer_of

    experts, model = REFINE_EXPERTS, _layered(1)
    final = spec(refine=40, refine_sigma0=0.2)
    # a target that per-layer coefficients of the experts reach from the chosen model
    x = {
        "a": {"layer0": 0.4, "layer1": -0.3, "lm_head.weight": 0.2},
        "b": {"layer0": -0.2, "layer1": 0.3, "lm_head.weight": 0.1},
    }
    target = TaskVector({n: model[n] + sum(x[t][layer_of(n)] * experts[t][n] for t in experts) for n in model})
    start = _refine(spec(), model, None, target)[2]["a"]  # the chosen model's own score

    out, info, score = _refine(final, model, start, target)
    r = info["refine"]
    assert r["applied"] and r["evaluations"] == 40 and r["failed"] == 0 and r["opt_mean_before"] == start
    assert r["opt_mean"] == pytest.approx(score["a"]) and score["a"] > start + 0.1  # it climbed
    # the model returned is the chosen one plus the recorded per-layer coefficients times the experts
    c = r["coefficients"]
    oracle = {n: model[n] + sum(c[t][layer_of(n)] * experts[t][n] for t in experts) for n in model}
    assert all(torch.allclose(out[n], oracle[n], atol=1e-5) for n in model)

    # a chosen model better than anything found is kept as it is
    kept, info, _ = _refine(final, model, 2.0, target)
    assert kept is model and info["refine"]["applied"] is False and "coefficients" not in info["refine"]
    assert info["refine"]["opt_mean"] < 2.0
    # every candidate failed: the chosen model is kept, even when it had no opt mean of its own
    for before in (start, None):
        kept, info, _ = _refine(final, model, before, target, failing=True)
        assert kept is model and info["refine"] == {
            "evaluations": 40,
            "failed": 40,
            "opt_mean_before": before,
            "opt_mean": None,
            "applied": False,
        }
    # none: nothing evaluated, nothing recorded
    none, info, _ = _refine(spec(), model, start, target)
    assert none is model and info == {}


def test_the_refinement_rounds_continue_the_runs_progress_curve():
    """Each CMA-ES round is a line of metrics.jsonl after the search's last generation: the
    run's opt evaluations so far (search, merge scales, rounds) and the best mean so far,
    which starts from the search's best and a merge scale's."""
    model, target = _layered(1), _layered(2)
    log: list = []
    _, info, _ = _refine(
        spec((1.0, 1.5), refine=14),
        model,
        0.01,
        target,
        info={"opt_mean": {1.0: 0.01, 1.5: 0.2}},
        log=log,
    )
    # CMA-ES's population for 6 coefficients is 4 + ⌊3 ln 6⌋ = 9: a round of 9, then the last 5
    assert (
        info["refine"]["evaluations"] == 14
        and [m["round"] for m in log] == [1, 2]
        and [m["generation"] for m in log] == [7, 8]
    )
    assert [m["evaluations"] for m in log] == [30 + 2 + 9, 30 + 2 + 14] and [m["refine_evaluations"] for m in log] == [
        9,
        14,
    ]
    assert all(m["phase"] == "refine" for m in log)
    for m in log:  # the merge's best scale (0.2) is the floor of the curve
        assert m["best_opt_mean"] == max(0.2, m["refine_best_opt_mean"])
    assert (
        log[1]["refine_best_opt_mean"] >= log[0]["refine_best_opt_mean"]
        and log[1]["refine_best_opt_mean"] == info["refine"]["opt_mean"]
    )


def _final_choice(run_dir: Path, scales: int) -> tuple[dict, Any]:
    """Check ``final.choice: opt`` in a finished run: the candidates are the archives' best elite
    by mean score and the paper's merge, and the final model's opt scores are the winner's.
    Returns the final model's record and the best elite's row."""
    s = json.loads((run_dir / "summary.json").read_text())
    info = s["final_elites"]
    elites = load_run(run_dir).elites.drop_duplicates("id").sort_values(["mean_score", "id"], ascending=[False, True])
    top = elites.iloc[0]
    merge = info["opt_mean"][str(info["scale"])]
    assert info["choice"] == "opt" and info["candidates"] == {
        "merge": merge,
        f"elite:{int(top['id'])}": pytest.approx(top["mean_score"]),
    }
    final_opt = sum(s["final_opt"].values()) / len(s["final_opt"])
    assert final_opt == pytest.approx(max(merge, top["mean_score"]))  # evaluation is deterministic
    assert info["chosen"] == ("elite" if top["mean_score"] > merge else "merge")
    assert s["opt_evaluations"] == s["evaluations"] + scales  # the merge at its scales; the elite's scores were known
    return info, top


def test_the_final_model_is_the_merge_when_it_is_better_on_opt(lively_genome_run: Path):
    info, top = _final_choice(lively_genome_run, scales=3)
    assert info["chosen"] == "merge" and len(info["elites"]) >= 2 and "merge_elites" not in info


def test_the_final_model_is_the_best_elite_when_it_is_better_on_opt(tmp_path: Path, cache: Path):
    # A merge scaled down to a hundredth is almost the base model: the best elite must win.
    cli("run", *lively_overrides(cache, 10), "final.scales=[0.01]", f"hydra.run.dir={tmp_path}")
    info, top = _final_choice(tmp_path, scales=1)
    assert info["chosen"] == "elite" and [e["id"] for e in info["elites"]] == [int(top["id"])] and info["merge_elites"]
    with safe_open(str(tmp_path / "final.safetensors"), "pt") as f:
        final = {k: f.get_tensor(k) for k in f.keys()}
    elite = load_run(tmp_path).vector(int(top["id"]))
    assert set(final) == set(elite) and all(torch.equal(final[k], elite[k]) for k in final)
    assert (
        f"final model: elite {int(top['id'])}, the best elite by mean (opt mean {100 * top['mean_score']:.1f}"
        in cli("show", str(tmp_path)).stdout
    )


def test_the_papers_final_model_is_the_merge_without_choosing(tmp_path: Path, cache: Path):
    cli("run", *lively_overrides(cache, 4), "final.choice=merge", "final.scales=[1.0]", f"hydra.run.dir={tmp_path}")
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["final_elites"]["chosen"] == "merge" and "candidates" not in s["final_elites"]
    assert s["opt_evaluations"] == s["evaluations"]  # one scale and no choice: nothing measured


def test_a_refined_final_model_is_written_scored_and_counted(tmp_path: Path, cache: Path):
    """The refinement in a genome run: the merge at a hundredth of its scale is almost the base
    model, CMA-ES around it finds a better mean, and final.safetensors is that merge plus the
    recorded per-layer coefficients times the experts."""
    from cycleqd.core.crossover import layer_of

    cli(
        "run",
        *lively_overrides(cache, 2),
        "final.choice=merge",
        "final.scales=[0.01]",
        "final.refine=6",
        "final.refine_sigma0=0.5",
        f"hydra.run.dir={tmp_path}",
    )
    s = json.loads((tmp_path / "summary.json").read_text())
    info = s["final_elites"]
    r = info["refine"]
    assert r["evaluations"] == 6 and s["opt_evaluations"] == s["evaluations"] + 1 + 6  # the merge, then the refinement
    assert r["applied"] and r["opt_mean"] > r["opt_mean_before"] == info["opt_mean"]["0.01"]
    assert sum(s["final_opt"].values()) / len(s["final_opt"]) == pytest.approx(
        r["opt_mean"]
    )  # evaluation is deterministic
    run = load_run(tmp_path)
    basis = run.basis()
    experts = {t: basis.task_vector(basis.expert(t)).dense() for t in run.tasks}
    merge = linear_combination(
        [run.vector(e["id"]) for e in info["elites"]], [0.01 * e["weight"] for e in info["elites"]]
    ).dense()
    c = r["coefficients"]
    with safe_open(str(tmp_path / "final.safetensors"), "pt") as f:
        for n in f.keys():
            oracle = merge[n] + sum(c[t][layer_of(n)] * experts[t][n] for t in experts if n in experts[t])
            assert torch.allclose(f.get_tensor(n), oracle, atol=1e-5), n
    assert (
        "refined by CMA-ES over per-layer expert coefficients: 6 opt evaluations" in cli("show", str(tmp_path)).stdout
    )
    # its rounds end the run's progress curve at the run's opt evaluations
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rounds = [m for m in lines if m.get("phase") == "refine"]
    assert len(lines) == s["generations"] + len(rounds) and rounds[-1]["evaluations"] == s["opt_evaluations"]
    assert rounds[-1]["refine_evaluations"] == 6 and rounds[-1]["best_opt_mean"] >= r["opt_mean"]
    [[(ev, best)]] = curves([tmp_path]).values()
    assert ev[-1] == s["opt_evaluations"] and best[-1] == pytest.approx(100 * rounds[-1]["best_opt_mean"])

    # killed after the refinement and resumed: its rounds are logged once, as in the straight run
    killed = tmp_path / "killed"
    args = (
        *lively_overrides(cache, 2),
        "final.choice=merge",
        "final.scales=[0.01]",
        "final.refine=6",
        "final.refine_sigma0=0.5",
        f"hydra.run.dir={killed}",
    )
    proc = cli("run", *args, env={"CYCLEQD_FAULT_AFTER": "final: scored", "CYCLEQD_FAULT_AT": "1:kill"}, check=False)
    assert proc.returncode != 0 and not (killed / "summary.json").exists()
    cli("resume", str(killed))
    assert run_fingerprint(killed) == run_fingerprint(tmp_path)
