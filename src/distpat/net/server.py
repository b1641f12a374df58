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

import httptools

from distpat.core.amend import capture_fields
from distpat.core.chunked import ChunkLines
from distpat.core.forward import ForwardedRequest, RequestForwarder
from distpat.core.http import (
    CHUNKED_BODY,
    LENGTH_BODY,
    error_response,
    has_host,
)
from distpat.core.pipeline import Pipeline
from distpat.core.stage import ALL_FIELDS
from distpat.errors import LocalProtocolError, RemoteProtocolError
from distpat.net.client_timeouts import ensure_tick, stop_ticking
from distpat.net.engine import READ_BUFFER_BYTES, EngineSettings, EngineState, client_subject
from distpat.net.exchange import Exchange
from distpat.net.flow import ClientFlow
from distpat.net.general_request import forward_general
from distpat.net.refusal import Reject, answer_error, protocol_error, record_refusal
from distpat.net.stage_driver import begin
from distpat.net.tunnel import UpgradeExchange

__all__ = ["ClientConnection", "EngineSettings", "EngineState", "Exchange"]


log = logging.getLogger("distpat.proxy")

LINGER = 2.0
"""Seconds a connection closed while its client is still sending keeps reading (and discarding)."""


def _captured(pipeline: Pipeline | None) -> frozenset[bytes]:
    """The request fields the one pass captures for ``pipeline``: those its stages read, and every
    field (``*``) when one reads them all."""
    if pipeline is None:
        return frozenset()
    return pipeline.reads | ALL_FIELDS if pipeline.all_fields else pipeline.reads


