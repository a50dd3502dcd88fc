"""Reading finished runs: ``load_run``, choosing elites, exporting a model that loads without
cycleqd (``cycleqd.analysis.export.export``), comparing the runs of a sweep and the evidence across searches.

Imports: ``cycleqd.run`` and every layer below it.
"""

from cycleqd._lazy import lazy_exports

_EXPORTS = {
    "load_candidates": "cycleqd.analysis.candidates",
    "load_run": "cycleqd.analysis.rundata",
    "pareto_front": "cycleqd.analysis.selection",
    "RunData": "cycleqd.analysis.rundata",
    "select_elites": "cycleqd.analysis.selection",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
