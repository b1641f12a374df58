"""Protocol upgrades (RFC 9110 section 7.8): an exchange that becomes a byte tunnel on ``101``.

A request with ``Connection: upgrade`` and ``Upgrade`` (a WebSocket handshake) is
an :class:`UpgradeExchange`: it is forwarded with those two fields, on an
upstream connection whose parser reports where the ``101 Switching Protocols``
head ends (:class:`SwitchingParser`). On ``101`` the head goes to the client and
both connections are handed to a :class:`Splice`, which copies bytes both ways:
when one side's write buffer fills, the other side is no longer read, so memory
stays at a few socket buffers whatever the traffic. A splice idle for the
response timeout (nginx's ``proxy_read_timeout`` for WebSockets) is closed.

Any other answer is an ordinary response: the connection stays HTTP, and what the
client sent after the upgrade request's head is parsed as its next request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import httptools

from distpat.core.http import response_head
from distpat.net.exchange import Exchange
from distpat.net.exchange_log import record

if TYPE_CHECKING:
    from distpat.net.upstream import UpstreamConnection

__all__ = ["UPGRADES", "Splice", "SwitchingParser", "UpgradeExchange", "upgrade_fields"]

log = logging.getLogger("distpat.proxy")


UPGRADES = frozenset({b"websocket"})
"""The protocols a client may switch to through the proxy. Others (``h2c`` above all: a tunnel
of HTTP/2 requests the proxy would never see, "h2c smuggling") are not offered to the upstream."""


def upgrade_fields(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The field lines an upgrade request carries to the upstream (``Upgrade: websocket`` and
    ``Connection: upgrade``), or None when it asks for no protocol of :data:`UPGRADES`."""
    for name, value in headers:
        if name.lower() == b"upgrade":
            for token in value.split(b","):
                protocol = token.strip().split(b"/")[0].lower()
                if protocol in UPGRADES:
                    return b"Upgrade: " + protocol + b"\r\nConnection: upgrade\r\n"
    return None


