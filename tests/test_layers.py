"""The package's layers: every import (at module level or inside a function) runs downward,
and no group of modules imports itself round in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.runs import REPO

# Lower number, lower layer. A module may import its own layer and the layers below.
LAYERS = {"foundation": 0, "core": 1, "models": 2, "evaluation": 3, "run": 4, "analysis": 5, "cli": 6}


def modules() -> dict[str, Path]:
    """Every module of the installed package by its dotted name (the task plugins as cycleqd.tasks)."""
    out = {}
    for root, prefix in (
        (REPO / "cycleqd", "cycleqd"),
        (REPO / "tasks", "cycleqd.tasks"),
        (REPO / "conf", "cycleqd.conf"),
    ):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([prefix, *parts])] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The cycleqd modules that ``path`` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    if module == "cycleqd.cli":
        return "cli"
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    if len(parts) > 1 and parts[1] in ("tasks", "conf"):
        return parts[1]
    return "foundation"


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def test_the_import_graph_is_read_from_the_code():
    g = graph()
    assert "cycleqd.core.evolve" in g["cycleqd.run.provision"]
    assert "cycleqd.run.configs" in g["cycleqd.cli"]  # a module-level import
    assert "cycleqd.run.runner" in g["cycleqd.cli"]  # one inside a function
    assert "cycleqd.tasks.base" in g["cycleqd.tasks.addition"]


def test_every_import_runs_down_the_layers():
    wrong = []
    for importer, imported in graph().items():
        if importer == "cycleqd":  # the package's front page re-exports from every layer
            continue
        for target in imported:
            a, b = layer(importer), layer(target)
            if b == "conf":
                ok = a in ("run", "analysis", "cli")
            elif b == "tasks":
                ok = a == "tasks"  # plugins are named by configs, never imported by cycleqd
            elif a == "tasks":
                ok = LAYERS[b] <= LAYERS["evaluation"]
            else:
                ok = LAYERS[b] <= LAYERS[a]
            if not ok:
                wrong.append(f"{importer} ({a}) imports {target} ({b})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_modules_import_each_other_in_a_circle():
    g = graph()
    circles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(g.get(m, ())):
            if state.get(n) == "open":
                circles.append(" -> ".join(path[path.index(n) :] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not circles, "\n".join(circles)
