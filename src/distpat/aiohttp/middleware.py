"""The pipeline as an aiohttp middleware: the same stage objects :mod:`distpat.net` drives.

::

    app = web.Application()
    setup(app, stages=[MyStage()], pools={"api": ["http://127.0.0.1:8081"]})

:func:`pipeline_middleware` makes the middleware; :func:`setup` also registers what it needs
around it (its ``cleanup_ctx``, which opens and closes the client session and the Redis client,
and the ``on_response_prepare`` signal that lets stages amend responses a handler streams
itself). See ``docs/aiohttp.md``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from distpat.aiohttp.exchange import EXCHANGE, Exchange, Handler
from distpat.aiohttp.flights import Flights
from distpat.aiohttp.pools import UpstreamPools
from distpat.aiohttp.proxy import ProxySettings
from distpat.aiohttp.redis_calls import call_redis
from distpat.aiohttp.state import client_context
from distpat.aiohttp.subrequests import fetch
from distpat.core.pipeline import Pipeline, Run, StageError
from distpat.core.stage import Call, Fetch, Forward, Request, Stage, SubResult

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["PipelineMiddleware", "pipeline_middleware", "setup"]

log = logging.getLogger("distpat.aiohttp")


class PipelineMiddleware:
    """An aiohttp middleware (``async (request, handler) -> response``) that passes every
    request through a :class:`~distpat.core.pipeline.Pipeline` and carries out its effects.

    It owns what lives as long as the application: the pools' turns and in-flight counts, the
    keyed flights of :class:`~distpat.core.stage.Join`, and the fire-and-forget effects of
    ``on_done`` / ``on_body`` still running (:attr:`tasks`): Redis calls, and background
    Fetches (each bounded by its deadline, its results handed to the stage's ``then``, whose
    return is ignored).

    ``handler_pools`` are pool names that mean "the application's handler": a Forward to one
    of them continues into the handler, as a Forward to no pool does (a router that only
    decides, :func:`~distpat.aiohttp.split_middleware` without pools). With ``publish`` False
    the request keys (:data:`~distpat.aiohttp.FORWARD`, :data:`~distpat.aiohttp.NOTES`,
    :data:`~distpat.aiohttp.STAGE_REQUEST`) are not stored: a pipeline run inside a handler
    (:func:`~distpat.aiohttp.shard_handler`) leaves those of the middleware around it alone.

    ``handler_upstream`` is the upstream name the handler's responses carry for the stages
    (:attr:`Response.upstream <distpat.core.stage.Response.upstream>` in ``on_response``,
    :attr:`Outcome.upstream <distpat.core.stage.Outcome.upstream>` in ``on_done``); None, the
    default, leaves it None as for a local answer. A cache stage stores, and invalidates on,
    only what an upstream answered, so :func:`~distpat.aiohttp.cache_middleware` names the
    handler ``"application"``."""

    __middleware_version__ = 1  # aiohttp's mark of a middleware taking (request, handler)

    __slots__ = (
        "pipeline",
        "pools",
        "settings",
        "flights",
        "tasks",
        "cleanup_ctx",
        "handler_pools",
        "publish",
        "handler_upstream",
        "_warned",
    )

    def __init__(
        self,
        pipeline: Pipeline,
        pools: UpstreamPools,
        *,
        redis_url: str | None = None,
        settings: ProxySettings | None = None,
        connections: int = 100,
        handler_pools: Iterable[str] = (),
        publish: bool = True,
        handler_upstream: str | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.pools = pools
        self.handler_pools = frozenset(handler_pools)
        self.publish = publish
        self.handler_upstream = handler_upstream
        self.settings = settings if settings is not None else ProxySettings()
        self.flights = Flights()
        self.tasks: set[asyncio.Task[None]] = set()
        self.cleanup_ctx = client_context(
            pools=pools, redis_url=redis_url, connections=connections, tasks=self.tasks
        )
        """For ``app.cleanup_ctx``: opens the client session (and the Redis client of
        ``redis_url``) at startup, waits for :attr:`tasks` and closes both at cleanup."""
        self._warned: set[str] = set()

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        return await Exchange(self, request).serve(handler)

    def decided(self, request: web.Request, view: Request, forward: Forward) -> None:
        """Called once the stages decided to forward ``request`` (``view`` is what they saw,
        ``forward`` the merged decision), before the handler or the pool gets it: a subclass
        stores what the application should see under a request key of its own."""

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """For ``app.on_response_prepare``: a response the handler prepares itself (a stream)
        passes the stages' ``on_response`` here, just before its head is sent."""
        exchange = request.get(EXCHANGE)
        if exchange is not None and exchange.driver is self and not exchange.responded:
            exchange.amend_prepared(response)

    def schedule(
        self,
        run: Run,
        effects: Iterable[Call | Fetch],
        *,
        redis: Redis | None,
        session: aiohttp.ClientSession | None,
    ) -> None:
        """Carry out fire-and-forget effects (from ``on_done`` / ``on_body``) as tasks kept in
        :attr:`tasks`: a Call through ``redis``, a Fetch through ``session``; a Fetch's results
        go to :meth:`Run.landed <distpat.core.pipeline.Run.landed>`. A Fetch that can go nowhere
        lands at once, without a task: one whose every sub-request names a pool this driver does
        not have (``unknown_pool``: the default pool, None, is the application itself), or any
        without a client session (``no_session``, with a warning the first time), so its stage
        still hears how it ended."""
        for effect in effects:
            if isinstance(effect, Fetch):
                if all(self.pools.get(sub.pool) is None for sub in effect.requests):
                    self._land(run, effect, "unknown_pool")
                    continue
                if session is None:
                    self.warn_once("fetch", "a stage's background Fetch not sent: no client session "
                                   "(add the middleware's cleanup_ctx to the application)")  # fmt: skip
                    self._land(run, effect, "no_session")
                    continue
                work: Coroutine[object, object, None] = self._fetch(run, effect, session)
            else:
                work = self._fire(effect, redis)
            task = asyncio.ensure_future(work)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _fire(self, call: Call, client: Redis | None) -> None:
        result = await call_redis(client, call)
        if result.error is not None:
            log.warning("a Redis call from a stage failed: %s: %s", _shown(call.command), result.error)

    async def _fetch(self, run: Run, effect: Fetch, session: aiohttp.ClientSession) -> None:
        results = await fetch(session, self.pools, effect, connect_timeout=self.settings.connect_timeout)
        self._landed(run, effect, results)

    def _land(self, run: Run, effect: Fetch, error: str) -> None:
        self._landed(run, effect, tuple(SubResult(sub, error=error) for sub in effect.requests))

    def _landed(self, run: Run, effect: Fetch, results: tuple[SubResult, ...]) -> None:
        try:
            run.landed(effect, results)
        except StageError as exc:
            log.error("%s", exc, exc_info=exc.__cause__)

    def warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s", message)

    def __repr__(self) -> str:
        return f"<PipelineMiddleware {self.pipeline!r} {self.pools!r}>"


