"""The Redis sharding ambassador: one listener per twemproxy pool, keys routed by the pool's ring.

The parts, each in its own module: :mod:`~distpat.net.redis_client` (a client connection),
:mod:`~distpat.net.redis_server` (servers and their connections), :mod:`~distpat.net.redis_pool`
(routing), :mod:`~distpat.net.redis_fanout` (split commands), :mod:`~distpat.net.redis_tx` (MULTI/EXEC and
WATCH, on connections of their own), :mod:`~distpat.core.redis_local` (commands answered here),
:mod:`~distpat.net.redis_metrics` (stats and metrics), :mod:`~distpat.net.redis_settings`. This module
holds the service over every pool of a configuration, and the names a user imports.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import replace

from distpat.core.redis_merge import merge_replies
from distpat.core.twemproxy_pool import TwemproxyPool
from distpat.net.admin import AdminServer, create_admin_app
from distpat.net.redis_metrics import ShardMetrics, StatsProtocol, stats_document
from distpat.net.redis_pool import ShardPool
from distpat.net.redis_settings import ShardSettings

__all__ = ["ShardMetrics", "ShardPool", "ShardService", "ShardSettings", "merge_replies", "stats_document"]

log = logging.getLogger("distpat.redis")


class ShardService:
    """Every pool of one configuration, the stats listener, reload and shutdown.

    ``load`` returns the pools to serve (it re-reads the configuration file on
    SIGHUP); ``listen`` overrides the listen address of a single pool.
    """

    def __init__(
        self,
        load: Callable[[], list[TwemproxyPool]],
        *,
        settings: ShardSettings | None = None,
        listen: tuple[str, int] | None = None,
        stats: tuple[str, int] | None = None,
        admin: tuple[str, int] | None = None,
    ) -> None:
        self.load = load
        self.settings = settings or ShardSettings()
        self.listen = listen
        self.stats_address = stats
        self.pools: list[ShardPool] = [ShardPool(p, self.settings) for p in load()]
        if listen is not None and len(self.pools) != 1:
            raise ValueError("--listen needs exactly one pool (choose it with --pool)")
        self.started = time.time()
        self._stats_server: asyncio.base_events.Server | None = None
        self.admin_address = admin
        self.metrics = ShardMetrics(self)
        self.draining = False
        self._admin: AdminServer | None = None

    async def start(self) -> None:
        for pool in self.pools:
            if self.listen is not None:
                await pool.start(*self.listen)
            else:
                await pool.start()
        if self.stats_address is not None:
            loop = asyncio.get_running_loop()
            host, port = self.stats_address
            self._stats_server = await loop.create_server(lambda: StatsProtocol(self), host, port)
        if self.admin_address is not None:
            app = create_admin_app(metrics=self.metrics, ready=self.ready, draining=lambda: self.draining)
            self._admin = AdminServer(app)
            await self._admin.start(*self.admin_address)

    def ready(self) -> bool:
        """Ready while every pool has a server in its ring (not all of them ejected)."""
        return all(any(not s.ejected_until for s in p.servers.values()) for p in self.pools)

    @property
    def admin_port(self) -> int | None:
        return self._admin.port if self._admin is not None else None

    @property
    def stats_port(self) -> int | None:
        if self._stats_server is None or not self._stats_server.sockets:
            return None
        return int(self._stats_server.sockets[0].getsockname()[1])

    def stats(self) -> bytes:
        return stats_document(self.pools, self.started, socket.gethostname())

    def reload(self) -> None:
        """SIGHUP: read the configuration again and take each pool's new server list; clients stay."""
        try:
            new = {p.name: p for p in self.load()}
        except Exception as exc:  # a broken file must not stop the service
            log.error("reload refused, the server lists in service stay: %s", exc)
            return
        for pool in self.pools:
            fresh = new.get(pool.name)
            if fresh is None:
                log.warning(
                    "reload: pool %s is gone from the file; it keeps its servers until restart", pool.name
                )
                continue
            if fresh.listen != pool.pool.listen and self.listen is None:
                log.warning("reload: pool %s: a new listen address needs a restart", pool.name)
            pool.reload(replace(fresh, listen=pool.pool.listen))

    async def shutdown(self, timeout: float | None = None) -> None:
        self.draining = True
        if self._stats_server is not None:
            self._stats_server.close()
        await asyncio.gather(*(pool.shutdown(timeout) for pool in self.pools))
        if self._admin is not None:
            await self._admin.close()

    async def serve_until_signalled(self) -> None:
        from distpat.net.proxy import run_until_signalled

        await run_until_signalled(self, logger=log)
