"""What every connection of one proxy server shares: its limits and timeouts, and its state."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from distpat.core.certs import format_subject
from distpat.core.forward import ResponseForwarder
from distpat.core.pipeline import Pipeline
from distpat.core.stage import Call, CallResult, Fetch, Flight, Join, Outcome, SubResult, Tick
from distpat.net.batch import WriteBatch
from distpat.net.pool import UpstreamGroup

if TYPE_CHECKING:
    from distpat.net.exchange import Exchange
    from distpat.net.server import ClientConnection

__all__ = [
    "IDEMPOTENT",
    "READ_BUFFER_BYTES",
    "Carriers",
    "EnginePools",
    "EngineSettings",
    "EngineState",
    "client_subject",
]

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


_monotonic = time.monotonic
_time = time.time
_getrandbits = random.getrandbits


def _bits() -> int:
    return _getrandbits(64)


def _usual_tick() -> Tick:
    return Tick(_monotonic(), _time(), _getrandbits(64))


class Cancellable(Protocol):
    def cancel(self) -> None: ...


@dataclass(slots=True)
class Carriers:
    """What carries out the effects a stage may ask for beyond forwarding (net/mirror.py,
    net/subrequest.py, net/resp_client.py, net/flights.py); None where it is not configured,
    and a stage asking for it then gets a 500 naming what is missing."""

    mirror: Callable[[UpstreamGroup, bytes], bool] | None = None
    fetch: Callable[[Fetch, Callable[[tuple[SubResult, ...]], None]], Cancellable] | None = None
    call: Callable[[Call, Callable[[CallResult], None]], None] | None = None
    join: Callable[[Join, Callable[[Flight], None]], Cancellable] | None = None
    land: Callable[[bytes, Outcome], None] | None = None
    """Ends the flight a request led, with its outcome."""
    dropped: set[str] = field(default_factory=set)
    """The fire-and-forget effects (``"fetch"``) dropped for want of a carrier and warned about
    already: that warning is logged once per server, not once per request."""


class EnginePools:
    """The engine's pools as stages read them (distpat.core.stage.Pools)."""

    __slots__ = ("pools", "clock")

    def __init__(self, pools: Mapping[str | None, UpstreamGroup], clock: Callable[[], float]) -> None:
        self.pools = pools
        self.clock = clock

    def members(self, pool: str | None) -> tuple[str, ...]:
        group = self.pools.get(pool)
        return () if group is None else group.names()

    def in_flight(self, pool: str | None) -> Mapping[str, int]:
        group = self.pools.get(pool)
        return {} if group is None else group.in_flight()

    def available(self, pool: str | None, upstream: str) -> bool:
        group = self.pools.get(pool)
        found = None if group is None else group.by_name(upstream)
        return found is not None and found.available(self.clock())


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
    pipeline: Pipeline | None = None
    """The stages every request passes (distpat.core.stage); None: the plain proxy."""
    pools: dict[str | None, UpstreamGroup] = field(default_factory=dict)
    """Named pools; ``upstreams`` is also there under None and ``"default"``."""
    carriers: Carriers = field(default_factory=Carriers)
    count_decision: Callable[[str, str], None] | None = None
    """Counts what a stage decided for a request (stage name, decision)."""
    count_mirror: Callable[[str, str], None] | None = None
    """Counts a mirror copy's fate (pool, ``sent``/``dropped``/``failed``/``too_large``)."""
    mono: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    rand: Callable[[], int] = _bits
    """Random bits for each tick (Python's generator, seeded from the OS: visitor IDs, samples;
    not for secrets)."""
    pool_view: EnginePools = field(init=False)
    make_tick: Callable[[], Tick] = field(init=False)
    """:meth:`tick`, or with the usual clocks a function that calls them with no indirection."""
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
        self.pools.setdefault(None, self.upstreams)
        self.pools.setdefault("default", self.upstreams)
        self.pool_view = EnginePools(self.pools, self.upstreams.clock)
        plain = self.mono is _monotonic and self.wall is _time and self.rand is _bits
        self.make_tick = _usual_tick if plain else self.tick
        self.apply(self.settings)

    def tick(self) -> Tick:
        """What a stage is handed for one call: the clocks and fresh random bits."""
        return Tick(self.mono(), self.wall(), self.rand())

    def apply(self, settings: EngineSettings) -> None:
        """Use ``settings`` from now on (a reload): new connections take all of them; open ones take
        them from their next request on (the request rules: fields dropped and added, underscores,
        Forwarded, scheme, Via, the head limit; and the limits and timeouts read per request)."""
        self.settings = settings
        self.generation += 1
        header = self.settings.client_cert_header
        self.request_drop = frozenset() if header is None else frozenset({header.lower()})
        if self.pipeline is not None:
            self.request_drop |= self.pipeline.drops
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
