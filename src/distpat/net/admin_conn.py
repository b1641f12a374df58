"""One admin client connection: HTTP/1.1 on :class:`asyncio.Protocol`, parsed by httptools.

The admin listener (:mod:`distpat.net.admin`) answers a few small GETs, so a connection is
kept simple and strict, and no client can hold it:

- Requests are answered one at a time, in order (pipelined ones queue, RFC 9112 section 9.3.2);
  with ``max_pipelined`` waiting, reading pauses until they are answered.
- Persistence follows RFC 9112 section 9.3: HTTP/1.1 stays open unless ``Connection: close``,
  HTTP/1.0 only with ``Connection: keep-alive``.
- The request line and fields together are bounded by ``max_header_bytes`` (a longer target is
  414, longer fields 431, RFC 9110 section 15.5.15 and RFC 6585 section 5); a body, which no
  endpoint reads, by ``max_body_bytes`` (413). A request httptools refuses is 400, an HTTP
  version other than 1.0 and 1.1 is 505, and an Upgrade is answered without upgrading, then
  closed. Each of these refusals closes the connection after its answer, lingering as nginx's
  lingering close does: the client may still be sending, and closing a socket with unread input
  resets the connection, which can destroy the answer before the client reads it. So the
  connection stops writing, reads and discards for up to ``linger_timeout``, then closes.
- A request head must arrive whole within ``header_timeout`` of its first byte (of the
  connection's start, for its first request), however slowly it trickles in: then 408 and close.
  Between requests a connection may idle ``idle_timeout``, then it is closed without a word.
  An answer the client does not read within ``send_timeout`` drops the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httptools

from distpat.core.serialize import error_response, response_head
from distpat.errors import ConfigError, RemoteProtocolError

__all__ = ["AdminConnection", "AdminLimits", "AdminResponse", "http_date"]

_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")


def http_date(seconds: float) -> bytes:
    """``Sun, 06 Nov 1994 08:49:37 GMT`` for a POSIX time: IMF-fixdate (RFC 9110 section 5.6.7)."""
    t = time.gmtime(seconds)
    return b"%b, %02d %b %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday],
        t.tm_mday,
        _MONTHS[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


@dataclass(frozen=True, slots=True)
class AdminLimits:
    """What one admin client may send, and how long it may take (bytes and seconds)."""

    max_header_bytes: int = 16 * 1024
    """The request line and field lines of one request."""
    max_body_bytes: int = 64 * 1024
    """A request body (read and discarded; no endpoint takes one)."""
    max_pipelined: int = 16
    """Requests received and not yet answered before reading pauses."""
    header_timeout: float = 10.0
    """From a request's first byte (a connection's start, for its first) to the end of its head."""
    idle_timeout: float = 75.0
    """How long a persistent connection may wait for its next request."""
    send_timeout: float = 10.0
    """How long an answer may wait for the client to read it."""
    linger_timeout: float = 2.0
    """After a refusal, how long what the client still sends is read and discarded."""

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_body_bytes", "max_pipelined"):
            if getattr(self, name) < 1:
                raise ConfigError(f"admin limit {name} must be at least 1, not {getattr(self, name)!r}")
        for name in ("header_timeout", "idle_timeout", "send_timeout", "linger_timeout"):
            value = getattr(self, name)
            if not value > 0 or value == float("inf"):
                raise ConfigError(f"admin timeout {name} must be a positive number of seconds, not {value!r}")


@dataclass(frozen=True, slots=True)
class AdminResponse:
    """An answer of the admin application: status, content, its Content-Type, and more fields."""

    status: int
    body: bytes
    content_type: bytes
    extra: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class _Request:
    method: bytes
    target: bytes
    keep_alive: bool
    http10: bool


Responder = Callable[[bytes, bytes], Awaitable[AdminResponse]]

_FAILED = AdminResponse(500, b"500: Internal Server Error\n", b"text/plain; charset=utf-8")


def _serialize(request: _Request, response: AdminResponse, *, close: bool, now: float) -> bytes:
    body = response.body
    headers = [
        (b"Content-Type", response.content_type),
        (b"Content-Length", b"%d" % len(body)),
        (b"Cache-Control", b"no-store"),
        (b"Date", http_date(now)),
        *response.extra,
    ]
    if close:
        headers.append((b"Connection", b"close"))
    elif request.http10:
        headers.append((b"Connection", b"keep-alive"))
    head = response_head(response.status, headers)
    return head if request.method == b"HEAD" else head + body


class AdminConnection(asyncio.Protocol):
    """One client of the admin listener (see the module docstring for its rules).

    ``respond`` answers a request (method and target); ``registry`` holds the server's open
    connections: this one is in it from its start to its end, when :attr:`closed` is done.
    """

    def __init__(
        self,
        respond: Responder,
        limits: AdminLimits,
        registry: set[AdminConnection],
        log: logging.Logger,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.respond = respond
        self.limits = limits
        self.registry = registry
        self.log = log
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[_Request | bytes] = deque()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.drained: asyncio.Future[None] | None = None
        self.url = b""
        self.header_bytes = 0
        self.head_read = 0
        self.body_bytes = 0
        self.in_head = False
        self.first = True  # the first request's head is timed from the connection's start
        self.current: _Request | None = None  # its head ended, its message not yet
        self.refused = False  # a refusal is queued (or the connection is ending): nothing more is read
        self.stopping = False
        self.eof = False  # the client sent all it will
        self.linger = False  # input may be left unread: close lingering
        self.paused = False
        self.reject: RemoteProtocolError | None = None

    def __repr__(self) -> str:
        return f"<AdminConnection queued={len(self.queue)} refused={self.refused}>"

    # -- transport events -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.registry.add(self)
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.refused = True
        self.queue.clear()
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()
        self._wake_writer()
        self.registry.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def eof_received(self) -> bool | None:
        self.eof = self.refused = True
        # With answers still to send, the write side stays open for them; otherwise close now.
        return True if self.task is not None else None

    def pause_writing(self) -> None:
        if self.drained is None:
            self.drained = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_writer(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        try:
            self.parser.feed_data(data)
            if self.in_head:  # httptools keeps an unfinished field line whole: bound what it holds
                self.head_read += len(data)
                # (the read it began in may hold the end of the previous request: one read of slack)
                if self.head_read > self.limits.max_header_bytes + len(data):
                    self._refuse(431, "request header fields too large")
        except httptools.HttpParserUpgrade:
            # The head of an Upgrade (or CONNECT) request ended: answered as if it had none, and
            # nothing after it is read.
            if self.current is not None:
                self._queue(self.current)
            last = self.queue[-1] if self.queue else None
            if isinstance(last, _Request):
                self.queue[-1] = _Request(last.method, last.target, False, last.http10)
            self.linger = True
            self._stop_reading()
        except httptools.HttpParserError as exc:
            reject = self.reject
            if reject is None and isinstance(exc.__context__, RemoteProtocolError):
                reject = exc.__context__
            if reject is not None:
                self._refuse(reject.status, str(reject))
            elif str(exc) == "Invalid HTTP version":
                self._refuse(505, "only HTTP/1.1 and HTTP/1.0 are supported")
            else:
                self._refuse(400, f"malformed request: {exc}")

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.header_bytes = self.head_read = self.body_bytes = 0
        self.in_head = True
        if self.first:
            self.first = False
        else:
            self._arm(self.limits.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > self.limits.max_header_bytes:
            self.reject = RemoteProtocolError("request target too long", status=414)
            raise self.reject

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.limits.max_header_bytes:
            self.reject = RemoteProtocolError("request header fields too large", status=431)
            raise self.reject

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self.reject = RemoteProtocolError("only HTTP/1.1 and HTTP/1.0 are supported", status=505)
            raise self.reject
        self.current = _Request(parser.get_method(), self.url, parser.should_keep_alive(), version == "1.0")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.limits.max_body_bytes:
            self.reject = RemoteProtocolError("request body too large", status=413)
            raise self.reject

    def on_message_complete(self) -> None:
        if self.current is not None:
            self._queue(self.current)

    # -- answering ------------------------------------------------------------------------

    def _queue(self, item: _Request | bytes) -> None:
        self.current = None
        self.queue.append(item)
        if len(self.queue) >= self.limits.max_pipelined and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if self.task is None:
            self.task = self.loop.create_task(self._answer())

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` after the requests queued before, then close."""
        if self.refused:
            return
        self.in_head = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._queue(error_response(status, message, close=True, extra=((b"Date", http_date(time.time())),)))
        self.linger = True
        self._stop_reading()

    def _stop_reading(self) -> None:
        self.refused = True
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    async def _answer(self) -> None:
        transport = self.transport
        assert transport is not None
        try:
            while self.queue:
                item = self.queue[0]
                if isinstance(item, bytes):
                    data, close = item, True
                else:
                    try:
                        response = await self.respond(item.method, item.target)
                    except Exception:
                        self.log.exception("admin endpoint %r failed", item.target)
                        response = _FAILED
                    close = not item.keep_alive or self.stopping
                    data = _serialize(item, response, close=close, now=time.time())
                self.queue.popleft()
                if transport.is_closing():
                    return
                transport.write(data)
                if close:
                    self._close(transport)
                    return
                if self.drained is not None and not await self._drained(self.drained):
                    transport.abort()
                    return
                if self.paused and not self.refused and len(self.queue) < self.limits.max_pipelined:
                    self.paused = False
                    transport.resume_reading()
        finally:
            self.task = None
        if self.eof:
            transport.close()
        elif not self.in_head and not transport.is_closing():
            self._arm(self.limits.idle_timeout, self._idle_timed_out)

    def _close(self, transport: asyncio.Transport) -> None:
        self.refused = True
        if not self.linger or self.stopping or self.eof or not transport.can_write_eof():
            transport.close()
            return
        # Lingering close (see the module docstring): what still arrives is discarded.
        transport.write_eof()
        if self.paused:
            self.paused = False
            transport.resume_reading()
        self._arm(self.limits.linger_timeout, transport.close)

    async def _drained(self, drained: asyncio.Future[None]) -> bool:
        """Wait until the client has read enough of what was written; False after ``send_timeout``."""
        try:
            await asyncio.wait_for(drained, self.limits.send_timeout)
        except TimeoutError:
            return False
        return True

    # -- timers and shutdown --------------------------------------------------------------

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(delay, callback)

    def _head_timed_out(self) -> None:
        self.timer = None
        if self.in_head:
            self._refuse(408, "request header timeout")
        elif self.task is None and self.transport is not None:
            self.transport.close()  # a new connection that never began a request

    def _idle_timed_out(self) -> None:
        self.timer = None
        if self.task is None and not self.in_head and self.transport is not None:
            self.refused = True
            self.transport.close()

    def shut_down(self) -> None:
        """Close once the request being answered is; at once if none is."""
        self.stopping = True
        self._stop_reading()
        if self.task is None and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now, whatever it was doing."""
        if self.transport is not None:
            self.transport.abort()
