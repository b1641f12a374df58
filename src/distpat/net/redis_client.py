"""One client connection of the Redis ambassador: its parser, its replies in order, its bounds."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distpat.core.redis_tx import Transaction
from distpat.core.resp import Command, RequestParser, error
from distpat.core.resp_fast import FastRequestParser
from distpat.errors import RespProtocolError

if TYPE_CHECKING:
    from distpat.net.redis_pool import ShardPool
    from distpat.net.redis_tx import TxConnection

__all__ = ["MAX_WAITING", "RedisClient"]

log = logging.getLogger("distpat.redis")

MAX_WAITING = 65_536
"""Commands a client may have waiting for replies; past it the client is not read until half are answered
(so a client that pipelines without reading holds bounded memory)."""


class RedisClient(asyncio.Protocol):
    """One client connection.

    Replies are written in the order the commands came: each command has a slot in ``waiting``, filled
    when its reply is known. A slot is ``[reply, n]``: a run of ``n`` consecutive commands of one read
    that went to one server connection shares one slot, filled with their ``n`` replies at once
    (``queued`` counts commands, not slots). A WATCH or EXEC (:mod:`distpat.net.redis_tx`) is a
    barrier: it goes out once every slot before it is filled, and the commands after it are ``held``
    (and the client not read) until its own reply is in.
    """

    def __init__(self, pool: ShardPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.parser: FastRequestParser | RequestParser | None = None  # chosen by the first byte
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[list[Any]] = deque()  # slots: [reply or None, commands it answers]
        self.queued = 0  # commands in ``waiting``
        self.out: list[bytes] = []
        self.dirty = False
        self.proto = 2
        self.authed = not pool.pool.redis_auth
        self.name: bytes | None = None
        self.id = pool.next_client_id()
        self.closing = False
        self.close_after = False
        self.paused = False
        self.reading_held = False
        self.tx: Transaction | None = None  # None: no MULTI and no WATCH, the short path
        self.tx_conn: TxConnection | None = None  # the connection of its own WATCH or EXEC uses
        self.held: list[Command] | None = None  # commands after a barrier, not dispatched yet
        self.held_fault: bytes | None = None  # a protocol error that came after the held commands
        self.barrier: Callable[[], None] | None = None  # sends the barrier once the slots before it fill
        self.barrier_slot: list[Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        pool = self.pool
        if pool.pool.client_connections and len(pool.clients) >= pool.pool.client_connections:
            reply = error("ERR max number of clients reached")
            pool.count_refusal(self, "max_clients", reply)
            transport.write(reply)  # type: ignore[attr-defined]
            transport.close()
            self.closing = True
            return
        pool.clients.add(self)
        pool.stats["client_connections"] = len(pool.clients)
        if pool.congested:
            self.update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.held = self.barrier = self.barrier_slot = self.tx = None  # a queued block is never sent
        if self.tx_conn is not None:
            self.tx_conn.close()
            self.tx_conn = None
        self.pool.clients.discard(self)
        self.pool.stats["client_connections"] = len(self.pool.clients)
        if exc is None:
            self.pool.stats["client_eof"] += 1
        else:
            self.pool.stats["client_err"] += 1

    def data_received(self, data: bytes) -> None:
        if self.closing or self.close_after:
            return
        fault: RespProtocolError | None = None
        pool = self.pool
        pool.counters["client_request_bytes"] += len(data)
        parser = self.parser
        if parser is None:  # multibulk (every client library) is read in C; inline (telnet) in Python
            limit = self.pool.settings.max_request_bytes
            parser = self.parser = FastRequestParser(limit) if data[:1] == b"*" else RequestParser(limit)
        try:
            commands = parser.feed(data)
        except RespProtocolError as exc:
            commands, fault = getattr(exc, "commands", []), exc
        except MemoryError:
            commands, fault = [], RespProtocolError("request too large")
        pool.dispatch_batch(self, commands)
        if self.queued > MAX_WAITING and not self.paused:
            self.paused = True  # a client far ahead of its replies is not read until they catch up
            self.update_reading()
        if fault is not None and not self.close_after:
            reply = error(f"ERR Protocol error: {fault}")
            pool.count_refusal(self, "protocol_error", reply)
            pool.stats["client_err"] += 1
            self.fault(reply)
        self.touch()

    def fault(self, reply: bytes) -> None:
        """A protocol error: answered after the commands before it (held ones too), then the close."""
        if self.held is not None:
            self.held_fault = reply
        else:
            self.answer(reply)
            self.close_after = True

    def touch(self) -> None:
        """Replies may be ready: flush this client at the end of the event-loop turn."""
        pool = self.pool
        if not self.dirty:
            self.dirty = True
            pool.dirty_clients.append(self)
        if not pool.turn_pending:
            pool.end_turn_soon()

    def update_reading(self) -> None:
        """Read this client unless it is too far ahead of its replies or a server is not keeping up."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        hold = self.paused or self.held is not None or bool(self.pool.congested)
        if hold != self.reading_held:
            self.reading_held = hold
            if hold:
                transport.pause_reading()
            else:
                transport.resume_reading()

    # replies

    def answer(self, reply: bytes) -> None:
        """A reply decided here, in order after the commands before it."""
        if self.waiting:
            self.waiting.append([reply, 1])
            self.queued += 1
        else:
            self.out.append(reply)

    def wait(self) -> list[Any]:
        slot = [None, 1]
        self.waiting.append(slot)
        self.queued += 1
        return slot

    def hold_until(self, slot: list[Any], send: Callable[[], None]) -> None:
        """``send`` once every slot before ``slot`` is filled; hold later commands until ``slot`` is."""
        self.held = []
        self.barrier, self.barrier_slot = send, slot
        self.update_reading()
        self.touch()  # flush() starts the barrier

    def complete(self, slot: list[Any], reply: bytes) -> None:
        """``slot`` is answered: ``reply`` holds the replies of every command the slot stands for."""
        slot[0] = reply
        waiting = self.waiting
        if waiting and waiting[0] is slot:
            out = self.out
            queued = self.queued
            while waiting and waiting[0][0] is not None:
                done = waiting.popleft()
                out.append(done[0])
                queued -= done[1]
            self.queued = queued
            if not self.dirty:
                self.dirty = True
                self.pool.dirty_clients.append(self)

    def flush(self) -> None:
        self.dirty = False
        waiting = self.waiting
        out = self.out
        if waiting and waiting[0][0] is not None:
            queued = self.queued
            while waiting and waiting[0][0] is not None:
                done = waiting.popleft()
                out.append(done[0])
                queued -= done[1]
            self.queued = queued
        if self.barrier is not None and waiting[0] is self.barrier_slot:
            send, self.barrier = self.barrier, None
            send()
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            data = b"".join(out) if len(out) > 1 else out[0]
            self.pool.counters["client_response_bytes"] += len(data)
            transport.write(data)
            out.clear()
            if transport.get_write_buffer_size() > self.pool.settings.max_client_output_bytes:
                refusals = self.pool.refusals
                refusals["output_limit"] = refusals.get("output_limit", 0) + 1
                self.pool.refusal_log.log(
                    logging.WARNING,
                    "output_limit",
                    "pool %s: client %d: output buffer over its limit (%d bytes); disconnected",
                    self.pool.name,
                    self.id,
                    self.pool.settings.max_client_output_bytes,
                )
                transport.abort()
                return
        if self.paused and self.queued < MAX_WAITING // 2:
            self.paused = False
            self.update_reading()
        if self.close_after and not waiting and transport is not None:
            transport.close()
