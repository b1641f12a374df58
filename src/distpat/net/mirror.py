"""Mirror copies: a request sent to another pool as well, its response read and discarded
(``Forward.mirror``, nginx's ``mirror`` directive).

nginx's ``mirror`` makes a sub-request per copy and, unlike here, holds the main request's
completion until every copy is answered (``ngx_http_mirror_module``), so a slow mirror slows
the traffic it copies. Here a copy costs the caller one call that returns at once:
:meth:`MirrorSender.send` picks an upstream of the mirror pool, takes an idle keep-alive
connection or opens one (a task per new connection, while it connects), writes the copy and
reads its response into nothing (:class:`~distpat.net.roundtrip.RoundTrip`). A slow or dead
mirror costs its own copies only:

* at most ``max_in_flight`` copies are in flight; a copy beyond that is dropped at once;
* each copy has ``timeout`` seconds (one ``loop.call_later``, cancelled when it ends) from
  being sent to its response's end, then its connection is aborted;
* a connection is pooled again only after a complete keep-alive response, else closed.

Each copy's end is reported through ``on_event(pool, event)``: ``"sent"`` (answered, whatever
the status), ``"failed"`` (connect error, connection broken, invalid response, timeout) or
``"dropped"`` (over the bound, or sent after :meth:`MirrorSender.close`). ``"dropped"`` is
reported from inside :meth:`~MirrorSender.send`; the others later, from loop callbacks. An
exception from ``on_event`` goes to the loop's exception handler, never to the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from distpat.net.batch import WriteBatch
from distpat.net.pool import UpstreamGroup
from distpat.net.roundtrip import RoundTrip

__all__ = ["MirrorSender"]

_EVENTS = ("sent", "failed", "dropped")


class MirrorSender:
    """Sends mirror copies without waiting for them (see the module docstring)."""

    __slots__ = (
        "max_in_flight",
        "timeout",
        "connect_timeout",
        "on_event",
        "batch",
        "counts",
        "_copies",
        "_tasks",
        "_loop",
        "_closed",
    )

    def __init__(
        self,
        *,
        max_in_flight: int = 64,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        on_event: Callable[[str, str], None] | None = None,
        batch: WriteBatch | None = None,
    ) -> None:
        """``batch``: the engine's :class:`~distpat.net.batch.WriteBatch`, so copies are written
        with the turn's other writes; None writes each copy at once."""
        if max_in_flight < 0:
            raise ValueError(f"max_in_flight must be 0 or more, not {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.on_event = on_event
        self.batch = batch
        self.counts = dict.fromkeys(_EVENTS, 0)
        """Copies sent, failed and dropped since the start, over every pool."""
        self._copies: dict[RoundTrip, tuple[str, asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<MirrorSender in_flight={len(self._copies)}/{self.max_in_flight} {self.counts}>"

    @property
    def in_flight(self) -> int:
        """Copies sent whose response has not ended yet."""
        return len(self._copies)

    def send(self, group: UpstreamGroup, data: bytes) -> bool:
        """Send ``data``, a whole HTTP/1.1 request (head and body framed as the primary upstream
        got them), to an upstream of ``group``. Returns at once: True when the copy is on its
        way, False when it was dropped."""
        if self._closed or len(self._copies) >= self.max_in_flight:
            self._event(group.name, "dropped")
            return False
        upstream = group.choose()
        if upstream is None:  # cannot happen for a group with upstreams; counted, not raised
            self._event(group.name, "failed")
            return False
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        copy = RoundTrip(
            upstream,
            data,
            method=data.partition(b" ")[0],
            on_end=self._ended,
            connect_timeout=min(self.connect_timeout, self.timeout),
            max_body=None,
            tasks=self._tasks,
            batch=self.batch,
        )
        timer = loop.call_later(self.timeout, self._expire, copy)
        self._copies[copy] = (group.name, timer)
        copy.start()
        return True

    def _ended(self, copy: RoundTrip) -> None:
        entry = self._copies.pop(copy, None)
        if entry is None:
            return
        pool, timer = entry
        timer.cancel()
        self._event(pool, "sent" if copy.error is None else "failed")

    def _expire(self, copy: RoundTrip) -> None:
        entry = self._copies.pop(copy, None)
        if entry is None:
            return
        copy.abort()
        self._event(entry[0], "failed")

    def _event(self, pool: str, event: str) -> None:
        self.counts[event] += 1
        callback = self.on_event
        if callback is None:
            return
        try:
            callback(pool, event)
        except Exception as exc:  # a counter's failure is no reason to break a copy or a request
            loop = self._loop or asyncio.get_running_loop()
            loop.call_exception_handler(
                {"message": f"mirror on_event({pool!r}, {event!r}) raised", "exception": exc}
            )

    async def close(self) -> None:
        """Abort every copy in flight (their connections closed, not counted) and drop later ones."""
        self._closed = True
        copies, self._copies = self._copies, {}
        for copy, (_, timer) in copies.items():
            timer.cancel()
            copy.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
