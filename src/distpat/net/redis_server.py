"""The server side of the Redis ambassador: each server's health and its shared connections.

Each server has one connection per protocol in use (RESP2, and RESP3 for clients that said ``HELLO 3``),
shared by every client, as twemproxy shares its own; replies come back in the order the commands went, and
each is handed to the client that asked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Any

from distpat.core.resp import ReplyScanner, connection_setup, error
from distpat.core.twemproxy_pool import TwemproxyPool, TwemproxyServer
from distpat.errors import RespProtocolError
from distpat.net.redis_client import RedisClient
from distpat.net.redis_metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    from distpat.net.redis_pool import ShardPool

__all__ = [
    "SERVER_BACKLOG",
    "ServerConnection",
    "ServerState",
    "connect",
    "loop_running",
    "setup_commands",
]

log = logging.getLogger("distpat.redis")

SERVER_BACKLOG = 16 * 1024 * 1024
"""Bytes written to a server connection and not yet taken by the server; past it (a stalled server),
no client of the pool is read until it drains, so memory stays bounded without a timeout."""


def setup_commands(pool: TwemproxyPool, proto: int) -> list[bytes]:
    """What a new server connection sends first: HELLO 3 (RESP3), AUTH, SELECT, as the pool asks."""
    return connection_setup(password=pool.redis_auth or None, db=pool.redis_db, proto=proto)


class ServerState:
    """One server of a pool: its address, health and connections."""

    def __init__(self, pool: ShardPool, server: TwemproxyServer) -> None:
        self.pool = pool
        self.server = server
        self.name = server.ring_name
        self.label = server.label
        self.failures = 0
        self.ejected_until = 0.0
        self.conns: dict[int, ServerConnection] = {}
        self.tx_connections = 0  # open connections of clients' own (WATCH, EXEC)
        self.stats = dict.fromkeys(
            (
                "server_eof",
                "server_err",
                "server_timedout",
                "server_ejected_at",
                "requests",
                "request_bytes",
                "responses",
                "response_bytes",
            ),
            0,
        )

    def connection(self, proto: int) -> ServerConnection:
        conn = self.conns.get(proto)
        if conn is None or conn.closed:
            conn = self.conns[proto] = ServerConnection(self, proto)
            conn.start()
        return conn

    def failed(self, now: float) -> None:
        self.failures += 1
        pool = self.pool.pool
        if pool.auto_eject_hosts and self.failures >= pool.server_failure_limit and not self.ejected_until:
            self.ejected_until = now + pool.server_retry_timeout / 1000
            self.stats["server_ejected_at"] = int(time.time() * 1_000_000)
            self.pool.stats["server_ejects"] += 1
            log.warning(
                "pool %s: server %s ejected for %d ms after %d failures",
                self.pool.name,
                self.label,
                pool.server_retry_timeout,
                self.failures,
            )
            self.pool.rebuild()

    def succeeded(self) -> None:
        self.failures = 0

    def close(self) -> None:
        for conn in list(self.conns.values()):
            conn.fail("ERR server removed from the pool")


class ServerConnection(asyncio.Protocol):
    """The one connection to a server for one protocol: commands in, replies out, in order."""

    def __init__(self, server: ServerState, proto: int) -> None:
        self.server = server
        self.proto = proto
        self.pool = server.pool
        self.transport: asyncio.Transport | None = None
        # target, token, sent at, size, replies: a run of n commands of one client's read is one entry
        self.inflight: deque[tuple[Any, Any, float, int, int]] = deque()
        self.partial = b""  # replies of inflight[0]'s run that came before the rest of them
        self.out: list[bytes] = []
        self.scanner = ReplyScanner(self.pool.settings.max_reply_bytes)
        self.closed = False
        self.flush_scheduled = False
        self.setup_replies = 0  # replies to AUTH/SELECT/HELLO sent on connect, not forwarded

    # connecting

    def start(self) -> None:
        task = asyncio.get_running_loop().create_task(self._connect())
        self.pool.tasks.add(task)
        task.add_done_callback(self.pool.tasks.discard)

    async def _connect(self) -> None:
        reason = await connect(self.server, self)
        if reason is not None and not self.closed:  # closed: already failed (the timeout tick), counted
            self.server.stats["server_err"] += 1
            self.fail(f"ERR server {self.server.label} unreachable: {reason}")
            self.server.failed(time.perf_counter())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.closed:
            transport.close()
            return
        transport.set_write_buffer_limits(high=SERVER_BACKLOG, low=SERVER_BACKLOG // 4)  # type: ignore[attr-defined]
        write = transport.write  # type: ignore[attr-defined]
        setup = setup_commands(self.pool.pool, self.proto)
        self.setup_replies = len(setup)
        self.server.stats["requests"] += len(self.out)
        data = b"".join(setup + self.out)
        self.server.stats["request_bytes"] += len(data)
        write(data)
        self.out.clear()

    # sending

    def send(self, data: bytes, target: Any, token: Any, now: float) -> None:
        self.inflight.append((target, token, now, len(data), 1))
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.pool.to_flush.append(self)

    def flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if out and self.transport is not None and not self.closed:
            stats = self.server.stats
            stats["requests"] += len(out)
            data = b"".join(out) if len(out) > 1 else out[0]
            stats["request_bytes"] += len(data)
            self.transport.write(data)
            out.clear()

    # receiving

    def data_received(self, data: bytes) -> None:
        try:
            buf, ends = self.scanner.scan(data)
        except RespProtocolError as exc:
            self.fail(f"ERR server {self.server.label} sent an invalid reply: {exc}")
            return
        i = 0  # replies of ``ends`` handed on
        count = len(ends)
        if self.setup_replies:
            while i < count and self.setup_replies:
                first = buf[ends[i - 1] if i else 0 : ends[i]]
                i += 1
                self.setup_replies -= 1
                if first[:1] in (b"-", b"!"):
                    message = first[1:].strip().decode("utf-8", "replace")
                    self.pool.refusal_log.log(
                        logging.WARNING,
                        f"server_setup {self.server.label}",
                        "server %s refused the connection setup: %s",
                        self.server.label,
                        message,
                    )
                    self.fail(f"ERR server {self.server.label} refused the connection setup: {message}")
                    return
        inflight = self.inflight
        stats = self.server.stats
        stats["responses"] += count - i
        stats["response_bytes"] += len(data)
        popleft = inflight.popleft
        dirty = self.pool.dirty_clients
        latency = self.pool.latency
        counts = latency.counts
        now = perf_counter()
        # Commands dispatched from one read share one timestamp object: their bucket is found once.
        last_sent: float | None = None
        elapsed = spent = 0.0
        index = 0
        start = ends[i - 1] if i else 0
        partial = self.partial  # the replies of the first run that came with earlier reads
        while i < count:
            if not inflight:  # a reply nobody asked for: the stream cannot be trusted
                latency.total += spent
                self.fail(f"ERR server {self.server.label} sent a reply nobody asked for")
                return
            target, token, sent, size, n = inflight[0]
            if sent is not last_sent:
                last_sent = sent
                elapsed = now - sent
                index = bisect_left(LATENCY_BUCKETS, elapsed)
            i += n
            if i > count:  # the rest of this run's replies are still to come
                got = n - (i - count)
                counts[index] += got
                spent += elapsed * got
                partial += buf[start : ends[count - 1]]
                inflight[0] = (target, token, sent, size, n - got)
                break
            counts[index] += n
            spent += elapsed * n
            popleft()
            end = ends[i - 1]
            reply = buf[start:end]
            start = end
            if partial:
                reply = partial + reply
                partial = b""
            if target.__class__ is RedisClient:  # RedisClient.complete, inlined: the hot path
                token[0] = reply
                waiting = target.waiting
                if waiting[0] is token:
                    out = target.out
                    queued = target.queued
                    while waiting and waiting[0][0] is not None:
                        done = waiting.popleft()
                        out.append(done[0])
                        queued -= done[1]
                    target.queued = queued
                    if not target.dirty:
                        target.dirty = True
                        dirty.append(target)
            else:
                target.complete(token, reply)
        self.partial = partial
        latency.total += spent
        if count:
            self.server.succeeded()
            pool = self.pool
            if not pool.turn_pending:
                pool.end_turn_soon()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.set_congested(self, False)
        if not self.closed:
            self.server.stats["server_eof"] += 1
            self.fail(f"ERR server {self.server.label} closed the connection")

    def pause_writing(self) -> None:  # the server is not reading what it is sent
        self.pool.set_congested(self, True)

    def resume_writing(self) -> None:
        self.pool.set_congested(self, False)

    def fail(self, message: str) -> None:
        """Close, and answer every command waiting here with ``message``."""
        self.closed = True
        self.pool.set_congested(self, False)
        if self.transport is not None:
            self.transport.abort()
        reply = error(message)
        inflight, self.inflight = self.inflight, deque()
        partial, self.partial = self.partial, b""
        self.out.clear()
        if inflight:
            commands = sum(entry[4] for entry in inflight)
            refusals = self.pool.refusals
            refusals["server_failed"] = refusals.get("server_failed", 0) + commands
            self.pool.refusal_log.log(
                logging.WARNING,
                f"server_failed {self.server.label}",
                "pool %s: %d commands answered: %s",
                self.pool.name,
                commands,
                message,
            )
        for target, token, _, _, n in inflight:
            target.complete(token, partial + reply * n if n > 1 or partial else reply)
            partial = b""
        if not self.pool.turn_pending and loop_running():
            self.pool.end_turn_soon()

    def timed_out(self, now: float) -> bool:
        timeout = self.pool.timeout
        if timeout and self.inflight and now - self.inflight[0][2] > timeout:
            self.server.stats["server_timedout"] += 1
            self.fail(f"ERR timeout: server {self.server.label} did not answer in {timeout * 1000:.0f} ms")
            self.server.failed(now)
            return True
        return False


async def connect(server: ServerState, protocol: asyncio.Protocol) -> str | None:
    """Connect ``protocol`` to ``server`` within the pool's timeout (5 s without one); None, or why not."""
    s = server.server
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(server.pool.timeout or 5.0):
            if s.port is None:
                await loop.create_unix_connection(lambda: protocol, s.host)
            else:
                await loop.create_connection(lambda: protocol, s.host, s.port)
    except (OSError, TimeoutError) as exc:
        return "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
    return None


def loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
