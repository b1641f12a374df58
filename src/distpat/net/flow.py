"""Flow control of a client connection: reading paused for named reasons, writes batched,
the upstream paused while the client's socket buffer is full (uvicorn's flow_control.py, for an
asyncio.BufferedProtocol that shares its reads)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distpat.net.engine import EngineState
    from distpat.net.exchange import Exchange

__all__ = ["ClientFlow"]


class ClientFlow:
    """Reading paused while any reason holds (``pipeline``, ``buffer``, ``upstream``, ``upgrade``,
    ``closing``), and resumed when the last one is lifted; writes go out at the end of the
    event-loop turn (net/batch.py). Mixed into ClientConnection, whose slots these are."""

    __slots__ = ("pauses", "write_paused")

    pauses: set[str]
    write_paused: bool
    state: EngineState
    transport: asyncio.Transport | None
    closing: bool
    queue: deque[Exchange]

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.queue and self.queue[0].conn is not None:
            self.queue[0].conn.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.queue and self.queue[0].conn is not None:
            self.queue[0].conn.resume_reading()

    def pause_reading(self, reason: str) -> None:
        if not self.pauses and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self.pauses.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self.pauses:
            self.pauses.discard(reason)
            if not self.pauses and self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Send ``data`` to the client at the end of this event-loop turn (distpat.net.batch)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.state.batch.write(transport, data)
