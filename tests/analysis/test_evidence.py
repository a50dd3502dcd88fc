"""A run's differences with their intervals, searches compared over seeds, and where the
elites of a genome run lie among the experts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cycleqd.analysis.evidence import curves
from cycleqd.analysis.rundata import load_run
from tests.runs import cli, main
from tests.tiny import tiny_overrides


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


def _fake_run(d: Path, overrides: list[str], build: int, seed: int, items: dict, experts: dict | None = None) -> None:
    """A finished run directory as the evidence reads it: its Hydra files, summary and test items."""
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (d / ".hydra" / "config.yaml").write_text(f"seed: {seed}\nbuild: {build}\n")
    final = {t: float(np.mean(v)) for t, v in items["final"].items()}
    summary = {"final": final, "evaluations": 9, "opt_evaluations": 9, "wall_time_s": 1.0, "baselines": {}}
    summary["experts"] = experts or {"a": {"a": 0.5 + build / 10, "b": 0.2}}
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "test_items.json").write_text(json.dumps(items))


def test_evidence_pairs_methods_within_a_build_and_redraws_builds_then_seeds(tmp_path: Path):
    """Two methods, three builds × two seeds: the difference is the mean over builds of the mean
    over their seeds of the paired difference, its interval the hierarchical bootstrap's."""
    from cycleqd.analysis.evidence import format_rows, table
    from cycleqd.stats import differences, hierarchical_bootstrap

    rng = np.random.default_rng(3)
    per_build = {}
    for build in range(3):
        shift = [0.3, -0.1, 0.1][build]  # the method's lead differs by build
        for seed in range(2):
            ref = {"a": rng.uniform(0, 1, 40).round(2).tolist(), "b": rng.uniform(0, 1, 30).round(2).tolist()}
            other = {t: [x + shift for x in v] for t, v in ref.items()}
            _fake_run(tmp_path / f"r{build}{seed}", ["search=cycleqd", f"build={build}"], build, seed, {"final": ref})
            _fake_run(tmp_path / f"o{build}{seed}", ["search=cmaes", f"build={build}"], build, seed, {"final": other})
            per_build.setdefault(build, []).append(differences(other, ref))
    rows = {r["method"]: r for r in table([tmp_path], "search=cycleqd")}
    assert set(rows) == {"search=cycleqd", "search=cmaes"}  # build= is not part of a method
    d = rows["search=cmaes"]["diff"]
    assert d["diff"] == pytest.approx(0.1) and d["builds"] == 3 and d["runs"] == [2, 2, 2]
    assert d["ci"] == hierarchical_bootstrap(list(per_build.values()))["ci"]
    assert d["ci"][0] < 0 < d["ci"][1]  # one build says +30, another −10: no claim
    assert rows["search=cmaes"]["builds"] == 3 and rows["search=cmaes"]["seeds"] == 6
    text = format_rows(list(rows.values()), "search=cycleqd")
    assert "builds, then seeds, then test prompts" in text


def test_runs_of_one_build_with_other_weights_are_not_paired(tmp_path: Path):
    """The same build number trained on two machines gives other experts: pairing its runs
    would compare searches on different models, so the evidence refuses, naming both runs."""
    from cycleqd.analysis.evidence import table
    from cycleqd.errors import ConfigError

    items = {"final": {"a": [0.5, 0.6], "b": [0.1, 0.2]}}
    _fake_run(tmp_path / "r", ["search=cycleqd"], 1, 0, items, experts={"a": {"a": 0.61, "b": 0.2}})
    _fake_run(tmp_path / "o", ["search=cmaes"], 1, 0, items, experts={"a": {"a": 0.61, "b": 0.21}})
    assert len(table([tmp_path], "search=cycleqd")) == 2  # a near-tie flipped: the same weights
    _fake_run(tmp_path / "p", ["search=random"], 1, 0, items, experts={"a": {"a": 0.70, "b": 0.2}})
    with pytest.raises(
        ConfigError, match=r"build: runs of build 1 hold different experts .* 9\.0 points\): \S+/[or] and \S+/p;"
    ):
        table([tmp_path], "search=cycleqd")
