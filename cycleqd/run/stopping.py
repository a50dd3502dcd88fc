"""SIGINT and SIGTERM during a run: stop at the next safe point instead of mid-write.

While :attr:`Stop.graceful` is true (evolution and the final phase) the first signal
only sets :attr:`Stop.requested`; the runner finishes the current generation, commits
a checkpoint and exits. Outside it (loading and training models, where there is
nothing to save) and on a second signal, :class:`KeyboardInterrupt` is raised at once.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class Stop:
    """Installs the handlers on enter (main thread only) and restores the previous ones on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.graceful = False
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.graceful and self.requested is None:
            self.requested = name
            return
        raise KeyboardInterrupt(name)

    def __enter__(self) -> "Stop":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
