"""The ``cycleqd`` command.

    cycleqd run [hydra overrides]      run CycleQD (``-m`` for a multirun sweep)
    cycleqd resume RUN_DIR [key=value] continue a run from its checkpoint (e.g. generations=600)
    cycleqd show RUN_DIR               print a run's summary as a table
    cycleqd compare SWEEP_DIR          one table across a sweep's runs (also written as compare.csv)
    cycleqd select RUN_DIR --strategy best|pareto|topk|final|cell
    cycleqd export RUN_DIR --elite ID|best:TASK|final --format hf|peft --out DIR [--rank R]
    cycleqd evaluate MODEL_DIR [task=[a,b] ...]   score a saved model on tasks (test split)
    cycleqd baselines [overrides]      the experts and their static merges alone, no evolution
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _hydra_run() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
    def app(cfg: DictConfig) -> None:
        from cycleqd.runner import run
        from cycleqd.validate import validate

        if cfg.dry_run:
            validate(cfg)
            print(f"config valid: {len(cfg.task)} tasks {list(cfg.task)}, {cfg.generations} generations, model {cfg.model.kind}")
            return
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        summary = run(cfg, run_dir)
        print(format_summary(summary))
        print(f"\nrun directory: {run_dir}")

    app()


def format_summary(summary: dict) -> str:
    """The run's scores (held-out test split) as a plain-text table."""
    tasks = summary["tasks"]
    rows = [(f"expert: {n}", s) for n, s in summary["experts"].items()]
    rows += [(f"baseline: {n}", s) for n, s in summary["baselines"].items()]
    rows.append(("cycleqd (final)", summary["final"]))
    width = max(len(r[0]) for r in rows) + 2
    head = "model".ljust(width) + "".join(t[:10].rjust(11) for t in tasks) + "mean".rjust(9)
    lines = [head, "-" * len(head)]
    for name, s in rows:
        mean = sum(s[t] for t in tasks) / len(tasks)
        lines.append(name.ljust(width) + "".join(f"{100 * s[t]:11.1f}" for t in tasks) + f"{100 * mean:9.1f}")
    lines.append("")
    lines.append(f"generations {summary['generations']}, evaluations {summary['evaluations']}, wall time {summary['wall_time_s']:.0f}s")
    lines.append("archive".ljust(width) + "coverage".rjust(11) + "qd_score".rjust(11) + "best".rjust(9) + "elites".rjust(9))
    for t, a in summary["archives"].items():
        lines.append(t.ljust(width) + f"{a['coverage']:11.3f}{a['qd_score']:11.2f}{100 * a['best']:9.1f}{a['num_elites']:9d}")
    return "\n".join(lines)


def _show(run_dir: str) -> None:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise SystemExit(f"cycleqd show: {run_dir!r} has no summary.json (not a finished run directory)")
    print(format_summary(json.loads(path.read_text())))


def _compare(sweep_dir: str, csv_path: str | None) -> None:
    from cycleqd.compare import compare, format_table, write_csv

    try:
        header, rows = compare(sweep_dir)
    except FileNotFoundError as e:
        raise SystemExit(f"cycleqd compare: {e}")
    print(format_table(header, rows))
    out = Path(csv_path) if csv_path else Path(sweep_dir) / "compare.csv"
    write_csv(out, header, rows)
    print(f"\nwritten: {out}")


def _select(args) -> None:
    from cycleqd.rundata import load_run
    from cycleqd.select import select_elites

    try:
        run = load_run(args.run_dir)
        cell = tuple(int(c) for c in args.cell.split(",")) if args.cell else None
        table = select_elites(run, args.strategy, k=args.k, archive=args.archive, cell=cell)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"cycleqd select: {e}")
    cols = ["id", "archive", "cell", *[f"score_{t}" for t in run.tasks], "mean_score", "generation"]
    cols += [c for c in ("chosen_for", "weight") if c in table.columns]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _baselines(overrides: list[str]) -> None:
    import tempfile

    from hydra import compose, initialize_config_dir

    from cycleqd.runner import Run

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        r = Run(cfg, Path(tmp))
        baselines, chosen = r.baselines()
        experts = {t: r.evaluate(tv, "test") for t, tv in r.experts.items()}
    tasks = r.names
    width = max(len(n) for n in [*experts, *baselines]) + 12
    print("model".ljust(width) + "".join(t[:10].rjust(11) for t in tasks) + "mean".rjust(9) + "  chosen on opt")
    for kind, table in (("expert", experts), ("baseline", baselines)):
        for name, s in table.items():
            mean = sum(s.values()) / len(s)
            pick = chosen.get(name, {}) if kind == "baseline" else {}
            note = ", ".join(f"{k}={v}" for k, v in pick.items() if k in ("scale", "density", "gamma") and v is not None)
            print(f"{kind}: {name}".ljust(width) + "".join(f"{100 * s[t]:11.1f}" for t in tasks) + f"{100 * mean:9.1f}  {note}")