class ClientConnection(ClientFlow, asyncio.BufferedProtocol):
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
        "timer",
        "closing",
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
        "upgrade_rest",
        "head_read",
        "chunks",
        "generation",
        "subject",
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
        self.head_read = 0  # bytes of the reads that ended inside a request head
        self.max_header_bytes = state.settings.max_header_bytes
        self.parsing: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.pauses: set[str] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.write_paused = False
        self.reject: Reject | None = None
        self.in_head = False
        self.eof = False
        self.feeding = False
        self.in_head_or_new = False  # a fresh connection owes a request head too
        self.head_started = 0.0
        self.idle_since = 0.0
        self.tick_at = 0.0
        settings = state.settings
        # answered once the queue ahead is done: status, message, the refused request's line
        self.pending_error: tuple[int, str, Exchange | bytes] | None = None
        self.extra_request: tuple[tuple[bytes, bytes], ...] = ()  # fields added to each forwarded request
        self.tick_every = min(settings.header_timeout, settings.keepalive_timeout, settings.response_timeout)
        self.requests: RequestForwarder  # made in connection_made, with the peer's address
        self.upgrade_rest = b""  # bytes after an upgrade request's head, until it is answered
        self.chunks: ChunkLines | None = None  # a chunked request body's size lines (_check_chunks)
        self.generation = state.generation  # of the settings self.requests was made from
        self.subject: bytes | None = None  # the verified client certificate's, RFC 4514

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0])
        state = self.state
        if state.settings.client_cert_header is not None:  # set with the TLS files: restart-only
            subject = client_subject(transport)
            if subject is not None:
                self.subject = subject.encode("utf-8")
        self._request_rules()
        if len(state.connections) >= state.settings.max_connections:
            self.closing = True
            response = error_response(503, "too many connections", close=True)
            self.write(response)
            record_refusal(self, 503, response, b"-")
            self.close()
            return
        state.connections.add(self)
        if state.on_connection_change is not None:
            state.on_connection_change(1)
        now = self.loop.time()
        self.head_started = self.idle_since = now  # the first request's head is due from now
        self.in_head_or_new = True
        ensure_tick(self, now + self.tick_every)

    def _request_rules(self) -> None:
        """Make the request rules from the settings in service (at the start, and after a reload)."""
        state = self.state
        settings = state.settings
        self.generation = state.generation
        self.via = settings.via
        self.max_header_bytes = settings.max_header_bytes
        header = settings.client_cert_header
        self.extra_request = () if header is None or self.subject is None else ((header, self.subject),)
        self.requests = RequestForwarder(
            client_addr=self.peer,
            scheme=settings.scheme,
            via=self.via,
            forwarded=settings.forwarded,
            drop=state.request_drop,
            extra=self.extra_request,  # the client certificate's subject
            underscores=settings.underscores_in_headers,
            capture=_captured(state.pipeline),
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        stop_ticking(self)
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
            if self.in_head:  # httptools keeps an unfinished field line whole: bound what it holds
                self.head_read += len(data)
                # (the read it began in may hold the end of the previous request: one read of slack)
                if self.head_read > self.max_header_bytes + READ_BUFFER_BYTES and not self.closing:
                    protocol_error(self, 431, "request header fields too large")
            if self.chunks is not None:
                self._check_chunks(data)
        except httptools.HttpParserUpgrade as exc:  # the head of an upgrade request ended
            self._upgrade_requested(bytes(data[int(exc.args[0]) :]))
        except httptools.HttpParserError as exc:
            reject = self.reject
            if reject is None and isinstance(exc.__context__, Reject):
                reject = exc.__context__
            if reject is not None:
                protocol_error(self, reject.status, str(reject))
            elif str(exc) == "Invalid HTTP version":
                # llhttp refuses HTTP/1.2-1.9 and majors 3-9 itself, so RFC 9112 section 2.3's "treat
                # an unknown 1.x minor as 1.1" cannot be done: answered as any unsupported version.
                version = self.parser.get_http_version()
                protocol_error(self, 505, f"HTTP/{version} is not supported; use HTTP/1.1 or HTTP/1.0")
            else:
                protocol_error(self, 400, f"malformed request: {exc}")
        finally:
            self.feeding = False
        # one write to the upstream for everything this read produced
        if self.queue:
            self.queue[0].flush_upstream()
        if self.parsing is not None and self.parsing.conn is not None:
            self.parsing.flush_upstream()

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.generation != self.state.generation:  # reloaded since: this request takes the new rules
            self._request_rules()
        self.url = b""
        self.headers = []
        self.header_bytes = self.head_read = 0
        self.in_head = True
        # A request's head must arrive within the header timeout, however
        # slowly it trickles in (slowloris): counted from its first byte, or
        # for a connection's first request from the connection's start.
        if not self.in_head_or_new:
            self.head_started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > self.max_header_bytes:  # RFC 9112 section 3: the target is too long
            self.reject = Reject(414, f"request target longer than {self.max_header_bytes} bytes")
            raise self.reject

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.max_header_bytes:
            self.reject = Reject(431, "request header fields too large")
            raise self.reject

    def on_headers_complete(self) -> None:
        if self.closing:  # answered in this same read (a local answer), and closing: nothing more is taken
            return
        parser, settings = self.parser, self.state.settings
        self.in_head = False
        self.in_head_or_new = False
        method = parser.get_method()
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self.reject = Reject(505, f"HTTP/{version} is not supported; use HTTP/1.1 or HTTP/1.0")
            raise self.reject
        upgrade = parser.should_upgrade()  # Upgrade is forwarded (net/tunnel.py); CONNECT refused
        if upgrade and method == b"CONNECT":
            self.reject = Reject(501, "CONNECT is not supported: this is a reverse proxy")
            raise self.reject
        http10 = version == "1.0"
        headers = self.headers
        fast: ForwardedRequest | None = None
        pipeline = self.state.pipeline
        fields: dict[bytes, bytes] | None = None if pipeline is None else {}
        target = self.url
        try:
            # the one-pass form, capturing what the stages read (every field, for a stage that reads
            # them all); None: a rare case, for the general one
            fast = self.requests.forward(method, self.url, headers, http10, fields)  # Host checked too
            if fast is not None:
                body, length, head, expect_continue = fast
            else:
                framing, head, expect_continue, target = forward_general(self, method, http10, headers)
                body, length = framing.kind, -1 if framing.length is None else framing.length
                if pipeline is not None:
                    fields = capture_fields(headers, _captured(pipeline))
        except RemoteProtocolError as exc:
            self.reject = Reject(exc.status, str(exc))
            raise self.reject from None
        except LocalProtocolError as exc:
            self.reject = Reject(500, f"distpat produced an invalid request head: {exc}")
            raise self.reject from None
        if body is LENGTH_BODY and length > settings.max_body_bytes:
            self.reject = Reject(413, f"request body larger than {settings.max_body_bytes} bytes")
            raise self.reject
        if body is CHUNKED_BODY:
            self.chunks = ChunkLines()
        keep_alive = parser.should_keep_alive() and not self.state.draining
        ex = (UpgradeExchange if upgrade else Exchange)(
            self, method, self.url, http10, keep_alive, head, body, headers
        )
        if http10 and not has_host(headers) and (fast is not None or self.url[:1] == b"/"):
            ex.needs_host = True  # the upstream's name is sent (an absolute target gave its own)
        ex.expect_continue = expect_continue  # answered when the exchange becomes active, if forwarded
        if pipeline is not None:
            begin(ex, target, fields)
        self.parsing = ex
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.start()
        elif len(self.queue) >= settings.max_pipelined:
            self.pause_reading("pipeline")

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None:
            return
        if ex.body_sent + ex.pending_bytes + len(body) > self.state.settings.max_body_bytes:
            self.reject = Reject(413, f"request body larger than {self.state.settings.max_body_bytes} bytes")
            raise self.reject
        ex.feed_body(body)

    # Chunked bodies only (httptools calls these when the protocol has them): what llhttp does not
    # say of chunk sizes and extensions is read back from each read's bytes (core/chunked.py).

    def on_chunk_header(self) -> None:
        ex, chunks = self.parsing, self.chunks
        if ex is not None and chunks is not None:
            chunks.header(ex.body_sent + ex.pending_bytes)

    def on_chunk_complete(self) -> None:
        ex, chunks = self.parsing, self.chunks
        if ex is not None and chunks is not None:
            chunks.complete(ex.body_sent + ex.pending_bytes)

    def _check_chunks(self, data: bytes | memoryview) -> None:
        """Refuse, once a read is parsed, a chunk too large for the body limit (413) or a size line
        longer than MAX_CHUNK_LINE (400): llhttp would read and wait for either."""
        ex, chunks = self.parsing, self.chunks
        if ex is None or chunks is None or self.closing:
            self.chunks = None  # the chunked request ended in this read
            return
        try:
            chunks.check(data, ex.body_sent + ex.pending_bytes, self.state.settings.max_body_bytes)
        except RemoteProtocolError as exc:
            self.chunks = None
            protocol_error(self, exc.status, str(exc))

    def on_message_complete(self) -> None:
        self.chunks = None
        ex, self.parsing = self.parsing, None
        if ex is not None:
            if not ex.body_done:
                ex.end_body()
            if not ex.keep_alive:
                self.pause_reading("closing")  # nothing after this request will be read

    # -- the request queue ------------------------------------------------------------------

    def exchange_finished(self, ex: Exchange) -> None:
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        if ex.close_after or self.closing:
            if self.pending_error is not None and not self.queue and not self.closing:
                answer_error(self, *self.pending_error)
            self.close()
            return
        if self.pauses:
            self.resume_reading("pipeline")
        if self.queue:
            self.queue[0].start()
        elif self.parsing is not None or self.in_head:
            pass  # the next request is arriving; its own timer runs
        elif self.eof or self.state.draining:
            self.close()
        else:
            self.idle_since = self.loop.time()

    def drain(self) -> None:
        """Shutdown: close now if idle, else after the requests in flight are answered."""
        if not self.queue and self.parsing is None:
            self.close()

    def abort(self, reason: str) -> None:
        log.info("client %s: connection aborted: %s", self.peer, reason)
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def close(self, *, linger: bool = False) -> None:
        """Close the connection: what was written goes first; lingering while the client still sends."""
        self.closing = True
        stop_ticking(self)
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

    # -- protocol upgrades (net/tunnel.py) -----------------------------------------------------

    def _upgrade_requested(self, rest: bytes) -> None:
        """An upgrade request's head was parsed; ``rest`` is what followed it in the same read.

        Until the upstream answers, nothing more is read: on 101 ``rest`` is the new protocol's
        (the tunnel takes it); otherwise it is the next request's, for a new parser.
        """
        self.parser = httptools.HttpRequestParser(self)
        self.upgrade_rest = rest
        self.pause_reading("upgrade")

    def upgrade_declined(self) -> None:
        """The upgrade request was answered without switching: go on reading HTTP."""
        self.loop.call_soon(self._resume_http)

    def _resume_http(self) -> None:
        if self.closing:
            return
        rest, self.upgrade_rest = self.upgrade_rest, b""
        self.resume_reading("upgrade")
        if rest:
            self.data_received(rest)

    # -- refusals (net/refusal.py) and timeouts (net/client_timeouts.py) ---------------------------

    def cancel_tick(self) -> None:
        """Stop this connection's timers (it became a tunnel, or is refusing its request)."""
        stop_ticking(self)
