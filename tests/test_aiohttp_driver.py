"""distpat.aiohttp: the stages driven inside an aiohttp application, over real loopback sockets.

The front application runs the middleware under aiohttp's TestServer (which cancels a
handler whose client went away, as ``web.run_app(handler_cancellation=True)`` does); its
upstreams are real aiohttp servers on 127.0.0.1 that record what they get; Calls go to a
real redis-server. The stages are small ones defined here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from distpat.aiohttp import (
    FORWARD,
    NOTES,
    STAGE_REQUEST,
    PipelineMiddleware,
    ProxySettings,
    pipeline_middleware,
    proxy_handler,
    setup,
)
from distpat.core.stage import (
    Amend,
    Answer,
    Call,
    CallResult,
    Fetch,
    Flight,
    FlightRole,
    Forward,
    Hold,
    Join,
    Outcome,
    OutcomeKind,
    Request,
    Response,
    Stage,
    SubRequest,
    SubResult,
    Tick,
)
from distpat.errors import ConfigError
from tests.aiohttpkit import AppServer, app_servers, dead_url
from tests.nutcracker import free_ports
from tests.rediskit import RedisServer

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
WAIT = 10.0  # seconds any awaited condition may take before the test fails


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for ``condition``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------
# Upstreams: real aiohttp servers that record what they get


class Upstream(AppServer):
    """An aiohttp server on 127.0.0.1. ``/slow`` waits for :attr:`release`; ``/stream`` sends
    a body in pieces; ``/cut`` promises 100 bytes and closes after 10; ``/status/N`` answers N;
    anything else echoes the request as JSON."""

    client_max_size = 16 << 20

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()

    def hits(self, path: str) -> int:
        return sum(1 for r in self.requests if r["target"].startswith(path))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        record = {
            "server": self.name,
            "method": request.method,
            "target": request.raw_path,
            "headers": [[k.decode(), v.decode()] for k, v in request.raw_headers],
            "body_length": len(body),
        }
        self.requests.append(record)
        path = request.path
        if path.endswith("/slow"):
            self.arrived.set()
            await self.release.wait()
            return web.Response(text=f"slow from {self.name}")
        if path.endswith("/stream"):
            response = web.StreamResponse(headers={"X-Internal": "secret"})
            await response.prepare(request)
            for i in range(64):
                await response.write(bytes([65 + i % 26]) * 16384)
            await response.write_eof()
            return response
        if path.endswith("/endless"):  # until the reader goes away (bounded: 320 MiB at most)
            response = web.StreamResponse()
            await response.prepare(request)
            with contextlib.suppress(ConnectionError):
                for _ in range(20_000):
                    await response.write(b"z" * 16384)
            return response
        if path.endswith("/cut"):
            response = web.StreamResponse(headers={"Content-Length": "100"})
            await response.prepare(request)
            await response.write(b"0123456789")
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()
            return response
        if match := re.search(r"/status/(\d+)$", path):
            return web.Response(status=int(match[1]), text="status", headers={"X-Internal": "secret"})
        return web.json_response(
            record, headers={"X-Internal": "secret", "Connection": "X-Hop", "X-Hop": "1", "Set-Cookie": "u=1"}
        )


def upstreams(count: int) -> contextlib.AbstractAsyncContextManager[list[Upstream]]:
    return app_servers(Upstream, count)


# --------------------------------------------------------------------------
# The stages


class Recorder(Stage):
    """Every outcome, and how often on_done ran for each request."""

    kind = "recorder"

    def __init__(self) -> None:
        self.done: list[Outcome] = []
        self.requests: list[Request] = []  # held, so no two requests share an id() here

    def on_done(self, request: Request, outcome: Outcome, tick: Tick) -> Call | None:
        self.done.append(outcome)
        self.requests.append(request)
        return None

    def once_each(self) -> bool:
        return len({id(r) for r in self.requests}) == len(self.requests)


class Route(Stage):
    """Local answers, forwards to the pool ``up``, and the application's handler for the rest."""

    kind = "route"
    reads = frozenset({b"x-order", b"cookie"})

    def on_request(self, request: Request, tick: Tick) -> Answer | Forward | None:
        path = request.path
        if path == b"/hello":
            return Answer(200, b"hello", headers=((b"X-Local", b"1"),))
        if path == b"/empty":
            return Answer(204, b"not sent", headers=((b"X-Local", b"1"),))
        if path == b"/moved":
            return Answer(304, b"not sent")
        if path.startswith(b"/api/"):
            order = request.field(b"x-order")
            return Forward(
                pool="up",
                order=tuple(order.decode().split(",")) if order else (),
                add=((b"X-Stage", b"route"),),
                drop=frozenset({b"x-drop"}),
                target=b"/rewritten?from=api" if path == b"/api/rewrite" else None,
                respond=((b"X-Variant", b"b"),),
            )
        request.notes[self.name] = {"variant": "b", "cookie": (request.field(b"cookie") or b"").decode()}
        return Forward(
            add=((b"X-Variant-Seen", b"b"),), drop=frozenset({b"x-drop"}), respond=((b"X-Variant", b"b"),)
        )


