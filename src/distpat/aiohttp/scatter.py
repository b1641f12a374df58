"""The scatter/gather root inside an aiohttp application: the stage of ``distpat scatter``.

:func:`scatter_handler` is a request handler that runs a
:class:`~distpat.core.scatter_stage.ScatterStage` (the book's chapter 7): the request goes to one
replica of every shard at once through the application's client session, hedged and merged as
``distpat scatter`` does, and is answered with the same JSON (``hits``, ``shards``, ``partial``,
``took_ms``) and the same statuses. See ``docs/scatter-gather.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from distpat.aiohttp.exchange import Handler
from distpat.aiohttp.middleware import PipelineMiddleware
from distpat.aiohttp.pools import UpstreamPools, parse_upstream
from distpat.aiohttp.proxy import ProxySettings
from distpat.core.pipeline import Pipeline
from distpat.core.scatter_stage import ScatterStage
from distpat.errors import ConfigError

__all__ = ["scatter_handler"]


async def _no_handler(request: web.Request) -> web.StreamResponse:
    raise web.HTTPInternalServerError(text="the scatter stage answers every request itself")


def scatter_handler(
    *,
    leaves: Sequence[Sequence[str] | str],
    deadline: float = 1.0,
    hedge_after: float | None = None,
    hedge_percentile: int | None = None,
    hedge_max_percent: float = 5.0,
    need: str | int = "any",
    merge: str = "search",
    path: str | None = "/search",
    settings: ProxySettings | None = None,
    name: str = "scatter",
) -> Handler:
    """A handler fanning each request out to ``leaves`` (one entry per shard: its replicas' URLs in
    preference order, or one URL) as ``distpat scatter --leaf`` does; the other keywords are the
    command's options (``deadline`` and ``hedge_after`` in seconds, ``hedge_percentile`` for
    ``pNN``). Raises :class:`~distpat.errors.ConfigError` for a bad URL or option."""
    if isinstance(leaves, str) or not leaves:
        raise ConfigError("scatter_handler: give leaves, one entry per shard (a URL, or its replicas' URLs)")
    pools: dict[str, list[str]] = {}
    shards: list[tuple[str, list[str]]] = []
    for i, shard in enumerate(leaves):
        urls = [shard] if isinstance(shard, str) else list(shard)
        pool = f"shard-{i}"
        pools[pool] = urls
        shards.append((pool, [parse_upstream(url).name for url in urls]))
    try:
        stage = ScatterStage(
            shards,
            deadline=deadline,
            hedge_after=hedge_after,
            hedge_percentile=hedge_percentile,
            hedge_max_percent=hedge_max_percent,
            need=need,
            mode=merge,
            path=None if path is None else path.encode(),
            name=name,
        )
    except ConfigError as exc:
        raise ConfigError(f"scatter_handler: {exc}") from None
    driver = PipelineMiddleware(Pipeline([stage]), UpstreamPools(pools), settings=settings, publish=False)

    async def handler(request: web.Request) -> web.StreamResponse:
        return await driver(request, _no_handler)

    return handler
