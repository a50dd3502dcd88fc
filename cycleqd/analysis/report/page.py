"""``cycleqd report RUN_DIR``: one self-contained HTML page of a run (plotly.js embedded, so it
opens offline by double-click): the archives, each elite's detail and lineage on a click, the
curves, the final table with its intervals and the Pareto fronts. A sweep directory gets a
page per run and an index with the ``cycleqd compare`` table."""

from __future__ import annotations

import html
import json
import shlex
from pathlib import Path
from typing import Any

from cycleqd.analysis.report import figures
from cycleqd.analysis.report.view import RunView, read_view
from cycleqd.fileio import write_text

PAGE = "report.html"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.2em 2em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.meta { color: #555; } .notes { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.4em 1em; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; } .grid > div { flex: 1 1 420px; min-width: 360px; }
table { border-collapse: collapse; font-size: 0.92em; } td, th { padding: 0.2em 0.7em; border-bottom: 1px solid #eee; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } th { text-align: left; background: #f6f6f6; }
#detail { min-height: 4em; } code { background: #f3f3f3; padding: 0.2em 0.4em; }
button.copy { margin-left: 0.5em; }
"""

# Only wiring: the figures are plotly's, built in Python (figures.py) and embedded as JSON.
_SCRIPT = """
const CONFIG = {responsive: true, displaylogo: false};
const withTemplate = layout => Object.assign({template: TEMPLATE}, layout);
const drawn = Object.entries(FIGURES).map(([id, fig]) => Plotly.newPlot(id, fig.data, withTemplate(fig.layout), CONFIG));
Promise.all(drawn).then(() => { performance.mark('drawn'); document.body.dataset.drawn = '1'; });
const picker = document.getElementById('elite-picker');
function showElite(id) {
  id = String(id);
  if (!(id in DETAIL)) return;
  document.getElementById('detail').innerHTML = DETAIL[id];
  const fig = LINEAGE[id];
  Plotly.react('lineage', fig.data, withTemplate(fig.layout), CONFIG);
  if (picker) picker.value = id;
  document.getElementById('elite').scrollIntoView({block: 'nearest'});
}
document.querySelectorAll('.archive').forEach(el => el.on('plotly_click', ev => {
  const p = ev.points.find(q => q.customdata !== undefined);
  if (p) showElite(p.customdata);
}));
if (picker) picker.addEventListener('change', () => showElite(picker.value));
document.addEventListener('click', ev => {
  const b = ev.target.closest('[data-elite]');
  if (b) showElite(b.dataset.elite);
  const c = ev.target.closest('button.copy');
  if (c && navigator.clipboard) navigator.clipboard.writeText(c.dataset.text).catch(() => {});
});
if (typeof STAMP !== 'undefined') {
  setInterval(() => fetch('stamp').then(r => r.text()).then(s => { if (s !== STAMP) location.reload(); })
    .catch(() => {}), LIVE_EVERY_MS);
}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _pts(x: float | None) -> str:
    return "—" if x is None or x != x else f"{100 * x:.1f}"


def _js(obj: Any) -> str:
    """``obj`` as a JavaScript literal inside a ``<script>`` element: JSON whose ``</`` cannot
    close the element early (a task name or a note may hold ``</script>``)."""
    return json.dumps(obj).replace("</", "<\\/")


def _figure(fig) -> dict[str, Any]:
    """A figure as plotly JSON, without its template: the page holds that once (``TEMPLATE``)."""
    import plotly.io as pio

    out = json.loads(pio.to_json(fig, validate=False, remove_uids=True))
    out.get("layout", {}).pop("template", None)
    return out


def _template() -> dict[str, Any]:
    import plotly.graph_objects as go
    import plotly.io as pio

    return json.loads(pio.to_json(go.Figure(), validate=False))["layout"]["template"]


def final_table(view: RunView) -> str:
    """The run's test scores (experts, static merges, the final model) with the final model's
    difference to each and its 95% interval, as an HTML table."""
    s = view.summary
    if not s:
        return "<p>The run has not finished: no final table yet.</p>"
    from cycleqd.run.summary import score_cells

    tasks = s["tasks"]
    vs = s.get("final_vs") or {}
    rows = [(f"expert: {n}", sc, vs.get(f"expert:{n}")) for n, sc in (s.get("experts") or {}).items()]
    if s.get("base"):
        rows.append(("base model", s["base"], vs.get("base")))
    rows += [(f"static: {n}", sc, vs.get(f"baseline:{n}")) for n, sc in (s.get("baselines") or {}).items()]
    rows.append((f"{s.get('search', 'cycleqd')} (final)", s.get("final"), None))
    head = "".join(f"<th>{_esc(t)}</th>" for t in [*tasks, "mean", "final − model [95% CI]"])
    body = []
    for name, scores, d in rows:
        cells = score_cells(scores, tasks)
        diff = f"{100 * d['diff']:+.1f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]" if d else ""
        body.append(f"<tr><td>{_esc(name)}</td>" + "".join(f'<td class="n">{c}</td>' for c in [*cells, diff]) + "</tr>")
    return (
        f'<table id="final-table"><tr><th>model</th>{head}</tr>{"".join(body)}</table>'
        "<p class='meta'>Test split, points; the difference is paired over the test prompts.</p>"
    )


def _weights_table(weights: dict[str, float]) -> str:
    cells = "".join(f"<tr><td>{_esc(t)}</td><td class='n'>{w:.3f}</td></tr>" for t, w in weights.items())
    return f"<h4>expert weights</h4><table><tr><th>expert</th><th>weight</th></tr>{cells}</table>"


def _operators(ops: dict[str, Any]) -> str:
    parts = []
    mix = (ops.get("crossover") or {}).get("weights")
    if mix:
        per_parent = [", ".join(f"{k} {v:.2f}" for k, v in w.items()) for w in mix]
        parts.append("crossover weights: " + " | ".join(f"parent {j + 1}: {p}" for j, p in enumerate(per_parent)))
    for name, value in ops.items():
        if name == "crossover" and mix:
            rest = {k: v for k, v in value.items() if k != "weights"}
            if not rest:
                continue
            value = rest
        parts.append(f"{name}: {_esc(json.dumps(value, default=str))}")
    return "<br>".join(parts) or "none (an expert)"


def elite_detail(view: RunView, elite_id: int) -> str:
    """One elite's detail: its opt (and, where known, test) score on every task, the archives
    and cells that hold it, parents, operators, generation, expert weights and the export command."""
    rows = view.elites[view.elites["id"] == elite_id]
    first = rows.iloc[0]
    record = view.candidate(elite_id) or {}
    test = view.test_scores(elite_id) or {}
    score_rows = "".join(
        f"<tr><td>{_esc(t)}</td><td class='n'>{_pts(first[f'score_{t}'])}</td><td class='n'>{_pts(test.get(t))}</td></tr>"
        for t in view.tasks
    )
    cells = ", ".join(f"{_esc(r['archive'])} (cell {_esc(r['cell'])})" for _, r in rows.iterrows())
    parents = [int(p) for p in first["parents"]]
    held = set(view.elite_ids)
    links = (
        ", ".join(
            f"<a href='#elite' data-elite='{p}'>{p}</a>" if p in held else f"{p} (left the archives)" for p in parents
        )
        or "none"
    )
    cmd = f"cycleqd export {shlex.quote(str(view.run_dir))} --elite {elite_id} --format hf --out elite-{elite_id}"
    weights = view.weights.get(elite_id)
    return (
        f"<h3 id='detail-title'>elite {elite_id}: {_esc(record.get('origin') or '')}, "
        f"generation {int(first['generation'])}</h3>"
        f"<table><tr><th>task</th><th>opt</th><th>test</th></tr>{score_rows}</table>"
        f"<p>held by: {cells}<br>parents: {links}<br>operators: {_operators(record.get('operators') or {})}</p>"
        + (_weights_table(weights) if weights else "")
        + f"<p>export: <code>{_esc(cmd)}</code><button class='copy' data-text='{_esc(cmd)}'>copy</button></p>"
    )


def _notes(view: RunView) -> str:
    if not view.notes:
        return ""
    return (
        "<div class='notes' id='notes'><b>Not shown:</b><ul>"
        + "".join(f"<li>{_esc(n)}</li>" for n in view.notes)
        + "</ul></div>"
    )


def _header(view: RunView) -> str:
    last = view.metrics[-1] if view.metrics else {}
    state = "finished" if view.finished else "in progress (or stopped before its summary)"
    generations = (view.summary or {}).get("generations", (last.get("generation", -1) + 1) if last else 0)
    evaluations = (view.summary or {}).get("evaluations", last.get("evaluations", 0))
    gens = f"generations <span id='generations'>{generations}</span> · " if view.search == "cycleqd" else ""
    return (
        f"<h1>{_esc(view.experiment or 'cycleqd')} run: {_esc(view.run_dir.name)}</h1>"
        f"<p class='meta'>search={_esc(view.search)} · tasks: {_esc(', '.join(view.tasks))} · "
        f"<span id='state'>{state}</span> · {gens}"
        f"opt evaluations <span id='evaluations'>{evaluations}</span> · {_esc(view.run_dir)}</p>"
    )


def render(run_dir: str | Path, live_stamp: str | None = None, live_every_ms: int = 2000) -> str:
    """The report of ``run_dir`` as one HTML document. ``live_stamp``: the page polls ``stamp``
    on its server and reloads when it differs (``cycleqd report --serve``)."""
    import plotly.offline

    view = read_view(run_dir)
    figs: dict[str, Any] = {}
    archive_divs = []
    if view.elites is not None:
        for task in view.tasks:
            figs[f"archive-{task}"] = figures.archive_figure(view, task)
            archive_divs.append(f"<div id='archive-{_esc(task)}' class='archive'></div>")
    figs["curves"] = figures.curves_figure(view)
    figs["front"] = figures.front_figure(view)
    detail, lineage, options = {}, {}, []
    for i in view.elite_ids:
        detail[str(i)] = elite_detail(view, i)
        lineage[str(i)] = _figure(figures.lineage_figure(view, i))
        rows = view.elites[view.elites["id"] == i]
        options.append(
            f"<option value='{i}'>elite {i}: {_esc(', '.join(rows['archive']))} · mean {_pts(rows.iloc[0]['mean_score'])}</option>"
        )
    if view.elites is not None:
        archives = (
            "<p>Click an elite (or pick one) for its detail and lineage: "
            f"<select id='elite-picker'><option value=''>—</option>{''.join(options)}</select></p>"
            f"<div class='grid'>{''.join(archive_divs)}</div>"
        )
    else:
        archives = (
            f"<p>search={_esc(view.search)} keeps no archives: its every candidate is in the Pareto front below.</p>"
        )
    data = {k: _figure(f) for k, f in figs.items()}
    live = f"const STAMP = {json.dumps(live_stamp)}; const LIVE_EVERY_MS = {int(live_every_ms)};" if live_stamp else ""
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
        f"<title>{_esc(view.experiment or 'cycleqd')} · {_esc(view.run_dir.name)}</title>"
        f"<style>{_STYLE}</style><script>{plotly.offline.get_plotlyjs()}</script></head><body>"
        + _header(view)
        + _notes(view)
        + f"<h2>Archives</h2>{archives}"
        + (
            "<h2 id='elite'>Elite</h2><div class='grid'><div id='detail'><p>No elite chosen.</p></div>"
            "<div id='lineage'></div></div>"
            if view.elites is not None
            else ""
        )
        + "<h2>Curves</h2><div id='curves'></div>"
        + f"<h2>Final model and baselines</h2>{final_table(view)}"
        + "<h2>Pareto front</h2><div id='front'></div>"
        + "<script>"
        + f"const TEMPLATE = {_js(_template())};\n"
        + f"const FIGURES = {_js(data)};\nconst DETAIL = {_js(detail)};\n"
        + f"const LINEAGE = {_js(lineage)};\n{live}\n{_SCRIPT}</script></body></html>"
    )


def runs_under(root: Path) -> list[Path]:
    """The run directories under ``root`` (``.hydra/config.yaml``), finished or not."""
    return sorted(p.parent.parent for p in Path(root).rglob(".hydra/config.yaml") if p.parent.parent != Path(root))


def sweep_index(root: Path, pages: dict[Path, Path]) -> str:
    """The index of a sweep directory: the ``cycleqd compare`` table, each run linked to its page."""
    from cycleqd.analysis.compare import compare

    try:
        header, rows = compare(root)
    except (FileNotFoundError, KeyError) as e:
        header, rows = ["run"], [[str(r.relative_to(root))] for r in pages]
        note = f"<p class='notes'>compare: {_esc(e)}</p>"
    else:
        note = ""
    links = {str(r.relative_to(root)): p.relative_to(root) for r, p in pages.items()}

    def cell(h: str, v: Any) -> str:
        if h == "run" and str(v) in links:
            return f"<td><a href='{_esc(links[str(v)].as_posix())}'>{_esc(v)}</a></td>"
        return f"<td class='n'>{_esc(f'{v:.4g}' if isinstance(v, float) else v)}</td>"

    body = "".join("<tr>" + "".join(cell(h, v) for h, v in zip(header, r)) + "</tr>" for r in rows)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>sweep {_esc(root.name)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>Sweep {_esc(root)}</h1>{note}"
        f"<table id='compare'><tr>{''.join(f'<th>{_esc(h)}</th>' for h in header)}</tr>{body}</table></body></html>"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of a run (``<run_dir>/report.html`` by default), or of a sweep
    directory: each run's page in its directory and an index (``<sweep>/report.html``).
    Only the page is written; the run's own files are only read.

    Raises:
        FileNotFoundError: ``run_dir`` is neither a run directory nor holds any.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{str(run_dir)!r}: no such directory")
    if (run_dir / ".hydra" / "config.yaml").is_file() or (run_dir / "checkpoint").is_dir():
        path = Path(out) if out else run_dir / PAGE
        write_text(path, render(run_dir))
        return path
    runs = runs_under(run_dir)
    if not runs:
        raise FileNotFoundError(f"{str(run_dir)!r} holds no run directories (.hydra/config.yaml)")
    pages = {r: write_report(r) for r in runs}
    path = Path(out) if out else run_dir / PAGE
    write_text(path, sweep_index(run_dir, pages))
    return path
