"""distpat.aiohttp.cache_middleware: distpat cache's RFC 9111 shared cache in an aiohttp application,
the handler as its origin, served by aiohttp's TestServer on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from distpat.aiohttp import CacheMiddleware, cache_middleware, setup
from distpat.config.units import parse_size
from distpat.core.stage import Fetch, Outcome, Request, Stage, SubRequest, Tick
from distpat.errors import ConfigError
from tests.test_aiohttp_driver import python_blocks

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
Client = TestClient[web.Request, web.Application]


class Origin:
    """Handlers that count their calls by path."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.release = asyncio.Event()
        self.version = 1

    def _called(self, request: web.Request) -> int:
        self.calls[request.path] = self.calls.get(request.path, 0) + 1
        return self.calls[request.path]

    async def page(self, request: web.Request) -> web.StreamResponse:
        n = self._called(request)
        etag = f'"v{self.version}"'
        if request.headers.get("If-None-Match") == etag:  # a validation the handler answers
            return web.Response(status=304, headers={"ETag": etag, "Cache-Control": "max-age=60"})
        return web.Response(
            text=f"page {n}", headers={"Cache-Control": "max-age=60", "ETag": etag, "X-Call": str(n)}
        )

    async def private(self, request: web.Request) -> web.StreamResponse:
        n = self._called(request)
        return web.Response(text=f"yours {n}", headers={"Cache-Control": "private, max-age=60"})

    async def slow(self, request: web.Request) -> web.StreamResponse:
        n = self._called(request)
        await asyncio.wait_for(self.release.wait(), 10)
        return web.json_response({"call": n}, headers={"Cache-Control": "max-age=60"})

    async def update(self, request: web.Request) -> web.StreamResponse:
        self._called(request)
        self.version += 1
        return web.Response(status=204)

    async def swr(self, request: web.Request) -> web.StreamResponse:
        n = self._called(request)
        return web.Response(
            text=f"swr {n}", headers={"Cache-Control": "max-age=0, stale-while-revalidate=600"}
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self._called(request)
        response = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
        await response.prepare(request)
        await response.write(b"streamed")
        await response.write_eof()
        return response

    async def empty(self, request: web.Request) -> web.StreamResponse:
        self._called(request)
        return web.Response(status=200, headers={"Cache-Control": "max-age=60"})

    async def broken(self, request: web.Request) -> web.StreamResponse:
        n = self._called(request)
        if n > 1:
            raise web.HTTPServiceUnavailable()
        return web.Response(text="good", headers={"Cache-Control": "max-age=0, stale-if-error=600"})


def application(cache: CacheMiddleware, origin: Origin) -> web.Application:
    app = web.Application(middlewares=[cache])
    app.on_response_prepare.append(cache.on_response_prepare)
    app.router.add_get("/page", origin.page)
    app.router.add_post("/page", origin.update)
    app.router.add_get("/private", origin.private)
    app.router.add_get("/slow", origin.slow)
    app.router.add_get("/swr", origin.swr)
    app.router.add_get("/stream", origin.stream)
    app.router.add_get("/empty", origin.empty)
    app.router.add_get("/broken", origin.broken)
    return app


@contextlib.asynccontextmanager
async def serve(
    cache: CacheMiddleware | None = None,
) -> AsyncIterator[tuple[Client, Origin, CacheMiddleware]]:
    cache = cache if cache is not None else cache_middleware(purge_from=["127.0.0.1"])
    origin = Origin()
    async with TestClient(TestServer(application(cache, origin), host=HOST)) as client:
        yield client, origin, cache
        # every background effect has ended (none is left for the cleanup to cancel)
        assert not cache.tasks


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def key(client: Client, path: str) -> bytes:
    return f"{HOST}:{client.port}{path}".encode()


# -- hits and misses -------------------------------------------------------------------------------


async def test_a_second_get_is_answered_from_the_store_without_the_handler() -> None:
    async with serve() as (client, origin, cache):
        first = await client.get("/page")
        assert (first.status, await first.text()) == (200, "page 1")
        assert first.headers["Cache-Status"] == "distpat; fwd=uri-miss; stored"
        assert "Age" not in first.headers
        second = await client.get("/page")
        assert (second.status, await second.text()) == (200, "page 1")
        assert second.headers["X-Call"] == "1"  # the stored fields
        assert second.headers["ETag"] == '"v1"'
        assert second.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert second.headers["Age"].isdigit()
        status = second.headers["Cache-Status"]
        assert status.startswith("distpat; hit; ttl=")
        assert 0 < int(status.rpartition("=")[2]) <= 60
        head = await client.head("/page")  # a HEAD from the stored GET
        assert head.status == 200
        assert head.headers["Cache-Status"].startswith("distpat; hit")
    assert origin.calls == {"/page": 1}
    assert cache.stage.counts == {"miss": 1, "hit": 2}
    assert len(cache.stage.store) == 1


async def test_a_conditional_request_is_answered_304_from_the_store() -> None:
    async with serve() as (client, origin, _):
        await (await client.get("/page")).read()
        response = await client.get("/page", headers={"If-None-Match": '"v1"'})
        assert response.status == 304
        assert await response.read() == b""
        assert response.headers["ETag"] == '"v1"'
        assert response.headers["Cache-Status"] == "distpat; hit"
        other = await client.get("/page", headers={"If-None-Match": '"v0"'})
        assert (other.status, await other.text()) == (200, "page 1")
    assert origin.calls == {"/page": 1}


async def test_no_cache_validates_with_the_handler_and_its_304_refreshes_the_store() -> None:
    async with serve() as (client, origin, _):
        await (await client.get("/page")).read()
        response = await client.get("/page", headers={"Cache-Control": "no-cache"})
        assert (response.status, await response.text()) == (200, "page 1")  # from the store, refreshed
        assert response.headers["Cache-Status"] == "distpat; fwd=stale; fwd-status=304"
    assert origin.calls == {"/page": 2}  # the handler saw the stored validator and answered 304


async def test_a_post_invalidates_the_url() -> None:
    async with serve() as (client, origin, cache):
        await (await client.get("/page")).read()
        posted = await client.post("/page", data=b"new")
        assert posted.status == 204
        assert posted.headers["Cache-Status"] == "distpat; fwd=bypass"
        again = await client.get("/page")
        assert (await again.text(), again.headers["ETag"]) == ("page 3", '"v2"')  # the POST counted 2
        assert again.headers["Cache-Status"] == "distpat; fwd=uri-miss; stored"
    assert origin.calls == {"/page": 3}
    assert cache.stage.counts["invalidation"] == 1


async def test_a_private_response_is_not_stored() -> None:
    async with serve() as (client, origin, cache):
        bodies = []
        for _ in range(2):
            response = await client.get("/private")
            bodies.append(await response.text())
            assert response.headers["Cache-Status"] == "distpat; fwd=uri-miss; detail=private"
    assert bodies == ["yours 1", "yours 2"]
    assert origin.calls == {"/private": 2}
    assert len(cache.stage.store) == 0


async def test_concurrent_misses_run_a_slow_handler_once() -> None:
    async with serve() as (client, origin, cache):
        requests = [asyncio.ensure_future(client.get("/slow")) for _ in range(10)]
        await until(lambda: cache.flights.waiting(key(client, "/slow")) == 9, "nine waiters")
        assert origin.calls == {"/slow": 1}
        origin.release.set()
        responses = await asyncio.gather(*requests)
        bodies = [await r.json() for r in responses]
        statuses = sorted(r.headers["Cache-Status"] for r in responses)
    assert bodies == [{"call": 1}] * 10
    assert origin.calls == {"/slow": 1}
    assert statuses[0] == "distpat; fwd=uri-miss; stored"
    assert all(s.startswith("distpat; hit; ttl=") and s.endswith("; collapsed") for s in statuses[1:])
    assert cache.stage.counts["coalesced"] == 9


async def test_purge_from_an_allowed_address_removes_the_url() -> None:
    async with serve() as (client, origin, cache):
        await (await client.get("/page")).read()
        purged = await client.request("PURGE", "/page")
        assert purged.status == 200
        assert json.loads(await purged.text()) == {"purged": 1}
        assert len(cache.stage.store) == 0
        again = await client.get("/page")
        assert again.headers["Cache-Status"] == "distpat; fwd=uri-miss; stored"
        await (await client.get("/empty")).read()
        await (await client.get("/page")).read()
        by_prefix = await client.request("PURGE", "/", headers={"X-Purge": "prefix"})
        assert json.loads(await by_prefix.text()) == {"purged": 2}
    assert origin.calls == {"/page": 2, "/empty": 1}
    assert cache.stage.counts["purge"] == 2


async def test_purge_is_refused_without_purge_from() -> None:
    async with serve(cache_middleware()) as (client, _, cache):
        await (await client.get("/page")).read()
        refused = await client.request("PURGE", "/page")
        assert refused.status == 405
        assert "Allow" in refused.headers
        assert len(cache.stage.store) == 1
    assert cache.stage.counts["purge_refused"] == 1


# -- what the driver passes through ----------------------------------------------------------------


async def test_an_empty_body_is_stored_and_a_stream_passes_through_uncached() -> None:
    async with serve() as (client, origin, cache):
        for _ in range(2):
            response = await client.get("/empty")
            assert (response.status, await response.read()) == (200, b"")
        assert response.headers["Cache-Status"].startswith("distpat; hit")
        for _ in range(2):
            response = await client.get("/stream")
            assert (response.status, await response.read()) == (200, b"streamed")
            assert "Cache-Status" in response.headers  # through on_response_prepare
    assert origin.calls == {"/empty": 1, "/stream": 2}
    assert len(cache.stage.store) == 1


async def test_stale_while_revalidate_answers_stale_and_its_refresh_goes_nowhere() -> None:
    async with serve() as (client, origin, cache):
        texts = [await (await client.get("/swr")).text() for _ in range(3)]
        assert not cache.tasks  # the refresh to the default pool landed at once: nothing was sent
    assert texts == ["swr 1"] * 3
    assert origin.calls == {"/swr": 1}
    assert cache.stage.counts == {"miss": 1, "stale": 2}
    assert not cache.stage.refreshing  # the stage heard how each refresh ended


async def test_a_handler_5xx_is_answered_with_the_stale_copy_where_stale_if_error_allows() -> None:
    async with serve() as (client, origin, cache):
        await (await client.get("/broken")).read()
        response = await client.get("/broken")
        assert (response.status, await response.text()) == (200, "good")
        assert response.headers["Cache-Status"] == "distpat; fwd=stale; fwd-status=503; detail=stale-if-error"
    assert origin.calls == {"/broken": 2}
    assert cache.stage.counts["stale_if_error"] == 1


# -- the options -----------------------------------------------------------------------------------


def test_sizes_are_read_as_the_command_reads_them() -> None:
    for text in ("65536", "512k", "64m", "64M", "1g"):
        assert cache_middleware(max_bytes=text, max_object_bytes=1).stage.store.max_bytes == parse_size(text)
    cache = cache_middleware(max_bytes=1 << 20, max_object_bytes="4k", heuristic_freshness=True)
    assert (cache.stage.store.max_object_bytes, cache.stage.capture) == (4096, 4096)
    assert cache.stage.policy.heuristic
    assert cache.handler_upstream == "application"
    assert repr(cache).startswith("<CacheMiddleware <CacheStage 'cache'")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_bytes": "64 MB"}, "max_bytes must be a number of bytes or a size such as 512k"),
        ({"max_bytes": 0}, "max_bytes must be at least 1 byte"),
        ({"max_bytes": 1.5}, "max_bytes must be a number of bytes"),
        ({"max_object_bytes": True}, "max_object_bytes must be a number of bytes"),
        ({"max_bytes": "1m", "max_object_bytes": "2m"}, r"max_object_bytes \(2097152\) exceeds max_bytes"),
        ({"purge_from": ["10.0.0.1/8"]}, "purge_from: address"),
        ({"purge_from": ["nowhere"]}, "purge_from: address"),
        ({"heuristic_freshness": "on"}, "heuristic_freshness must be true or false"),
        ({"coalesce_timeout": -1}, "coalesce_timeout must be 0 or more seconds"),
        ({"coalesce_timeout": "5s"}, "coalesce_timeout must be a number of seconds"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_a_bad_option_is_refused_naming_the_keyword(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cache_middleware(**kwargs)


def test_purge_from_takes_one_address_or_several() -> None:
    assert cache_middleware(purge_from="127.0.0.1").stage.purge_from is not None
    assert cache_middleware(purge_from=["10.0.0.0/8", "::1"]).stage.purge_from is not None
    assert cache_middleware().stage.purge_from is None


# -- the page --------------------------------------------------------------------------------------


async def test_the_cache_code_of_docs_aiohttp_md_runs() -> None:
    """The page's python blocks run in one namespace; ``build_cached_app()`` is served."""
    namespace: dict[str, Any] = {"__name__": "docs_aiohttp_cache"}
    for block in python_blocks(ROOT / "docs" / "aiohttp.md"):
        exec(compile(block, "docs/aiohttp.md", "exec"), namespace)
    app = namespace["build_cached_app"]()
    async with TestClient(TestServer(app, host=HOST)) as client:
        first, second = [await client.get("/article") for _ in range(2)]
        assert [await first.text(), await second.text()] == ["an article"] * 2
        assert second.headers["Cache-Status"].startswith("distpat; hit; ttl=")
        purged = await client.request("PURGE", "/article")
        assert json.loads(await purged.text()) == {"purged": 1}


# -- the driver's part -----------------------------------------------------------------------------


class _Refresher(Stage):
    """Asks for a background Fetch to ``pool`` after every request and records what came back."""

    def __init__(self, pool: str | None) -> None:
        self.name = f"refresher-{pool}"
        self.pool = pool
        self.results: list[tuple[str | None, ...]] = []
        self.outcomes: list[str | None] = []

    def on_done(self, request: Request, outcome: Outcome, tick: Tick) -> Fetch | None:
        self.outcomes.append(outcome.upstream)
        return Fetch(
            (SubRequest(self.pool, b"/"),),
            lambda results: self.results.append(tuple(r.error for r in results)),
        )


async def test_a_background_fetch_that_can_go_nowhere_lands_at_once(caplog: pytest.LogCaptureFixture) -> None:
    default, named = _Refresher(None), _Refresher("api")
    app = web.Application()
    # no cleanup_ctx: no client session
    setup(app, stages=[default, named], pools={"api": [f"http://{HOST}:9"]}, handler_upstream="app")
    app.cleanup_ctx.clear()
    app.router.add_get("/", _ok)
    async with TestClient(TestServer(app, host=HOST)) as client:
        assert (await client.get("/")).status == 200
        await until(lambda: bool(named.results), "the named pool's fetch")
    assert default.results == [("unknown_pool",)]
    assert named.results == [("no_session",)]
    assert default.outcomes == ["app"]  # the handler named as the upstream of its response
    assert "background Fetch not sent: no client session" in caplog.text


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")
