"""The reverse-proxy server: listener, upstreams, admin endpoint, access log and shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from distpat.core.pipeline import Pipeline
from distpat.core.stage import Stage
from distpat.errors import ConfigError
from distpat.net.admin import AdminServer, create_admin_app
from distpat.net.carriers import EffectCarriers
from distpat.net.health import HealthCheck, HealthChecker
from distpat.net.metrics import ProxyMetrics
from distpat.net.pool import UpstreamGroup
from distpat.net.redirect import RedirectProtocol
from distpat.net.server import ClientConnection, EngineSettings, EngineState, Exchange
from distpat.net.tls import CertificateStore, TLSOptions
from distpat.net.upstream import Upstream, UpstreamPolicy, parse_upstream_url

__all__ = ["ProxyConfig", "ProxyServer", "Reloaded", "Serving", "run_until_signalled"]

log = logging.getLogger("distpat.proxy")
access_log = logging.getLogger("distpat.access")


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Everything one proxy process needs; built by the CLI/config layer, or by hand."""

    listen: tuple[str, int]
    upstreams: tuple[str, ...]
    admin: tuple[str, int] | None = None
    balance: str = "round_robin"
    access_log: str | None = None  # None, "combined" or "json"
    shutdown_timeout: float = 30.0
    backlog: int = 1024
    reuse_port: bool = False
    settings: EngineSettings = field(default_factory=EngineSettings)
    policy: UpstreamPolicy = field(default_factory=UpstreamPolicy)
    health_check: HealthCheck | None = None
    """Active checks of each upstream; None for passive health only."""
    tls: TLSOptions | None = None
    """Serve HTTPS with these certificates (the TLS sidecar); None for plain HTTP."""
    redirect_http: tuple[str, int] | None = None
    """A plain listener that redirects every request to the HTTPS one."""
    pools: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Named upstream pools (``[pools.NAME]``): name and upstream URLs, each balanced as
    ``balance`` says, with ``policy`` and ``health_check``. ``upstreams`` is the pool named
    ``default`` (it may be empty when the stages name every pool they use)."""
    stages: tuple[Stage, ...] = ()
    """The pipeline (see distpat.core.stage): the stages every request passes, in order."""
    mirror_max_in_flight: int = 64
    """Mirror copies in flight at once (Forward.mirror); past it copies are dropped and counted."""
    pool_balance: tuple[tuple[str, str], ...] = ()
    """A pool's own balancer (``[pools.NAME] balance``), by pool name; the others use ``balance``."""
    redis: str | None = None
    """``redis://[:password@]host:port[/db]``: where stages' Calls go (net/resp_client.py); None:
    a Call's continuation gets ``unavailable``."""
    local_only: bool = False
    """The stages answer every request themselves (a search leaf): no upstream is needed, and a
    request that reached the default pool anyway would be answered 502."""


Reloaded = tuple["ProxyConfig", Callable[[], None] | None]
"""What a ``config_source`` returns: the configuration read again, and what to do (outside the
server: logging) once the server has taken it; not called when the reload is refused."""


class Serving(typing.Protocol):
    """What :func:`run_until_signalled` drives: the HTTP proxy, or the TCP tunnel."""

    async def start(self) -> None: ...
    async def shutdown(self, timeout: float | None = None) -> None: ...
    def reload(self) -> None: ...