class Amender(Stage):
    """Responses: a 404 replaced, the others given a field and stripped of X-Internal."""

    kind = "amender"

    def on_response(self, request: Request, response: Response, tick: Tick) -> Amend | Answer | None:
        if response.status == 404:
            return Answer(200, b"replaced", headers=((b"X-Replaced", b"1"),))
        return Amend(add=((b"X-Seen-Status", b"%d" % response.status),), drop=frozenset({b"x-internal"}))


async def app_handler(request: web.Request) -> web.StreamResponse:
    """The application behind the middleware: says what the stages left on the request."""
    if request.path == "/raise":
        raise web.HTTPNotFound(text="no such thing")
    if request.path == "/streamed":
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"streamed by the handler")
        await response.write_eof()
        return response
    forward = request.get(FORWARD)
    return web.json_response(
        {
            "notes": request[NOTES],
            "forward_pool": forward.pool if forward is not None else "none",
            "seen": request.headers.get("X-Variant-Seen"),
            "dropped": request.headers.get("X-Drop"),
            "view": request[STAGE_REQUEST].target.decode(),
        }
    )


@contextlib.asynccontextmanager
async def front(
    stages: list[Stage],
    pools: dict[str, list[str]] | None = None,
    *,
    redis_url: str | None = None,
    settings: ProxySettings | None = None,
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], PipelineMiddleware]]:
    app = web.Application()
    middleware = setup(app, stages=stages, pools=pools, redis_url=redis_url, settings=settings)
    app.router.add_route("*", "/{tail:.*}", app_handler)
    async with TestClient(TestServer(app, host=HOST)) as client:
        yield client, middleware


