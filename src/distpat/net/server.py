"""The client side of the HTTP/1.1 proxy engine: one protocol object per connection.

:class:`ClientConnection` parses requests with httptools and turns each into
an :class:`Exchange`, which finds an upstream connection, streams the request
body to it and the response back. Everything is driven by protocol callbacks
and loop timers: no task runs per request (one runs per *new* upstream
connection, while it connects). Pipelined requests queue behind the one in
flight and are answered in order; their bodies are buffered up to a limit,
past which the client is no longer read.

Backpressure runs both ways: when the upstream's socket buffer fills, the
client stops being read, and when the client's fills, the upstream stops
being read, so a slow peer on either side holds memory at a few socket
buffers whatever the size of the body.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

from distpat.core.certs import format_subject
from distpat.core.forward import ForwardedRequest, RequestForwarder, ResponseForwarder, other_codings
from distpat.core.hooks import LocalResponse, ProxyHook, RequestView
from distpat.core.http import (
    CHUNKED_BODY,
    LAST_CHUNK,
    LENGTH_BODY,
    NO_BODY,
    NO_HOST,
    UNTIL_CLOSE_BODY,
    BodyKind,
    Framing,
    chunk,
    error_response,
    forward_request_headers,
    forward_response_headers,
    has_host,
    request_framing,
    request_head,
    response_framing,
    response_head,
)
from distpat.errors import LocalProtocolError, RemoteProtocolError
from distpat.net.batch import WriteBatch
from distpat.net.upstream import Upstream, UpstreamConnection, UpstreamGroup

__all__ = ["ClientConnection", "EngineSettings", "EngineState", "Exchange"]


log = logging.getLogger("distpat.proxy")

LINGER = 2.0
"""Seconds a connection closed while its client is still sending keeps reading (and discarding)."""

READ_BUFFER_BYTES = 64 * 1024
"""One shared buffer for client reads: each is parsed before the next read, and httptools hands the
callbacks copies, so no connection needs its own."""

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_NOT_TRIED: frozenset[Upstream] = frozenset()


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Limits and timeouts of the engine (seconds and bytes). See docs/proxy.md."""

    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 1 << 30
    max_connections: int = 20_000
    max_pipelined: int = 32
    pipeline_buffer_bytes: int = 1 << 20
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    connect_timeout: float = 5.0
    response_timeout: float = 60.0
    scheme: str = "http"
    forwarded: bool = False
    via: bytes = b"1.1 distpat"
    client_cert_header: bytes | None = None
    """TLS: the request field that carries a verified client certificate's subject to the upstream.
    Whatever a client sends under that name is always dropped."""
    response_fields: tuple[tuple[bytes, bytes], ...] = ()
    """Fields added to every proxied response, replacing the upstream's of the same names
    (a sidecar's Strict-Transport-Security)."""


@dataclass(slots=True)
class EngineState:
    """What every connection of one server shares."""

    settings: EngineSettings
    upstreams: UpstreamGroup
    connections: set[ClientConnection] = field(default_factory=set)
    draining: bool = False
    count_request: Callable[[int, str | None, float | None], None] | None = None
    """Counts each answered request: its status, the upstream that answered (None when the proxy
    did) and the upstream's response time (None without a response)."""
    on_request_done: Callable[[Exchange], None] | None = None
    on_connection_change: Callable[[int], None] | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    """Upstream connects in progress (one task per new upstream connection, not per request)."""
    hooks: tuple[ProxyHook, ...] = ()
    """Components acting on each request and response (see distpat.core.hooks)."""
    request_drop: frozenset[bytes] = field(init=False)
    response_drop: frozenset[bytes] = field(init=False)
    responses: ResponseForwarder = field(init=False)
    read_buffer: memoryview = field(default_factory=lambda: memoryview(bytearray(READ_BUFFER_BYTES)))
    """Where every client connection's reads land (see ClientConnection.get_buffer)."""
    batch: WriteBatch = field(default_factory=WriteBatch)
    """Writes to clients and upstreams, sent together at the end of each event-loop turn."""

    def __post_init__(self) -> None:
        header = self.settings.client_cert_header
        self.request_drop = frozenset() if header is None else frozenset({header.lower()})
        self.response_drop = frozenset(name.lower() for name, _ in self.settings.response_fields)
        self.responses = ResponseForwarder(
            via=self.settings.via, drop=self.response_drop, extra=self.settings.response_fields
        )


