"""What every connection of one proxy server shares: its limits and timeouts, and its state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from distpat.core.certs import format_subject
from distpat.core.forward import ResponseForwarder
from distpat.core.hooks import ProxyHook
from distpat.net.batch import WriteBatch
from distpat.net.upstream import UpstreamGroup

if TYPE_CHECKING:
    from distpat.net.exchange import Exchange
    from distpat.net.server import ClientConnection

__all__ = ["IDEMPOTENT", "READ_BUFFER_BYTES", "EngineSettings", "EngineState", "client_subject"]

READ_BUFFER_BYTES = 64 * 1024
"""One shared buffer for client reads: each is parsed before the next read, and httptools hands the
callbacks copies, so no connection needs its own."""

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


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
    underscores_in_headers: bool = False
    """Forward request fields whose names contain ``_`` (nginx's ``underscores_in_headers``). Off: they
    are dropped, so no client can forge a field that a CGI/WSGI service reads as one the proxy sets."""
    max_response_header_bytes: int = 64 * 1024
    """An upstream's status line and header fields larger than this are answered 502."""


@dataclass(slots=True)
class EngineState:
    """What every connection of one server shares."""

    settings: EngineSettings
    upstreams: UpstreamGroup
    connections: set[ClientConnection] = field(default_factory=set)
    draining: bool = False
    count_request: Callable[[int, str | None, float | None, int, int], None] | None = None
    """Counts each answered request: its status, the upstream that answered (None when the proxy
    did), the upstream's response time (None without a response), the request body bytes received
    and the response body bytes sent."""
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
    generation: int = 0
    """Bumped by each :meth:`apply`: an open connection that made its request rules under an older
    one makes them again before its next request (ClientConnection.on_message_begin)."""

    def __post_init__(self) -> None:
        self.apply(self.settings)

    def apply(self, settings: EngineSettings) -> None:
        """Use ``settings`` from now on (a reload): new connections take all of them; open ones take
        them from their next request on (the request rules: fields dropped and added, underscores,
        Forwarded, scheme, Via, the head limit; and the limits and timeouts read per request)."""
        self.settings = settings
        self.generation += 1
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
