"""One run of a search, from a composed config to its run directory: composing configs, the
config → checked components step, the runner's phases (provisioning, bookkeeping, the final
model, the summary) and the pipeline that strings them, checkpoints, the elite store, the run
lock, signals, loggers and the heatmaps and elite table the run writes.

Imports: ``cycleqd.evaluation``, ``cycleqd.models``, ``cycleqd.core``, the foundation and
the configs (``cycleqd.conf``).
"""

from cycleqd._lazy import lazy_exports

_EXPORTS = {
    "build": "cycleqd.run.components",
    "Checkpoint": "cycleqd.run.checkpoint",
    "Components": "cycleqd.run.components",
    "compose": "cycleqd.run.configs",
    "EliteStore": "cycleqd.run.store",
    "load_config": "cycleqd.run.configs",
    "Run": "cycleqd.run.runner",
    "run": "cycleqd.run.runner",
    "Summary": "cycleqd.run.summary",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
