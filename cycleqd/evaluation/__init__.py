"""Scoring candidates: the resident model that a child's weights are written into in place, the
task scores with their failures and deadlines, the local evaluator and the Ray pool of
workers, and the sandbox that runs model-written code.

Imports: ``cycleqd.models``, ``cycleqd.core`` and the foundation.
"""

from cycleqd._lazy import lazy_exports

_EXPORTS = {
    "LocalEvaluator": "cycleqd.evaluation.pool",
    "RayPool": "cycleqd.evaluation.pool",
    "ResidentModel": "cycleqd.evaluation.scoring",
    "score_tasks": "cycleqd.evaluation.scoring",
    "Worker": "cycleqd.evaluation.workers",
    "WorkerSpec": "cycleqd.evaluation.workers",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