def _shown(command: tuple[bytes, ...]) -> str:
    return " ".join(part[:40].decode("utf-8", "replace") for part in command[:4])


def pipeline_middleware(
    *,
    stages: Sequence[Stage],
    pools: Mapping[str, Sequence[str]] | None = None,
    redis_url: str | None = None,
    settings: ProxySettings | None = None,
    connections: int = 100,
    handler_upstream: str | None = None,
) -> PipelineMiddleware:
    """A middleware running ``stages`` for every request of the application it is added to.

    ``pools`` names the upstream pools a stage may forward to (``{"api": ["http://10.0.0.5:8080",
    ...]}``); a Forward to no pool continues into the application's handler. ``redis_url`` is
    where a stage's Calls go. ``settings`` holds the timeouts and the Via entry of forwarded
    requests; ``connections`` bounds the client session's connections; ``handler_upstream``
    names the handler as the upstream of its responses (see :class:`PipelineMiddleware`). Add
    :attr:`PipelineMiddleware.cleanup_ctx` to the application's ``cleanup_ctx`` (or use
    :func:`setup`). Raises :class:`~distpat.errors.ConfigError` for a stage that is not a
    :class:`~distpat.core.stage.Stage`, a repeated stage name, or a bad upstream URL."""
    return PipelineMiddleware(
        Pipeline(stages),
        UpstreamPools(pools),
        redis_url=redis_url,
        settings=settings,
        connections=connections,
        handler_upstream=handler_upstream,
    )


def setup(
    app: web.Application,
    *,
    stages: Sequence[Stage] = (),
    pools: Mapping[str, Sequence[str]] | None = None,
    redis_url: str | None = None,
    settings: ProxySettings | None = None,
    connections: int = 100,
    handler_upstream: str | None = None,
) -> PipelineMiddleware:
    """Make a :func:`pipeline_middleware` and add it to ``app`` with what it needs: the
    middleware itself (after those already there), its ``cleanup_ctx`` and its
    ``on_response_prepare`` signal. Call it before the application starts."""
    middleware = pipeline_middleware(
        stages=stages,
        pools=pools,
        redis_url=redis_url,
        settings=settings,
        connections=connections,
        handler_upstream=handler_upstream,
    )
    app.middlewares.append(middleware)
    app.cleanup_ctx.append(middleware.cleanup_ctx)
    app.on_response_prepare.append(middleware.on_response_prepare)
    return middleware
