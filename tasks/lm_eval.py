"""lm-evaluation-harness tasks as CycleQD tasks: a built-in task by name, or a task YAML of
the user's own, scored on the resident model in place (lm-eval's ``HFLM`` wraps the model
object the loop writes candidates into; nothing is reloaded per candidate).

    task:
      arith:
        _target_: cycleqd.tasks.lm_eval.LmEvalTask
        name: arith
        task: my_arith              # an lm-eval task name (or the path of its YAML)
        include_path: my_tasks/     # a folder of task YAMLs, searched before lm-eval's own
        metric: exact_match
        measure: {low: 0.0, high: 1.0, bins: 15}

Needs the ``lm-eval`` extra (``pip install -e '.[lm-eval]'``). Relative ``data_files`` in a
YAML are read from the YAML's folder, so a folder of tasks and their data moves as one.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cycleqd.checks import check_fields, require
from cycleqd.errors import ConfigError
from cycleqd.protocols import ItemTask, Measure, TextModel

SPLITS = ("opt", "test")


@dataclass
class LmEvalTask(ItemTask):
    """One lm-evaluation-harness task (``generate_until`` or ``multiple_choice``, any metric
    that lm-eval averages over documents).

    Args:
        name: The task's name in cycleqd (archives, summaries).
        task: The lm-eval task name, or the path of its YAML.
        include_path: A folder of task YAMLs (lm-eval's ``--include_path``); null: lm-eval's
            own tasks only.
        metric: The per-document metric that is the score (default: the task's first).
        test_split: The lm-eval split reported as ``test`` (default: the task's own
            evaluation split, its ``test_split`` or else ``validation_split``).
        opt_split: A second lm-eval split used as ``opt``; null: a seeded partition of the
            test split, ``opt_fraction`` of its documents for ``opt`` and the rest for ``test``.
        opt_fraction: The partition's share for ``opt``.
        limit: At most this many ``opt`` documents (a seeded sample): each candidate is
            scored on these, so they set the cost of a generation.
        seed: Seed of the partition and of the ``limit`` sample.
        num_fewshot: Few-shot examples per prompt (default: the task's own setting).
        batch_size: lm-eval's batch size.
        add_bos_token: Prepend BOS to every prompt (the embedded model was trained with it).
        measure: Descriptor axis and direction of the score.
    """

    name: str
    task: str
    include_path: str | None = None
    metric: str | None = None
    test_split: str | None = None
    opt_split: str | None = None
    opt_fraction: float = 0.5
    limit: int | None = None
    seed: int = 1234
    num_fewshot: int | None = None
    batch_size: int = 16
    add_bos_token: bool = False
    measure: Measure = field(default_factory=Measure)

    def __post_init__(self) -> None:
        self.measure = Measure.of(self.measure)
        check_fields(self)
        require(bool(self.name), "name", "must be a non-empty string")
        require(bool(self.task), "task", "must name an lm-eval task or the path of its YAML")
        require(0.0 < self.opt_fraction < 1.0, "opt_fraction", f"must be in (0, 1), got {self.opt_fraction}")
        require(self.limit is None or self.limit >= 1, "limit", f"must be null or >= 1, got {self.limit}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        if self.include_path is not None:
            require(Path(self.include_path).is_dir(), "include_path", f"{self.include_path!r} is not a folder")
        self._loaded: dict[str, Any] | None = None
        self._ids: dict[str, list[int]] = {}
        self._lm: tuple[Any, Any] | None = None

    # -- data -------------------------------------------------------------------
    def prepare(self) -> None:
        """Find the task and read its documents now, before any model exists."""
        if self._loaded is not None:
            return
        try:
            from lm_eval.tasks import TaskManager
        except ImportError:
            raise ConfigError(
                "_target_", "cycleqd.tasks.lm_eval.LmEvalTask needs lm-eval: pip install -e '.[lm-eval]'"
            ) from None
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        with _quiet():
            manager = TaskManager(include_path=self.include_path, include_defaults=False) if self.include_path else None
            if manager is None or self.task not in manager.task_index:
                manager = TaskManager(include_path=self.include_path)  # lm-eval's own tasks too
            config = _full_config(manager, self.task)
            own_split = config.get("test_split") or config.get("validation_split")
            test_split = self.test_split or own_split
            require(
                test_split is not None,
                "test_split",
                f"lm-eval task {self.task!r} names no test or validation split: set test_split",
            )
            self._loaded = {"test": self._load(manager, config, test_split)}
            self._loaded["opt"] = (
                self._load(manager, config, self.opt_split) if self.opt_split else self._loaded["test"]
            )
        metrics = [m["metric"] for m in config.get("metric_list") or []]
        self.metric = self.metric or (metrics[0] if metrics else None)
        require(
            self.metric in metrics, "metric", f"lm-eval task {self.task!r} has metrics {metrics}, not {self.metric!r}"
        )
        for split in SPLITS:
            aggregation = self._task(split).aggregation().get(self.metric)
            require(
                getattr(aggregation, "__name__", "") == "mean",
                "metric",
                f"{self.metric!r} aggregates by {getattr(aggregation, '__name__', aggregation)!r}; cycleqd needs a per-document mean",
            )
        n_test = len(self._task("test").eval_docs)
        rng = random.Random(f"{self.name}:{self.seed}")
        if self.opt_split:
            test_ids = list(range(n_test))
            opt_ids = list(range(len(self._task("opt").eval_docs)))
        else:
            order = rng.sample(range(n_test), n_test)
            cut = round(n_test * self.opt_fraction)
            require(
                0 < cut < n_test, "opt_fraction", f"leaves an empty split of the {n_test} documents of {test_split!r}"
            )
            opt_ids, test_ids = sorted(order[:cut]), sorted(order[cut:])
        if self.limit is not None and self.limit < len(opt_ids):
            opt_ids = sorted(rng.sample(opt_ids, self.limit))
        require(
            len(opt_ids) > 0 and len(test_ids) > 0, "task", f"lm-eval task {self.task!r} has no documents in a split"
        )
        self._ids = {"opt": opt_ids, "test": test_ids}

    def _load(self, manager, config: dict, split: str) -> dict:
        overrides = {"test_split": split}
        if self.num_fewshot is not None:
            overrides["num_fewshot"] = self.num_fewshot
        try:
            loaded = manager.load([{**config, **overrides}])
        except Exception as e:
            raise ConfigError(
                "task",
                f"lm-eval cannot load {self.task!r} with split {split!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
            ) from None
        return loaded

    def _task(self, split: str):
        return next(iter(self._loaded[split]["tasks"].values()))

    def split(self, split: str) -> list[int]:
        """The documents (ids in their lm-eval split) of ``opt`` or ``test``."""
        require(split in SPLITS, "split", f"must be one of {SPLITS}, got {split!r}")
        self.prepare()
        return self._ids[split]

    def train_examples(self, n: int, seed: int) -> list[tuple[str, str]]:
        """``n`` (prompt, answer) pairs from the task's training split, for experts trained here."""
        self.prepare()
        task = self._task("test")
        if not task.has_training_docs():
            raise ValueError(f"lm-eval task {self.task!r} has no training split: give experts with experts=paths")
        docs = list(task.training_docs())
        rng = random.Random(f"{self.name}:{seed}:train")
        out = []
        for _ in range(n):
            doc = docs[rng.randrange(len(docs))]
            prompt, target = task.doc_to_text(doc), task.doc_to_target(doc)
            if task.OUTPUT_TYPE == "multiple_choice":
                choices = task.doc_to_choice(doc)
                target = choices[target] if isinstance(target, int) else target
                target = task.config.target_delimiter + str(target)
            out.append((str(prompt), str(target)))
        return out

    # -- scoring ----------------------------------------------------------------
    def _harness_model(self, model: TextModel):
        """lm-eval's HF wrapper around the resident model object, built once per object."""
        inner, tokenizer = getattr(model, "model", None), getattr(model, "tokenizer", None)
        if inner is None or tokenizer is None:
            raise TypeError(
                f"{type(model).__name__} exposes no transformers model and tokenizer (.model, .tokenizer) for lm-eval"
            )
        if self._lm is None or self._lm[0] is not inner:
            self._lm = (
                inner,
                _harness(
                    pretrained=inner, tokenizer=tokenizer, batch_size=self.batch_size, add_bos_token=self.add_bos_token
                ),
            )
        return self._lm[1]

    def evaluate_items(self, model: TextModel, split: str = "opt") -> list[float]:
        """The metric of each document of ``split``, in the order of :meth:`split`."""
        from lm_eval import evaluator

        ids = self.split(split)
        loaded = self._loaded[split]
        name = next(iter(loaded["tasks"]))
        with _quiet():
            results = evaluator.evaluate(
                self._harness_model(model),
                loaded,
                samples={name: ids},
                bootstrap_iters=0,
                log_samples=True,
                verbosity="ERROR",
            )
        by_id = {s["doc_id"]: float(s[self.metric]) for s in results["samples"][name]}
        return [by_id[i] for i in ids]

    def __getstate__(self) -> dict:
        # What a worker process needs is the config; it loads the task itself.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._loaded, self._ids, self._lm = None, {}, None


def _full_config(manager, task: str) -> dict:
    """The task's config with its ``include``s resolved and relative data files read from the YAML's folder."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(task)
    path = Path(entry.yaml_path) if entry is not None and entry.yaml_path else Path(task)
    if entry is None and not (path.suffix in (".yaml", ".yml") and path.is_file()):
        raise ConfigError(
            "task", f"{task!r} is not an lm-eval task name (under include_path or built in) or a task YAML"
        )
    require(path.is_file(), "task", f"lm-eval task {task!r} has no YAML (python tasks are not supported)")
    config = dict(load_yaml(path, resolve_func=True))
    require("task" in config, "task", f"{task!r} is a group or a tag of lm-eval tasks: name one task")
    kwargs = dict(config.get("dataset_kwargs") or {})
    if "data_files" in kwargs:
        kwargs["data_files"] = _relative_to(kwargs["data_files"], path.parent)
        config["dataset_kwargs"] = kwargs
    return config


def _relative_to(files: Any, folder: Path) -> Any:
    if isinstance(files, str):
        p = Path(files)
        return str(folder / p) if not p.is_absolute() and (folder / p).exists() else files
    if isinstance(files, dict):
        return {k: _relative_to(v, folder) for k, v in files.items()}
    if isinstance(files, (list, tuple)):
        return [_relative_to(v, folder) for v in files]
    return files


@contextlib.contextmanager
def _quiet():
    """lm-eval and datasets draw a progress bar per request batch, for every candidate: not shown."""
    import datasets

    was = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if was:
            datasets.enable_progress_bars()


@functools.cache
def _quiet_hflm():
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        """No progress bars; and ``add_bos_token`` honoured by tokenizers whose
        ``add_special_tokens`` adds no BOS (the embedded character tokenizer)."""

        def _bos_text(self) -> str:
            tok = self.tokenizer
            if not self.add_bos_token or tok.bos_token is None:
                return ""
            adds = tok.encode("a", add_special_tokens=True)[:1] == [tok.bos_token_id]
            return "" if adds else tok.bos_token

        def tok_encode(self, string, add_special_tokens=None, left_truncate_len=None, **kwargs):
            bos = self._bos_text() if add_special_tokens is not False else ""
            if bos and not string.startswith(bos):
                return super().tok_encode(
                    bos + string, add_special_tokens=False, left_truncate_len=left_truncate_len, **kwargs
                )
            return super().tok_encode(
                string, add_special_tokens=add_special_tokens, left_truncate_len=left_truncate_len, **kwargs
            )

        def tok_batch_encode(self, strings, padding_side="left", left_truncate_len=None, truncation=False):
            bos = self._bos_text()
            strings = [s if not bos or s.startswith(bos) else bos + s for s in strings]
            return super().tok_batch_encode(
                strings, padding_side=padding_side, left_truncate_len=left_truncate_len, truncation=truncation
            )

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM


def _harness(**kwargs):
    """lm-eval's HF model wrapper (quiet, BOS honoured) around an already loaded model."""
    with _quiet():
        return _quiet_hflm()(**kwargs)
