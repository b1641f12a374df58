"""Background sub-requests: a Fetch returned from ``on_done`` (or ``on_body``) is fire-and-forget.

The client is answered first; the Fetch goes out after, bounded by its deadline, and its ``then``
sees what came back (RFC 5861 section 3, ``stale-while-revalidate``: the stale copy now, one
refresh in the background). Both drivers, over real loopback sockets: the engine (ProxyServer,
with tests/httpkit.py backends) and the aiohttp middleware (with tests/aiohttpkit.py upstreams).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import distpat.aiohttp.state
from distpat.aiohttp import PipelineMiddleware, setup
from distpat.core.pipeline import Pipeline, StageError
from distpat.core.stage import (
    NO_TICK,
    Answer,
    Call,
    Effect,
    Fetch,
    Forward,
    Outcome,
    OutcomeKind,
    Request,
    Response,
    Stage,
    SubRequest,
    SubResult,
    Tick,
)
from distpat.errors import LocalProtocolError
from distpat.net.proxy import ProxyConfig, ProxyServer
from tests.aiohttpkit import named_upstreams
from tests.effectkit import dead_url, name_of, until
from tests.httpkit import Backend, Handler, RawClient, Reply, exchange
from tests.httpkit import Request as SeenRequest

GET = b"GET /page HTTP/1.1\r\nHost: h\r\n\r\n"


class Revalidate(Stage):
    """Answers with its stale copy at once; ``on_done`` refreshes it from ``origin`` once."""

    kind = "revalidate"
    pools = ("origin",)

    def __init__(self, target: bytes = b"/fresh", *, fail: bool = False, deadline: float = 5.0) -> None:
        self.target = target
        self.fail = fail
        self.deadline = deadline
        self.landed: list[tuple[SubResult, ...]] = []

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        return Answer(200, b"stale copy")

    def on_done(self, request: Request, outcome: Outcome, tick: Tick) -> Call | Fetch | None:
        def keep(results: tuple[SubResult, ...]) -> Effect | None:
            self.landed.append(results)
            if self.fail:
                raise RuntimeError("the store is full")
            return Answer(500)  # not None: ignored, nothing is answered with it

        return Fetch((SubRequest("origin", self.target),), then=keep, deadline=self.deadline)


class BodyRefresh(Stage):
    """Forwards with a capture; ``on_body`` asks ``origin`` about what the upstream said."""

    kind = "body-refresh"
    pools = ("origin",)

    def __init__(self) -> None:
        self.landed: list[tuple[SubResult, ...]] = []

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        return Forward(capture=1 << 16)

    def on_body(self, request: Request, response: Response, body: bytes, tick: Tick) -> Call | Fetch | None:
        def keep(results: tuple[SubResult, ...]) -> None:
            self.landed.append(results)

        return Fetch((SubRequest("origin", b"/about", body=body, method=b"POST"),), then=keep)


@contextlib.asynccontextmanager
async def engine(stage: Stage, origin: str) -> AsyncIterator[ProxyServer]:
    """A ProxyServer running ``stage``, with the pool ``origin``; its default pool (the
    stages answer locally, so it is never asked) is a backend of its own."""
    async with Backend() as primary:
        config = ProxyConfig(
            listen=("127.0.0.1", 0), upstreams=(primary.url,), pools=(("origin", (origin,)),), stages=(stage,)
        )
        server = ProxyServer(config)
        await server.start()
        try:
            yield server
        finally:
            await server.shutdown(1)


def held(release: asyncio.Event) -> Handler:
    async def handler(request: SeenRequest) -> Reply:
        await release.wait()
        return Reply(body=b"fresh " + request.target)

    return handler


# -- the run, with no sockets ----------------------------------------------------------------


def test_the_run_hands_out_a_background_fetch_and_lands_it_once() -> None:
    stage = Revalidate(fail=True)
    run = Pipeline([stage]).run(Request(b"GET", b"/page", "127.0.0.1"))
    assert isinstance(run.start(NO_TICK), Answer)
    [fetch] = run.done(Outcome(OutcomeKind.LOCAL, 200), NO_TICK)
    assert isinstance(fetch, Fetch)
    results = (SubResult(fetch.requests[0], error="connect"),)
    with pytest.raises(StageError, match=r"'revalidate-1'.*the store is full"):
        run.landed(fetch, results)
    assert stage.landed == [results]
    with pytest.raises(LocalProtocolError, match="no such background fetch"):
        run.landed(fetch, results)  # once only


def test_on_done_answering_with_something_else_is_an_error_kept_for_the_driver() -> None:
    class Wrong(Stage):
        kind = "wrong"

        def on_done(self, request: Request, outcome: Outcome, tick: Tick) -> Call | Fetch | None:
            return Answer(200)  # type: ignore[return-value]

    run = Pipeline([Wrong(), Revalidate()]).run(Request(b"GET", b"/", "127.0.0.1"))
    run.start(NO_TICK)
    effects = run.done(Outcome(OutcomeKind.LOCAL, 200), NO_TICK)
    assert [type(e) for e in effects] == [Fetch]  # the other stage is still told
    [error] = run.errors
    assert "'wrong-1'" in str(error)
    assert "not a Call or a Fetch" in str(error)


# -- the engine -------------------------------------------------------------------------------


async def test_the_client_is_answered_before_the_background_fetch_and_then_sees_its_result() -> None:
    release = asyncio.Event()
    stage = Revalidate()
    async with Backend(held(release)) as origin, engine(stage, origin.url) as server:
        client = await RawClient.connect(server.port)
        try:
            for _ in range(2):  # the same connection serves the next request meanwhile
                await client.send(GET)
                [answer] = await client.read_responses(1)
                assert (answer.status, answer.body) == (200, b"stale copy")
        finally:
            await client.close()
        await until(lambda: len(origin.requests) == 2)
        assert stage.landed == []  # the origin holds both: the answers did not wait for them
        release.set()
        await until(lambda: len(stage.landed) == 2)
        assert server.carriers.subrequests.in_flight == 0
    for results in stage.landed:
        [result] = results
        assert result.ok
        assert result.status == 200
        assert result.body == b"fresh /fresh"
        assert result.upstream == name_of(origin.url)


async def test_a_then_that_raises_is_logged_with_the_stages_name(caplog: pytest.LogCaptureFixture) -> None:
    stage = Revalidate(fail=True)
    async with Backend() as origin, engine(stage, origin.url) as server:
        for _ in range(2):
            [answer] = await exchange(server.port, GET)
            assert answer.status == 200
        await until(lambda: len(stage.landed) == 2)
        await until(lambda: sum("the store is full" in r.getMessage() for r in caplog.records) == 2)
    failures = [r for r in caplog.records if "the store is full" in r.getMessage()]
    assert all(r.name == "distpat.pipeline" and r.levelno == logging.ERROR for r in failures)
    assert all("'revalidate-1'" in r.getMessage() for r in failures)


async def test_an_unreachable_pool_is_in_the_result() -> None:
    stage = Revalidate()
    async with engine(stage, dead_url()) as server:
        [answer] = await exchange(server.port, GET)
        assert answer.status == 200
        await until(lambda: len(stage.landed) == 1)
    [[result]] = stage.landed
    assert not result.ok
    assert (result.status, result.error) == (0, "connect")


async def test_a_background_fetch_still_out_at_shutdown_is_cancelled() -> None:
    release = asyncio.Event()  # never set: the origin holds the refresh until it is closed
    stage = Revalidate(deadline=60.0)
    async with Backend() as primary, Backend(held(release)) as origin:
        config = ProxyConfig(
            listen=("127.0.0.1", 0),
            upstreams=(primary.url,),
            pools=(("origin", (origin.url,)),),
            stages=(stage,),
        )
        server = ProxyServer(config)
        await server.start()
        try:
            [answer] = await exchange(server.port, GET)
            assert answer.status == 200
            await until(lambda: len(origin.requests) == 1)
            assert server.carriers.subrequests.in_flight == 1
        finally:
            async with asyncio.timeout(10):  # bounded: it must not wait for the 60 s deadline
                await server.shutdown(1)
        assert server.carriers.subrequests.in_flight == 0
        await asyncio.sleep(0)
        assert stage.landed == []


async def test_without_a_fetch_carrier_the_fetch_is_dropped_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stage = Revalidate()
    async with Backend() as origin, engine(stage, origin.url) as server:
        server.state.carriers.fetch = None
        for _ in range(3):
            [answer] = await exchange(server.port, GET)
            assert answer.status == 200
    assert stage.landed == []
    assert origin.requests == []
    said = [r for r in caplog.records if "background Fetch dropped" in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == logging.WARNING


async def test_on_body_may_return_a_background_fetch() -> None:
    stage = BodyRefresh()
    async with Backend() as origin, engine(stage, origin.url) as server:
        [answer] = await exchange(server.port, GET)
        assert (answer.status, answer.body) == (200, b"GET /page 0")
        await until(lambda: len(stage.landed) == 1)
    [[result]] = stage.landed
    assert result.ok
    assert result.body == b"POST /about 11"
    assert origin.requests[0].body == b"GET /page 0"


# -- the aiohttp driver -----------------------------------------------------------------------


async def app_handler(request: web.Request) -> web.Response:
    return web.Response(text="from the application")


@contextlib.asynccontextmanager
async def front(
    stage: Stage, origin: str
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], PipelineMiddleware]]:
    app = web.Application()
    middleware = setup(app, stages=[stage], pools={"origin": [origin]})
    app.router.add_route("*", "/{tail:.*}", app_handler)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, middleware


async def test_aiohttp_answers_before_the_background_fetch_and_then_sees_its_result() -> None:
    stage = Revalidate(b"/fresh/hold")
    async with named_upstreams(1) as [origin], front(stage, origin.url) as (client, middleware):
        for _ in range(2):
            response = await client.get("/page")
            assert (response.status, await response.text()) == (200, "stale copy")
        await until(lambda: origin.hits("/fresh/hold") == 2)
        assert stage.landed == []  # held by the origin: the answers did not wait
        assert len(middleware.tasks) == 2
        origin.release.set()
        await until(lambda: len(stage.landed) == 2)
        await until(lambda: not middleware.tasks)
        name = origin.name
    for results in stage.landed:
        [result] = results
        assert result.ok
        assert result.status == 200
        assert result.upstream == name
        assert b'"/fresh/hold"' in result.body


async def test_aiohttp_a_then_that_raises_is_logged_with_the_stages_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stage = Revalidate(fail=True)
    async with named_upstreams(1) as [origin], front(stage, origin.url) as (client, middleware):
        response = await client.get("/page")
        assert response.status == 200
        await until(lambda: len(stage.landed) == 1)
        await until(lambda: not middleware.tasks)
        again = await client.get("/page")
        assert again.status == 200
    [failure, *_] = [r for r in caplog.records if "the store is full" in r.getMessage()]
    assert failure.name == "distpat.aiohttp"
    assert failure.levelno == logging.ERROR
    assert "'revalidate-1'" in failure.getMessage()


async def test_aiohttp_an_unreachable_pool_is_in_the_result() -> None:
    stage = Revalidate()
    async with front(stage, dead_url()) as (client, _):
        response = await client.get("/page")
        assert response.status == 200
        await until(lambda: len(stage.landed) == 1)
    [[result]] = stage.landed
    assert (result.status, result.error) == (0, "connect")


async def test_aiohttp_a_background_fetch_still_out_at_cleanup_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(distpat.aiohttp.state, "DRAIN_TIMEOUT", 0.2)
    stage = Revalidate(b"/fresh/hold", deadline=60.0)
    async with named_upstreams(1) as [origin]:
        async with asyncio.timeout(10):  # bounded: the cleanup must not wait for the 60 s deadline
            async with front(stage, origin.url) as (client, middleware):
                response = await client.get("/page")
                assert response.status == 200
                await until(lambda: origin.hits("/fresh/hold") == 1)
                [task] = middleware.tasks
        assert task.cancelled()
        assert stage.landed == []
