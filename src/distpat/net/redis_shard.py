"""The Redis sharding ambassador: one listener per twemproxy pool, keys routed by the pool's ring.

Each client connection is parsed in whole batches (:class:`~distpat.core.resp.RequestParser`):
every command a read brought is routed at once, and what it adds for each
server goes out in one write per server per event-loop turn. Each server has
one connection per protocol in use (RESP2, and RESP3 for clients that said
``HELLO 3``), shared by every client, as twemproxy shares its own; replies come
back in the order the commands went, and each is handed to the client that
asked, whose replies are written in the order it asked.

A command whose keys live on several servers (MGET, MSET, DEL, UNLINK, EXISTS,
TOUCH) is split into one fragment per server and the replies are merged.

Failures: a server that does not answer within the pool's ``timeout`` has its
connection closed and every command waiting on it answered with an error;
commands for other servers are not touched. With ``auto_eject_hosts``, a
server that failed ``server_failure_limit`` times in a row leaves the ring
for ``server_retry_timeout`` ms (its keys go to the others meanwhile, as in
twemproxy); with ``keep_ring`` it stays and its keys get errors instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from distpat.config.twemproxy import TwemproxyPool, TwemproxyServer
from distpat.core.redis_commands import COMMANDS, Kind, Spec, command_keys, split_keys, wrong_arity
from distpat.core.resp import (
    NULL_BULK,
    OK,
    Command,
    FastRequestParser,
    ReplyScanner,
    RequestParser,
    array,
    bulk,
    encode_command,
    error,
    integer,
    pack_command,
)
from distpat.errors import RespProtocolError, RingError
from distpat.net.admin import AdminServer, create_admin_app
from distpat.ring import Ring, from_twemproxy

__all__ = ["ShardMetrics", "ShardPool", "ShardService", "ShardSettings", "merge_replies", "stats_document"]

log = logging.getLogger("distpat.redis")

VERSION = "7.2.0"  # what HELLO says the server is: the protocol distpat speaks

SERVER_BACKLOG = 16 * 1024 * 1024
"""Bytes written to a server connection and not yet taken by the server; past it (a stalled server),
no client of the pool is read until it drains, so memory stays bounded without a timeout."""

MAX_WAITING = 65_536
"""Commands a client may have waiting for replies; past it the client is not read until half are answered
(so a client that pipelines without reading holds bounded memory)."""


@dataclass(frozen=True, slots=True)
class ShardSettings:
    max_request_bytes: int = 64 * 1024 * 1024
    """One command, and what a client may have buffered for an incomplete one."""
    max_reply_bytes: int = 512 * 1024 * 1024
    """One reply from a server."""
    max_client_output_bytes: int = 256 * 1024 * 1024
    """Replies a client has not read yet; past it the client is disconnected (Redis's output limit)."""
    keep_ring: bool = False
    """Never take an ejected server out of the ring: its keys get errors rather than moving."""
    key_cache: int = 262_144
    """Distinct keys whose server is remembered (twemproxy's hashes cost ~1 µs a key in Python);
    emptied when full and whenever the ring changes. 0: hash every key."""
    shutdown_timeout: float = 30.0


# -- merging split commands ------------------------------------------------------------


def _elements(reply: bytes) -> list[bytes]:
    """The elements of an array reply, as raw replies."""
    head = reply.index(b"\r\n") + 2
    return ReplyScanner().feed(reply[head:])


def merge_replies(name: bytes, count: int, fragments: list[tuple[list[int], bytes]]) -> bytes:
    """The reply to a split command: ``fragments`` pairs each fragment's key positions with its reply.

    MGET: the values in key order; a fragment that failed gives its error in
    place of each of its keys' values. DEL, UNLINK, EXISTS, TOUCH: the sum;
    MSET: OK. For those, any fragment's error is the whole command's error.
    """
    if name == b"mget":
        values: list[bytes] = [NULL_BULK] * count
        for positions, reply in fragments:
            if reply[:1] in (b"*",):
                elements = _elements(reply)
                if len(elements) != len(positions):
                    elements = [error("ERR server answered MGET with the wrong number of values")] * len(
                        positions
                    )
            else:
                elements = [reply] * len(positions)
            for i, value in zip(positions, elements, strict=True):
                values[i] = value
        return array(values)
    for _, reply in fragments:
        if reply[:1] in (b"-", b"!"):
            return reply
    if name == b"mset":
        return OK
    total = 0
    for _, reply in fragments:
        if reply[:1] != b":":
            return error("ERR server answered with an unexpected reply type")
        total += int(reply[1:-2])
    return integer(total)


_SINGLE_KEY = frozenset(
    variant
    for name, spec in COMMANDS.items()
    if spec.kind is Kind.KEYS and spec.first == 1 and spec.last == 1 and not spec.numkeys
    for variant in (name, name.upper())
)
"""Command names (lower or upper case) whose one key is their first argument: the short path."""


class _Merge:
    """A split command waiting for its fragments' replies."""

    __slots__ = ("client", "count", "fragments", "name", "remaining", "slot")

    def __init__(self, client: RedisClient, name: bytes, count: int, slot: list[bytes | None]) -> None:
        self.client = client
        self.name = name
        self.count = count
        self.slot = slot
        self.fragments: list[tuple[list[int], bytes]] = []
        self.remaining = 0

    def complete(self, positions: list[int], reply: bytes) -> None:
        self.fragments.append((positions, reply))
        self.remaining -= 1
        if self.remaining == 0:
            self.client.complete(self.slot, merge_replies(self.name, self.count, self.fragments))


# -- servers -----------------------------------------------------------------------------


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
        self.inflight: deque[tuple[Any, Any, float, int]] = deque()  # target, token, sent at, size
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
        s = self.server.server
        loop = asyncio.get_running_loop()
        timeout = self.pool.timeout or 5.0
        try:
            async with asyncio.timeout(timeout):
                if s.port is None:
                    await loop.create_unix_connection(lambda: self, s.host)
                else:
                    await loop.create_connection(lambda: self, s.host, s.port)
        except (OSError, TimeoutError) as exc:
            if self.closed:  # already failed (the pool's timeout tick): counted there
                return
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            self.server.stats["server_err"] += 1
            self.fail(f"ERR server {self.server.label} unreachable: {reason}")
            self.server.failed(loop.time())
            return

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.closed:
            transport.close()
            return
        pool = self.pool.pool
        transport.set_write_buffer_limits(high=SERVER_BACKLOG, low=SERVER_BACKLOG // 4)  # type: ignore[attr-defined]
        write = transport.write  # type: ignore[attr-defined]
        setup: list[bytes] = []
        if self.proto == 3:
            hello = [b"HELLO", b"3"]
            if pool.redis_auth:
                hello += [b"AUTH", b"default", pool.redis_auth.encode()]
            setup.append(encode_command(hello))
        elif pool.redis_auth:
            setup.append(encode_command([b"AUTH", pool.redis_auth.encode()]))
        if pool.redis_db:
            setup.append(encode_command([b"SELECT", str(pool.redis_db).encode()]))
        self.setup_replies = len(setup)
        self.server.stats["requests"] += len(self.out)
        data = b"".join(setup + self.out)
        self.server.stats["request_bytes"] += len(data)
        write(data)
        self.out.clear()

    # sending

    def send(self, data: bytes, target: Any, token: Any, now: float) -> None:
        self.inflight.append((target, token, now, len(data)))
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
            replies = self.scanner.feed(data)
        except RespProtocolError as exc:
            self.fail(f"ERR server {self.server.label} sent an invalid reply: {exc}")
            return
        if self.setup_replies:
            while replies and self.setup_replies:
                first = replies.pop(0)
                self.setup_replies -= 1
                if first[:1] in (b"-", b"!"):
                    message = first[1:].strip().decode("utf-8", "replace")
                    log.warning("server %s refused the connection setup: %s", self.server.label, message)
                    self.fail(f"ERR server {self.server.label} refused the connection setup: {message}")
                    return
        inflight = self.inflight
        stats = self.server.stats
        stats["responses"] += len(replies)
        stats["response_bytes"] += len(data)
        popleft = inflight.popleft
        dirty = self.pool.dirty_clients
        for reply in replies:
            if not inflight:  # a reply nobody asked for: the stream cannot be trusted
                self.fail(f"ERR server {self.server.label} sent a reply nobody asked for")
                return
            target, token, _, _ = popleft()
            if target.__class__ is RedisClient:  # RedisClient.complete, inlined: the hot path
                token[0] = reply
                waiting = target.waiting
                if waiting[0] is token:
                    out = target.out
                    while waiting and waiting[0][0] is not None:
                        out.append(waiting.popleft()[0])  # type: ignore[arg-type]
                    if not target.dirty:
                        target.dirty = True
                        dirty.append(target)
            else:
                target.complete(token, reply)
        if replies:
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
        self.out.clear()
        for target, token, _, _ in inflight:
            target.complete(token, reply)
        if not self.pool.turn_pending and _loop_running():
            self.pool.end_turn_soon()

    def timed_out(self, now: float) -> bool:
        timeout = self.pool.timeout
        if timeout and self.inflight and now - self.inflight[0][2] > timeout:
            self.server.stats["server_timedout"] += 1
            self.fail(f"ERR timeout: server {self.server.label} did not answer in {timeout * 1000:.0f} ms")
            self.server.failed(now)
            return True
        return False


# -- clients -------------------------------------------------------------------------------


class RedisClient(asyncio.Protocol):
    """One client connection."""

    def __init__(self, pool: ShardPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.parser: FastRequestParser | RequestParser | None = None  # chosen by the first byte
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[list[bytes | None]] = deque()
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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        pool = self.pool
        if pool.pool.client_connections and len(pool.clients) >= pool.pool.client_connections:
            transport.write(error("ERR max number of clients reached"))  # type: ignore[attr-defined]
            transport.close()
            self.closing = True
            return
        pool.clients.add(self)
        pool.stats["client_connections"] = len(pool.clients)
        if pool.congested:
            self.update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
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
        self.pool.dispatch_batch(self, commands)
        if len(self.waiting) > MAX_WAITING and not self.paused:
            self.paused = True  # a client far ahead of its replies is not read until they catch up
            self.update_reading()
        if fault is not None and not self.close_after:
            self.answer(error(f"ERR Protocol error: {fault}"))
            self.close_after = True
            self.pool.stats["client_err"] += 1
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
        hold = self.paused or bool(self.pool.congested)
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
            self.waiting.append([reply])
        else:
            self.out.append(reply)

    def wait(self) -> list[bytes | None]:
        slot: list[bytes | None] = [None]
        self.waiting.append(slot)
        return slot

    def complete(self, slot: list[bytes | None], reply: bytes) -> None:
        slot[0] = reply
        waiting = self.waiting
        if waiting and waiting[0] is slot:
            out = self.out
            while waiting and waiting[0][0] is not None:
                out.append(waiting.popleft()[0])  # type: ignore[arg-type]
            if not self.dirty:
                self.dirty = True
                self.pool.dirty_clients.append(self)

    def flush(self) -> None:
        self.dirty = False
        waiting = self.waiting
        out = self.out
        while waiting and waiting[0][0] is not None:
            out.append(waiting.popleft()[0])  # type: ignore[arg-type]
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()
            if transport.get_write_buffer_size() > self.pool.settings.max_client_output_bytes:
                log.warning("client %d: output buffer over its limit; disconnected", self.id)
                transport.abort()
                return
        if self.paused and len(waiting) < MAX_WAITING // 2:
            self.paused = False
            self.update_reading()
        if self.close_after and not waiting and transport is not None:
            transport.close()


# -- the pool --------------------------------------------------------------------------------


class ShardPool:
    """One twemproxy pool served: its listener, servers, ring and clients."""

    def __init__(self, pool: TwemproxyPool, settings: ShardSettings | None = None) -> None:
        self.settings = settings or ShardSettings()
        self.pool = pool
        self.name = pool.name
        self.timeout = pool.timeout / 1000 if pool.timeout else None
        self.servers: dict[str, ServerState] = {}
        self.clients: set[RedisClient] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.to_flush: list[ServerConnection] = []
        self.dirty_clients: list[RedisClient] = []
        self.stats = dict.fromkeys(
            ("client_eof", "client_err", "client_connections", "server_ejects", "forward_error", "fragments"),
            0,
        )
        self._client_ids = 0
        self.congested: set[ServerConnection] = set()
        self.turn_pending = False
        self.cache: dict[bytes, ServerState] = {}
        self._server: asyncio.base_events.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self.next_rebuild = 0.0
        self.ring: Ring
        self.locate: Callable[[bytes], str]
        self.loop: asyncio.AbstractEventLoop
        self._set_servers(pool)

    def set_congested(self, conn: ServerConnection, congested: bool) -> None:
        """While a server holds SERVER_BACKLOG bytes it has not read, no client of the pool is read."""
        before = bool(self.congested)
        if congested:
            self.congested.add(conn)
        else:
            self.congested.discard(conn)
        if bool(self.congested) != before:
            if self.congested:
                log.warning("pool %s: server %s is not reading; clients wait", self.name, conn.server.label)
            for client in list(self.clients):
                client.update_reading()

    def next_client_id(self) -> int:
        self._client_ids += 1
        return self._client_ids

    # -- membership -------------------------------------------------------------------

    def _set_servers(self, pool: TwemproxyPool) -> None:
        old = self.servers
        # What every server connection is set up with: a change means new connections for all.
        setup_changed = (pool.redis_auth, pool.redis_db) != (self.pool.redis_auth, self.pool.redis_db)
        servers: dict[str, ServerState] = {}
        for s in pool.servers:
            state = old.get(s.ring_name)
            if state is None or state.server != s or setup_changed:
                if state is not None:
                    state.close()  # a new address, weight or setup: its connections go
                state = ServerState(self, s)
            servers[s.ring_name] = state
        for name, state in old.items():
            if name not in servers:
                state.close()
        self.servers = servers
        self.pool = pool
        self.timeout = pool.timeout / 1000 if pool.timeout else None
        self.rebuild()

    def rebuild(self, now: float | None = None) -> None:
        """The ring over the servers in service (all of them with keep_ring or without auto-eject)."""
        if now is None:
            now = asyncio.get_running_loop().time() if _loop_running() else 0.0
        live = []
        next_rebuild = 0.0
        for state in self.servers.values():
            if state.ejected_until and state.ejected_until <= now:
                state.ejected_until = 0.0  # back in: twemproxy retries it after server_retry_timeout
                state.failures = 0
            if state.ejected_until:
                next_rebuild = min(next_rebuild or state.ejected_until, state.ejected_until)
                if not self.settings.keep_ring:
                    continue
            live.append(state.server)
        self.next_rebuild = next_rebuild
        self.cache = {}
        if not live:
            self.ring = from_twemproxy(self.pool)
            self.locate = self._nothing_live
            return
        self.ring = from_twemproxy(replace(self.pool, servers=tuple(live)))
        self.locate = self.ring.get_node

    def _nothing_live(self, key: bytes) -> str:
        raise RingError("every server of the pool is ejected")

    def reload(self, pool: TwemproxyPool) -> None:
        """A new server list (SIGHUP): the ring is rebuilt, removed servers' connections closed."""
        self._set_servers(pool)
        log.info("pool %s: %d servers after reload", self.name, len(self.servers))

    # -- routing --------------------------------------------------------------------------

    def server_for(self, key: bytes, now: float) -> ServerState | bytes:
        state = self.cache.get(key)
        if state is None:
            try:
                state = self.servers[self.locate(key)]
            except RingError:
                return error("ERR every server of the pool is ejected; try again later")
            cache = self.cache
            if len(cache) >= self.settings.key_cache:
                if not self.settings.key_cache:
                    return self._check(state)
                cache.clear()
            cache[key] = state
        return self._check(state) if state.ejected_until else state

    def _check(self, state: ServerState) -> ServerState | bytes:
        if state.ejected_until:
            return error(f"ERR server {state.label} is down (ejected); its keys are not served")
        return state

    def dispatch_batch(self, client: RedisClient, commands: list[Command]) -> None:
        """Route every command of one read. Single-key commands take a short path."""
        now = self.loop.time()
        if self.next_rebuild and now >= self.next_rebuild:
            self.rebuild(now)
        single = _SINGLE_KEY
        server_for = self.server_for
        waiting = client.waiting
        proto = client.proto
        authed = client.authed
        to_flush = self.to_flush
        pack = pack_command
        cache_get = self.cache.get
        for args, raw in commands:
            if authed and len(args) >= 2 and args[0] in single:
                state = cache_get(args[1])
                if state is None or state.ejected_until:
                    found = server_for(args[1], now)
                    if isinstance(found, bytes):
                        client.answer(found)
                        continue
                    state = found
                conn = state.conns.get(proto)
                if conn is None or conn.closed:
                    conn = state.connection(proto)
                slot: list[bytes | None] = [None]
                waiting.append(slot)
                data = raw if raw is not None else pack(tuple(args))
                conn.inflight.append((client, slot, now, len(data)))
                conn.out.append(data)
                if not conn.flush_scheduled:
                    conn.flush_scheduled = True
                    to_flush.append(conn)
            else:
                self.dispatch(client, args, raw if raw is not None else pack(tuple(args)), now)
                if client.close_after:
                    break
                authed = client.authed
                proto = client.proto

    def dispatch(self, client: RedisClient, args: list[bytes], raw: bytes, now: float) -> None:
        name = args[0].lower()
        spec = COMMANDS.get(name)
        if not client.authed and name not in (b"auth", b"hello", b"quit"):
            client.answer(error("NOAUTH Authentication required."))
            return
        if spec is None:
            self.stats["forward_error"] += 1
            client.answer(
                error(
                    f"ERR unknown or unsupported command '{args[0].decode('utf-8', 'replace')}': "
                    "distpat does not know how to shard it"
                )
            )
            return
        kind = spec.kind
        if kind is Kind.KEYS:
            if spec.first == 1 and spec.last == 1 and not spec.numkeys and len(args) >= spec.arity:
                target = self.server_for(args[1], now)
            else:
                keys = command_keys(args, spec)
                if isinstance(keys, bytes):
                    client.answer(keys)
                    return
                target = self._one_server(keys, now)
            if isinstance(target, bytes):
                client.answer(target)
                return
            target.connection(client.proto).send(raw, client, client.wait(), now)
        elif kind is Kind.FANOUT:
            self._fanout(client, args, raw, spec, now)
        elif kind is Kind.LOCAL:
            self._local(client, name, args)
        else:
            client.answer(
                error(
                    f"ERR '{args[0].decode('utf-8', 'replace')}' is not supported by a sharding proxy: "
                    f"{spec.reason}"
                )
            )

    def _one_server(self, keys: list[bytes], now: float) -> ServerState | bytes:
        first = self.server_for(keys[0], now)
        if isinstance(first, bytes):
            return first
        for key in keys[1:]:
            other = self.server_for(key, now)
            if other is not first:
                return error(
                    "CROSSSLOT Keys in request don't hash to the same server: use a hash tag "
                    f"({self.pool.hash_tag.decode() or 'none configured'}) to keep them together"
                )
        return first

    def _fanout(self, client: RedisClient, args: list[bytes], raw: bytes, spec: Spec, now: float) -> None:
        keys = command_keys(args, spec)
        if isinstance(keys, bytes):
            client.answer(keys)
            return
        owners: list[str] = []
        states: dict[str, ServerState] = {}
        for key in keys:
            state = self.server_for(key, now)
            if isinstance(state, bytes):
                client.answer(state)
                return
            owners.append(state.name)
            states[state.name] = state
        if len(states) == 1:
            next(iter(states.values())).connection(client.proto).send(raw, client, client.wait(), now)
            return
        name = args[0].lower()
        merge = _Merge(client, name, len(keys), client.wait())
        fragments = split_keys(args, spec, owners)
        merge.remaining = len(fragments)
        self.stats["fragments"] += len(fragments)
        for owner, (positions, frag_args) in fragments.items():
            states[owner].connection(client.proto).send(encode_command(frag_args), merge, positions, now)

    # -- answered here ----------------------------------------------------------------------

    def _local(self, client: RedisClient, name: bytes, args: list[bytes]) -> None:
        n = len(args)
        if name == b"ping":
            client.answer(b"+PONG\r\n" if n == 1 else bulk(args[1]) if n == 2 else wrong_arity(args[0]))
        elif name == b"echo":
            client.answer(bulk(args[1]) if n == 2 else wrong_arity(args[0]))
        elif name == b"quit":
            client.answer(OK)
            client.close_after = True
        elif name == b"select":
            if n != 2:
                client.answer(wrong_arity(args[0]))
            elif args[1] == str(self.pool.redis_db).encode() or (args[1] == b"0" and not self.pool.redis_db):
                client.answer(OK)
            else:
                client.answer(
                    error(f"ERR SELECT is not allowed: this pool serves database {self.pool.redis_db}")
                )
        elif name == b"auth":
            client.answer(self._auth(client, args[1:]))
        elif name == b"hello":
            client.answer(self._hello(client, args))
        elif name == b"command":
            sub = args[1].lower() if n > 1 else b""
            if sub == b"count":
                client.answer(integer(len(COMMANDS)))
            elif sub in (b"", b"docs", b"info", b"list"):
                client.answer(b"*0\r\n")
            else:
                client.answer(error(f"ERR unknown subcommand '{args[1].decode('utf-8', 'replace')}'"))
        elif name == b"client":
            client.answer(self._client_command(client, args))

    def _auth(self, client: RedisClient, creds: list[bytes]) -> bytes:
        password = self.pool.redis_auth
        if not creds or len(creds) > 2:
            return wrong_arity(b"auth")
        if not password:
            return error("ERR AUTH <password> called without any password configured for the default user")
        if creds[-1] != password.encode() or (len(creds) == 2 and creds[0] != b"default"):
            client.authed = False
            return error("WRONGPASS invalid username-password pair or user is disabled.")
        client.authed = True
        return OK

    def _hello(self, client: RedisClient, args: list[bytes]) -> bytes:
        proto = client.proto
        i = 1
        if len(args) > 1:
            if args[1] not in (b"2", b"3"):
                return error("NOPROTO unsupported protocol version")
            proto = int(args[1])
            i = 2
        while i < len(args):
            option = args[i].lower()
            if option == b"auth" and i + 2 < len(args):
                reply = self._auth(client, [args[i + 1], args[i + 2]])
                if reply != OK:
                    return reply
                i += 3
            elif option == b"setname" and i + 1 < len(args):
                client.name = args[i + 1]
                i += 2
            else:
                return error(f"ERR Syntax error in HELLO option '{args[i].decode('utf-8', 'replace')}'")
        if not client.authed:
            return error("NOAUTH HELLO must be called with the client already authenticated")
        if proto != client.proto and any(slot[0] is None for slot in client.waiting):
            # Commands before it went out on the other protocol's server connections; those after it
            # would go on new ones, and a server could run them first.
            return error("ERR HELLO cannot change the protocol while earlier commands still wait for replies")
        client.proto = proto
        fields = [
            (b"server", bulk(b"redis")),
            (b"version", bulk(VERSION.encode())),
            (b"proto", integer(proto)),
            (b"id", integer(client.id)),
            (b"mode", bulk(b"standalone")),
            (b"role", bulk(b"master")),
            (b"modules", b"*0\r\n"),
        ]
        if proto == 3:
            return b"%%%d\r\n" % len(fields) + b"".join(bulk(k) + v for k, v in fields)
        return array([part for k, v in fields for part in (bulk(k), v)])

    def _client_command(self, client: RedisClient, args: list[bytes]) -> bytes:
        sub = args[1].lower() if len(args) > 1 else b""
        if sub == b"setinfo" and len(args) == 4:
            return OK
        if sub == b"setname" and len(args) == 3:
            client.name = args[2]
            return OK
        if sub == b"getname" and len(args) == 2:
            return b"_\r\n" if client.name is None and client.proto == 3 else bulk(client.name)
        if sub == b"id" and len(args) == 2:
            return integer(client.id)
        return error(
            f"ERR CLIENT {sub.decode('utf-8', 'replace').upper()} is not supported by a sharding proxy "
            "(SETINFO, SETNAME, GETNAME and ID are)"
        )

    # -- batching --------------------------------------------------------------------------------

    def end_turn_soon(self) -> None:
        """Write what this event-loop turn produced once it is over: one write per server and client."""
        self.turn_pending = True
        self.loop.call_soon(self.end_turn)

    def end_turn(self) -> None:
        self.turn_pending = False
        conns, self.to_flush = self.to_flush, []
        for conn in conns:
            conn.flush()
        clients, self.dirty_clients = self.dirty_clients, []
        for client in clients:
            client.flush()

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        listen = self.pool.listen
        host = host if host is not None else listen.host
        port = port if port is not None else listen.port
        if port is None:
            self._server = await self.loop.create_unix_server(
                lambda: RedisClient(self), listen.host, backlog=self.pool.backlog
            )
        else:
            self._server = await self.loop.create_server(
                lambda: RedisClient(self),
                host,
                port,
                backlog=self.pool.backlog,
                family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            )
        if self.pool.preconnect:
            for state in self.servers.values():
                state.connection(2)
        self._tick()
        log.info("pool %s: listening on %s, %d servers", self.name, self.address, len(self.servers))

    @property
    def address(self) -> str:
        if self._server is None or not self._server.sockets:
            return "?"
        name = self._server.sockets[0].getsockname()
        return str(name) if isinstance(name, str) else f"{name[0]}:{name[1]}"

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the pool is not listening; call start() first")
        return int(self._server.sockets[0].getsockname()[1])

    def _tick(self) -> None:
        now = self.loop.time()
        for state in self.servers.values():
            for conn in list(state.conns.values()):
                conn.timed_out(now)
        if self.next_rebuild and now >= self.next_rebuild:
            self.rebuild(now)
        interval = min(self.timeout / 4, 0.1) if self.timeout else 0.1
        self._ticker = self.loop.call_later(interval, self._tick)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting; let clients get the replies they wait for (up to ``timeout``); close."""
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + timeout
        while any(c.waiting for c in self.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.close()
        if self._ticker is not None:
            self._ticker.cancel()
        for state in self.servers.values():
            for conn in state.conns.values():
                conn.closed = True
                if conn.transport is not None:
                    conn.transport.close()
        for task in list(self.tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def stats_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.stats)
        for state in self.servers.values():
            conns = [c for c in state.conns.values() if not c.closed]
            out[state.name] = {
                **state.stats,
                "server_connections": len(conns),
                "in_queue": sum(len(c.inflight) for c in conns),
                "in_queue_bytes": sum(entry[3] for c in conns for entry in c.inflight),
                "out_queue": sum(len(c.out) for c in conns),
                "out_queue_bytes": sum(len(b) for c in conns for b in c.out),
            }
        return out


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def stats_document(pools: list[ShardPool], started: float, source: str) -> bytes:
    """twemproxy's stats JSON: service, version, uptime, then one object per pool and per server."""
    now = time.time()
    doc: dict[str, Any] = {
        "service": "nutcracker",
        "source": source,
        "version": "0.5.0",
        "uptime": int(now - started),
        "timestamp": int(now),
        "total_connections": sum(p._client_ids for p in pools),
        "curr_connections": sum(len(p.clients) for p in pools),
    }
    for pool in pools:
        doc[pool.name] = pool.stats_json()
    return json.dumps(doc).encode() + b"\n"


class ShardMetrics:
    """The pools' counters in the Prometheus text format, read from the live objects at each scrape."""

    def __init__(self, service: ShardService) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        clients = GaugeMetricFamily(
            "distpat_redis_client_connections", "Open client connections", labels=["pool"]
        )
        ejects = CounterMetricFamily("distpat_redis_server_ejects", "Servers ejected", labels=["pool"])
        fragments = CounterMetricFamily(
            "distpat_redis_fragments", "Fragments of split commands sent", labels=["pool"]
        )
        per_server = {
            key: CounterMetricFamily(f"distpat_redis_{key}", text, labels=["pool", "server"])
            for key, text in (
                ("requests", "Commands sent to the server"),
                ("responses", "Replies from the server"),
                ("server_eof", "Times the server closed the connection"),
                ("server_err", "Connection errors"),
                ("server_timedout", "Commands that timed out, closing the connection"),
            )
        }
        ejected = GaugeMetricFamily(
            "distpat_redis_server_ejected", "1 while the server is ejected", labels=["pool", "server"]
        )
        in_queue = GaugeMetricFamily(
            "distpat_redis_in_queue", "Commands waiting for the server's reply", labels=["pool", "server"]
        )
        for pool in self.service.pools:
            clients.add_metric([pool.name], len(pool.clients))
            ejects.add_metric([pool.name], pool.stats["server_ejects"])
            fragments.add_metric([pool.name], pool.stats["fragments"])
            for state in pool.servers.values():
                labels = [pool.name, state.name]
                for key, family in per_server.items():
                    family.add_metric(labels, state.stats[key])
                ejected.add_metric(labels, 1 if state.ejected_until else 0)
                in_queue.add_metric(
                    labels, sum(len(c.inflight) for c in state.conns.values() if not c.closed)
                )
        yield clients
        yield ejects
        yield fragments
        yield from per_server.values()
        yield ejected
        yield in_queue

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StatsProtocol(asyncio.Protocol):
    """twemproxy's stats port: each connection gets the JSON document, then is closed."""

    def __init__(self, service: ShardService) -> None:
        self.service = service

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.service.stats())  # type: ignore[attr-defined]
        transport.close()


class ShardService:
    """Every pool of one configuration, the stats listener, reload and shutdown.

    ``load`` returns the pools to serve (it re-reads the configuration file on
    SIGHUP); ``listen`` overrides the listen address of a single pool.
    """

    def __init__(
        self,
        load: Callable[[], list[TwemproxyPool]],
        *,
        settings: ShardSettings | None = None,
        listen: tuple[str, int] | None = None,
        stats: tuple[str, int] | None = None,
        admin: tuple[str, int] | None = None,
    ) -> None:
        self.load = load
        self.settings = settings or ShardSettings()
        self.listen = listen
        self.stats_address = stats
        self.pools: list[ShardPool] = [ShardPool(p, self.settings) for p in load()]
        if listen is not None and len(self.pools) != 1:
            raise ValueError("--listen needs exactly one pool (choose it with --pool)")
        self.started = time.time()
        self._stats_server: asyncio.base_events.Server | None = None
        self.admin_address = admin
        self.metrics = ShardMetrics(self)
        self.draining = False
        self._admin: AdminServer | None = None

    async def start(self) -> None:
        for pool in self.pools:
            if self.listen is not None:
                await pool.start(*self.listen)
            else:
                await pool.start()
        if self.stats_address is not None:
            loop = asyncio.get_running_loop()
            host, port = self.stats_address
            self._stats_server = await loop.create_server(lambda: _StatsProtocol(self), host, port)
        if self.admin_address is not None:
            app = create_admin_app(metrics=self.metrics, ready=self.ready, draining=lambda: self.draining)
            self._admin = AdminServer(app)
            await self._admin.start(*self.admin_address)

    def ready(self) -> bool:
        """Ready while every pool has a server in its ring (not all of them ejected)."""
        return all(any(not s.ejected_until for s in p.servers.values()) for p in self.pools)

    @property
    def admin_port(self) -> int | None:
        return self._admin.port if self._admin is not None else None

    @property
    def stats_port(self) -> int | None:
        if self._stats_server is None or not self._stats_server.sockets:
            return None
        return int(self._stats_server.sockets[0].getsockname()[1])

    def stats(self) -> bytes:
        return stats_document(self.pools, self.started, socket.gethostname())

    def reload(self) -> None:
        """SIGHUP: read the configuration again and take each pool's new server list; clients stay."""
        try:
            new = {p.name: p for p in self.load()}
        except Exception as exc:  # a broken file must not stop the service
            log.error("reload refused, the server lists in service stay: %s", exc)
            return
        for pool in self.pools:
            fresh = new.get(pool.name)
            if fresh is None:
                log.warning(
                    "reload: pool %s is gone from the file; it keeps its servers until restart", pool.name
                )
                continue
            if fresh.listen != pool.pool.listen and self.listen is None:
                log.warning("reload: pool %s: a new listen address needs a restart", pool.name)
            pool.reload(replace(fresh, listen=pool.pool.listen))

    async def shutdown(self, timeout: float | None = None) -> None:
        self.draining = True
        if self._stats_server is not None:
            self._stats_server.close()
        await asyncio.gather(*(pool.shutdown(timeout) for pool in self.pools))
        if self._admin is not None:
            await self._admin.close()

    async def serve_until_signalled(self) -> None:
        from distpat.net.proxy import run_until_signalled

        await run_until_signalled(self)
