"""The report's figures as plotly figures, from a :class:`RunView`: the same functions draw
the HTML report and the notebooks, so both show one picture of a run.

- :func:`archive_figure`: an archive's cells coloured by quality, one marker per elite (hover:
  its id, every task's score, its generation; click: its detail in the report);
- :func:`lineage_figure`: an elite's ancestry back to the experts, every step's scores, and the
  path of best parents that raised the score;
- :func:`curves_figure`: coverage, QD score and best quality per archive against evaluations,
  and which archive was the quality each generation;
- :func:`front_figure`: the opt fronts of the run's pools, scored on test where the run did.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cycleqd.analysis.report.view import RunView

COLORSCALE = "Viridis"
_POOL_COLORS = {"search": "#d62728", "static": "#1f77b4", "experts": "#2ca02c"}


def _scores_text(scores: dict[str, float], tasks: Sequence[str]) -> str:
    return "<br>".join(f"{t}: {100 * scores[t]:.1f}" for t in tasks if t in scores and scores[t] == scores[t])


def _elite_hover(rows, tasks: Sequence[str]) -> list[str]:
    return [
        f"elite {int(r['id'])} (generation {int(r['generation'])})<br>"
        + _scores_text({t: r[f"score_{t}"] for t in tasks}, tasks)
        for _, r in rows.iterrows()
    ]


def _heatmap(archive, descriptors: Sequence[str]):
    """The grid's cells as a heatmap of their elites' objective (None: not a 2-D grid)."""
    import plotly.graph_objects as go

    bounds = getattr(archive, "boundaries", None)
    if bounds is None or len(descriptors) != 2:
        return None
    dims = tuple(int(d) for d in archive.dims)
    z = np.full(dims[::-1], np.nan)
    data = archive.data(["index", "objective"])
    for index, objective in zip(data["index"], data["objective"]):
        i, j = np.unravel_index(int(index), dims)
        z[j, i] = objective
    x, y = (np.asarray(b, dtype=float) for b in bounds)
    return go.Heatmap(
        x=(x[:-1] + x[1:]) / 2,
        y=(y[:-1] + y[1:]) / 2,
        z=z,
        zmin=0.0,
        zmax=1.0,
        colorscale=COLORSCALE,
        colorbar={"title": "quality"},
        hoverinfo="skip",
        name="cells",
    )


def archive_figure(view: RunView, task: str) -> Any:
    """Archive ``task`` (quality: that task's score; measures: the other tasks' scores) with one
    marker per elite, whose ``customdata`` is its id. Two measures: the grid's cells as a
    heatmap under the markers; one: quality against the measure; more: parallel coordinates."""
    import plotly.graph_objects as go

    descriptors = [t for t in view.tasks if t != task]
    rows = view.elites[view.elites["archive"] == task] if view.elites is not None else None
    fig = go.Figure()
    title = f"archive {task}: quality = {task} score"
    if rows is None or rows.empty:
        fig.update_layout(title=f"{title} (empty)")
        return fig
    quality = rows[f"score_{task}"].to_numpy()
    ids = rows["id"].to_numpy()
    if len(descriptors) > 2:
        fig.add_trace(
            go.Parcoords(
                line={"color": quality, "colorscale": COLORSCALE, "cmin": 0, "cmax": 1, "showscale": True},
                dimensions=[
                    {"label": t, "values": rows[f"score_{t}"].to_numpy(), "range": [0, 1]} for t in [*descriptors, task]
                ],
            )
        )
        fig.update_layout(title=title, height=360, margin={"l": 60, "r": 40, "t": 60, "b": 30})
        return fig
    heat = _heatmap(view.archives.get(task), descriptors)
    if heat is not None:
        fig.add_trace(heat)
    x = rows[f"score_{descriptors[0]}"].to_numpy()
    y = rows[f"score_{descriptors[1]}"].to_numpy() if len(descriptors) == 2 else quality
    fig.add_trace(
        go.Scatter(
            x=x,
            y=y,
            mode="markers",
            name="elites",
            customdata=ids,
            text=_elite_hover(rows, view.tasks),
            hovertemplate="%{text}<extra></extra>",
            marker={
                "size": 9,
                "color": quality,
                "colorscale": COLORSCALE,
                "cmin": 0,
                "cmax": 1,
                "line": {"width": 1, "color": "white"},
                "showscale": heat is None,
            },
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title=f"{descriptors[0]} score",
        yaxis_title=f"{descriptors[1]} score" if len(descriptors) == 2 else f"{task} score (quality)",
        height=380,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        showlegend=False,
        clickmode="event",
    )
    return fig


def ancestry(view: RunView, model_id: int) -> list[int]:
    """``model_id`` and every model it descends from in the record, nearest first."""
    if view.candidates is None:
        return []
    parents = {int(i): tuple(int(p) for p in ps) for i, ps in zip(view.candidates["id"], view.candidates["parents"])}
    out, todo, seen = [], [int(model_id)], set()
    while todo:
        i = todo.pop(0)
        if i in seen or i not in parents:
            continue
        seen.add(i)
        out.append(i)
        todo.extend(parents[i])
    return out


def lineage_figure(view: RunView, model_id: int, task: str | None = None) -> Any:
    """The ancestry of ``model_id`` (models that left the archives included) back to the
    experts: x the generation, y the opt score on ``task`` (None: the mean over tasks), an
    arrow from each parent to its child, hover every task's score and the operators. The path
    through the better-scoring parent at each step, from the model back to an expert, is drawn
    in red: how the score was raised."""
    import plotly.graph_objects as go

    fig = go.Figure()
    ids = ancestry(view, model_id)
    if not ids:
        fig.update_layout(title=f"model {model_id}: no lineage in the record", height=360)
        return fig
    table = view.candidates.drop_duplicates("id").set_index("id").loc[ids]
    tasks = view.tasks
    score = table["mean_score"] if task is None else table[f"score_{task}"]
    gen = table["generation"].astype(int)
    pos = {i: (int(gen[i]), float(score[i])) for i in ids}
    ex, ey = [], []
    for i in ids:
        for p in table.loc[i, "parents"]:
            if p in pos:
                ex += [pos[p][0], pos[i][0], None]
                ey += [pos[p][1], pos[i][1], None]
    path = [int(model_id)]
    while True:
        ps = [p for p in table.loc[path[-1], "parents"] if p in pos and p not in path]
        if not ps:
            break
        path.append(max(ps, key=lambda p: pos[p][1]))
    hover = []
    for i in ids:
        r = table.loc[i]
        ops = r["operators"] or {}
        mut = ops.get("mutation") or {}
        op = f"<br>mutation: {mut.get('kind')} along {mut.get('along')}" if mut else ""
        hover.append(
            f"model {i}: {r['origin']} (generation {int(r['generation'])})<br>"
            + _scores_text({t: r[f"score_{t}"] for t in tasks}, tasks)
            + op
        )
    experts = [i for i in ids if str(table.loc[i, "origin"]).startswith("expert:")]
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line={"color": "#bbbbbb", "width": 1}, hoverinfo="skip"))
    fig.add_trace(
        go.Scatter(
            x=[pos[i][0] for i in path],
            y=[pos[i][1] for i in path],
            mode="lines",
            line={"color": "#d62728", "width": 3},
            hoverinfo="skip",
            name="path",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[pos[i][0] for i in ids],
            y=[pos[i][1] for i in ids],
            mode="markers+text",
            customdata=ids,
            text=[table.loc[i, "origin"].split(":", 1)[1] if i in experts else "" for i in ids],
            textposition="bottom center",
            hovertext=hover,
            hoverinfo="text",
            marker={
                "size": [14 if i in experts or i == model_id else 8 for i in ids],
                "symbol": ["star" if i in experts else "circle" for i in ids],
                "color": ["#2ca02c" if i in experts else "#d62728" if i == model_id else "#555555" for i in ids],
            },
            name="models",
        )
    )
    fig.update_layout(
        title=f"lineage of model {model_id}: {len(ids) - 1} ancestors, {len(experts)} of them experts",
        xaxis_title="generation (experts at −1)",
        yaxis_title=f"{task} opt score" if task else "mean opt score",
        height=380,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        showlegend=False,
    )
    return fig


def curves_figure(view: RunView) -> Any:
    """Against opt evaluations: the best mean opt score so far (any search); and for CycleQD,
    per archive, coverage, QD score and best quality, and the quality task of each generation
    (the cycling)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    best = [m for m in view.metrics if "best_opt_mean" in m and m.get("phase") != "refine"]
    rows = [m for m in view.metrics if "archives" in m]
    titles = ["best mean opt score so far"] + (
        ["coverage", "QD score", "best quality (opt)", "quality task"] if rows else []
    )
    fig = make_subplots(rows=len(titles), cols=1, shared_xaxes=True, vertical_spacing=0.04, subplot_titles=titles)
    if not best and not rows:
        fig.update_layout(title="no generations recorded yet", height=300)
        return fig
    fig.add_trace(
        go.Scatter(
            x=[m["evaluations"] for m in best],
            y=[100 * m["best_opt_mean"] for m in best],
            mode="lines",
            line={"color": "#222222", "shape": "hv"},
            name="best mean (points)",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    if rows:
        evaluations = [m["evaluations"] for m in rows]
        palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
        for k, task in enumerate(view.tasks):
            color = palette[k % len(palette)]
            for row, key in enumerate(("coverage", "qd_score", "best"), 2):
                fig.add_trace(
                    go.Scatter(
                        x=evaluations,
                        y=[(m["archives"].get(task) or {}).get(key) for m in rows],
                        mode="lines",
                        name=task,
                        legendgroup=task,
                        showlegend=row == 2,
                        line={"color": color},
                    ),
                    row=row,
                    col=1,
                )
        fig.add_trace(
            go.Scatter(
                x=evaluations,
                y=[m.get("quality_task") for m in rows],
                mode="markers",
                marker={"size": 4, "color": "#444444"},
                name="quality task",
                showlegend=False,
                hovertemplate="generation %{text}: %{y}<extra></extra>",
                text=[m.get("generation") for m in rows],
            ),
            row=5,
            col=1,
        )
    fig.update_xaxes(title_text="opt evaluations", row=len(titles), col=1)
    fig.update_layout(height=190 * len(titles) + 60, margin={"l": 60, "r": 20, "t": 40, "b": 50}, title=None)
    return fig


def front_points(view: RunView) -> dict[str, list[dict[str, Any]]]:
    """Each pool's non-dominated models: from ``front.json`` with their test scores where the
    run scored them; else the search's opt front from the record, with opt scores."""
    if view.front:
        return {
            pool: [
                {"key": e["key"], "scores": e["test"], "split": "test"} for e in entry.get("front", []) if e.get("test")
            ]
            for pool, entry in view.front.get("pools", {}).items()
        }
    if view.candidates is None or not view.tasks:
        return {}
    from cycleqd.core.pareto import non_dominated

    table = view.candidates.dropna(subset=[f"score_{t}" for t in view.tasks]).drop_duplicates("id")
    if table.empty:
        return {}
    scores = table[[f"score_{t}" for t in view.tasks]].to_numpy()
    keep = non_dominated(scores)
    return {
        "search": [
            {"key": f"search:{int(table.iloc[j]['id'])}", "scores": dict(zip(view.tasks, scores[j])), "split": "opt"}
            for j in keep
        ]
    }


def front_figure(view: RunView) -> Any:
    """The pools' Pareto fronts: a scatter for two tasks, 3-D for three, parallel coordinates beyond."""
    import plotly.graph_objects as go

    points = front_points(view)
    tasks = view.tasks
    fig = go.Figure()
    split = next((p["split"] for ps in points.values() for p in ps), "opt")
    for pool, ps in points.items():
        if not ps or len(tasks) > 3:
            continue
        cols = [[100 * p["scores"][t] for p in ps] for t in tasks]
        text = [f"{p['key']}<br>" + _scores_text(p["scores"], tasks) for p in ps]
        kw = {"mode": "markers", "name": pool, "text": text, "hoverinfo": "text"}
        color = _POOL_COLORS.get(pool, "#7f7f7f")
        if len(tasks) == 3:
            fig.add_trace(go.Scatter3d(x=cols[0], y=cols[1], z=cols[2], marker={"size": 4, "color": color}, **kw))
        elif len(tasks) == 2:
            fig.add_trace(go.Scatter(x=cols[0], y=cols[1], marker={"size": 9, "color": color}, **kw))
    if len(tasks) > 3:
        rows = [(pool, p) for pool, ps in points.items() for p in ps]
        if rows:
            pools = list(points)
            fig.add_trace(
                go.Parcoords(
                    line={"color": [pools.index(pool) for pool, _ in rows], "colorscale": "Turbo"},
                    dimensions=[
                        {"label": t, "values": [100 * p["scores"][t] for _, p in rows], "range": [0, 100]}
                        for t in tasks
                    ],
                )
            )
    labels = {f"{a}axis_title": f"{t} ({split})" for a, t in zip("xyz", tasks)}
    if len(tasks) == 3:
        fig.update_layout(scene={k.replace("axis_title", "axis"): {"title": v} for k, v in labels.items()})
    elif len(tasks) == 2:
        fig.update_layout(**labels)
    fig.update_layout(
        title=f"Pareto fronts on the opt split, scored on {split} (points)",
        height=480,
        margin={"l": 40, "r": 20, "t": 50, "b": 40},
    )
    return fig