class SwitchingParser:
    """An upstream connection's response parser that hands over the bytes after a 101 head.

    httptools ends a ``101`` response at its head by raising HttpParserUpgrade with the
    offset of the next protocol's first byte; the exchange that asked takes them.
    """

    __slots__ = ("parser", "exchange")

    def __init__(self, parser: httptools.HttpResponseParser) -> None:
        self.parser = parser
        self.exchange: UpgradeExchange | None = None  # set when the 101 head arrives

    def feed_data(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            exchange, self.exchange = self.exchange, None
            if exchange is None:
                raise
            exchange.switched(bytes(data[int(exc.args[0]) :]))

    def __getattr__(self, name: str) -> Any:  # get_status_code, should_keep_alive, ...
        return getattr(self.parser, name)


class UpgradeExchange(Exchange):
    """An exchange for a request that asks to switch protocols (see the module's docstring)."""

    __slots__ = ("splice", "switching", "offered")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.splice: Splice | None = None
        self.switching: UpstreamConnection | None = None
        fields = upgrade_fields(self.request_headers)
        self.offered = fields is not None  # else forwarded as a plain request (Upgrade is hop-by-hop)
        if fields is not None:  # the two fields the forwarders drop, before the blank line
            self.head = self.head[:-2] + fields + b"\r\n"

    def attach(self, conn: UpstreamConnection) -> None:
        if self.offered:
            conn.parser = SwitchingParser(conn.parser)  # type: ignore[assignment]
        super().attach(conn)

    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        conn = self.conn
        if status != 101 or conn is None or not isinstance(conn.parser, SwitchingParser):
            super().on_response_head(status, headers, keep_alive)
            return
        self.status = 101
        conn.handler = None  # its parser ends the message next; the exchange is no longer its
        conn.parser.exchange = self
        self.switching = conn
        self.upstream_t0 = perf_counter() - self.upstream_t0  # the upstream's response time, kept
        self.to_client.clear()
        self.to_client.append(response_head(101, [*headers, (b"Via", self.client.via)]))

    def switched(self, rest: bytes) -> None:
        """The upstream switched protocols; ``rest`` is the first of its bytes in the new one."""
        conn, self.switching = self.switching, None
        client = self.client
        assert conn is not None
        self.conn = None
        upstream = conn.upstream
        upstream.outstanding -= 1
        transport = conn.transport
        conn.transport = None
        conn.closed = True
        upstream.forget(conn)
        if transport is None or client.transport is None or client.closing or transport.is_closing():
            if transport is not None:
                transport.abort()
            client.abort("upstream switched protocols after the client left")
            return
        self.response_started = True
        self.finished = True
        if client.queue and client.queue[0] is self:
            client.queue.popleft()
        self.flush()  # the 101 head, written before anything the tunnel carries
        client.state.batch.flush()
        client.closing = True  # no longer an HTTP connection: its timers stop
        client.cancel_tick()
        early, client.upgrade_rest = client.upgrade_rest, b""
        self.splice = Splice(
            client.transport,
            transport,
            idle_timeout=client.state.settings.response_timeout,
            on_closed=self.spliced,
            name=f"client {client.peer}: upgraded connection",
        )
        self.splice.start(
            early, rest, client_full=client.write_paused, upstream_full="upstream" in client.pauses
        )

    def on_response_complete(self) -> None:
        if self.offered:
            self.upstream_reusable = False  # its parser was made for a switch: not pooled
        super().on_response_complete()

    def finish(self) -> None:
        """Answered without switching: the connection stays HTTP (and the next request is read)."""
        if self.finished:
            return
        super().finish()
        self.client.upgrade_declined()

    def spliced(self, to_client: int, from_client: int) -> None:
        """The tunnel closed: count and log the exchange, with the bytes it carried and the
        upstream's response time to the 101 (not the tunnel's life)."""
        self.sent_bytes = to_client
        self.body_sent = from_client
        self.upstream_t0 = perf_counter() - self.upstream_t0
        record(self)
        self.client.connection_lost(None)


class _Side(asyncio.Protocol):
    """One connection of a splice; what it reads is written to the other."""

    __slots__ = ("splice", "transport", "peer", "carried", "at_eof", "write_full")

    def __init__(self, splice: Splice, transport: asyncio.Transport) -> None:
        self.splice = splice
        self.transport = transport
        self.peer: _Side | None = None
        self.carried = 0  # bytes read from this side
        self.at_eof = False
        self.write_full = False  # this side's write buffer is over its high-water mark

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        self.carried += len(data)
        self.splice.last_io = self.splice.loop.time()
        if peer is not None and not peer.transport.is_closing():
            peer.transport.write(data)

    def eof_received(self) -> bool | None:
        self.at_eof = True
        peer = self.peer
        if peer is not None and not peer.transport.is_closing():
            if not peer.at_eof and peer.transport.can_write_eof():
                peer.transport.write_eof()  # half-closed: the other direction goes on
                return True
            peer.transport.close()  # both directions are done (or TLS, which cannot half-close)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.splice.side_closed(self)

    def pause_writing(self) -> None:  # this side's buffer is full: stop reading the other
        self.write_full = True
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_full = False
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()


class Splice:
    """Two connections copied into each other, with backpressure and an optional idle timeout.

    When either connection ends, the other is closed once what it was given is written (a TCP
    end half-closes the other side instead, while it can); ``on_closed`` is then called once with
    the bytes carried to the client and from it.
    """

    __slots__ = ("client", "upstream", "loop", "last_io", "timer", "closed", "timeout", "on_closed", "name")

    def __init__(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        *,
        idle_timeout: float | None,
        on_closed: Callable[[int, int], None],
        name: str,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = _Side(self, client)
        self.upstream = _Side(self, upstream)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.timeout = idle_timeout
        self.on_closed = on_closed
        self.name = name  # for the log
        self.last_io = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def start(
        self,
        from_client: bytes = b"",
        from_upstream: bytes = b"",
        *,
        client_full: bool = False,
        upstream_full: bool = False,
    ) -> None:
        """Take both connections over (their reading paused until now) and pass on what each
        had already sent.

        ``client_full`` and ``upstream_full`` say whether a connection's write buffer was already
        over its high-water mark under its previous protocol: a transport says pause_writing once,
        so the splice must know, or it would read the other side without bound until it drained.
        """
        client, upstream = self.client.transport, self.upstream.transport
        self.client.write_full, self.upstream.write_full = client_full, upstream_full
        client.set_protocol(self.client)
        upstream.set_protocol(self.upstream)
        if from_client:
            self.client.data_received(from_client)
        if from_upstream:
            self.upstream.data_received(from_upstream)
        # each side is read only while what it reads can be written to the other
        if not self.client.write_full:
            upstream.resume_reading()
        if not self.upstream.write_full:
            client.resume_reading()
        if self.timeout is not None:
            self.timer = self.loop.call_later(self.timeout, self._tick)

    def abort(self) -> None:
        self.client.transport.abort()
        self.upstream.transport.abort()

    def _tick(self) -> None:
        self.timer = None
        if self.closed or self.timeout is None:
            return
        idle = self.loop.time() - self.last_io
        if idle >= self.timeout:
            log.info("%s idle for %gs: closed", self.name, idle)
            self.client.transport.close()
            self.upstream.transport.close()
            return
        self.timer = self.loop.call_later(self.timeout - idle, self._tick)

    def side_closed(self, side: _Side) -> None:
        """Either connection ended: the other is closed once what it was given is written."""
        peer = side.peer
        if peer is not None and not peer.transport.is_closing():
            peer.transport.close()
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.on_closed(self.upstream.carried, self.client.carried)
