"""The errors cycleqd reports to a user in one line: each names what is wrong and where
(a config key, a file, a task, the process holding a run directory)."""

from __future__ import annotations

from pathlib import Path


class CycleQDError(Exception):
    """Base of the errors the command line prints as one line, with no traceback."""

    exit_code = 1


class ConfigError(CycleQDError, ValueError):
    """A config value that cannot work.

    Args:
        key: The dotted config key (``crossover.sigma``); components built from a config
            node name their own field and the builder prefixes the node's key.
        message: What is wrong, with the value (``must be >= 0, got -1.0``).
    """

    exit_code = 2

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}" if key else message)

    def under(self, prefix: str) -> "ConfigError":
        """The same error with ``prefix`` in front of its key (``sigma`` → ``crossover.sigma``)."""
        key = f"{prefix}.{self.key}" if self.key else prefix
        return ConfigError(key, self.message)


class DamagedFile(CycleQDError):
    """A file cycleqd wrote earlier is missing, truncated or corrupt."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        super().__init__(f"{str(path)!r} is damaged or unreadable: {problem}")


class WriteFailed(CycleQDError, OSError):
    """A file could not be written (a full disk, no permission); nothing half-written is left."""

    def __init__(self, path: str | Path, cause: OSError) -> None:
        self.path = Path(path)
        self.cause = cause
        OSError.__init__(self, cause.errno, f"cannot write {str(path)!r}: {cause.strerror or cause}")

    def __str__(self) -> str:
        return self.args[1]


class RunInUse(CycleQDError):
    """Another live process holds the run directory's lock."""


class EvaluationFailed(CycleQDError):
    """A model that had to be scored (a saved model, the final merge) could not be."""


class TooManyFailures(CycleQDError):
    """``evaluator.max_consecutive_failures`` evaluations in a row failed; the run stopped at a checkpoint."""


class RunInterrupted(CycleQDError):
    """SIGINT or SIGTERM: the run stopped at a checkpoint and can be resumed."""

    exit_code = 130
