"""The ``cycleqd`` command.

    cycleqd run [hydra overrides]      run CycleQD (``-m`` for a multirun sweep; dry_run=true: check only)
    cycleqd resume RUN_DIR [key=value] continue a run from its checkpoint (e.g. generations=600)
    cycleqd show RUN_DIR               print a run's summary as a table
    cycleqd compare SWEEP_DIR [--by seed]  one table across a sweep's runs (also written as compare.csv)
    cycleqd evidence ROOT... --reference search=cycleqd [--plot FILE]  methods over seeds, with intervals
    cycleqd heldout ROOT... --task reversal_long [--n-opt 32]  each method's pick for a task no search saw
    cycleqd pack ROOT --out DIR        finished runs' evidence without their models (a few hundred KB a run)
    cycleqd report RUN_DIR [--out FILE] [--serve]  the run (or a sweep) as one HTML page; --serve: live
    cycleqd select RUN_DIR --strategy best|pareto|topk|final|cell
    cycleqd export RUN_DIR --elite ID|best:TASK|final --format hf|peft --out DIR [--rank R]
    cycleqd evaluate MODEL_DIR [task=[a,b] ...]   score a saved model on tasks (test split)
    cycleqd baselines [overrides]      the experts and their static merges alone, no evolution

Errors print as one line naming what is wrong (a config key, a file) and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from cycleqd.errors import ConfigError, CycleQDError
from cycleqd.run.configs import CONF_DIR, compose, sweep
from cycleqd.run.summary import format_summary, score_table

# Hydra's flags: those that take a value, and those that make it print instead of run.
_VALUE_FLAGS = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--experimental-rerun",
}
_PRINT_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--version"}


def _split_hydra_args(args: list[str]) -> tuple[dict[str, str | None], list[str]]:
    flags: dict[str, str | None] = {}
    overrides = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("-") and "=" not in a:
            if a in _VALUE_FLAGS and i + 1 < len(args):
                flags[a] = args[i + 1]
                i += 2
                continue
            flags[a] = None
        else:
            overrides.append(a)
        i += 1
    return flags, overrides


def _check_run_args(args: list[str]) -> bool:
    """Compose and check every job of ``cycleqd run args`` before Hydra creates anything.
    Returns True when the command was a dry run (nothing more to do)."""
    from cycleqd.run.components import build
    from cycleqd.run.lock import in_use_message, is_locked

    flags, overrides = _split_hydra_args(args)
    if any(f in _PRINT_FLAGS for f in flags) or {
        "--config-path",
        "-cp",
        "--config-dir",
        "-cd",
        "--experimental-rerun",
    } & set(flags):
        return False  # Hydra prints or composes from elsewhere: the job itself checks its config
    name = flags.get("--config-name") or flags.get("-cn") or "config"
    multirun = "-m" in flags or "--multirun" in flags
    jobs = sweep(overrides) if multirun else [overrides]
    dry = False
    for job in jobs:
        cfg = compose(job, config_name=name, hydra_config=not multirun)
        components = build(cfg)
        dry = dry or cfg.dry_run
        if cfg.dry_run:
            for w in components.warnings:
                print(f"warning: {w}", file=sys.stderr)
            print(
                f"config valid: {len(components.tasks)} tasks {components.names}, {cfg.generations} generations, model {cfg.model.kind}"
                + (f" ({' '.join(job)})" if multirun else "")
            )
        if not multirun:
            try:
                run_dir = Path(cfg.hydra.run.dir)
            except Exception:  # a run dir made of Hydra's runtime values: the run checks it under its lock
                continue
            if is_locked(run_dir):
                from cycleqd.errors import RunInUse

                raise RunInUse(in_use_message(run_dir))
            if (run_dir / "checkpoint" / "state.ckpt").is_file():
                raise ConfigError(
                    "hydra.run.dir",
                    f"{str(run_dir)!r} already holds a run: resume it with `cycleqd resume {run_dir}` or choose another directory",
                )
    return dry


def _hydra_run(args: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    if _check_run_args(args):
        return

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
    def app(cfg: DictConfig) -> None:
        from cycleqd.run.runner import run

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if cfg.dry_run:
            from cycleqd.run.components import build

            build(cfg)
            print(f"config valid: {list(cfg.task)}")
            return
        summary = _guarded("run", lambda: run(cfg, run_dir), run_dir)
        print(format_summary(summary))
        print(f"\nrun directory: {run_dir}")

    sys.argv = [sys.argv[0], *args]
    app()


def _guarded(cmd: str, fn, run_dir: Path | None = None):
    """Run ``fn``; a cycleqd error or an interrupt ends the process with one line."""
    try:
        return fn()
    except CycleQDError as e:
        print(f"cycleqd {cmd}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        hint = f"; resume with: cycleqd resume {run_dir}" if run_dir is not None else ""
        print(
            f"cycleqd {cmd}: interrupted ({e or 'SIGINT'}) before a safe point, nothing written since the last checkpoint{hint}",
            file=sys.stderr,
        )
        sys.exit(130)


def _show(run_dir: str) -> None:
    from cycleqd.fileio import read_json

    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir!r} has no summary.json (not a finished run directory)")
    summary = read_json(path, "summary")
    try:
        print(format_summary(summary))
    except (KeyError, TypeError, ValueError) as e:
        from cycleqd.errors import DamagedFile

        raise DamagedFile(path, f"not a cycleqd summary ({type(e).__name__}: {e})") from None


def _compare(sweep_dir: str, csv_path: str | None, by: str | None = None) -> None:
    from cycleqd.analysis.compare import aggregate, compare, format_table, write_csv

    header, rows = compare(sweep_dir)
    if by:
        header, rows = aggregate(header, rows, by)
    print(format_table(header, rows))
    out = Path(csv_path) if csv_path else Path(sweep_dir) / "compare.csv"
    write_csv(out, header, rows)
    print(f"\nwritten: {out}")


def _evidence(args) -> None:
    from cycleqd.analysis.evidence import format_rows, methods, plot, table
    from cycleqd.analysis.worth import format_table_rows as format_worth
    from cycleqd.analysis.worth import table as worth_table
    from cycleqd.fileio import write_json

    roots = [Path(r) for r in args.roots]
    rows = table(roots, args.reference)
    print(format_rows(rows, args.reference))
    pools = None
    if any((run / "front.json").is_file() for m in methods(roots).values() for run in m.runs.values()):
        pools = worth_table(roots, args.reference, n=args.weightings, seed=args.weightings_seed)
        print("\nWhat each pool is worth to users who pick their own model (runs with final.front=true):")
        print(format_worth(pools, args.reference))
        if args.plot_pools:
            from cycleqd.analysis.worth import plot as plot_pools

            print(f"\nwritten: {plot_pools(pools, Path(args.plot_pools))}")
    if args.json:
        write_json(args.json, rows if pools is None else {"final": rows, "pools": pools})
    if args.plot:
        print(f"\nwritten: {plot(roots, Path(args.plot))}")


def _heldout(args) -> None:
    from cycleqd.analysis.heldout import format_rows, table
    from cycleqd.fileio import write_json

    rows = table([Path(r) for r in args.roots], args.reference, args.task, args.n_opt)
    print(format_rows(rows, args.reference, rows[0]["task"], args.n_opt))
    if args.json:
        write_json(args.json, rows)


def _pack(args) -> None:
    from cycleqd.analysis.pack import pack, size

    runs = pack(args.root, args.out)
    print(f"packed {len(runs)} runs into {args.out} ({size(args.out) / 2**20:.1f} MiB)")


def _report(args) -> None:
    if args.serve:
        from cycleqd.analysis.report.live import serve

        serve(args.run_dir, args.port)
        return
    from cycleqd.analysis.report.page import write_report

    path = write_report(args.run_dir, args.out)
    print(f"written: {path} ({path.stat().st_size / 2**20:.1f} MiB; open it in a browser, no network needed)")


def _select(args) -> None:
    from cycleqd.analysis.rundata import load_run
    from cycleqd.analysis.selection import select_elites

    run = load_run(args.run_dir)
    cell = tuple(int(c) for c in args.cell.split(",")) if args.cell else None
    table = select_elites(run, args.strategy, k=args.k, archive=args.archive, cell=cell)
    cols = ["id", "archive", "cell", *[f"score_{t}" for t in run.tasks], "mean_score", "generation"]
    cols += [c for c in ("chosen_for", "weight") if c in table.columns]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _baselines(overrides: list[str]) -> None:
    import tempfile

    from cycleqd.protocols import Failure
    from cycleqd.run.runner import Run

    cfg = compose(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        r = Run(cfg, Path(tmp))
        try:
            r.setup()
            experts, baselines, chosen, failed = r.baselines()
        finally:
            r.pool.close()
    rows = [
        (f"expert: {name}", None if isinstance(s, Failure) else s, f"  FAILED {s}" if isinstance(s, Failure) else "")
        for name, s in experts.items()
    ]
    for name, s in baselines.items():
        pick = chosen.get(name, {})
        note = ", ".join(f"{k}={v}" for k, v in pick.items() if k in ("scale", "density", "gamma") and v is not None)
        rows.append((f"baseline: {name}", s, f"  {note}"))
    rows += [(f"baseline: {name}", None, f"  FAILED {why}") for name, why in failed.items()]
    print("\n".join(score_table(rows, r.names, note="  chosen on opt")))


def _evaluate(model_dir: str, overrides: list[str], split: str) -> None:
    from cycleqd.evaluation.scoring import evaluate_model
    from cycleqd.run.components import build_tasks

    cfg = compose(overrides)
    tasks = build_tasks(cfg)
    utilities = evaluate_model(model_dir, tasks, split, batch_size=cfg.eval_batch_size)
    # each task's own score: a lower-is-better one's, not its utility
    scores = {t.name: t.measure.score(utilities[t.name]) for t in tasks}
    for t in tasks:
        lower = t.measure.direction == "min"
        print(
            f"{t.name:20s}" + (f"{scores[t.name]:8.4g}  (lower is better)" if lower else f"{100 * scores[t.name]:8.1f}")
        )
    print(json.dumps(scores))


def _resume(run_dir: str, overrides: list[str]) -> None:
    from omegaconf import OmegaConf

    from cycleqd.run.configs import load_config
    from cycleqd.run.runner import run

    cfg = load_config(run_dir)
    if overrides:
        bad = [o for o in overrides if "=" not in o or o.startswith(("+", "~"))]
        if bad:
            raise ConfigError(bad[0].split("=", 1)[0], f"resume takes key=value overrides, got {bad[0]!r}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        except Exception as e:
            raise ConfigError(
                overrides[0].split("=", 1)[0], f"cannot apply the overrides {overrides} ({str(e).splitlines()[0]})"
            ) from None
    summary = _guarded(
        "resume", lambda: run(cfg, Path(run_dir), resume=True, write_config=bool(overrides)), Path(run_dir)
    )
    print(format_summary(summary))


def _parser(cmd: str, rest: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"cycleqd {cmd}")
    if cmd in ("show", "resume", "select", "export"):
        parser.add_argument("run_dir")
    if cmd == "resume":
        parser.add_argument("overrides", nargs="*", help="key=value changes, e.g. generations=600")
    elif cmd == "compare":
        parser.add_argument("sweep_dir")
        parser.add_argument("--csv", default=None, help="where to write the CSV (default SWEEP_DIR/compare.csv)")
        parser.add_argument(
            "--by", default=None, help="a config key to aggregate over (e.g. seed): mean ± sd per configuration"
        )
    elif cmd == "evidence":
        parser.add_argument("roots", nargs="+", help="sweep directories (or any folders of runs)")
        parser.add_argument(
            "--reference",
            default="search=cycleqd",
            help="the method the others are compared with (its overrides, seed left out)",
        )
        parser.add_argument("--plot", default=None, help="write the best-score-against-evaluations plot here (PNG)")
        parser.add_argument("--json", default=None, help="write the table as JSON here")
        parser.add_argument(
            "--weightings", type=int, default=32, help="Dirichlet(1) task weightings of the preference table"
        )
        parser.add_argument("--weightings-seed", type=int, default=0, help="their seed")
        parser.add_argument(
            "--plot-pools", default=None, help="write the preference spread and the test fronts here (PNG)"
        )
    elif cmd == "heldout":
        parser.add_argument("roots", nargs="+", help="sweep directories (or any folders of finished runs)")
        parser.add_argument("--task", required=True, help="a task config no search saw (conf/task/<name>.yaml)")
        parser.add_argument("--n-opt", type=int, default=32, help="opt items of it each pool's pick is chosen on")
        parser.add_argument("--reference", default="search=cycleqd", help="the method the others are compared with")
        parser.add_argument("--json", default=None, help="write the table as JSON here")
    elif cmd == "pack":
        parser.add_argument("root", help="a sweep directory, or any folder of finished runs")
        parser.add_argument("--out", required=True, help="where to write the packed runs (the same layout)")
    elif cmd == "report":
        parser.add_argument("run_dir", help="a run directory, or a sweep directory (a page per run and an index)")
        parser.add_argument("--out", default=None, help="where to write the page (default RUN_DIR/report.html)")
        parser.add_argument(
            "--serve", action="store_true", help="serve the page live on localhost instead of writing it"
        )
        parser.add_argument("--port", type=int, default=8765, help="the live page's port (0: any free one)")
    elif cmd == "select":
        parser.add_argument("--strategy", default="best", help="best | pareto | topk | final | cell")
        parser.add_argument("--k", type=int, default=5, help="how many, for topk")
        parser.add_argument("--archive", help="archive (task) name, for cell")
        parser.add_argument("--cell", help="cell indices, e.g. 3,7, for cell")
    elif cmd == "export":
        parser.add_argument("--elite", required=True, help="an elite id, best:<task> or final")
        parser.add_argument("--format", default="hf", choices=["hf", "peft"])
        parser.add_argument("--out", required=True)
        parser.add_argument("--rank", type=int, default=None, help="LoRA rank for full-weight elites (peft)")
    elif cmd == "evaluate":
        parser.add_argument("model_dir")
        parser.add_argument(
            "overrides", nargs="*", help="Hydra overrides choosing the tasks, e.g. task=[addition,sorting]"
        )
        parser.add_argument("--split", default="test", choices=["opt", "test"])
    return parser.parse_args(rest)


def _export(args) -> None:
    from cycleqd.analysis.export import export

    out = export(args.run_dir, args.elite, args.format, args.out, args.rank)
    print(f"written: {out}")
    kept = json.loads((Path(out) / "cycleqd.json").read_text()).get("scores_truncated")
    if kept:
        print(
            "scores the rank-%d adapter keeps (opt split): %s" % (args.rank, {t: round(v, 4) for t, v in kept.items()})
        )


COMMANDS = (
    "run",
    "resume",
    "show",
    "compare",
    "evidence",
    "heldout",
    "pack",
    "report",
    "select",
    "export",
    "evaluate",
    "baselines",
)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("WANDB_SILENT", "true")
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        raise SystemExit(f"cycleqd: unknown command {cmd!r} ({', '.join(COMMANDS)})")
    if cmd != "run":
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        if cmd == "run":
            _hydra_run(rest)
        elif cmd == "baselines":
            _baselines(rest)
        else:
            args = _parser(cmd, rest)
            if cmd == "show":
                _show(args.run_dir)
            elif cmd == "resume":
                _resume(args.run_dir, args.overrides)
            elif cmd == "compare":
                _compare(args.sweep_dir, args.csv, args.by)
            elif cmd == "evidence":
                _evidence(args)
            elif cmd == "heldout":
                _heldout(args)
            elif cmd == "pack":
                _pack(args)
            elif cmd == "report":
                _report(args)
            elif cmd == "select":
                _select(args)
            elif cmd == "export":
                _export(args)
            elif cmd == "evaluate":
                _evaluate(args.model_dir, args.overrides, args.split)
    except CycleQDError as e:
        print(f"cycleqd {cmd}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        if cmd in ("run", "baselines"):
            raise
        # Expected user errors of the reading commands (a wrong path, an unknown elite).
        print(f"cycleqd {cmd}: {e.args[0] if e.args else e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"cycleqd {cmd}: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
