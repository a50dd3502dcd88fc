"""The statistics and the comparison searches: paired bootstrap intervals, per-item test
results, CMA-ES and random search over per-layer merge coefficients, the ablations."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from cycleqd.tasks.sorting import Sorting
from safetensors import safe_open

from cycleqd.analysis.evidence import curves
from cycleqd.analysis.rundata import load_run
from cycleqd.core.archives import CyclicArchives
from cycleqd.core.searches import LayerCoefficients, Search, run_search
from cycleqd.core.taskvector import TaskVector, linear_combination
from cycleqd.evaluation.scoring import score_tasks
from cycleqd.protocols import ItemScores, Measure
from cycleqd.run.components import FinalSpec
from cycleqd.stats import compare_to, differences, paired_bootstrap
from tests.builders import TASKS as GENOME_TASKS
from tests.builders import toy_setup
from tests.runs import cli, main, run_fingerprint
from tests.tiny import lively_overrides, tiny_overrides


# -- paired bootstrap ---------------------------------------------------------------------------
def test_a_constant_lead_has_a_zero_width_interval_because_it_is_paired():
    """Every item 0.1 better: the paired difference is exactly 0.1 in every replicate (an
    unpaired bootstrap of the two means would give a wide interval)."""
    rng = np.random.default_rng(0)
    b = {"x": rng.uniform(0, 0.9, 300), "y": rng.uniform(0, 0.9, 200)}
    a = {t: v + 0.1 for t, v in b.items()}
    out = paired_bootstrap([differences(a, b)], resamples=500)
    assert out["diff"] == pytest.approx(0.1)
    assert out["ci"] == pytest.approx([0.1, 0.1])
    assert out["items"] == {"x": 300, "y": 200}
    same = paired_bootstrap([differences(b, b)])
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0]


def test_the_interval_covers_the_true_difference_about_95_percent_of_the_time():
    """Two models with known per-item success rates, 300 simulated test sets: the 95%
    interval must contain the true difference of test means in 90–99% of them."""
    rng = np.random.default_rng(1)
    p_a, p_b = {"x": 0.7, "y": 0.4}, {"x": 0.6, "y": 0.45}
    truth = np.mean([p_a[t] - p_b[t] for t in p_a])
    hits = 0
    for k in range(300):
        a, b = {}, {}
        for t in p_a:
            u = rng.uniform(size=256)  # the same items: correlated outcomes, as two models on one prompt
            a[t], b[t] = (u < p_a[t]).astype(float), (u < p_b[t]).astype(float)
        lo, hi = paired_bootstrap([differences(a, b)], resamples=400, seed=k)["ci"]
        hits += lo <= truth <= hi
    assert 0.90 <= hits / 300 <= 0.99, hits


def test_runs_that_share_their_test_items_are_averaged():
    rng = np.random.default_rng(2)
    diffs = [{"x": rng.choice([-1.0, 0.0, 1.0], 100)} for _ in range(3)]
    out = paired_bootstrap(diffs, resamples=300)
    assert out["diff"] == pytest.approx(np.mean([d["x"].mean() for d in diffs]))
    assert out["runs"] == 3 and out["ci"][0] <= out["diff"] <= out["ci"][1]
    with pytest.raises(ValueError, match="same test items"):
        paired_bootstrap([{"x": np.zeros(100)}, {"x": np.zeros(99)}])
    with pytest.raises(ValueError, match="different tasks"):
        differences({"x": [1.0]}, {"y": [1.0]})
    assert set(compare_to("a", {"a": {"x": [1.0, 0.0]}, "b": {"x": [0.0, 0.0]}})) == {"b"}


# -- per-item results -----------------------------------------------------------------------------
class _Echo:
    """A text model that answers a fixed share of the prompts correctly."""

    def __init__(self, task, right: int):
        self.answers = {p: a for p, a in task.split("test")[:right]}

    def generate(self, prompts, *, max_new_tokens, stop=()):
        return [self.answers.get(p, "?") for p in prompts]


def test_test_scores_carry_their_items_and_an_overriding_task_is_scored_by_its_own_evaluate():
    task = Sorting(name="sorting", n_opt=8, n_test=40)
    result = score_tasks(_Echo(task, 10), [task], "test")
    assert isinstance(result, ItemScores)
    assert result.per_item["sorting"] == [1.0] * 10 + [0.0] * 30 and result["sorting"] == 0.25
    assert not isinstance(score_tasks(_Echo(task, 10), [task], "opt"), ItemScores)  # opt: means only

    class Halved(Sorting):
        def evaluate(self, model, split="opt"):
            return super().evaluate(model, split) / 2

    own = Halved(name="sorting", n_opt=8, n_test=40)
    result = score_tasks(_Echo(own, 10), [own], "test")
    assert result == {"sorting": 0.125} and not isinstance(result, ItemScores)


def test_a_run_reports_its_differences_with_intervals(cli_run: Path):
    summary = json.loads((cli_run / "summary.json").read_text())
    items = json.loads((cli_run / "test_items.json").read_text())
    labels = {
        "final",
        "base",
        *(f"expert:{t}" for t in summary["experts"]),
        *(f"baseline:{b}" for b in summary["baselines"]),
    }
    assert set(items) == labels
    for label, per_task in items.items():
        assert all(len(v) == 24 for v in per_task.values())  # n_test of the tiny tasks
    for t in summary["tasks"]:
        assert summary["final"][t] == pytest.approx(np.mean(items["final"][t]))
    assert set(summary["final_vs"]) == labels - {"final"}
    for label, d in summary["final_vs"].items():
        other = (
            summary["experts"][label[7:]]
            if label.startswith("expert:")
            else summary["base"]
            if label == "base"
            else summary["baselines"][label[9:]]
        )
        expected = np.mean([summary["final"][t] - other[t] for t in summary["tasks"]])
        assert d["diff"] == pytest.approx(expected) and d["ci"][0] <= d["diff"] <= d["ci"][1]
    out = main("show", str(cli_run)).stdout
    assert "final − model [95% CI]" in out
    d = summary["final_vs"]["baseline:ties"]
    assert f"{100 * d['diff']:+6.1f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]" in out


# -- searches over per-layer merge coefficients ---------------------------------------------------
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_layer_coefficients_as_a_genome_equal_the_dense_merge(kind):
    experts, _, basis = toy_setup(kind)
    dense = LayerCoefficients(GENOME_TASKS, experts)
    genome = LayerCoefficients(GENOME_TASKS, experts, basis)
    assert dense.groups == genome.groups and dense.dim == 3 * len(dense.groups)
    x = np.random.default_rng(0).uniform(0, 1, dense.dim)
    a, b = dense.child(x).dense(), basis.task_vector(genome.child(x)).dense()
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4)
    # the oracle, written out: layer 1's q_proj is Σ_q x[q, layer1] τ_q
    col = dense.groups.index("layer1")
    name = "model.layers.1.self_attn.q_proj.weight"
    oracle = sum(x[i * dense.dim // 3 + col] * experts[q].dense()[name] for i, q in enumerate(GENOME_TASKS))
    torch.testing.assert_close(a[name], oracle.float(), atol=1e-5, rtol=1e-4)
    assert dense.describe(x)["b"]["layer1"] == pytest.approx(x[dense.dim // 3 + col], abs=1e-6)


class _Quadratic:
    """Scores a coefficient vector by how near it is to a target (both tasks alike)."""

    def __init__(self, target):
        self.target, self.calls = np.asarray(target), 0

    def __call__(self, items):
        self.calls += len(items)
        return [
            {"a": float(np.exp(-np.sum((x - self.target) ** 2))), "b": float(np.exp(-np.sum((x - self.target) ** 2)))}
            for x, _ in items
        ]


class _Identity:
    dim = 6

    def child(self, x):
        return np.asarray(x)


@pytest.mark.parametrize("budget", [97, 100])
def test_cmaes_finds_the_optimum_that_random_search_misses_on_the_same_budget(budget):
    target = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
    found = {}
    for name in ("cmaes", "random"):
        objective = _Quadratic(target)
        curve = []
        x, result, counts = run_search(
            Search(name=name, sigma0=0.2), _Identity(), objective, budget, seed=0, on_batch=curve.append
        )
        assert objective.calls == counts["evaluations"] == budget  # the budget, to the evaluation
        assert [m["evaluations"] for m in curve][-1] == budget
        bests = [m["best_opt_mean"] for m in curve]
        assert bests == sorted(bests) and bests[-1] == pytest.approx(result["a"])
        assert np.all((x >= 0) & (x <= 1))
        found[name] = result["a"]
    assert found["cmaes"] > 0.95 > found["random"], found


def test_search_settings_are_checked():
    for bad, key in (
        (dict(name="bogus"), "name"),
        (dict(sigma0=0), "sigma0"),
        (dict(low=1, high=0), "low"),
        (dict(x0=2.0), "x0"),
    ):
        with pytest.raises(ValueError, match=key):
            Search(**bad)
    assert Search().budget(3, 300, 1, 3) == 306 and Search(evaluations=50).budget(3, 300, 1, 3) == 50
    assert Search().budget(3, 10, 2, 0) == 23  # the paper's merge at one scale: no evaluations for it
    # a refinement's evaluations count in the budget (and the merge it starts from is scored)
    assert Search().budget(3, 200, 1, FinalSpec("quality", (1.0, 1.25, 1.5), refine=100).opt_evaluations) == 306
    assert FinalSpec("quality", (1.0,), "merge", refine=5).opt_evaluations == 6


def test_refinement_settings_are_checked():
    from omegaconf import OmegaConf

    from cycleqd.errors import ConfigError
    from cycleqd.run.components import _final

    for bad, message in (
        ({"refine": 1.5}, "final.refine: must be an integer >= 0 (opt evaluations; 0: none), got 1.5"),
        ({"refine_sigma0": 0}, "final.refine_sigma0: must be a number > 0, got 0"),
        (
            {"refine_steps": 3},
            "final.refine_steps: unknown key (the keys are choice, method, scales, refine, refine_sigma0)",
        ),
    ):
        with pytest.raises(ConfigError) as e:
            _final(OmegaConf.create({"final": {"scales": [1.0], **bad}}))
        assert str(e.value) == message
    assert _final(OmegaConf.create({"final": {"scales": [1.0], "refine": 50}})).opt_evaluations == 51


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
    """``Run.refine`` over two experts, every task scored by closeness to ``target`` (or
    every evaluation failing), after a search of 7 generations and 30 evaluations whose best
    mean was 0.05; ``log`` gets the lines the run logs."""
    from cycleqd.protocols import Failure
    from cycleqd.run.runner import Run

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
        scores=scores, _check_stop=lambda: None, qd=SimpleNamespace(generation=7, evaluations=30), best_opt_mean=0.05, elapsed=1.0,
        logger=SimpleNamespace(log=(log if log is not None else []).append),
    )  # fmt: skip
    info = {} if info is None else info
    out = Run.refine(run, model, before, info)
    assert len(evaluated) == final.refine and {split for _, split in evaluated} <= {"opt"}
    return out, info, scores([(out, "opt")])[0]


def test_the_refinement_climbs_from_the_chosen_model_and_keeps_only_a_gain():
    from cycleqd.core.crossover import layer_of

    experts, model = REFINE_EXPERTS, _layered(1)
    final = FinalSpec("quality", (1.0,), refine=40, refine_sigma0=0.2)
    # a target that per-layer coefficients of the experts reach from the chosen model
    x = {
        "a": {"layer0": 0.4, "layer1": -0.3, "lm_head.weight": 0.2},
        "b": {"layer0": -0.2, "layer1": 0.3, "lm_head.weight": 0.1},
    }
    target = TaskVector({n: model[n] + sum(x[t][layer_of(n)] * experts[t][n] for t in experts) for n in model})
    start = _refine(FinalSpec("quality", (1.0,)), model, None, target)[2]["a"]  # the chosen model's own score

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
    none, info, _ = _refine(FinalSpec("quality", (1.0,)), model, start, target)
    assert none is model and info == {}


def test_the_refinement_rounds_continue_the_runs_progress_curve():
    """Each CMA-ES round is a line of metrics.jsonl after the search's last generation: the
    run's opt evaluations so far (search, merge scales, rounds) and the best mean so far,
    which starts from the search's best and a merge scale's."""
    model, target = _layered(1), _layered(2)
    log: list = []
    _, info, _ = _refine(
        FinalSpec("quality", (1.0, 1.5), refine=14),
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


def test_mean_quality_archives_score_every_elite_by_its_mean():
    archives = CyclicArchives(tasks=["a", "b", "c"], measures={t: Measure(bins=4) for t in "abc"}, quality="mean")
    archives.add(0, {"a": 0.9, "b": 0.3, "c": 0.0}, -1)
    for t in "abc":
        assert archives.best(t).objective == pytest.approx(0.4)
    with pytest.raises(ValueError, match="quality"):
        CyclicArchives(tasks=["a", "b"], measures={t: Measure() for t in "ab"}, quality="bogus")


def test_a_search_run_and_a_sweep_compared_over_seeds(tmp_path: Path):
    """CycleQD and CMA-ES, two seeds each, as one Hydra multirun; CMA-ES spends CycleQD's
    budget; `compare --by seed` gives mean ± sd per search."""
    sweep = tmp_path / "sweep"
    cli(
        "run",
        "-m",
        *tiny_overrides(tmp_path / "cache", generations=3),
        "search=cycleqd,cmaes",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
    )
    runs = {}
    for d in sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file()):
        s = json.loads((d / "summary.json").read_text())
        runs.setdefault(s["search"], []).append((d, s))
    assert {k: len(v) for k, v in runs.items()} == {"cycleqd": 2, "cmaes": 2}
    for (d, s), (_, c) in zip(runs["cmaes"], runs["cycleqd"]):
        assert (
            s["archives"] == {} and s["opt_evaluations"] == c["opt_evaluations"] == 3 + 3 + 3
        )  # experts, children, final scales
        assert s["final_elites"]["search"] == "cmaes" and set(s["final_elites"]["coefficients"]) == set(s["tasks"])
        assert (d / "final.safetensors").is_file() and not (d / "elites" / "table.csv").exists()
        curve = [json.loads(x)["best_opt_mean"] for x in (d / "metrics.jsonl").read_text().splitlines()]
        assert curve == sorted(curve) and curve[-1] == pytest.approx(s["final_elites"]["opt_mean"])
        assert "baseline:ties" in s["final_vs"]
        shown = main("show", str(d)).stdout
        assert "cmaes (final)" in shown and "search cmaes over per-layer merge coefficients: 9 opt evaluations" in shown
        selected = main("select", str(d))
        assert selected.returncode == 1 and "is a search=cmaes run: it has no archives" in selected.stderr
    for _, c in runs["cycleqd"]:
        assert c["search"] == "cycleqd" and set(c["archives"]) == set(c["tasks"])
    out = main("compare", str(sweep), "--by", "seed").stdout
    assert out.splitlines()[0].split()[:3] == ["search.name", "runs", "seed"]
    with (sweep / "compare.csv").open() as f:
        rows = {r["search.name"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"cycleqd", "cmaes"} and all(r["runs"] == "2" and r["seed"] == "0,1" for r in rows.values())
    means = [np.mean([sum(s["final"].values()) / 3 for _, s in runs["cmaes"]])]
    assert rows["cmaes"]["final_mean"].startswith(f"{means[0]:.3f} ± ")
    # the evidence table: CMA-ES against CycleQD, paired by seed, and the reference's static merges
    out = main(
        "evidence",
        str(sweep),
        "--reference",
        "search=cycleqd",
        "--plot",
        str(tmp_path / "best.png"),
        "--json",
        str(tmp_path / "t.json"),
    )
    assert out.returncode == 0, out.stderr
    rows = {r["method"]: r for r in json.loads((tmp_path / "t.json").read_text())}
    assert set(rows) >= {"search=cycleqd", "search=cmaes", "static: ties"} and rows["search=cycleqd"]["diff"] is None
    cm = rows["search=cmaes"]
    pairs = zip(runs["cmaes"], runs["cycleqd"])  # job order: seed 0, then 1, for both
    expected = np.mean([np.mean([c["final"][t] - r["final"][t] for t in r["tasks"]]) for (_, c), (_, r) in pairs])
    assert cm["diff"]["diff"] == pytest.approx(expected) and cm["diff"]["runs"] == 2 and cm["seeds"] == 2
    assert cm["diff"]["ci"][0] <= cm["diff"]["diff"] <= cm["diff"]["ci"][1]
    assert cm["test_mean"] == pytest.approx(
        100 * np.mean([np.mean(list(s["final"].values())) for _, s in runs["cmaes"]])
    )
    assert "search=cmaes" in out.stdout and (tmp_path / "best.png").read_bytes()[:4] == b"\x89PNG"
    # every curve ends at its run's budget; CycleQD's with its final model's opt mean
    drawn = curves([sweep])
    for label, seeds in drawn.items():
        assert [int(ev[-1]) for ev, _ in seeds] == [9, 9] and all(np.all(np.diff(b) >= 0) for _, b in seeds), label
    for (_, b), (_, c) in zip(drawn["search=cycleqd"], runs["cycleqd"]):  # seeds 0, 1
        assert b[-1] == pytest.approx(max(b[-2], 100 * np.mean(list(c["final_opt"].values()))))
    by_cmaes = main("evidence", str(sweep), "--reference", "search=cmaes")  # a search as the reference: no expert row
    assert by_cmaes.returncode == 0 and "static: ties" in by_cmaes.stdout and "expert:" not in by_cmaes.stdout, (
        by_cmaes.stderr
    )
    missing = main("evidence", str(sweep), "--reference", "search=nope")
    assert missing.returncode != 0 and "--reference: no method 'search=nope'" in missing.stderr

    bad = main("compare", str(sweep), "--by", "bogus")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "--by: the runs do not differ in 'bogus'" in bad.stderr and "search.name" in bad.stderr


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


def test_expert_weights_place_every_elite_of_a_genome_run(lively_genome_run: Path, lively_run: Path):
    run = load_run(lively_genome_run)
    weights = run.expert_weights().set_index("id")
    elites = run.elites.drop_duplicates("id").set_index("id")
    assert set(weights.index) == set(elites.index)
    for i, origin in elites["origin"].items():
        w = weights.loc[i]
        if origin.startswith("expert:"):  # the expert itself: 1 on its task, 0 on the others
            task = origin.split(":")[1]
            assert w[f"weight_{task}"] == pytest.approx(1.0) and w["weight_sum"] == pytest.approx(1.0), (i, w)
    children = weights.loc[elites["origin"].str.startswith("child:")]
    assert len(children) and children["weight_sum"].max() > 1.2  # the SVD mutation (scale 1 here) only adds
    with pytest.raises(ValueError, match="genome=true"):
        load_run(lively_run).expert_weights()