async def run_until_signalled(server: Serving, *, logger: logging.Logger = log) -> None:
    """Start ``server``; on SIGTERM or SIGINT shut it down gracefully; on SIGHUP call its reload().

    The signals' dispositions are put back as they were found afterwards, not to the defaults: a
    worker process ignores a second SIGTERM that arrives once it has drained (systemd signals the
    whole process group, and the parent forwards the same signal), instead of dying of it.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    try:
        await server.start()
        await stop.wait()
        logger.info("signal received: draining")
        await server.shutdown()
    finally:
        # Blocked while they change hands, so none can meet the default disposition in between.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            for sig in signals:
                loop.remove_signal_handler(sig)
                if previous[sig] is not None:
                    signal.signal(sig, previous[sig])
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _by_name(pools: dict[str, UpstreamGroup]) -> dict[str | None, UpstreamGroup]:
    out: dict[str | None, UpstreamGroup] = {}
    out.update(pools)
    return out


def _pipeline(config: ProxyConfig) -> Pipeline | None:
    return Pipeline(config.stages) if config.stages else None


class ProxyServer:
    """One proxy listener with its upstream pools; several may run in one process."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        metrics: ProxyMetrics | None = None,
        config_source: Callable[[], Reloaded] | None = None,
    ) -> None:
        self.config = config
        self.config_source = config_source
        """Where :meth:`reload` reads the configuration again (SIGHUP); raises ConfigError."""
        self.metrics = metrics if metrics is not None else ProxyMetrics()
        self.pipeline = _pipeline(config)
        self.pools = self._build_pools(config, {})
        self.group = self.pools["default"]
        self.metrics.watch_upstreams(self._in_flight)
        self.metrics.watch_stages(self._stages)
        self.state = EngineState(
            settings=config.settings,
            upstreams=self.group,
            count_request=self.metrics.request_finished,
            on_request_done=self._request_done if config.access_log is not None else None,
            on_connection_change=self._connection_change,
            pipeline=self.pipeline,
            pools=_by_name(self.pools),
            count_decision=self.metrics.stage_decided,
            count_mirror=self.metrics.mirror_event,
        )
        self.carriers = EffectCarriers(
            self.state,
            mirror_max_in_flight=config.mirror_max_in_flight,
            count_mirror=self.metrics.mirror_event,
            redis=config.redis,
        )
        self._server: asyncio.base_events.Server | None = None
        self._admin: AdminServer | None = None
        self._health: HealthChecker | None = None
        self._redirect: asyncio.base_events.Server | None = None
        self._stopped = asyncio.Event()
        self.tls: CertificateStore | None = None
        """The certificates in service, when serving HTTPS."""

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.config.listen
        settings = self.config.settings
        if self.config.tls is not None and self.tls is None:
            self.tls = CertificateStore(self.config.tls)  # ConfigError for a bad pair: nothing starts
            self.metrics.watch_tls(self.tls)
        self._server = await loop.create_server(
            lambda: ClientConnection(self.state),
            host,
            port,
            backlog=self.config.backlog,
            reuse_port=self.config.reuse_port or None,
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            ssl=self.tls.context if self.tls is not None else None,
            ssl_handshake_timeout=settings.header_timeout if self.tls is not None else None,
        )
        if self.tls is not None:
            self.tls.start()
        if self.config.redirect_http is not None:
            rhost, rport = self.config.redirect_http
            https_port = self.port
            self._redirect = await loop.create_server(
                lambda: RedirectProtocol(https_port, settings.header_timeout, settings.max_header_bytes),
                rhost,
                rport,
                backlog=self.config.backlog,
                reuse_port=self.config.reuse_port or None,
                family=socket.AF_INET6 if ":" in rhost else socket.AF_INET,
            )
        if self.config.admin is not None:
            app = create_admin_app(
                metrics=self.metrics, ready=self.ready, draining=lambda: self.state.draining
            )
            self._admin = AdminServer(app)
            await self._admin.start(*self.config.admin)
        if self.config.health_check is not None:
            self._health = HealthChecker(self._all_upstreams(), self.config.health_check)
            self._health.start()
        log.info(
            "listening on %s:%d, upstreams %s",
            host,
            self.port,
            ", ".join(u.name for u in self.group.upstreams),
        )

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the proxy is not listening; call start() first")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def admin_port(self) -> int | None:
        return self._admin.port if self._admin is not None else None

    def ready(self) -> bool:
        """Ready while every pool has an upstream that is not ejected (the readiness probe): with
        one pool, while any upstream is in rotation; with a split's pools, while every variant can
        be served."""
        return all(group.healthy() for group in self.pools.values())

    @property
    def draining(self) -> bool:
        """Shutting down: no new connections, the open ones finish what they have."""
        return self.state.draining

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, let requests in flight finish (up to ``timeout``), then close everything."""
        if self.state.draining:
            await self._stopped.wait()
            return
        self.state.draining = True
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        if self._server is not None:
            self._server.close()
        if self._redirect is not None:
            self._redirect.close()
        for conn in list(self.state.connections):
            conn.drain()
        deadline = time.monotonic() + timeout
        while self.state.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.state.connections):
            conn.abort("shutdown timeout")
        if self._server is not None:
            await self._server.wait_closed()
        for task in list(self.state.tasks):
            task.cancel()
        if self._health is not None:
            await self._health.stop()
        if self.tls is not None:
            await self.tls.stop()
        await self.carriers.close()
        for group in self.pools.values():
            await group.close()
        if self._admin is not None:
            await self._admin.close()
        self._stopped.set()

    async def serve_until_signalled(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully; SIGHUP reloads TLS certificates."""
        await run_until_signalled(self)

    def reload(self) -> None:
        """SIGHUP: read the configuration again (with a ``config_source``) and apply it, and load
        the TLS certificates again. A configuration that cannot be read, or that changes what only
        a restart can (listeners, TLS files), is refused with a log line, and the one in service
        stays."""
        if self.config_source is not None:
            try:
                new, applied = self.config_source()
                self.reconfigure(new)
            except ConfigError as exc:
                self.metrics.config_reloaded(ok=False)
                log.error("configuration reload refused, the one in service stays: %s", exc)
            else:
                if applied is not None:
                    applied()  # what lives outside the server (logging), only once all of it is taken
                self.metrics.config_reloaded(ok=True)
                log.info(
                    "configuration reloaded: upstreams %s", ", ".join(u.name for u in self.group.upstreams)
                )
        if self.tls is not None:
            self.tls.reload("SIGHUP")

    _RESTART_ONLY = ("listen", "admin", "backlog", "reuse_port", "tls", "redirect_http", "redis")

    def reconfigure(self, new: ProxyConfig) -> None:
        """Serve with ``new`` from now on, keeping every open connection.

        Upstreams still listed keep their pooled connections (and their health); removed ones are
        out of rotation at once and their connections close as their requests finish. Engine
        settings apply to new connections, and to new requests where read per request (limits,
        timeouts); the access log format to the next line. What only a restart can change
        (:attr:`_RESTART_ONLY`) raises :class:`ConfigError` and nothing is applied.
        """
        changed = [name for name in self._RESTART_ONLY if getattr(new, name) != getattr(self.config, name)]
        if changed:
            raise ConfigError(f"{', '.join(changed)} changed: a restart is needed to apply that")
        # Everything is built first, and only then applied: a refusal leaves nothing changed.
        pipeline = _pipeline(new)  # ConfigError before anything changes
        before = self._all_upstreams()
        pools = self._build_pools(new, self.pools)
        kept = [u for group in pools.values() for u in group.upstreams if u in before]
        for u in kept:
            u.policy = new.policy
            u.max_response_header_bytes = new.settings.max_response_header_bytes
        now = {u for group in pools.values() for u in group.upstreams}
        for gone in before:
            if gone in now:
                continue
            gone.policy = replace(gone.policy, max_idle=0)  # released connections close
            for conn in list(gone.idle):
                conn.close()
            gone.on_health_change = None
            self.metrics.remove_upstream(gone.name)
        self.pools = pools
        self.group = pools["default"]
        self.pipeline = pipeline
        self.state.upstreams = self.group
        self.state.pools.clear()
        self.state.pools.update(pools)
        self.state.pools[None] = self.group
        self.state.pipeline = pipeline
        self.state.apply(new.settings)
        self.state.on_request_done = self._request_done if new.access_log is not None else None
        self.config = new
        if self._health is not None or new.health_check is not None:
            task = asyncio.ensure_future(self._restart_health())
            self.state.tasks.add(task)
            task.add_done_callback(self.state.tasks.discard)

    async def _restart_health(self) -> None:
        old, self._health = self._health, None
        if old is not None:
            await old.stop()
        if self.config.health_check is not None and not self.state.draining:
            self._health = HealthChecker(self._all_upstreams(), self.config.health_check)
            self._health.start()

    def _build_pools(self, config: ProxyConfig, old: dict[str, UpstreamGroup]) -> dict[str, UpstreamGroup]:
        """The named pools of ``config`` (``default`` from ``upstreams``), every one checked; an
        upstream of a pool that ``old`` had keeps its connections and health."""
        listed = [("default", config.upstreams), *config.pools]
        names = [name for name, _ in listed]
        for name in set(names):
            if names.count(name) > 1:
                raise ConfigError(f"pool {name!r} is configured twice")
        pools: dict[str, UpstreamGroup] = {}
        own = dict(config.pool_balance)
        for name, urls in listed:
            if not urls:
                continue
            previous = {u.name: u for u in old[name].upstreams} if name in old else {}
            members = []
            for url in urls:
                host, port = parse_upstream_url(url)
                same = previous.get(f"{host}:{port}")
                members.append(same if same is not None else self._new_upstream(url, config))
            balance = own.get(name, config.balance)
            pools[name] = UpstreamGroup(members, balance=balance, name=name)
        if "default" not in pools:
            if not pools and config.local_only:
                pools["default"] = UpstreamGroup([], name="default", allow_empty=True)
            elif not pools:
                raise ConfigError("no upstreams: give --upstream, or pools the stages forward to")
            pools["default"] = next(iter(pools.values()))  # a lone named pool is the default too
        used = {name for stage in config.stages for name in stage.pools}
        missing = sorted(used - set(pools))
        if missing:
            raise ConfigError(f"the stages use pools that are not configured: {', '.join(missing)}")
        return pools

    def _new_upstream(self, url: str, config: ProxyConfig) -> Upstream:
        u = Upstream(url, config.policy, max_response_header_bytes=config.settings.max_response_header_bytes)
        self._watch_upstream(u)
        return u

    def _watch_upstream(self, u: Upstream) -> None:
        u.on_health_change = self._health_changed
        self.metrics.set_upstream_health(u.name, True)

    # -- observation --------------------------------------------------------------------

    def _health_changed(self, upstream: Upstream, healthy: bool) -> None:
        self.metrics.set_upstream_health(upstream.name, healthy)
        if healthy:
            log.warning("upstream %s readmitted", upstream.name)
        else:
            log.warning(
                "upstream %s ejected for %gs after %d failures",
                upstream.name,
                upstream.policy.fail_timeout,
                upstream.fails,
            )

    def _all_upstreams(self) -> list[Upstream]:
        """Every upstream of every pool, once each, in the pools' order."""
        seen: dict[Upstream, None] = {}
        for group in self.pools.values():
            for u in group.upstreams:
                seen.setdefault(u, None)
        return list(seen)

    def _stages(self) -> tuple[Stage, ...]:
        """The stages in service now (after a reload, the new pipeline's), for /metrics."""
        return self.pipeline.stages if self.pipeline is not None else ()

    def _in_flight(self) -> list[tuple[str, int]]:
        seen: set[Upstream] = set()
        out = []
        for group in self.pools.values():
            for u in group.upstreams:
                if u not in seen:
                    seen.add(u)
                    out.append((u.name, u.outstanding))
        return out

    def _connection_change(self, delta: int) -> None:
        if delta > 0:
            self.metrics.connection_opened()
        else:
            self.metrics.connection_closed()

    def _request_done(self, ex: Exchange) -> None:
        """The access log's line for a finished request."""
        upstream = ex.upstream.name if ex.upstream is not None and ex.upstream_started else None
        fmt = self.config.access_log
        if fmt is not None and access_log.isEnabledFor(logging.INFO):
            request_line = ex.request_line or b"%s %s HTTP/%s" % (
                ex.method,
                ex.target,
                b"1.0" if ex.http10 else b"1.1",
            )
            user_agent = referer = b""
            for name, value in ex.request_headers:
                lower = name.lower()
                if lower == b"user-agent":
                    user_agent = value
                elif lower == b"referer":
                    referer = value
            if fmt == "json":
                access_log.info(
                    json.dumps(
                        {
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "remote_addr": ex.client.peer,
                            "request": request_line.decode("latin-1"),
                            "status": ex.status,
                            "body_bytes_sent": ex.sent_bytes,
                            "upstream": upstream,
                            "request_time": round(ex.request_time, 6),
                            "user_agent": user_agent.decode("latin-1"),
                        }
                    )
                )
            else:
                access_log.info(
                    '%s - - [%s] "%s" %d %d "%s" "%s"',
                    ex.client.peer,
                    time.strftime("%d/%b/%Y:%H:%M:%S %z"),
                    request_line.decode("latin-1"),
                    ex.status,
                    ex.sent_bytes,
                    referer.decode("latin-1") or "-",
                    user_agent.decode("latin-1") or "-",
                )