async def raw_exchange(port: int, data: bytes) -> bytes:
    """``data`` on a new connection; everything read back until the server closes."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), WAIT)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()


def head_of(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}, rest


# --------------------------------------------------------------------------
# Local answers


async def test_a_local_answer_is_framed_as_rfc_9110_says() -> None:
    recorder = Recorder()
    async with front([recorder, Route()]) as (client, _):
        response = await client.get("/hello")
        assert response.status == 200
        assert await response.read() == b"hello"
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert response.headers["Content-Length"] == "5"
        assert response.headers["X-Local"] == "1"
        port = client.port
        assert port is not None
        status, fields, rest = head_of(
            await raw_exchange(port, b"HEAD /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        )
        assert status == "HTTP/1.1 200 OK"
        assert fields["content-length"] == "5"  # the GET's
        assert rest == b""
        for path, code in ((b"/empty", "204"), (b"/moved", "304")):
            status, fields, rest = head_of(
                await raw_exchange(port, b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path)
            )
            assert status.startswith(f"HTTP/1.1 {code}")
            assert "content-length" not in fields
            assert "content-type" not in fields
            assert "transfer-encoding" not in fields
            assert rest == b""
        await until(lambda: len(recorder.done) == 4, "four outcomes")
    assert [(o.kind, o.status) for o in recorder.done] == [
        (OutcomeKind.LOCAL, 200),
        (OutcomeKind.LOCAL, 200),
        (OutcomeKind.LOCAL, 204),
        (OutcomeKind.LOCAL, 304),
    ]
    assert [o.sent for o in recorder.done] == [5, 0, 0, 0]
    assert recorder.once_each()


# --------------------------------------------------------------------------
# Forwarding to a pool


async def test_a_forward_to_a_pool_goes_round_robin_with_the_proxy_fields() -> None:
    recorder = Recorder()
    async with upstreams(2) as ups, front([recorder, Route()], {"up": [u.url for u in ups]}) as (client, _):
        servers = []
        for _ in range(4):
            response = await client.get(
                "/api/echo?q=1",
                headers={
                    "X-Drop": "gone",
                    "Connection": "keep-alive, X-Secret",
                    "X-Secret": "s",
                    "X-Forwarded-For": "10.1.1.1",
                    "Cookie": "a=1",
                },
            )
            assert response.status == 200
            seen = await response.json()
            servers.append(seen["server"])
            assert response.headers["X-Variant"] == "b"
            assert response.headers["Via"] == "1.1 distpat"
            assert "X-Hop" not in response.headers  # named by the upstream's Connection field
            assert response.headers["X-Internal"] == "secret"  # no Amender in this pipeline
        assert servers == [ups[0].name, ups[1].name, ups[0].name, ups[1].name]
        request = ups[0].requests[0]
        fields = {k.lower(): v for k, v in request["headers"]}
        assert request["target"] == "/api/echo?q=1"
        assert fields["x-stage"] == "route"
        assert fields["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
        assert fields["x-forwarded-proto"] == "http"
        assert fields["via"] == "1.1 distpat"
        assert fields["cookie"] == "a=1"
        assert not {"x-drop", "x-secret", "keep-alive", "te"} & fields.keys()
        assert fields["host"] == f"{HOST}:{client.port}"  # the client's, as sent
        await client.get("/api/rewrite?x=9")
        assert ups[0].requests[-1]["target"] == "/rewritten?from=api"
        await client.get("/api/bare", skip_auto_headers=["User-Agent", "Accept", "Accept-Encoding"])
        fields = {k.lower(): v for k, v in ups[1].requests[-1]["headers"]}
        assert (
            not {"user-agent", "accept", "accept-encoding", "content-type", "content-length"} & fields.keys()
        )
        await until(lambda: len(recorder.done) == 6, "six outcomes")
        names = {ups[0].name, ups[1].name}
    assert {(o.kind, o.status) for o in recorder.done} == {(OutcomeKind.ANSWERED, 200)}
    assert {o.upstream for o in recorder.done} == names
    assert recorder.once_each()


async def test_an_order_is_kept_to_on_connect_failure_and_never_left() -> None:
    recorder = Recorder()
    dead = dead_url()
    dead_name = dead.removeprefix("http://")
    async with upstreams(2) as ups:
        pools = {"up": [dead, ups[0].url, ups[1].url]}
        async with front([recorder, Route()], pools) as (client, _):
            response = await client.get("/api/echo", headers={"X-Order": f"{dead_name},{ups[1].name}"})
            assert response.status == 200
            assert (await response.json())["server"] == ups[1].name
            response = await client.get("/api/echo", headers={"X-Order": dead_name})
            assert response.status == 502
            text = await response.text()
            assert text.startswith("502 Bad Gateway: no upstream of pool 'up' could be reached")
            assert dead_name in text
            assert response.headers["X-Variant"] == "b"  # Forward.respond: whatever the response
            response = await client.get("/api/echo", headers={"X-Order": "10.9.9.9:1"})
            assert response.status == 500
            assert "names servers pool 'up' does not have" in await response.text()
            await until(lambda: len(recorder.done) == 3, "three outcomes")
        assert ups[0].requests == []  # never outside the order
    assert [(o.kind, o.status) for o in recorder.done] == [
        (OutcomeKind.ANSWERED, 200),
        (OutcomeKind.UPSTREAM_FAILED, 502),
        (OutcomeKind.UPSTREAM_FAILED, 500),
    ]


async def test_round_robin_moves_past_an_upstream_it_cannot_connect_to() -> None:
    async with upstreams(1) as (up,), front([Route()], {"up": [dead_url(), up.url]}) as (client, _):
        for _ in range(3):
            response = await client.get("/api/echo")
            assert response.status == 200
        assert up.hits("/api/echo") == 3


async def test_forward_respond_fields_amendments_and_a_replacement() -> None:
    recorder = Recorder()
    async with upstreams(1) as (up,), front([recorder, Route(), Amender()], {"up": [up.url]}) as (client, _):
        response = await client.get("/api/echo")
        assert response.status == 200
        assert response.headers["X-Variant"] == "b"
        assert response.headers["X-Seen-Status"] == "200"
        assert "X-Internal" not in response.headers
        response = await client.get("/api/status/404")
        assert response.status == 200
        assert await response.read() == b"replaced"
        assert response.headers["X-Replaced"] == "1"
        assert "X-Variant" not in response.headers  # a replacement drops what came before it
        response = await client.get("/hello")  # answered by Route: the Amender never saw the request
        assert "X-Seen-Status" not in response.headers
        assert "X-Variant" not in response.headers
        response = await client.get("/app")  # and the application's answer
        assert response.headers["X-Seen-Status"] == "200"
        assert response.headers["X-Variant"] == "b"
        await until(lambda: len(recorder.done) == 4, "four outcomes")
        name = up.name
    replaced = recorder.done[1]
    assert (replaced.kind, replaced.status, replaced.upstream) == (OutcomeKind.ANSWERED, 200, name)
    assert (b"X-Replaced", b"1") in replaced.headers


async def test_bodies_stream_both_ways() -> None:
    async with upstreams(1) as (up,), front([Route(), Amender()], {"up": [up.url]}) as (client, _):
        response = await client.get("/api/stream")
        body = await response.read()
        assert response.status == 200
        assert len(body) == 64 * 16384
        assert body[:3] == b"AAA"
        assert body[-1:] == bytes([65 + 63 % 26])
        assert "X-Internal" not in response.headers

        async def pieces() -> AsyncIterator[bytes]:
            for _ in range(64):
                yield b"x" * 16384

        response = await client.post("/api/upload", data=pieces())  # chunked from the client
        assert (await response.json())["body_length"] == 64 * 16384
        response = await client.put("/api/upload", data=b"y" * 100_000)
        seen = await response.json()
        assert seen["body_length"] == 100_000
        assert ["Content-Length", "100000"] in seen["headers"]


async def test_an_upstream_that_does_not_answer_in_time_is_a_504_and_a_cut_is_a_cut() -> None:
    recorder = Recorder()
    settings = ProxySettings(read_timeout=0.2)
    async with (
        upstreams(1) as (up,),
        front([recorder, Route()], {"up": [up.url]}, settings=settings) as (client, _),
    ):
        response = await client.get("/api/slow")
        assert response.status == 504
        assert (await response.text()).startswith(
            f"504 Gateway Timeout: {up.name} of pool 'up' sent no response"
        )
        response = await client.get("/api/cut")
        assert response.status == 200
        with pytest.raises(Exception, match=r"[Pp]ayload|[Cc]onnection|closed"):
            await response.read()
        await until(lambda: len(recorder.done) == 2, "two outcomes")
    assert [(o.kind, o.status) for o in recorder.done] == [
        (OutcomeKind.TIMED_OUT, 504),
        (OutcomeKind.UPSTREAM_FAILED, 200),
    ]


# --------------------------------------------------------------------------
# The application's handler


async def test_the_handler_reads_what_the_stages_decided() -> None:
    recorder = Recorder()
    async with front([recorder, Route(), Amender()]) as (client, _):
        response = await client.get("/page?x=1", headers={"Cookie": "v=b", "X-Drop": "gone"})
        seen = await response.json()
        assert seen == {
            "notes": {"route-2": {"variant": "b", "cookie": "v=b"}},
            "forward_pool": None,
            "seen": "b",
            "dropped": None,
            "view": "/page?x=1",
        }
        assert response.headers["X-Variant"] == "b"
        response = await client.get("/raise")  # an HTTPException is an answer like another
        assert response.status == 200  # the Amender replaces 404s
        assert await response.read() == b"replaced"
        response = await client.get("/streamed")  # prepared by the handler: the signal amends it
        assert await response.read() == b"streamed by the handler"
        assert response.headers["X-Variant"] == "b"
        assert response.headers["X-Seen-Status"] == "200"
        await until(lambda: len(recorder.done) == 3, "three outcomes")
    assert [(o.kind, o.status, o.upstream) for o in recorder.done] == [
        (OutcomeKind.ANSWERED, 200, None),
        (OutcomeKind.ANSWERED, 200, None),
        (OutcomeKind.ANSWERED, 200, None),
    ]


async def test_proxy_handler_forwards_a_route_to_a_pool() -> None:
    async with upstreams(2) as ups:
        app = web.Application()
        setup(app, pools={"api": [u.url for u in ups]})
        app.router.add_route("*", "/v1/{tail:.*}", proxy_handler(pool="api"))
        app.router.add_route("*", "/nowhere", proxy_handler(pool="missing"))
        async with TestClient(TestServer(app, host=HOST)) as client:
            first = await (await client.get("/v1/a")).json()
            second = await (await client.get("/v1/b")).json()
            assert {first["server"], second["server"]} == {ups[0].name, ups[1].name}
            assert (await client.get("/nowhere")).status == 500
    app = web.Application()
    setup(app, pools={"api": [dead_url()]})
    app.router.add_route("*", "/{tail:.*}", proxy_handler(pool="api"))
    async with TestClient(TestServer(app, host=HOST)) as client:
        response = await client.get("/x")
        assert response.status == 502
        assert "no upstream of pool 'api' could be reached" in await response.text()


# --------------------------------------------------------------------------
# on_done, exactly once


class Edge(Stage):
    """``/boom`` raises; ``/down`` forwards to the pool ``down``."""

    kind = "edge"

    def on_request(self, request: Request, tick: Tick) -> Forward | None:
        if request.path == b"/boom":
            raise RuntimeError("boom")
        if request.path == b"/down":
            return Forward(pool="down")
        return None


async def test_on_done_is_called_once_however_the_request_ends(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    async with (
        upstreams(1) as (up,),
        front([recorder, Edge(), Route()], {"up": [up.url], "down": [dead_url()]}) as (client, _),
    ):
        assert (await client.get("/api/echo")).status == 200
        assert (await client.get("/hello")).status == 200
        assert (await client.get("/boom")).status == 500
        assert (await client.get("/down")).status == 502
        port = client.port
        assert port is not None
        _, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET /api/slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(up.arrived.wait(), WAIT)
        writer.close()  # the client goes away while the upstream thinks
        await until(lambda: len(recorder.done) == 5, "five outcomes")
    assert [(o.kind, o.status) for o in recorder.done] == [
        (OutcomeKind.ANSWERED, 200),
        (OutcomeKind.LOCAL, 200),
        (OutcomeKind.LOCAL, 500),
        (OutcomeKind.UPSTREAM_FAILED, 502),
        (OutcomeKind.CLIENT_GONE, 0),
    ]
    assert recorder.once_each()
    assert "on_request raised RuntimeError: boom" in caplog.text


async def test_a_client_gone_is_seen_without_handler_cancellation_too() -> None:
    # web.run_app's default: the request is not cancelled; writing its response fails instead
    recorder = Recorder()
    async with upstreams(1) as (up,):
        app = web.Application()
        setup(app, stages=[recorder, Route()], pools={"up": [up.url]})
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, HOST, 0)
            await site.start()
            port = runner.addresses[0][1]
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"GET /api/endless HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)).startswith(b"HTTP/1.1 200")
            writer.transport.abort()
            await until(lambda: len(recorder.done) == 1, "the outcome")
        finally:
            await runner.cleanup()
    [outcome] = recorder.done
    assert (outcome.kind, outcome.status) == (OutcomeKind.CLIENT_GONE, 200)
    assert 0 < outcome.sent < 20_000 * 16384


# --------------------------------------------------------------------------
# Fetch


class Gather(Stage):
    """``/gather``: two sub-requests, one fast and one slow, by a short deadline; ``/hedge``:
    one sub-request to a slow upstream, hedged to a fast one."""

    kind = "gather"

    def __init__(self, slow: str, fast: str) -> None:
        self.slow, self.fast = slow, fast
        self.results: tuple[SubResult, ...] = ()

    def on_request(self, request: Request, tick: Tick) -> Fetch | None:
        if request.path == b"/gather":
            return Fetch(
                (
                    SubRequest("up", b"/fast?n=1", order=(self.fast,), headers=((b"X-Sub", b"1"),)),
                    SubRequest("up", b"/part/slow", order=(self.slow,)),
                    SubRequest("nowhere", b"/"),
                ),
                then=self.answer,
                deadline=0.3,
            )
        if request.path == b"/hedge":
            return Fetch(
                (SubRequest("up", b"/h/slow", order=(self.slow, self.fast)),),
                then=self.answer,
                deadline=WAIT,
                hedge_after=0.05,
                hedge_max=1,
            )
        return None

    def answer(self, results: tuple[SubResult, ...]) -> Answer:
        self.results = results
        return Answer(200, b",".join(b"%d:%s" % (r.status, (r.error or "ok").encode()) for r in results))


async def test_fetch_gives_what_came_by_the_deadline() -> None:
    async with upstreams(2) as (slow, fast):
        gather = Gather(slow.name, fast.name)
        async with front([gather], {"up": [slow.url, fast.url]}) as (client, _):
            response = await client.get("/gather")
            assert await response.read() == b"200:ok,0:timeout,0:unknown_pool"
            ok, late, _ = gather.results
            assert ok.upstream == fast.name
            assert json.loads(ok.body)["target"] == "/fast?n=1"
            assert ["X-Sub", "1"] in json.loads(ok.body)["headers"]
            assert late.error == "timeout"
            assert slow.hits("/part/slow") == 1


async def test_fetch_hedges_to_the_next_upstream_of_the_order() -> None:
    async with upstreams(2) as (slow, fast):
        gather = Gather(slow.name, fast.name)
        fast.release.set()
        async with front([gather], {"up": [slow.url, fast.url]}) as (client, _):
            response = await client.get("/hedge")
            assert await response.read() == b"200:ok"
            (result,) = gather.results
            assert (result.upstream, result.hedged) == (fast.name, True)
            assert slow.hits("/h/slow") == 1
            assert fast.hits("/h/slow") == 1


# --------------------------------------------------------------------------
# Join


class Coalesce(Stage):
    """``/c/...`` joins the flight of its path: the leader forwards to ``up`` (capturing the
    body), the others answer with the leader's body, or 503 with the leader's outcome."""

    kind = "coalesce"

    def __init__(self) -> None:
        self.roles: list[FlightRole] = []

    def on_request(self, request: Request, tick: Tick) -> Join | None:
        if request.path.startswith(b"/c/"):
            return Join(request.path, then=self.joined, timeout=WAIT)
        return None

    def joined(self, flight: Flight) -> Forward | Answer:
        self.roles.append(flight.role)
        if flight.role is FlightRole.LEADER:
            return Forward(pool="up", target=b"/api/slow", capture=1 << 20)
        outcome = flight.outcome
        if outcome is not None and outcome.kind is OutcomeKind.ANSWERED and outcome.body is not None:
            return Answer(200, outcome.body, headers=((b"X-Shared", b"1"),))
        return Answer(503, f"leader: {outcome.kind.value if outcome else None}".encode())


async def test_join_coalesces_concurrent_requests_into_one_upstream_request() -> None:
    coalesce = Coalesce()
    async with upstreams(1) as (up,), front([coalesce], {"up": [up.url]}) as (client, middleware):
        tasks = [asyncio.ensure_future(client.get("/c/same")) for _ in range(5)]
        await until(lambda: middleware.flights.waiting(b"/c/same") == 4, "four waiters")
        await asyncio.wait_for(up.arrived.wait(), WAIT)  # the leader's request
        assert up.hits("/api/slow") == 1
        up.release.set()
        responses = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        bodies = {await r.read() for r in responses}
        assert bodies == {f"slow from {up.name}".encode()}
        assert sorted(r.headers.get("X-Shared", "-") for r in responses) == ["-", "1", "1", "1", "1"]
        assert up.hits("/api/slow") == 1
        assert len(middleware.flights) == 0
    assert coalesce.roles.count(FlightRole.LEADER) == 1
    assert coalesce.roles.count(FlightRole.SHARED) == 4


async def test_no_waiter_is_left_behind_when_the_leader_goes_away() -> None:
    coalesce = Coalesce()
    async with upstreams(1) as (up,), front([coalesce], {"up": [up.url]}) as (client, middleware):
        port = client.port
        assert port is not None
        _, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET /c/gone HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(up.arrived.wait(), WAIT)
        tasks = [asyncio.ensure_future(client.get("/c/gone")) for _ in range(2)]
        await until(lambda: middleware.flights.waiting(b"/c/gone") == 2, "two waiters")
        writer.close()  # the leader's client leaves
        responses = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        assert [(r.status, await r.read()) for r in responses] == [(503, b"leader: client_gone")] * 2
        assert len(middleware.flights) == 0


# --------------------------------------------------------------------------
# Call, against a real redis-server


class Counter(Stage):
    """``/count``: INCR; ``/bad``: an unknown command; every request SETs ``last`` when done."""

    kind = "counter"

    def on_request(self, request: Request, tick: Tick) -> Call | None:
        if request.path == b"/count":
            return Call((b"INCR", b"hits"), then=self.reply)
        if request.path == b"/bad":
            return Call((b"NOSUCHCOMMAND", b"x"), then=self.reply)
        if request.path == b"/set":
            return Call((b"SET", b"k", b"v"), then=self.reply)
        return None

    def reply(self, result: CallResult) -> Answer:
        return Answer(200, repr((result.value, result.error)).encode())

    def on_done(self, request: Request, outcome: Outcome, tick: Tick) -> Call:
        return Call((b"SET", b"last", request.path + b" %d" % outcome.status))


async def test_calls_go_to_redis_and_on_done_calls_are_fired_and_forgotten(tmp_path: Path) -> None:
    server = RedisServer(free_ports(1)[0], tmp_path / "redis")
    await server.start()
    try:
        async with front([Counter()], redis_url=f"redis://{HOST}:{server.port}/0") as (client, middleware):
            assert await (await client.get("/count")).read() == b"(1, None)"
            assert await (await client.get("/count")).read() == b"(2, None)"
            assert await (await client.get("/set")).read() == b"(b'OK', None)"  # as sent: no conversion
            body = (await (await client.get("/bad")).read()).decode()
            assert body.startswith("(None, \"ERR unknown command 'NOSUCHCOMMAND'")
            async with server.client() as direct:
                await until(lambda: not middleware.tasks, "the fire-and-forget calls")
                assert await direct.get("last") == b"/bad 200"
    finally:
        await server.stop()


async def test_a_call_with_no_redis_reachable_is_unavailable() -> None:
    (port,) = free_ports(1)
    async with front([Counter()], redis_url=f"redis://{HOST}:{port}/0") as (client, middleware):
        body = (await (await client.get("/count")).read()).decode()
        assert "unavailable: " in body
        assert "connecting to" in body
        await until(lambda: not middleware.tasks, "the fire-and-forget calls")
    async with front([Counter()]) as (client, _):
        body = (await (await client.get("/count")).read()).decode()
        assert body == "(None, 'unavailable: no Redis client (give redis_url)')"


# --------------------------------------------------------------------------
# Configuration


def test_bad_configuration_is_refused_with_a_reason() -> None:
    with pytest.raises(ConfigError, match="give scheme, host and port only"):
        pipeline_middleware(stages=[], pools={"up": ["http://127.0.0.1:1/path"]})
    with pytest.raises(ConfigError, match="at least one upstream"):
        pipeline_middleware(stages=[], pools={"up": []})
    with pytest.raises(ConfigError, match="use http:// or https://"):
        pipeline_middleware(stages=[], pools={"up": ["tcp://127.0.0.1:1"]})
    with pytest.raises(ConfigError, match=r"is not a distpat\.core\.stage\.Stage"):
        pipeline_middleware(stages=[object()])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="more than 0 seconds"):
        ProxySettings(read_timeout=0)
    middleware = pipeline_middleware(stages=[], pools={"up": ["http://127.0.0.1:8081", "http://[::1]:8082"]})
    assert middleware.pools.members("up") == ("127.0.0.1:8081", "[::1]:8082")
    assert middleware.pools.members(None) == ()


async def test_a_middleware_without_its_cleanup_ctx_says_what_is_missing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = web.Application(middlewares=[pipeline_middleware(stages=[Route()], pools={"up": [dead_url()]})])
    app.router.add_route("*", "/{tail:.*}", app_handler)
    async with TestClient(TestServer(app, host=HOST)) as client:
        assert (await client.get("/api/x")).status == 500
    assert "no client session: add the middleware's cleanup_ctx" in caplog.text


# --------------------------------------------------------------------------
# The page


def python_blocks(page: Path) -> list[str]:
    """The page's ```python blocks, but those after a ``<!-- not run: ... -->`` line."""
    blocks: list[str] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```python":
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if not re.match(r"<!--\s*not run:\s*\S.*-->$", before):
            blocks.append("\n".join(lines[i + 1 : end]))
        i = end + 1
    return blocks


async def test_the_code_of_docs_aiohttp_md_runs() -> None:
    """The page's python blocks run in order in one namespace; the example defines
    ``build_app(api_url)`` and ``build_app_by_hand(api_url)``, which are then served and asked."""
    blocks = python_blocks(ROOT / "docs" / "aiohttp.md")
    assert len(blocks) >= 3
    namespace: dict[str, Any] = {"__name__": "docs_aiohttp"}
    for block in blocks:
        exec(compile(block, "docs/aiohttp.md", "exec"), namespace)
    async with upstreams(1) as (up,):
        for build in ("build_app", "build_app_by_hand"):
            app = namespace[build](up.url)
            async with TestClient(TestServer(app, host=HOST)) as client:
                response = await client.get("/api/items", headers={"Cookie": "variant=a"})
                assert response.status == 200
                assert response.headers["X-Variant"] == "a"
                assert (await response.json())["target"] == "/api/items"
                response = await client.get("/healthz")
                assert (response.status, await response.text()) == (200, "ok")
                response = await client.get("/page")
                assert (await response.text(), response.headers["X-Variant"]) == ("variant b", "b")
                response = await client.get("/page", headers={"Cookie": "x=1; variant=a"})
                assert await response.text() == "variant a"
                if build == "build_app":
                    response = await client.get("/v1/things")
                    assert (await response.json())["target"] == "/v1/things"


async def test_a_session_of_its_own_is_not_shared_with_the_application() -> None:
    # the driver's ClientSession keeps no cookies: an upstream's Set-Cookie never reaches another client
    async with upstreams(1) as (up,), front([Route()], {"up": [up.url]}) as (client, _):
        await client.get("/api/echo")
        async with ClientSession() as other:
            assert client.port is not None
            response = await other.get(f"http://{HOST}:{client.port}/api/echo")
            fields = {k.lower(): v for k, v in (await response.json())["headers"]}
        assert "cookie" not in fields


class Holder(Stage):
    """Holds each request, then adds a field (a limiter's delayed excess)."""

    kind = "holder"

    def on_request(self, request: Request, tick: Tick) -> Hold:
        return Hold(0.05, then=lambda _: Forward(respond=((b"X-Held", b"yes"),)))


async def test_a_hold_delays_the_request_then_it_goes_on() -> None:
    recorder = Recorder()
    async with front([recorder, Holder()]) as (client, _):
        response = await client.get("/page")
        assert response.status == 200
        assert response.headers["X-Held"] == "yes"
        await until(lambda: len(recorder.done) == 1, "one outcome")
    assert [o.kind for o in recorder.done] == [OutcomeKind.ANSWERED]
