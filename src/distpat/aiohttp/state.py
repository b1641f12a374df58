"""Where the aiohttp driver keeps things: typed application and request keys, and the
``cleanup_ctx`` that opens and closes the clients it uses.

Application state (:class:`aiohttp.web.AppKey`, looked up through ``request.config_dict``, so
a sub-application sees its parent's):

======================  ===============================================================
:data:`CLIENT_SESSION`  the :class:`aiohttp.ClientSession` forwarded requests and
                        sub-requests go through (no cookie jar, no decompression)
:data:`REDIS_CLIENT`    the ``redis.asyncio.Redis`` client of ``redis_url`` (absent without)
:data:`UPSTREAM_POOLS`  the :class:`~distpat.aiohttp.pools.UpstreamPools` :func:`proxy_handler`
                        forwards to
======================  ===============================================================

Request state (:class:`aiohttp.web.RequestKey`), set before the application's handler runs:

======================  ===============================================================
:data:`FORWARD`         the merged :class:`~distpat.core.stage.Forward` the stages decided
:data:`NOTES`           the stages' :attr:`Request.notes <distpat.core.stage.Request.notes>`
                        (a split's variant under the split stage's name)
:data:`STAGE_REQUEST`   the :class:`~distpat.core.stage.Request` view the stages saw
======================  ===============================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from distpat.aiohttp.pools import UpstreamPools
from distpat.core.stage import Forward, Request

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "CLIENT_SESSION",
    "FORWARD",
    "NOTES",
    "REDIS_CLIENT",
    "STAGE_REQUEST",
    "UPSTREAM_POOLS",
    "client_context",
]

log = logging.getLogger("distpat.aiohttp")

CLIENT_SESSION = web.AppKey("client_session", aiohttp.ClientSession)
REDIS_CLIENT: web.AppKey[Redis] = web.AppKey("redis_client")
UPSTREAM_POOLS = web.AppKey("upstream_pools", UpstreamPools)

FORWARD = web.RequestKey("forward", Forward)
NOTES: web.RequestKey[dict[str, object]] = web.RequestKey("notes")
STAGE_REQUEST = web.RequestKey("stage_request", Request)

CleanupContext = Callable[[web.Application], AsyncIterator[None]]

#: Seconds the cleanup waits for fire-and-forget effects (Redis calls, background Fetches) still
#: running, before cancelling them.
DRAIN_TIMEOUT = 5.0


def redis_client(url: str) -> Redis:
    """A ``redis.asyncio`` client for ``url`` that hands replies back as the server sent them
    (bytes, ints, None, lists: no per-command conversions), for :class:`~distpat.core.stage.CallResult`."""
    try:
        import redis.asyncio
    except ImportError as exc:  # an optional dependency
        raise ImportError("redis_url needs the redis package (pip install 'distpat[redis]')") from exc
    client = redis.asyncio.Redis.from_url(url, decode_responses=False, protocol=2)
    client.response_callbacks.clear()
    return client


def client_context(
    *,
    pools: UpstreamPools | None = None,
    redis_url: str | None = None,
    connections: int = 100,
    tasks: set[asyncio.Task[None]] | None = None,
) -> CleanupContext:
    """A function for ``app.cleanup_ctx``: on startup it opens a :class:`aiohttp.ClientSession`
    (at most ``connections`` connections, cookies neither kept nor sent, bodies not decoded: a
    proxy relays them as they are) and, with ``redis_url``, a Redis client, and stores them (and
    ``pools``) under the keys above; on cleanup it waits up to :data:`DRAIN_TIMEOUT` seconds for
    the ``tasks`` still running (fire-and-forget effects), cancels the rest, and closes both clients.
    """

    async def context(app: web.Application) -> AsyncIterator[None]:
        if pools is not None:
            app[UPSTREAM_POOLS] = pools
        redis = redis_client(redis_url) if redis_url else None
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        app[CLIENT_SESSION] = session
        if redis is not None:
            app[REDIS_CLIENT] = redis
        try:
            yield
        finally:
            if tasks:
                _done, pending = await asyncio.wait(list(tasks), timeout=DRAIN_TIMEOUT)
                for task in pending:
                    task.cancel()
                if pending:
                    log.warning(
                        "%d background effects (Redis calls, fetches) cancelled at cleanup", len(pending)
                    )
                    await asyncio.wait(pending, timeout=DRAIN_TIMEOUT)
            await session.close()
            if redis is not None:
                with contextlib.suppress(Exception):
                    await redis.aclose()

    return context
