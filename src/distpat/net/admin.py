"""The admin listener: liveness and readiness probes, and the Prometheus scrape endpoint.

It answers on its own port, apart from proxied traffic, at a low rate, on plain asyncio (one
:class:`~distpat.net.admin_conn.AdminConnection` per client, parsed by httptools), so that a
standalone process never loads a web framework for three endpoints:

``GET /healthz``
    200 ``ok`` while the process runs its event loop (the liveness probe).
``GET /readyz``
    200 ``ready`` when ``ready()`` is true and ``draining()`` is false; otherwise
    503 with ``draining`` or ``no healthy upstream`` (the readiness probe: a load
    balancer stops sending traffic on 503).
``GET /metrics``
    The text exposition of a :class:`MetricsSource` (such as :class:`~distpat.net.metrics.ProxyMetrics`).

HEAD is answered wherever GET is (RFC 9110 section 9.3.2: the same fields, no content); other
methods get 405 with ``Allow: GET, HEAD`` (section 15.5.6), other paths 404. A query string is
ignored. Responses carry ``Cache-Control: no-store``. Requests are not access-logged. The limits
and timeouts of a connection (:class:`~distpat.net.admin_conn.AdminLimits`) are described there.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from distpat.errors import AdminServerStateError
from distpat.net.admin_conn import AdminConnection, AdminLimits, AdminResponse

__all__ = [
    "AdminApp",
    "AdminLimits",
    "AdminResponse",
    "AdminServer",
    "AdminServerStateError",
    "GatheredMetricsSource",
    "MetricsSource",
    "create_admin_app",
]

log = logging.getLogger("distpat.admin")


class MetricsSource(Protocol):
    """What ``/metrics`` serves: :class:`~distpat.net.metrics.ProxyMetrics`, or the Redis ambassador's."""

    def render(self) -> tuple[bytes, str]: ...


class GatheredMetricsSource(Protocol):
    """A ``/metrics`` source that must ask others first (the parent of ``--workers N``)."""

    def render(self) -> Awaitable[tuple[bytes, str]]: ...


T = TypeVar("T")


async def _value(result: T | Awaitable[T]) -> T:
    if inspect.isawaitable(result):
        return await result
    return result


def _never_draining() -> bool:
    return False


_TEXT = b"text/plain; charset=utf-8"
_ALLOW = ((b"Allow", b"GET, HEAD"),)
_PATHS = frozenset({b"/healthz", b"/readyz", b"/metrics"})


def _text(status: int, text: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> AdminResponse:
    return AdminResponse(status, text, _TEXT, extra)


def _path(target: bytes) -> bytes:
    """The path of a request target: origin-form without its query, or absolute-form's path (RFC 9112 3.2)."""
    if not target.startswith(b"/"):
        scheme, sep, rest = target.partition(b"://")
        if not sep or not scheme.isalpha():
            return b""  # asterisk-form, authority-form or junk: no endpoint of ours
        slash = rest.find(b"/")
        target = b"/" if slash < 0 else rest[slash:]
    return target.split(b"?", 1)[0].split(b"#", 1)[0]


@dataclass(frozen=True, slots=True)
class AdminApp:
    """The admin endpoints and where their answers come from (build it with :func:`create_admin_app`)."""

    metrics: MetricsSource | GatheredMetricsSource
    ready: Callable[[], bool | Awaitable[bool]]
    draining: Callable[[], bool] = _never_draining

    async def respond(self, method: bytes, target: bytes) -> AdminResponse:
        """The answer to ``method target`` (a HEAD is answered as the GET; the connection drops the body)."""
        path = _path(target)
        if path not in _PATHS:
            return _text(404, b"404: Not Found\n")
        if method != b"GET" and method != b"HEAD":
            return _text(405, b"405: Method Not Allowed\n", _ALLOW)
        if path == b"/healthz":
            return _text(200, b"ok\n")
        if path == b"/readyz":
            if self.draining():
                return _text(503, b"draining\n")
            if not await _value(self.ready()):
                return _text(503, b"no healthy upstream\n")
            return _text(200, b"ready\n")
        body, content_type = await _value(self.metrics.render())
        # The Prometheus content type carries version and charset parameters: sent whole.
        return AdminResponse(200, body, content_type.encode("latin-1"))


def create_admin_app(
    *,
    metrics: MetricsSource | GatheredMetricsSource,
    ready: Callable[[], bool | Awaitable[bool]],
    draining: Callable[[], bool] = _never_draining,
) -> AdminApp:
    """Build the admin application.

    ``ready`` says whether the proxy can serve (typically: at least one healthy upstream);
    ``draining`` whether it is shutting down and should be taken out of rotation. Both are
    called on every ``/readyz`` request, so they must be cheap and must not block. ``ready``
    and ``metrics.render`` may be coroutines (the parent of several workers asks each of them).
    """
    return AdminApp(metrics=metrics, ready=ready, draining=draining)


class AdminServer:
    """Runs an admin application (see :func:`create_admin_app`) on one TCP listener.

    ::

        server = AdminServer(create_admin_app(metrics=metrics, ready=lambda: pool.healthy > 0))
        await server.start("127.0.0.1", 0)
        ...  # server.port is the bound port
        await server.close()

    ``shutdown_timeout`` bounds how long :meth:`close` waits for requests in progress;
    ``limits`` bounds what one client may send and how long it may take (:class:`AdminLimits`).
    """

    __slots__ = ("_app", "_connections", "_limits", "_port", "_server", "_shutdown_timeout")

    def __init__(
        self, app: AdminApp, *, shutdown_timeout: float = 1.0, limits: AdminLimits | None = None
    ) -> None:
        self._app = app
        self._shutdown_timeout = shutdown_timeout
        self._limits = AdminLimits() if limits is None else limits
        self._server: asyncio.Server | None = None
        self._connections: set[AdminConnection] = set()
        self._port: int | None = None

    def __repr__(self) -> str:
        where = "closed" if self._port is None else f"port={self._port}"
        return f"<AdminServer {where}>"

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when started with port 0)."""
        if self._port is None:
            raise AdminServerStateError("the admin server is not listening; call start() first")
        return self._port

    @property
    def connections(self) -> int:
        """How many client connections are open now."""
        return len(self._connections)

    def _connection(self) -> AdminConnection:
        return AdminConnection(self._app.respond, self._limits, self._connections, log)

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0 picks a free one, readable from :attr:`port`).

        With port 0, give ``host`` as one address: a name that resolves to several addresses
        gets a different free port on each, and :attr:`port` reports the first.
        Raises :class:`OSError` when the address cannot be bound.
        """
        if self._server is not None:
            raise AdminServerStateError("the admin server is already started")
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._connection, host, port, reuse_address=True)
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])

    async def start_on(self, sock: socket.socket) -> None:
        """Serve on an already bound and listening socket (bound before a fork, say)."""
        if self._server is not None:
            raise AdminServerStateError("the admin server is already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, sock=sock)
        self._port = int(sock.getsockname()[1])

    async def close(self) -> None:
        """Stop listening and finish (or, after ``shutdown_timeout``, drop) requests in progress.

        An idle keep-alive connection is closed at once; one in the middle of a request is
        closed after its answer. Idempotent; the server can be started again afterwards.
        """
        server, self._server, self._port = self._server, None, None
        if server is None:
            return
        server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.shut_down()
        waiting = [conn.closed for conn in connections if not conn.closed.done()]
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=self._shutdown_timeout)
            if late:
                for conn in connections:
                    conn.abort()
                await asyncio.wait(late, timeout=self._shutdown_timeout)
        await server.wait_closed()