def client_subject(transport: asyncio.BaseTransport) -> str | None:
    """The subject of the verified client certificate of a TLS connection, RFC 4514; None without one."""
    cert = transport.get_extra_info("peercert")  # only a verified certificate is decoded
    if not cert:
        return None
    return format_subject(cert.get("subject", ()))


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Exchange:
    """One request and its response, linking a client connection to an upstream connection."""

    __slots__ = (
        "client",
        "method",
        "target",
        "http10",
        "keep_alive",
        "head",
        "body",
        "body_sent",
        "body_done",
        "pending",
        "pending_bytes",
        "upstream",
        "conn",
        "reused",
        "tried",
        "status",
        "response_started",
        "informational",
        "rechunk",
        "close_after",
        "upstream_reusable",
        "sent_bytes",
        "started",
        "upstream_started",
        "finished",
        "last_io",
        "to_client",
        "to_upstream",
        "view",
        "local",
        "until_close",
        "expect_continue",
        "request_headers",
        "needs_host",
    )

    def __init__(
        self,
        client: ClientConnection,
        method: bytes,
        target: bytes,
        http10: bool,
        keep_alive: bool,
        head: bytes,
        body: BodyKind,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.client = client
        self.method = method
        self.target = target
        self.http10 = http10
        self.keep_alive = keep_alive
        self.head = head
        self.body = body  # how the request body is framed
        self.body_sent = 0
        self.body_done = body is NO_BODY
        self.pending: list[bytes] | None = None  # body bytes that arrived before an upstream connection
        self.pending_bytes = 0
        self.upstream: Upstream | None = None
        self.conn: UpstreamConnection | None = None
        self.reused = False
        self.tried: frozenset[Upstream] = _NOT_TRIED  # upstreams that failed this request (not ``upstream``)
        self.status = 0
        self.response_started = False
        self.informational = False
        self.rechunk = False
        self.close_after = False
        self.upstream_reusable = False
        self.sent_bytes = 0
        self.started = client.loop.time()  # its head is complete (the access log's request_time)
        self.upstream_started = 0.0
        self.finished = False
        self.last_io = 0.0  # the client connection's tick times the exchange out from here
        self.to_client: list[bytes] = []  # coalesced: one write per upstream read
        self.to_upstream: list[bytes] = []  # coalesced: one write per client read
        self.until_close = False  # the response body ends when the upstream closes
        self.expect_continue = False  # the client waits for 100 Continue before its body
        self.view: RequestView | None = None  # set when hooks run
        self.local: LocalResponse | None = None  # a hook's answer
        self.request_headers = headers  # as received, for the access log
        self.needs_host = False  # an HTTP/1.0 request without Host: the upstream's name is sent

    # -- finding an upstream ------------------------------------------------------

    def start(self) -> None:
        state = self.client.state
        if self.expect_continue:
            self.expect_continue = False
            if not self.http10 and not self.body_done:
                self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.local is not None:
            self._answer_locally(self.local)
            return
        if self.view is not None and self.view.upstream is not None and not self.tried:
            upstream = state.upstreams.by_name(self.view.upstream)
            if upstream is None:
                self.fail_local(500, f"a hook chose upstream {self.view.upstream!r}, which is not configured")
                return
        else:
            upstream = state.upstreams.choose(self.tried)
        if upstream is None:
            self.fail_local(502, "no upstream available")
            return
        self.upstream = upstream
        conn = upstream.take_idle()
        if conn is not None:
            self.reused = True
            self.attach(conn)
            return
        self.reused = False
        task = asyncio.ensure_future(self._connect(upstream))
        tasks = self.client.state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _connect(self, upstream: Upstream) -> None:
        loop = self.client.loop
        timeout = self.client.state.settings.connect_timeout
        try:
            conn = await upstream.connect(timeout)
        except (OSError, TimeoutError) as exc:
            upstream.record_connect_failure(loop.time())
            if self.finished:
                return
            self.tried = self.tried | {upstream}
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            log.warning("upstream %s: connect failed: %s", upstream.name, reason)
            if self.method in IDEMPOTENT and self.body_sent == 0 and self._another_upstream():
                self.start()  # nothing reached the upstream: try the next one
            else:
                self.fail_local(502, f"upstream {upstream.name} unreachable: {reason}")
            return
        upstream.record_success()
        if self.finished:  # the client went away while we connected: keep the connection
            conn.release(reuse=True)
            return
        self.attach(conn)

    def _another_upstream(self) -> bool:
        ups = self.client.state.upstreams.upstreams
        return any(u not in self.tried for u in ups)

    def attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.handler = self
        upstream = conn.upstream
        upstream.outstanding += 1
        self.upstream_started = self.last_io = self.client.loop.time()  # the response timeout runs from here
        if self.client.write_paused:
            conn.pause_reading()
        conn.head_request = self.method == b"HEAD"
        if self.needs_host:  # HTTP/1.1 requires Host; as nginx's $proxy_host, the upstream's host:port
            line_end = self.head.index(b"\r\n") + 2
            self.to_upstream.append(self.head[:line_end] + b"Host: " + upstream.host_field + b"\r\n")
            self.to_upstream.append(self.head[line_end:])
        else:
            self.to_upstream.append(self.head)
        if self.pending:
            data = b"".join(self.pending)
            self.pending = None
            self.pending_bytes = 0
            self._send_body(data)
            self.client.resume_reading("buffer")
        if self.body_done and self.body is CHUNKED_BODY:
            self.to_upstream.append(LAST_CHUNK)
        if not self.client.feeding:  # else the client's read handler flushes once at its end
            self.flush_upstream()

    def flush_upstream(self) -> None:
        out, conn = self.to_upstream, self.conn
        if out and conn is not None:
            data = b"".join(out) if len(out) > 1 else out[0]
            out.clear()
            if conn.transport is not None and not conn.closed:
                self.client.state.batch.write(conn.transport, data)

    def flush(self) -> None:
        """Write what the upstream's last read produced for the client, in one write."""
        out = self.to_client
        if out:
            self.client.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()

    # -- the request body ----------------------------------------------------------

    def _send_body(self, data: bytes) -> None:
        assert self.conn is not None
        self.body_sent += len(data)
        self.last_io = self.client.loop.time()
        self.to_upstream.append(chunk(data) if self.body is CHUNKED_BODY else data)

    def feed_body(self, data: bytes) -> None:
        if self.conn is not None:
            self._send_body(data)
            return
        if self.pending is None:
            self.pending = []
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > self.client.state.settings.pipeline_buffer_bytes:
            self.client.pause_reading("buffer")

    def end_body(self) -> None:
        self.body_done = True
        if self.conn is not None and self.body is CHUNKED_BODY:
            self.to_upstream.append(LAST_CHUNK)

    # -- the response (UpstreamHandler) ----------------------------------------------------

    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        client = self.client
        if status < 200:
            if status == 101:
                self._upstream_broken(ConnectionError("upstream switched protocols"))
                return
            self.informational = True
            if not self.http10:
                self.to_client.append(
                    response_head(status, forward_response_headers(headers, via=client.via))
                )
            return
        self.status = status
        # Close after this response: asked to; or the request body is still
        # arriving (an early answer: the rest cannot be read past); or
        # draining and nothing else is queued behind this request.
        keep = (
            self.keep_alive
            and not self.close_after
            and self.body_done
            and not (client.state.draining and len(client.queue) <= 1 and client.parsing is None)
        )
        if self.view is None:  # no hooks: the one-pass form
            try:
                plan = client.state.responses.forward(self.method, status, headers, self.http10, keep)
            except RemoteProtocolError as exc:
                self._upstream_broken(ConnectionError(str(exc)))
                return
            if plan is not None:
                body, head, self.rechunk, self.close_after = plan
                self.until_close = body is UNTIL_CLOSE_BODY
                self.upstream_reusable = keep_alive and not self.until_close
                self.response_started = True
                self.to_client.append(head)
                self.last_io = client.loop.time()  # the response timeout runs from here
                return
        try:
            framing = response_framing(self.method, status, headers)
        except RemoteProtocolError as exc:
            self._upstream_broken(ConnectionError(str(exc)))
            return
        out = forward_response_headers(headers, via=client.via)
        drop = client.state.response_drop
        if drop:
            out = [(n, v) for n, v in out if n.lower() not in drop]
            out.extend(client.state.settings.response_fields)
        if self.view is not None:
            self._run_response_hooks(status, out)
        kind = framing.kind
        if kind is CHUNKED_BODY or kind is UNTIL_CLOSE_BODY:
            # The body is re-framed: any Content-Length no longer describes it, and
            # codings other than chunked (gzip, ...) must still be declared.
            out = [(n, v) for n, v in out if n.lower() != b"content-length"]
            codings = other_codings(headers)
            if self.http10:
                self.close_after = True
                if codings:
                    out.append((b"Content-Encoding", codings))  # HTTP/1.0 has no transfer codings
            else:
                self.rechunk = True
                out.append((b"Transfer-Encoding", codings + b", chunked" if codings else b"chunked"))
        if not keep:
            out.append((b"Connection", b"close"))
            self.close_after = True
        elif self.http10:
            out.append((b"Connection", b"keep-alive"))
        self.until_close = kind is UNTIL_CLOSE_BODY
        self.upstream_reusable = keep_alive and not self.until_close
        self.response_started = True
        self.to_client.append(response_head(status, out))
        self.last_io = client.loop.time()

    def on_response_body(self, data: bytes) -> None:
        self.sent_bytes += len(data)
        self.last_io = self.client.loop.time()
        self.to_client.append(chunk(data) if self.rechunk else data)

    def on_response_complete(self) -> None:
        if self.informational and not self.response_started:
            self.informational = False
            return
        if self.rechunk:
            self.to_client.append(LAST_CHUNK)
        self.flush()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.upstream.outstanding -= 1
            conn.release(reuse=self.upstream_reusable and self.body_done)
        self.finish()

    def on_upstream_lost(self, exc: Exception | None) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and self.upstream is not None:
            self.upstream.outstanding -= 1
        if self.finished:
            return
        if self.response_started:
            if exc is None and self.until_close and self.status:
                # a close-delimited response ends with the connection (and only such a one:
                # a Content-Length or chunked body cut short is an upstream failure)
                if self.rechunk:
                    self.to_client.append(LAST_CHUNK)
                self.flush()
                self.finish()
            else:
                self.flush()
                self.client.abort("upstream closed mid-response")
            return
        reached = conn is not None and conn.got_data
        self._upstream_broken(exc or ConnectionError("upstream closed the connection"), reached=reached)

    def on_upstream_pause_writing(self) -> None:
        self.client.pause_reading("upstream")

    def on_upstream_resume_writing(self) -> None:
        self.client.resume_reading("upstream")

    # -- failure and completion ---------------------------------------------------------

    def _upstream_broken(self, exc: Exception, *, reached: bool = True) -> None:
        retry = (
            not reached  # not one byte of a response: the request never reached the upstream
            and self.reused
            and self.method in IDEMPOTENT
            and self.body is NO_BODY
            and not self.response_started
        )
        self._release(reuse=False)
        if retry:
            # A pooled connection the upstream had already closed: the request
            # never reached it. Try again on a fresh connection.
            self.reused = False
            self.start()
            return
        name = self.upstream.name if self.upstream else "?"
        self.fail_local(502, f"upstream {name} failed: {exc}")

    def _release(self, *, reuse: bool) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.upstream is not None:
                self.upstream.outstanding -= 1
            conn.release(reuse=reuse)

    def timed_out(self) -> None:
        """Called by the client connection's tick once ``last_io`` is a response timeout old."""
        if self.finished:
            return
        if self.response_started:
            self._release(reuse=False)
            self.client.abort("upstream stopped sending")
            return
        name = self.upstream.name if self.upstream else "?"
        self._release(reuse=False)
        self.fail_local(
            504, f"upstream {name} did not answer in {self.client.state.settings.response_timeout:g}s"
        )

    def _answer_locally(self, local: LocalResponse) -> None:
        self.status = local.status
        headers = [*local.headers, (b"Content-Type", local.content_type)]
        self._run_response_hooks(local.status, headers)
        body = b"" if self.method == b"HEAD" else local.body
        headers.append((b"Content-Length", b"%d" % len(local.body)))
        self.close_after = self.close_after or not self.keep_alive or not self.body_done
        if self.close_after:
            headers.append((b"Connection", b"close"))
        elif self.http10:
            headers.append((b"Connection", b"keep-alive"))
        self.sent_bytes = len(body)
        self.response_started = True
        self.client.write(response_head(local.status, headers) + body)
        self.finish()

    def _run_response_hooks(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        view = self.view
        if view is not None:
            now = self.client.loop.time()
            for hook in self.client.state.hooks:
                hook.on_response(view, status, headers, now)

    def fail_local(self, status: int, message: str) -> None:
        """Answer the client ourselves (the upstream is unreachable, slow or broken)."""
        if self.finished:
            return
        self._release(reuse=False)
        self.to_client.clear()
        self.status = status
        self.close_after = self.close_after or not self.keep_alive or not self.body_done
        self.client.write(error_response(status, message, close=self.close_after))
        self.response_started = True
        self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        state = self.client.state
        count = state.count_request
        if count is not None:
            upstream = self.upstream
            if upstream is not None and self.upstream_started:
                count(self.status, upstream.name, self.client.loop.time() - self.upstream_started)
            else:
                count(self.status, None, None)
        callback = state.on_request_done
        if callback is not None:
            callback(self)
        self.client.exchange_finished(self)

    def abandon(self) -> None:
        """The client went away: drop the upstream connection and everything pending."""
        if self.finished:
            return
        self.finished = True
        self._release(reuse=False)
        self.pending = None


class ClientConnection(asyncio.BufferedProtocol):
    """One client connection: parses requests and answers them in order."""

    __slots__ = (
        "state",
        "loop",
        "transport",
        "parser",
        "peer",
        "via",
        "url",
        "headers",
        "header_bytes",
        "parsing",
        "queue",
        "pauses",
        "timer",
        "closing",
        "write_paused",
        "reject",
        "in_head",
        "eof",
        "feeding",
        "in_head_or_new",
        "head_started",
        "idle_since",
        "tick_at",
        "tick_every",
        "pending_error",
        "extra_request",
        "requests",
        "max_header_bytes",
    )

    def __init__(self, state: EngineState) -> None:
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = "-"
        self.via = state.settings.via
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.max_header_bytes = state.settings.max_header_bytes
        self.parsing: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.pauses: set[str] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.write_paused = False
        self.reject: _Reject | None = None
        self.in_head = False
        self.eof = False
        self.feeding = False
        self.in_head_or_new = False  # a fresh connection owes a request head too
        self.head_started = 0.0
        self.idle_since = 0.0
        self.tick_at = 0.0
        settings = state.settings
        self.pending_error: tuple[int, str] | None = None  # answered once the queue ahead is done
        self.extra_request: tuple[tuple[bytes, bytes], ...] = ()  # fields added to each forwarded request
        self.tick_every = min(settings.header_timeout, settings.keepalive_timeout, settings.response_timeout)
        self.requests: RequestForwarder  # made in connection_made, with the peer's address

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0])
        state = self.state
        header = state.settings.client_cert_header
        if header is not None:
            subject = client_subject(transport)
            if subject is not None:
                self.extra_request = ((header, subject.encode("utf-8")),)
        self.requests = RequestForwarder(
            client_addr=self.peer,
            scheme=state.settings.scheme,
            via=self.via,
            forwarded=state.settings.forwarded,
            drop=state.request_drop,
            extra=self.extra_request,  # the client certificate's subject
        )
        if len(state.connections) >= state.settings.max_connections:
            self.closing = True
            self.write(error_response(503, "too many connections", close=True))
            self._close()
            return
        state.connections.add(self)
        if state.on_connection_change is not None:
            state.on_connection_change(1)
        now = self.loop.time()
        self.head_started = self.idle_since = now  # the first request's head is due from now
        self.in_head_or_new = True
        self._ensure_tick(now + self.tick_every)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._cancel_tick()
        for ex in self.queue:
            ex.abandon()
        self.queue.clear()
        if self.parsing is not None:
            self.parsing.abandon()
            self.parsing = None
        if self in self.state.connections:
            self.state.connections.discard(self)
            if self.state.on_connection_change is not None:
                self.state.on_connection_change(-1)

    def eof_received(self) -> bool | None:
        # A client that half-closes after sending its request still gets its
        # answer; one that closes between requests is simply done. Either way
        # what was written for it this turn goes out first: returning None
        # closes the transport (and over TLS the event loop shuts it down
        # whatever this returns).
        self.state.batch.flush()
        if self.parsing is not None or self.in_head or not self.queue:
            # Closed between requests, or in the middle of one that can now never
            # be complete: done (its upstream connection is dropped at once).
            return None
        self.eof = True
        return True

    # Reads go into one buffer shared by the server's connections (asyncio.BufferedProtocol). Over
    # TLS this also spares the event loop's TLS layer its own 256 KiB allocation per read, which
    # with glibc's malloc could fall into a pattern that halved the sidecar's throughput.

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.state.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.state.read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if self.closing:
            return
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._protocol_error(501, "protocol upgrades (Upgrade, CONNECT) are not supported")
        except httptools.HttpParserError as exc:
            reject = self.reject
            if reject is None and isinstance(exc.__context__, _Reject):
                reject = exc.__context__
            if reject is not None:
                self._protocol_error(reject.status, str(reject))
            else:
                self._protocol_error(400, f"malformed request: {exc}")
        finally:
            self.feeding = False
        # one write to the upstream for everything this read produced
        if self.queue:
            self.queue[0].flush_upstream()
        if self.parsing is not None and self.parsing.conn is not None:
            self.parsing.flush_upstream()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.queue and self.queue[0].conn is not None:
            self.queue[0].conn.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.queue and self.queue[0].conn is not None:
            self.queue[0].conn.resume_reading()

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        self.in_head = True
        # A request's head must arrive within the header timeout, however
        # slowly it trickles in (slowloris): counted from its first byte, or
        # for a connection's first request from the connection's start.
        if not self.in_head_or_new:
            self.head_started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > self.max_header_bytes:
            self.reject = _Reject(431, "request header fields too large")
            raise self.reject

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.max_header_bytes:
            self.reject = _Reject(431, "request header fields too large")
            raise self.reject

    def on_headers_complete(self) -> None:
        parser, settings = self.parser, self.state.settings
        self.in_head = False
        self.in_head_or_new = False
        method = parser.get_method()
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self.reject = _Reject(505, f"HTTP/{version} is not supported; use HTTP/1.1 or HTTP/1.0")
            raise self.reject
        if parser.should_upgrade():  # Upgrade or CONNECT: refused before anything is forwarded
            self.reject = _Reject(501, "protocol upgrades (Upgrade, CONNECT) are not supported")
            raise self.reject
        http10 = version == "1.0"
        headers = self.headers
        fast: ForwardedRequest | None = None
        view: RequestView | None = None
        local: LocalResponse | None = None
        try:
            if not self.state.hooks:  # the one-pass form; None leaves a rare case to the general one
                fast = self.requests.forward(method, self.url, headers, http10)  # Host checked too
            if fast is not None:
                body, length, head, expect_continue = fast
            else:
                framing, head, expect_continue, view, local = self._forward_general(method, http10, headers)
                body, length = framing.kind, -1 if framing.length is None else framing.length
        except RemoteProtocolError as exc:
            self.reject = _Reject(exc.status, str(exc))
            raise self.reject from None
        except LocalProtocolError as exc:  # a hook set a header value with CR or LF in it
            self.reject = _Reject(500, f"a hook produced an invalid request head: {exc}")
            raise self.reject from None
        if body is LENGTH_BODY and length > settings.max_body_bytes:
            self.reject = _Reject(413, f"request body larger than {settings.max_body_bytes} bytes")
            raise self.reject
        keep_alive = parser.should_keep_alive() and not self.state.draining
        ex = Exchange(self, method, self.url, http10, keep_alive, head, body, headers)
        if view is not None or local is not None:
            ex.view, ex.local = view, local
        if http10 and not has_host(headers):  # the upstream's name is sent, unless a hook set one
            ex.needs_host = view is None or not has_host(view.headers)
        ex.expect_continue = expect_continue  # answered when the exchange becomes active
        self.parsing = ex
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.start()
        elif len(self.queue) >= settings.max_pipelined:
            self.pause_reading("pipeline")

    def _forward_general(
        self, method: bytes, http10: bool, headers: list[tuple[bytes, bytes]]
    ) -> tuple[Framing, bytes, bool, RequestView | None, LocalResponse | None]:
        """The request through core/http's general functions, and the hooks, if any."""
        if not http10 and not has_host(headers):
            raise RemoteProtocolError(NO_HOST, status=400)
        settings = self.state.settings
        framing = request_framing(headers, version=(1, 0) if http10 else (1, 1))
        expect_continue = False
        kept: list[tuple[bytes, bytes]] = []
        drop = self.state.request_drop
        for name, value in headers:
            if drop and name.lower() in drop:
                continue
            if name.lower() == b"expect":
                if value.strip().lower() != b"100-continue":
                    raise RemoteProtocolError("only 'Expect: 100-continue' is supported", status=417)
                expect_continue = True  # answered here, as nginx does, so the upstream never waits
                continue
            kept.append((name, value))
        out = forward_request_headers(
            kept, client_addr=self.peer, scheme=settings.scheme, via=self.via, forwarded=settings.forwarded
        )
        out.extend(self.extra_request)
        view: RequestView | None = None
        local: LocalResponse | None = None
        if self.state.hooks:
            view = RequestView(method, self.url, out, self.peer, settings.scheme)
            now = self.loop.time()
            for hook in self.state.hooks:
                local = hook.on_request(view, now)
                if local is not None:
                    break
            out = view.headers
        if framing.kind is CHUNKED_BODY:
            out.append((b"Transfer-Encoding", b"chunked"))
        return framing, request_head(method, self.url, out), expect_continue, view, local

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None:
            return
        if ex.body_sent + ex.pending_bytes + len(body) > self.state.settings.max_body_bytes:
            self.reject = _Reject(413, f"request body larger than {self.state.settings.max_body_bytes} bytes")
            raise self.reject
        ex.feed_body(body)

    def on_message_complete(self) -> None:
        ex, self.parsing = self.parsing, None
        if ex is not None:
            if not ex.body_done:
                ex.end_body()
            if not ex.keep_alive:
                self.pause_reading("closing")  # nothing after this request will be read

    # -- flow control and writing ---------------------------------------------------------

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

    # -- the request queue ------------------------------------------------------------------

    def exchange_finished(self, ex: Exchange) -> None:
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        if ex.close_after or self.closing:
            if self.pending_error is not None and not self.queue and not self.closing:
                status, message = self.pending_error
                self.write(error_response(status, message, close=True))
            self._close()
            return
        if self.pauses:
            self.resume_reading("pipeline")
        if self.queue:
            self.queue[0].start()
        elif self.parsing is not None or self.in_head:
            pass  # the next request is arriving; its own timer runs
        elif self.eof or self.state.draining:
            self._close()
        else:
            self.idle_since = self.loop.time()

    def drain(self) -> None:
        """Shutdown: close now if idle, else after the requests in flight are answered."""
        if not self.queue and self.parsing is None:
            self._close()

    def abort(self, reason: str) -> None:
        log.info("client %s: connection aborted: %s", self.peer, reason)
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _close(self, *, linger: bool = False) -> None:
        self.closing = True
        self._cancel_tick()
        if self.transport is None:
            return
        self.state.batch.flush()  # what was written goes before the close
        if linger or self.parsing is not None or self.in_head:
            self._linger()
        else:
            self.transport.close()

    def _linger(self) -> None:
        """Close after a client that is still sending has had time to read our answer.

        Closing a socket with unread input makes the kernel send a reset,
        which can destroy the response in the client's buffers before it is
        read. So, as nginx's lingering close does: stop writing, read and
        discard for up to LINGER seconds, then close.
        """
        transport = self.transport
        assert transport is not None
        self.pauses.clear()
        transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER, transport.close)

    def _protocol_error(self, status: int, message: str) -> None:
        self.in_head = self.in_head_or_new = False  # nothing more is parsed on this connection
        ex = self.parsing
        if ex is not None and self.queue and self.queue[-1] is ex:
            if ex.response_started:  # its answer is under way: an error cannot follow it in order
                self.abort(message)
                return
            self.queue.pop().abandon()
            self.parsing = None
        if self.queue:  # answer what came before in order, then this error, then close
            self.pending_error = (status, message)
            self.queue[-1].close_after = True
            self.pause_reading("error")
            return
        self.closing = True
        self._cancel_tick()
        self.write(error_response(status, message, close=True))
        self._close(linger=True)  # the client may still be sending what we refused

    # -- timeouts ----------------------------------------------------------------------------
    #
    # One timer per connection, not one per request: state changes only note
    # the time (head_started, idle_since, the exchange's last_io), and a tick
    # that fires at least every ``tick_every`` seconds (the shortest timeout)
    # compares them with the clock and re-arms itself for the next deadline.

    def _ensure_tick(self, when: float) -> None:
        if self.timer is None or when < self.tick_at:
            self._cancel_tick()
            self.tick_at = when
            self.timer = self.loop.call_at(when, self._tick)

    def _cancel_tick(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _tick(self) -> None:
        self.timer = None
        if self.closing:
            return
        settings = self.state.settings
        now = self.loop.time()
        due = now + self.tick_every
        if self.in_head or self.in_head_or_new:
            deadline = self.head_started + settings.header_timeout
            if now >= deadline:
                self._protocol_error(408, "request headers not received in time")
                if self.closing:
                    return
            else:
                due = min(due, deadline)
        if self.queue:
            ex = self.queue[0]
            if ex.conn is not None or ex.upstream_started:
                deadline = ex.last_io + settings.response_timeout
                if now >= deadline:
                    ex.timed_out()
                    if self.closing:
                        return
                else:
                    due = min(due, deadline)
        elif not self.in_head and self.parsing is None:
            deadline = self.idle_since + settings.keepalive_timeout
            if now >= deadline:
                self._close()
                return
            due = min(due, deadline)
        self._ensure_tick(due)
