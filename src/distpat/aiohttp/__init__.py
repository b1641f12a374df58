"""distpat's stages inside an aiohttp application: a second driver of the same pipeline.

The stages (:mod:`distpat.core.stage`) are pure; :mod:`distpat.net` drives them in the
standalone engine, this package in an aiohttp application, as a middleware::

    from aiohttp import web
    import distpat.aiohttp

    app = web.Application()
    distpat.aiohttp.setup(app, stages=[...], pools={"api": ["http://127.0.0.1:8081"]})

:func:`split_middleware` and :func:`shard_handler` are the split and shard routers of
``distpat split`` and ``distpat shard`` in this form, :func:`ratelimit_middleware` the rate
limiter of ``distpat ratelimit``, :func:`cache_middleware` the RFC 9111 shared cache of
``distpat cache`` with the application's handler as its origin. See ``docs/aiohttp.md`` for the keys,
the outcome of each failure and the limits.
"""

from distpat.aiohttp.cache import CacheMiddleware, cache_middleware
from distpat.aiohttp.flights import Flights
from distpat.aiohttp.middleware import PipelineMiddleware, pipeline_middleware, setup
from distpat.aiohttp.pools import Upstream, UpstreamPool, UpstreamPools
from distpat.aiohttp.proxy import ProxySettings, proxy_handler
from distpat.aiohttp.ratelimit import RateLimitMiddleware, ratelimit_middleware
from distpat.aiohttp.routers import SHARD_POOL, VARIANT, SplitMiddleware, shard_handler, split_middleware
from distpat.aiohttp.scatter import scatter_handler
from distpat.aiohttp.state import (
    CLIENT_SESSION,
    FORWARD,
    NOTES,
    REDIS_CLIENT,
    STAGE_REQUEST,
    UPSTREAM_POOLS,
    client_context,
)

__all__ = [
    "CLIENT_SESSION",
    "FORWARD",
    "NOTES",
    "REDIS_CLIENT",
    "STAGE_REQUEST",
    "UPSTREAM_POOLS",
    "SHARD_POOL",
    "VARIANT",
    "CacheMiddleware",
    "Flights",
    "PipelineMiddleware",
    "ProxySettings",
    "RateLimitMiddleware",
    "SplitMiddleware",
    "Upstream",
    "UpstreamPool",
    "UpstreamPools",
    "cache_middleware",
    "client_context",
    "pipeline_middleware",
    "proxy_handler",
    "scatter_handler",
    "ratelimit_middleware",
    "setup",
    "shard_handler",
    "split_middleware",
]
