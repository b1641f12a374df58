"""The admin listener: liveness and readiness probes, and the Prometheus scrape endpoint.

It answers on its own port, apart from proxied traffic, at a low rate, so it is a
plain :mod:`aiohttp.web` application:

``GET /healthz``
    200 ``ok`` while the process runs its event loop (the liveness probe).
``GET /readyz``
    200 ``ready`` when ``ready()`` is true and ``draining()`` is false; otherwise
    503 with ``draining`` or ``no healthy upstream`` (the readiness probe: a load
    balancer stops sending traffic on 503).
``GET /metrics``
    The text exposition of a :class:`MetricsSource` (such as :class:`~distpat.net.metrics.ProxyMetrics`).

HEAD is answered wherever GET is; other methods get 405, other paths 404.
Responses carry ``Cache-Control: no-store``. Requests are not access-logged.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from aiohttp import web

from distpat.errors import AdminServerStateError

__all__ = ["AdminServer", "AdminServerStateError", "MetricsSource", "create_admin_app"]


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


_METRICS: web.AppKey[MetricsSource | GatheredMetricsSource] = web.AppKey("distpat_metrics")
_READY: web.AppKey[Callable[[], bool | Awaitable[bool]]] = web.AppKey("distpat_ready")
_DRAINING: web.AppKey[Callable[[], bool]] = web.AppKey("distpat_draining")

_NO_STORE = {"Cache-Control": "no-store"}


def _never_draining() -> bool:
    return False


def create_admin_app(
    *,
    metrics: MetricsSource | GatheredMetricsSource,
    ready: Callable[[], bool | Awaitable[bool]],
    draining: Callable[[], bool] = _never_draining,
) -> web.Application:
    """Build the admin application.

    ``ready`` says whether the proxy can serve (typically: at least one healthy upstream);
    ``draining`` whether it is shutting down and should be taken out of rotation. Both are
    called on every ``/readyz`` request, so they must be cheap and must not block. ``ready``
    and ``metrics.render`` may be coroutines (the parent of several workers asks each of them).
    """
    app = web.Application()
    app[_METRICS] = metrics
    app[_READY] = ready
    app[_DRAINING] = draining
    # add_get also routes HEAD; a known path with another method gets 405 from the router.
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n", headers=_NO_STORE)


async def _readyz(request: web.Request) -> web.Response:
    app = request.app
    if app[_DRAINING]():
        return web.Response(status=503, text="draining\n", headers=_NO_STORE)
    if not await _value(app[_READY]()):
        return web.Response(status=503, text="no healthy upstream\n", headers=_NO_STORE)
    return web.Response(text="ready\n", headers=_NO_STORE)


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = await _value(request.app[_METRICS].render())
    # The content type carries version and charset parameters, which aiohttp's content_type
    # argument refuses; pass the header whole.
    return web.Response(body=body, headers={"Content-Type": content_type, **_NO_STORE})


class AdminServer:
    """Runs an admin application (see :func:`create_admin_app`) on one TCP listener.

    ::

        server = AdminServer(create_admin_app(metrics=metrics, ready=lambda: pool.healthy > 0))
        await server.start("127.0.0.1", 0)
        ...  # server.port is the bound port
        await server.close()

    ``shutdown_timeout`` bounds how long :meth:`close` waits for requests in progress.
    """

    __slots__ = ("_app", "_port", "_runner", "_shutdown_timeout")

    def __init__(self, app: web.Application, *, shutdown_timeout: float = 1.0) -> None:
        self._app = app
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
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

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0 picks a free one, readable from :attr:`port`).

        With port 0, give ``host`` as one address: a name that resolves to several addresses
        gets a different free port on each, and :attr:`port` reports the first.
        Raises :class:`OSError` when the address cannot be bound.
        """
        if self._runner is not None:
            raise AdminServerStateError("the admin server is already started")
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def start_on(self, sock: socket.socket) -> None:
        """Serve on an already bound and listening socket (bound before a fork, say)."""
        if self._runner is not None:
            raise AdminServerStateError("the admin server is already started")
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(sock.getsockname()[1])

    async def close(self) -> None:
        """Stop listening and finish (or, after ``shutdown_timeout``, drop) requests in progress.

        Idempotent; the server can be started again afterwards.
        """
        runner, self._runner, self._port = self._runner, None, None
        if runner is not None:
            await runner.cleanup()
