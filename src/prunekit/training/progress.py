"""INFO log lines for long training calls (``fit``, ``iterative_prune``, ``lottery_ticket``).

These verbs have no ``progress=`` argument, so they report through :mod:`logging` only (library
code never prints): a line when they start, about every 10% of the steps (at most one per
``min_seconds``), and when they end. ``logging.basicConfig(level=logging.INFO)`` shows them.
"""

from __future__ import annotations

import logging
import time
from typing import Any


class StepLog:
    """Logs ``what`` at the start, every ~10% of ``total`` steps and at the end, at INFO level.

    Example:
        >>> log = StepLog(logging.getLogger("demo"), "fit", total=100)
        >>> for step in range(1, 101):
        ...     log.step(step)
        >>> log.done("final loss 0.1")
    """

    def __init__(
        self, logger: logging.Logger, what: str, total: int, *, unit: str = "step", min_seconds: float = 5.0
    ) -> None:
        self.logger, self.what, self.total, self.unit = logger, what, max(int(total), 0), unit
        self.min_seconds = min_seconds
        self.start = self.last = time.perf_counter()
        self.every = max(self.total // 10, 1)
        self.logger.info("%s: %d %ss", what, self.total, unit)

    def step(self, done: int, **info: Any) -> None:
        """Report ``done`` of ``total`` steps when a 10% mark is crossed (rate-limited)."""
        now = time.perf_counter()
        if done % self.every and done != self.total:
            return
        if now - self.last < self.min_seconds and done != self.total:
            return
        self.last = now
        extra = "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}" for k, v in info.items())
        self.logger.info(
            "%s: %s %d/%d (%.0f%%), %.1f s%s",
            self.what,
            self.unit,
            done,
            self.total,
            100 * done / self.total if self.total else 100.0,
            now - self.start,
            extra,
        )

    def done(self, summary: str = "") -> None:
        """The closing line (total time and ``summary``)."""
        self.logger.info(
            "%s: done in %.1f s%s",
            self.what,
            time.perf_counter() - self.start,
            f", {summary}" if summary else "",
        )


__all__ = ["StepLog"]
