"""Upstream servers: keep-alive connection pools, balancing and passive health.

An :class:`Upstream` is one ``http://host:port`` server with its idle
keep-alive connections. :class:`UpstreamGroup` balances requests over several
(round robin or least outstanding), skipping ejected ones. An
:class:`UpstreamConnection` is the asyncio protocol of one connection: it
parses responses with httptools and hands every event to the exchange that
currently owns it, so no task runs per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httptools

from distpat.core.health import EjectionPolicy, PassiveHealth
from distpat.errors import ConfigError

__all__ = [
    "Upstream",
    "UpstreamConnection",
    "UpstreamHandler",
    "UpstreamPolicy",
    "parse_upstream_url",
]


class UpstreamHandler(Protocol):
    """What an upstream connection reports to the exchange that owns it."""

    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_complete(self) -> None: ...
    def on_upstream_lost(self, exc: Exception | None) -> None: ...
    def on_upstream_pause_writing(self) -> None: ...
    def on_upstream_resume_writing(self) -> None: ...
    def flush(self) -> None: ...


@dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    """Pool limits and passive health, shared by every upstream of a group."""

    max_idle: int = 64
    """Idle keep-alive connections kept per upstream (nginx's ``keepalive``)."""
    max_connections: int = 0
    """Open connections allowed per upstream, 0 for no limit."""
    max_fails: int = 2
    """Consecutive connect failures that eject an upstream."""
    fail_timeout: float = 10.0
    """Seconds an ejected upstream sits out before it is tried again."""


UPSTREAM_READ_BYTES = 256 * 1024
"""The buffer every connection to one upstream reads into (as large as the event loop's own reads)."""


def parse_upstream_url(url: str) -> tuple[str, int]:
    """``http://host:port`` -> (host, port); raises :class:`ConfigError` for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ConfigError(f"upstream {url!r}: only http:// upstreams are supported")
    if not parts.hostname:
        raise ConfigError(f"upstream {url!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"upstream {url!r}: give scheme, host and port only")
    try:
        port = parts.port or 80
    except ValueError:
        raise ConfigError(f"upstream {url!r}: invalid port") from None
    return parts.hostname, port


class _HeadTooLarge(Exception):
    """Raised in a parser callback when a response head passes ``max_response_header_bytes``."""

    @staticmethod
    def message(limit: int) -> str:
        return f"upstream response head larger than {limit} bytes"


class UpstreamConnection(asyncio.BufferedProtocol):
    """One connection to an upstream; owned by at most one exchange at a time."""

    __slots__ = (
        "upstream",
        "transport",
        "parser",
        "handler",
        "headers",
        "closed",
        "reusable",
        "head_request",
        "paused",
        "got_data",
        "in_feed",
        "release_pending",
        "stray",
        "head_bytes",
        "max_head_bytes",
        "_lost",
    )

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.handler: UpstreamHandler | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.closed = False
        self.reusable = False
        self.head_request = False
        self.paused = False
        self.got_data = False  # any byte of a response arrived (the request reached the upstream)
        self.in_feed = False  # inside parser.feed_data
        self.release_pending = False  # released during feed_data: pooled only once it returns
        self.stray = False  # bytes no request asked for: the connection cannot be trusted again
        # Bytes read since the response head began, -1 once it is complete (0: it began inside the
        # read being parsed, after a 1xx response ended there)
        self.head_bytes = 0
        self.max_head_bytes = upstream.max_response_header_bytes
        self._lost = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses

    # Reads land in the upstream's one buffer (asyncio.BufferedProtocol): each is parsed before the
    # next read, and httptools hands the callbacks copies. The event loop would otherwise make a
    # bytes object of each read (up to 256 KiB), and with glibc's malloc that pattern sometimes
    # settled into heap trimming that nearly halved 1 MiB downloads for a whole run.

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.upstream.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.upstream.read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if self.handler is None:  # bytes from an idle upstream: it is broken
            self.close()
            return
        handler = self.handler
        self.got_data = True
        self.in_feed = True
        if self.head_bytes >= 0:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ConnectionError("upstream switched protocols, which is not supported"))
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                exc = exc.__context__  # type: ignore[assignment]
            self._fail(ConnectionError(f"upstream sent an invalid response: {exc}"))
        else:
            if self.head_bytes > self.max_head_bytes and self.handler is handler:
                # Still in a head, and httptools keeps an incomplete field line whole: refused
                # on the bytes read, so an endless head costs the limit and one read at most.
                self._fail(ConnectionError(_HeadTooLarge.message(self.max_head_bytes)))
                return
            if self.handler is handler:  # still mid-response: send what this read produced
                handler.flush()
        finally:
            self.in_feed = False
        if self.release_pending:
            # The response ended inside this read. Bytes after it answered
            # nothing that was asked: never let them reach another request.
            self.release_pending = False
            if self.stray:
                self.close()
            else:
                self._pool()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.upstream.forget(self)
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.on_upstream_lost(exc)
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.on_upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.on_upstream_resume_writing()

    # -- httptools callbacks ---------------------------------------------------

    # No on_message_begin: httptools calls only the callbacks a protocol has, and each costs a
    # call from C; the headers list is handed over and replaced when the head is complete.

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.handler is not None:
            self.headers.append((name, value))
        else:
            self.stray = True

    def on_headers_complete(self) -> None:
        handler = self.handler
        headers, self.headers = self.headers, []
        read = self.head_bytes
        self.head_bytes = -1
        if read > self.max_head_bytes or read == 0:  # the reads held more than the limit (or uncounted)
            size = sum(len(name) + len(value) + 4 for name, value in headers)
            if size > self.max_head_bytes:
                raise _HeadTooLarge(_HeadTooLarge.message(self.max_head_bytes))
        if handler is None:
            self.stray = True
            return
        status = self.parser.get_status_code()
        handler.on_response_head(status, headers, self.parser.should_keep_alive())
        if self.head_request and status >= 200 and self.handler is handler:
            # llhttp cannot be told the request was HEAD, and would wait for the
            # Content-Length bytes that never come: the response ends here, and
            # a fresh parser reads the next one.
            self.head_request = False
            self.parser = httptools.HttpResponseParser(self)
            self.head_bytes = 0
            handler.on_response_complete()

    def on_body(self, body: bytes) -> None:
        handler = self.handler
        if handler is None:
            self.stray = True
        else:
            handler.on_response_body(body)

    def on_message_complete(self) -> None:
        # Not stray without a handler: a HEAD response's old parser may still end its message
        # after the exchange took the response as complete (see on_headers_complete).
        self.head_bytes = 0  # the next response (after a 1xx, the final one) starts with a head
        handler = self.handler
        if handler is not None:
            handler.on_response_complete()

    # -- use by the exchange --------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        handler, self.handler = self.handler, None
        self.close()
        if handler is not None:
            handler.on_upstream_lost(exc)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def release(self, *, reuse: bool) -> None:
        """The exchange is done with this connection: keep it idle in the pool, or close it."""
        self.handler = None
        if (
            reuse
            and not self.stray
            and not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            if self.in_feed:  # the rest of this read is checked first (see data_received)
                self.release_pending = True
            else:
                self._pool()
        else:
            self.close()

    def _pool(self) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self.got_data = False
        upstream = self.upstream
        if len(upstream.idle) < upstream.policy.max_idle:  # kept idle, up to nginx's ``keepalive``
            upstream.idle.append(self)
        else:
            self.close()

    def close(self) -> None:
        # Aborted, not closed gracefully: nothing queued for an upstream is
        # worth waiting for once its exchange is over (and an upstream that
        # stopped reading would otherwise hold the close, and shutdown, forever).
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
        self.upstream.forget(self)

    async def wait_closed(self) -> None:
        await self._lost


class Upstream:
    """One upstream server: its address, idle connections and passive health."""

    __slots__ = (
        "name",
        "host",
        "port",
        "host_field",
        "read_buffer",
        "policy",
        "idle",
        "open",
        "outstanding",
        "health",
        "on_health_change",
        "max_response_header_bytes",
    )

    def __init__(
        self, url: str, policy: UpstreamPolicy | None = None, *, max_response_header_bytes: int = 64 * 1024
    ) -> None:
        """``max_response_header_bytes``: a response head (its field lines, or the bytes read while it
        is incomplete) larger than this fails the exchange (the client gets 502) and closes the
        connection, so a flood of header lines costs no more than this plus one read of memory
        (EngineSettings.max_response_header_bytes)."""
        self.max_response_header_bytes = max_response_header_bytes
        self.host, self.port = parse_upstream_url(url)
        self.name = f"{self.host}:{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.read_buffer = memoryview(bytearray(UPSTREAM_READ_BYTES))  # see UpstreamConnection.get_buffer
        # the Host field for requests that came without one (nginx's $proxy_host)
        self.host_field = f"{host}:{self.port}".encode("idna" if not host.isascii() else "ascii")
        self.policy = policy or UpstreamPolicy()
        self.idle: list[UpstreamConnection] = []
        self.open: set[UpstreamConnection] = set()
        self.outstanding = 0
        self.health = PassiveHealth()  # core/health.py: the policy the Redis ambassador shares
        self.on_health_change: Callable[[Upstream, bool], None] | None = None

    def __repr__(self) -> str:
        return f"<Upstream {self.name} open={len(self.open)} idle={len(self.idle)} fails={self.fails}>"

    # -- health (the clock comes in as ``now``) --------------------------------------

    def available(self, now: float) -> bool:
        return self.health.ejected_until <= now

    @property
    def fails(self) -> int:
        return self.health.fails

    @property
    def ejected_until(self) -> float:
        return self.health.ejected_until

    def record_connect_failure(self, now: float) -> None:
        policy = EjectionPolicy(self.policy.max_fails, self.policy.fail_timeout)
        if self.health.failure(policy, now) and self.on_health_change is not None:
            self.on_health_change(self, False)

    def mark_down(self) -> None:
        """An active health check failed: out of rotation until :meth:`mark_up`."""
        if self.health.pin_down() and self.on_health_change is not None:
            self.on_health_change(self, False)

    def mark_up(self) -> None:
        """An active health check passed: back in rotation."""
        if self.health.pin_up() and self.on_health_change is not None:
            self.on_health_change(self, True)

    def record_success(self) -> None:
        """A connection succeeded (it does not overrule a failed active check)."""
        if self.health.success() and self.on_health_change is not None:
            self.on_health_change(self, True)

    # -- the pool -----------------------------------------------------------------

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def forget(self, conn: UpstreamConnection) -> None:
        self.open.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def at_limit(self) -> bool:
        limit = self.policy.max_connections
        return bool(limit) and len(self.open) >= limit

    async def connect(self, timeout: float) -> UpstreamConnection:
        """A new connection, or ``OSError``/``TimeoutError`` within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        conn = UpstreamConnection(self)
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: conn, self.host, self.port)
        self.open.add(conn)
        return conn

    async def close(self) -> None:
        conns = list(self.open | set(self.idle))
        for conn in conns:
            conn.close()
        for conn in conns:
            await conn.wait_closed()
