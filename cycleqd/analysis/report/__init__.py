"""A run in the browser: ``cycleqd report RUN_DIR`` writes one self-contained HTML page (the
archives, each elite's detail and lineage, the curves, the final table, the Pareto fronts), and
``--serve`` shows a running run as it goes. The figures are plotly's, drawn by the functions of
:mod:`cycleqd.analysis.report.figures`, which the notebooks call too.
"""

from cycleqd._lazy import lazy_exports

_EXPORTS = {
    "read_view": "cycleqd.analysis.report.view",
    "RunView": "cycleqd.analysis.report.view",
    "render": "cycleqd.analysis.report.page",
    "write_report": "cycleqd.analysis.report.page",
    "serve": "cycleqd.analysis.report.live",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
