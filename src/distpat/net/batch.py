"""Writes gathered over one event-loop turn and sent together when its reads are handled.

uvloop writes to the socket at once on ``transport.write``. A proxy answering
one request per read then wakes its peer (the client, the upstream) once per
request: on a loaded two-core machine each of those wake-ups costs the writer
more kernel time than the write itself, and the peer wakes for one message
only. Here small writes are kept until the turn's reads are done (one
``call_soon`` per turn), then sent in the order they were made: the peers are
woken once per batch (docs/proxy.md has the measurements).

Memory stays bounded and order is kept: a write of :data:`HOLD_BYTES` or more
sends everything kept first, then itself, at once, as before, so the
transport's ``pause_writing`` flow control sees large bodies as they come.
Kept writes to a transport that is closing by the time they are sent are
dropped, so a connection must :meth:`WriteBatch.flush` before it closes
gracefully, and before it lets the event loop close it (``eof_received``).
"""

from __future__ import annotations

import asyncio
from typing import Final

__all__ = ["HOLD_BYTES", "WriteBatch"]

HOLD_BYTES: Final = 16 * 1024
"""Writes shorter than this are kept for the end of the turn; longer ones go at once."""


class WriteBatch:
    """The writes of this turn, sent by one ``call_soon`` callback (or before a large write)."""

    __slots__ = ("_kept", "_scheduled", "_loop")

    def __init__(self) -> None:
        self._kept: list[tuple[asyncio.WriteTransport, bytes]] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def write(self, transport: asyncio.WriteTransport, data: bytes) -> None:
        """Send ``data`` at the end of this turn, or now (after what is kept) if it is large."""
        if len(data) >= HOLD_BYTES:
            if self._kept:
                self.flush()
            transport.write(data)
            return
        self._kept.append((transport, data))
        if not self._scheduled:
            self._scheduled = True
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send every kept write, in order, to the transports still open.

        A write that raises is reported to the event loop's exception handler, as a failing
        callback would be, and the other writes still go out.
        """
        self._scheduled = False
        kept, self._kept = self._kept, []
        for transport, data in kept:
            if not transport.is_closing():
                try:
                    transport.write(data)
                except Exception as exc:  # one connection's failure is not the others'
                    loop = self._loop or asyncio.get_running_loop()
                    loop.call_exception_handler(
                        {"message": "writing a kept write failed", "exception": exc, "transport": transport}
                    )