def _evaluate(model_dir: str, overrides: list[str], split: str) -> None:
    from hydra import compose, initialize_config_dir

    from cycleqd.evaluation import evaluate_model
    from cycleqd.runner import build_tasks

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    scores = evaluate_model(model_dir, build_tasks(cfg), split, batch_size=cfg.eval_batch_size)
    for task, score in scores.items():
        print(f"{task:20s}{100 * score:8.1f}")
    print(json.dumps(scores))


def _resume(run_dir: str, overrides: list[str]) -> None:
    from omegaconf import OmegaConf

    from cycleqd.runner import run
    from cycleqd.store import write_atomic

    cfg_path = Path(run_dir) / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise SystemExit(f"cycleqd resume: {run_dir!r} has no .hydra/config.yaml (not a run directory)")
    cfg = OmegaConf.load(cfg_path)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        # The resolved config of the continued run replaces the old one.
        write_atomic(cfg_path, OmegaConf.to_yaml(cfg))
    summary = run(cfg, Path(run_dir), resume=True)
    print(format_summary(summary))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("WANDB_SILENT", "true")
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        sys.argv = [sys.argv[0], *rest]
        _hydra_run()
    elif cmd == "show":
        parser = argparse.ArgumentParser(prog="cycleqd show")
        parser.add_argument("run_dir")
        _show(parser.parse_args(rest).run_dir)
    elif cmd == "resume":
        parser = argparse.ArgumentParser(prog="cycleqd resume")
        parser.add_argument("run_dir")
        parser.add_argument("overrides", nargs="*", help="key=value changes, e.g. generations=600")
        args = parser.parse_args(rest)
        _resume(args.run_dir, args.overrides)
    elif cmd == "compare":
        parser = argparse.ArgumentParser(prog="cycleqd compare")
        parser.add_argument("sweep_dir")
        parser.add_argument("--csv", default=None, help="where to write the CSV (default SWEEP_DIR/compare.csv)")
        args = parser.parse_args(rest)
        _compare(args.sweep_dir, args.csv)
    elif cmd == "select":
        parser = argparse.ArgumentParser(prog="cycleqd select")
        parser.add_argument("run_dir")
        parser.add_argument("--strategy", default="best", help="best | pareto | topk | final | cell")
        parser.add_argument("--k", type=int, default=5, help="how many, for topk")
        parser.add_argument("--archive", help="archive (task) name, for cell")
        parser.add_argument("--cell", help="cell indices, e.g. 3,7, for cell")
        args = parser.parse_args(rest)
        _select(args)
    elif cmd == "export":
        parser = argparse.ArgumentParser(prog="cycleqd export")
        parser.add_argument("run_dir")
        parser.add_argument("--elite", required=True, help="an elite id, best:<task> or final")
        parser.add_argument("--format", default="hf", choices=["hf", "peft"])
        parser.add_argument("--out", required=True)
        parser.add_argument("--rank", type=int, default=None, help="LoRA rank for full-weight elites (peft)")
        args = parser.parse_args(rest)
        from cycleqd.export import export

        try:
            out = export(args.run_dir, args.elite, args.format, args.out, args.rank)
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            raise SystemExit(f"cycleqd export: {e}")
        print(f"written: {out}")
        kept = json.loads((Path(out) / "cycleqd.json").read_text()).get("scores_truncated")
        if kept:
            print("scores the rank-%d adapter keeps (opt split): %s" % (args.rank, {t: round(v, 4) for t, v in kept.items()}))
    elif cmd == "baselines":
        _baselines(rest)
    elif cmd == "evaluate":
        parser = argparse.ArgumentParser(prog="cycleqd evaluate")
        parser.add_argument("model_dir")
        parser.add_argument("overrides", nargs="*", help="Hydra overrides choosing the tasks, e.g. task=[addition,sorting]")
        parser.add_argument("--split", default="test", choices=["opt", "test"])
        args = parser.parse_args(rest)
        _evaluate(args.model_dir, args.overrides, args.split)
    else:
        raise SystemExit(f"cycleqd: unknown command {cmd!r} (run, resume, show, compare, select, export, evaluate)")


if __name__ == "__main__":
    main()
