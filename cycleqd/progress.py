"""Progress of the long steps of a run (pretraining, fine-tuning, SVDs, baselines, the final
model), so that no step is silent for minutes: a tqdm bar on a terminal; elsewhere (a log
file, a batch job) a line when the step starts, one about every ``every_s`` seconds with its
ETA, and one when it ends."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("cycleqd.progress")

_settings = {"quiet": False, "every_s": 30.0}


def configure(*, quiet: bool | None = None, every_s: float | None = None) -> None:
    """Run-wide settings: ``quiet`` hides the bars (the lines still go to the log)."""
    if quiet is not None:
        _settings["quiet"] = bool(quiet)
    if every_s is not None:
        _settings["every_s"] = float(every_s)


class Progress:
    """One step's progress: ``update(n)`` as its units complete; a context manager.

    Args:
        desc: What the step is ("pretraining the base", "baselines").
        total: Units in the step.
        unit: Their name ("step", "evaluation", "matrix").
        initial: Units already done (a resumed step); the ETA counts from here.
    """

    def __init__(self, desc: str, total: int, unit: str = "step", initial: int = 0) -> None:
        self.desc, self.total, self.unit = desc, int(total), unit
        self.done = self._start = int(initial)
        self.t0 = self._last = time.perf_counter()
        self.bar = None
        self.postfix: dict[str, Any] = {}
        if sys.stderr.isatty() and not _settings["quiet"]:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.done, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
        else:
            log.info("%s: %d/%d %ss", desc, self.done, self.total, unit)

    def set_postfix(self, **values: Any) -> None:
        """What the bar (or the next line) shows beside the count."""
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last >= _settings["every_s"] and self.done < self.total:
            self._last = now
            elapsed = now - self.t0
            done = self.done - self._start
            eta = elapsed / done * (self.total - self.done) if done else float("nan")
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            log.info(
                "%s: %d/%d %ss, %.0fs elapsed, ETA %.0fs%s",
                self.desc,
                self.done,
                self.total,
                self.unit,
                elapsed,
                eta,
                extra,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        log.info("%s: %d/%d %ss in %.0fs", self.desc, self.done, self.total, self.unit, time.perf_counter() - self.t0)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
