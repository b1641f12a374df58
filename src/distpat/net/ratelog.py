"""Log lines for refusals that a peer can cause at will, at most one a second per reason.

A port scan, a flood of unknown commands or a client that never reads can each cause a refusal per
connection or per command; logged one by one, they fill the disk faster than anyone reads it. A
:class:`RateLog` writes the first line of a reason, then holds the same reason back for ``interval``
seconds, and the next line it writes says how many were held back: ``... (and 4170 more since the
last line)``. The counters that go with the refusals are kept by the caller and count every one; the
log is only the sample that explains them.

The clock is passed in (``clock``), so the policy can be tested without a loop or a sleep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["LOG_INTERVAL", "RateLog"]

LOG_INTERVAL = 1.0
"""Seconds between two lines of one reason."""

MAX_REASONS = 1024
"""Reasons remembered at once; past it they are forgotten together (their held-back counts with them)."""


class RateLog:
    """At most one line per ``interval`` for each reason, the next line counting those not written."""

    __slots__ = ("_held", "clock", "interval", "logger")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._held: dict[str, tuple[float, int]] = {}  # per reason: when its last line was, lines held since

    def __repr__(self) -> str:
        return f"RateLog({self.logger.name!r}, interval={self.interval}, reasons={len(self._held)})"

    def log(self, level: int, reason: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``reason`` had a line less than ``interval`` ago.

        Returns whether the line was written. A written line ends with the count of the lines of
        ``reason`` held back since the previous one, if any were.
        """
        now = self.clock()
        held = self._held
        last = held.get(reason)
        if last is not None and now - last[0] < self.interval:
            held[reason] = (last[0], last[1] + 1)
            return False
        if last is None and len(held) >= MAX_REASONS:
            held.clear()
        held[reason] = (now, 0)
        if self.logger.isEnabledFor(level):
            unlogged = last[1] if last is not None else 0
            suffix = f" (and {unlogged} more since the last line)" if unlogged else ""
            self.logger.log(level, msg + "%s", *args, suffix)
        return True
