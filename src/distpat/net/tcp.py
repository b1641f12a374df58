"""TLS-to-TCP termination (``distpat sidecar --mode tcp``), as stunnel does.

Each TLS client connection gets its own plain TCP connection to the
upstream, and the two are spliced (distpat.net.tunnel.Splice): bytes are
copied both ways with backpressure (when one side's socket buffer fills, the
other side is no longer read), so memory per tunnel stays at a few socket
buffers whatever passes through it. The client is not read until the upstream
connection is open. When either side closes, the other is closed once what
was already received for it is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass

from distpat.errors import ConfigError
from distpat.net.admin import AdminServer, create_admin_app
from distpat.net.metrics import ProxyMetrics
from distpat.net.tls import CertificateStore, TLSOptions
from distpat.net.tunnel import Splice

__all__ = ["TcpProxyConfig", "TcpProxyServer", "parse_tcp_upstream"]

log = logging.getLogger("distpat.tcp")


def parse_tcp_upstream(url: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` -> (host, port); :class:`ConfigError` for anything else."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "tcp" or not parts.hostname:
        raise ConfigError(f"upstream {url!r}: --mode tcp needs tcp://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None or parts.path not in ("", "/") or parts.query or parts.username:
        raise ConfigError(f"upstream {url!r}: give tcp://HOST:PORT only")
    return parts.hostname, port


@dataclass(frozen=True, slots=True)
class TcpProxyConfig:
    listen: tuple[str, int]
    upstream: tuple[str, int]
    tls: TLSOptions
    admin: tuple[str, int] | None = None
    max_connections: int = 20_000
    connect_timeout: float = 5.0
    handshake_timeout: float = 10.0
    shutdown_timeout: float = 30.0
    backlog: int = 1024
    reuse_port: bool = False


class _Connecting(asyncio.Protocol):
    """An upstream connection until the splice takes it: not read before then."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # type: ignore[attr-defined]


@dataclass(eq=False, slots=True)
class _Tunnel(asyncio.Protocol):
    """A client connection: not read until its upstream connection is open, then spliced to it."""

    server: TcpProxyServer
    client: asyncio.Transport | None = None
    upstream: asyncio.Transport | None = None
    splice: Splice | None = None
    closed: bool = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = transport  # type: ignore[assignment]
        server = self.server
        if len(server.tunnels) >= server.config.max_connections:
            log.warning("refusing a connection: %d open (--max-connections)", len(server.tunnels))
            transport.abort()  # type: ignore[attr-defined]
            return
        server.tunnels.add(self)
        server.metrics.connection_opened()
        transport.pause_reading()  # type: ignore[attr-defined]  # nothing is read until the upstream is there
        task = asyncio.get_running_loop().create_task(self._connect())
        server.tasks.add(task)
        task.add_done_callback(server.tasks.discard)

    async def _connect(self) -> None:
        host, port = self.server.config.upstream
        loop = asyncio.get_running_loop()
        name = f"tcp://{host}:{port}"
        try:
            async with asyncio.timeout(self.server.config.connect_timeout):
                upstream, _ = await loop.create_connection(_Connecting, host, port)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            log.warning("upstream %s: connect failed: %s", name, reason)
            self.server.metrics.set_upstream_health(name, False)
            self.abort()
            return
        self.server.metrics.set_upstream_health(name, True)
        self.upstream = upstream
        if self.closed or self.client is None or self.client.is_closing():
            upstream.close()
            return
        self.splice = Splice(
            self.client,
            upstream,
            idle_timeout=None,
            on_closed=self._spliced,
            name=f"tunnel to {name}",
        )
        self.splice.start()

    def eof_received(self) -> bool | None:  # before the splice: the client is done already
        return None

    def connection_lost(self, exc: Exception | None) -> None:  # before the splice
        self.closed = True
        self._spliced(0, 0)
        if self.upstream is not None:
            self.upstream.close()

    def _spliced(self, to_client: int, from_client: int) -> None:
        if self in self.server.tunnels:
            self.server.tunnels.discard(self)
            self.server.metrics.connection_closed()

    def abort(self) -> None:
        self.closed = True
        if self.client is not None:
            self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()


class TcpProxyServer:
    """A TLS listener whose connections are tunnelled to one TCP upstream."""

    def __init__(self, config: TcpProxyConfig, *, metrics: ProxyMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else ProxyMetrics()
        host, port = config.upstream
        self.metrics.set_upstream_health(f"tcp://{host}:{port}", True)
        self.tunnels: set[_Tunnel] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.tls: CertificateStore | None = None
        self.draining = False
        self._server: asyncio.base_events.Server | None = None
        self._admin: AdminServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.tls is None:
            self.tls = CertificateStore(self.config.tls)
            self.metrics.watch_tls(self.tls)
        host, port = self.config.listen
        self._server = await loop.create_server(
            lambda: _Tunnel(self),
            host,
            port,
            backlog=self.config.backlog,
            reuse_port=self.config.reuse_port or None,
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            ssl=self.tls.context,
            ssl_handshake_timeout=self.config.handshake_timeout,
        )
        self.tls.start()
        if self.config.admin is not None:
            app = create_admin_app(metrics=self.metrics, ready=self.ready, draining=lambda: self.draining)
            self._admin = AdminServer(app)
            await self._admin.start(*self.config.admin)
        log.info(
            "listening on %s:%d (TLS), tunnelling to tcp://%s:%d", host, self.port, *self.config.upstream
        )

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not listening; call start() first")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def admin_port(self) -> int | None:
        return self._admin.port if self._admin is not None else None

    def ready(self) -> bool:
        """Ready while the last connection to the upstream succeeded (the readiness probe)."""
        return self.metrics.healthy_upstreams() > 0

    async def serve_until_signalled(self) -> None:
        from distpat.net.proxy import run_until_signalled

        await run_until_signalled(self, logger=log)

    def reload(self) -> None:
        if self.tls is not None:
            self.tls.reload("SIGHUP")

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting; let open tunnels finish for up to ``timeout`` seconds, then cut them."""
        if self.draining:
            return
        self.draining = True
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + timeout
        while self.tunnels and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for tunnel in list(self.tunnels):
            tunnel.abort()
        for task in list(self.tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        if self.tls is not None:
            await self.tls.stop()
        if self._admin is not None:
            await self._admin.close()
