"""lm-evaluation-harness tasks as CycleQD tasks: task YAMLs of one's own with local data
(tests/lm_eval_tasks), generative and multiple-choice, against oracles computed here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from cycleqd.errors import ConfigError  # noqa: E402
from cycleqd.models.loading import HFTextModel, load_model  # noqa: E402
from cycleqd.tasks.lm_eval import LmEvalTask  # noqa: E402
from tests.runs import REPO, cli, one_line_error  # noqa: E402
from tests.tiny import tiny_overrides  # noqa: E402

TASKS = REPO / "tests" / "lm_eval_tasks"


def _task(name: str, **kw) -> LmEvalTask:
    t = LmEvalTask(name=name, task=f"tiny_{name}", include_path=str(TASKS), add_bos_token=True, **kw)
    t.prepare()
    return t


@pytest.fixture(scope="module")
def base(cache: Path, tmp_path_factory) -> HFTextModel:
    """The tiny embedded base (built by a short run into the shared cache)."""
    cli("run", *tiny_overrides(cache, generations=1), f"hydra.run.dir={tmp_path_factory.mktemp('lm') / 'run'}")
    (path,) = [p for p in cache.glob("base-*") if (p / "config.json").is_file()][:1]
    model, tokenizer = load_model(path)
    return HFTextModel(model, tokenizer)


def _docs(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / "data" / f"{name}_eval.jsonl").read_text().splitlines()]


def test_generative_task_is_exact_match_of_greedy_generation(base: HFTextModel):
    task = _task("difference")
    docs = _docs("difference")
    hits = 0
    for split in ("opt", "test"):
        ids = task.split(split)
        outputs = base.generate([f"{docs[i]['x']}-{docs[i]['y']}=" for i in ids], max_new_tokens=3, stop=("\n",))
        oracle = [float(o == docs[i]["answer"]) for o, i in zip(outputs, ids)]
        assert task.evaluate_items(base, split) == oracle
        hits += sum(oracle)
    assert 0 < hits < 40  # the oracle is not a constant


@torch.inference_mode()
def test_multiple_choice_task_is_the_choice_of_highest_loglikelihood(base: HFTextModel):
    task = _task("larger")
    docs = _docs("larger")
    tok, model = base.tokenizer, base.model

    def loglik(context: str, continuation: str) -> float:
        ids = tok.encode(tok.bos_token + context + continuation, add_special_tokens=False)
        n = len(tok.encode(continuation, add_special_tokens=False))
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
        return float(sum(logp[len(ids) - n - 1 + j, ids[len(ids) - n + j]] for j in range(n)))

    ids = task.split("test")
    oracle = []
    for i in ids:
        d = docs[i]
        scores = [loglik(f"max({d['x']},{d['y']})=", str(c)) for c in (d["x"], d["y"])]
        oracle.append(float(scores.index(max(scores)) == d["label"]))
    assert task.evaluate_items(base, "test") == oracle
    assert 0 < sum(oracle) < len(oracle)  # the oracle is not a constant


def test_scores_the_resident_model_in_place(base: HFTextModel):
    """One harness wrapper per model object; weights written into it change the score."""
    task = _task("larger")
    before = task.evaluate_items(base, "opt")
    wrapper = task._harness_model(base)
    head = base.model.get_output_embeddings().weight
    saved = head.detach().clone()
    with torch.no_grad():
        head.mul_(-1.0)  # every preference reversed
    try:
        after = task.evaluate_items(base, "opt")
    finally:
        with torch.no_grad():
            head.copy_(saved)
    assert task._harness_model(base) is wrapper
    assert after != before
    assert task.evaluate_items(base, "opt") == before


def test_splits_are_a_seeded_partition_or_two_lm_eval_splits():
    a, b = _task("larger"), _task("larger")
    assert a.split("opt") == b.split("opt")
    assert not set(a.split("opt")) & set(a.split("test"))
    assert sorted(a.split("opt") + a.split("test")) == list(range(60))
    other = _task("larger", seed=99)
    assert other.split("opt") != a.split("opt")
    limited = _task("larger", limit=7)
    assert len(limited.split("opt")) == 7 and set(limited.split("opt")) <= set(a.split("opt"))
    two = _task("larger", opt_split="train", test_split="test")
    assert two.split("test") == list(range(60)) and two.split("opt") == list(
        range(30)
    )  # larger_train.jsonl: 30 documents


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="task.*not an lm-eval task name"):
        _task("nonexistent")
    with pytest.raises(ConfigError, match="metric.*has metrics \\['acc'\\]"):
        _task("larger", metric="f1")
    with pytest.raises(ConfigError, match="include_path"):
        LmEvalTask(name="x", task="tiny_larger", include_path=str(TASKS / "missing"))


def test_a_run_with_lm_eval_tasks(cache: Path, tmp_path: Path):
    """addition, a generative and a multiple-choice lm-eval task: experts trained on the tasks'
    training splits, the archives, and per-item test results for the paired intervals."""
    args = tiny_overrides(cache, generations=4, tasks=("addition",)) + ["task=[addition]"]
    for name in ("difference", "larger"):
        t = f"+task.{name}"
        args += [
            f"{t}._target_=cycleqd.tasks.lm_eval.LmEvalTask",
            f"{t}.name={name}",
            f"{t}.task=tiny_{name}",
            f"{t}.include_path=tests/lm_eval_tasks",
            f"{t}.add_bos_token=true",
            f"{t}.limit=12",
        ]
    run_dir = tmp_path / "run"
    cli("run", *args, f"hydra.run.dir={run_dir}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tasks"] == ["addition", "difference", "larger"] and summary["generations"] == 4
    items = json.loads((run_dir / "test_items.json").read_text())
    assert len(items["final"]["larger"]) == 30 and len(items["final"]["difference"]) == 20
    assert summary["final"]["larger"] == pytest.approx(sum(items["final"]["larger"]) / 30)
    assert "baseline:task_arithmetic" in summary["final_vs"]


def test_an_unknown_lm_eval_task_fails_before_any_model(cache: Path, tmp_path: Path):
    args = tiny_overrides(cache, generations=2) + [
        "+task.extra._target_=cycleqd.tasks.lm_eval.LmEvalTask",
        "+task.extra.name=extra",
        "+task.extra.task=tiny_nothing",
        "+task.extra.include_path=tests/lm_eval_tasks",
    ]
    line = one_line_error(cli("run", *args, "dry_run=true", check=False))
    assert "task.extra.task" in line and "tiny_nothing" in line
