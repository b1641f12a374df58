"""The HTTP engine carrying out the stage pipeline (distpat.core.stage), over real loopback sockets.

Each test defines the small stages it needs; the engine (net/stage_driver.py, net/exchange.py)
must frame their local answers by RFC 9110, call ``on_done`` exactly once whatever happens,
run response stages last first, capture bodies, keep to a preference order, survive a stage
that raises, name what is not configured, and keep the one-pass forwarder for plain routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace

import pytest

import distpat.net.server
from distpat.core.stage import (
    ALL_FIELDS,
    Amend,
    Answer,
    Call,
    CallResult,
    Effect,
    Fetch,
    Forward,
    Join,
    Outcome,
    OutcomeKind,
    Response,
    Stage,
    SubRequest,
    Tick,
)
from distpat.core.stage import Request as CoreRequest
from distpat.net.proxy import ProxyConfig, ProxyServer
from distpat.net.server import EngineSettings
from tests.httpkit import Backend, RawClient, Reply, Request, echo
from tests.wirekit import Wire, dead_url, read_wire

Decide = Effect | None | Callable[[CoreRequest], Effect | None]

# -- stages and servers -------------------------------------------------------------------------


class Routes(Stage):
    """Decides by path: an effect, or a function of the request that makes one; else nothing."""

    kind = "routes"

    def __init__(
        self,
        routes: Mapping[bytes, Decide],
        *,
        default: Decide = None,
        name: str = "",
        pools: tuple[str, ...] = (),
    ) -> None:
        self.routes = dict(routes)
        self.default = default
        self.name = name
        self.pools = pools

    def on_request(self, request: CoreRequest, tick: Tick) -> Effect | None:
        decide = self.routes.get(request.path, self.default)
        return decide(request) if callable(decide) else decide


class Recorder(Stage):
    """Counts ``on_done`` calls per request target and keeps the last outcome of each."""

    kind = "recorder"

    def __init__(self, name: str = "recorder") -> None:
        self.name = name
        self.calls: Counter[bytes] = Counter()
        self.outcomes: dict[bytes, Outcome] = {}
        self.entered: list[bytes] = []

    def on_request(self, request: CoreRequest, tick: Tick) -> Effect | None:
        self.entered.append(request.target)
        return None

    def on_done(self, request: CoreRequest, outcome: Outcome, tick: Tick) -> Call | None:
        self.calls[request.target] += 1
        self.outcomes[request.target] = outcome
        return None


class Tagger(Stage):
    """Notes in a shared list that it saw each response, and adds ``X-Seen: <name>`` to it."""

    kind = "tagger"

    def __init__(self, name: str, seen: list[tuple[str, bytes, int]]) -> None:
        self.name = name
        self.seen = seen

    def on_response(self, request: CoreRequest, response: Response, tick: Tick) -> Amend | Answer | None:
        self.seen.append((self.name, request.target, response.status))
        return Amend(add=((b"X-Seen", self.name.encode()),), drop=frozenset({b"x-internal"}))


@contextlib.asynccontextmanager
async def serving(
    *stages: Stage,
    upstreams: tuple[str, ...] = (),
    pools: tuple[tuple[str, tuple[str, ...]], ...] = (),
    **settings: object,
) -> AsyncIterator[ProxyServer]:
    config = ProxyConfig(
        listen=("127.0.0.1", 0),
        upstreams=upstreams,
        pools=pools,
        stages=stages,
        settings=replace(EngineSettings(), **settings),  # type: ignore[arg-type]
    )
    server = ProxyServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(1)


@contextlib.asynccontextmanager
async def connected(port: int) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(port)
    try:
        yield client
    finally:
        await client.close()


def req(target: bytes, method: bytes = b"GET", fields: bytes = b"", body: bytes = b"") -> bytes:
    if body:
        fields += b"Content-Length: %d\r\n" % len(body)
    return b"%s %s HTTP/1.1\r\nHost: h\r\n%s\r\n%s" % (method, target, fields, body)


async def ask(client: RawClient, *requests: tuple[bytes, bytes]) -> list[Wire]:
    """Send (method, target) requests pipelined and read every response back, nothing left over."""
    await client.send(b"".join(req(target, method) for method, target in requests))
    got, rest, closed = await read_wire(client.reader, [m for m, _ in requests])
    assert rest == b""
    assert not closed
    return got


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait, polling, until ``condition()`` holds (bounded: fails after ``timeout``)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def reset(client: RawClient) -> None:
    """Close ``client`` with a reset (SO_LINGER 0), as a client that gives up does."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


async def never(request: Request) -> Reply:
    await asyncio.Event().wait()  # cancelled when the backend stops
    raise AssertionError("unreachable")


# -- 1. local answers on the wire ---------------------------------------------------------------

LOCAL: dict[bytes, Decide] = {
    b"/204": Answer(204, b"never sent", headers=((b"X-Local", b"204"),)),
    b"/304": Answer(304, b"never sent", headers=((b"ETag", b'"v1"'),)),
    b"/200": Answer(200, b"hello\n", headers=((b"X-Local", b"200"),)),
    b"/empty": Answer(200),
}


async def test_local_answers_are_framed_by_rfc9110_and_keep_the_connection() -> None:
    async with (
        Backend() as backend,
        serving(Routes(LOCAL), upstreams=(backend.url,)) as p,
        connected(p.port) as client,
    ):
        got = await ask(
            client,
            (b"GET", b"/204"),
            (b"GET", b"/304"),
            (b"HEAD", b"/200"),
            (b"GET", b"/200"),
            (b"GET", b"/empty"),
            (b"HEAD", b"/304"),
            (b"GET", b"/upstream"),
        )
        assert [w.status for w in got] == [204, 304, 200, 200, 200, 304, 200]
        for w in (got[0], got[1], got[5]):  # RFC 9110 sections 15.3.5, 15.4.5, 8.6
            assert not {b"content-length", b"content-type", b"transfer-encoding"} & w.names()
        assert got[0].header(b"x-local") == b"204"
        assert got[1].header(b"etag") == b'"v1"'
        head, full = got[2], got[3]  # section 9.3.2: HEAD gets the GET's fields, no content
        assert head.header(b"content-length") == full.header(b"content-length") == b"6"
        assert head.header(b"content-type") == full.header(b"content-type") == b"text/plain; charset=utf-8"
        assert (head.body, full.body) == (b"", b"hello\n")
        assert got[4].header(b"content-length") == b"0"
        assert got[4].header(b"content-type") is None  # no content, no type
        assert got[6].body == b"GET /upstream 0"
        assert all(w.header(b"connection") is None for w in got)
        [again] = await ask(client, (b"GET", b"/204"))  # the connection is still usable
        assert again.status == 204
        assert [r.target for r in backend.requests] == [b"/upstream"]


async def test_a_local_answer_keeps_an_http10_connection_that_asked_for_it() -> None:
    async with (
        Backend() as backend,
        serving(Routes(LOCAL), upstreams=(backend.url,)) as p,
        connected(p.port) as client,
    ):
        await client.send(b"GET /200 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
        got, rest, closed = await read_wire(client.reader, [b"GET", b"GET"])
        assert [w.status for w in got] == [200, 200]
        assert all(w.header(b"connection") == b"keep-alive" for w in got)
        assert (rest, closed) == (b"", False)
        await client.send(b"GET /200 HTTP/1.0\r\n\r\n")
        [last], rest, closed = await read_wire(client.reader, [b"GET"])
        assert last.header(b"connection") == b"close"
        assert closed or await client.closed()


# -- 2. Expect: 100-continue ---------------------------------------------------------------------

LIMITED = {b"/limited": Answer(429, b"slow down\n", headers=((b"Retry-After", b"1"),), reason="rate")}
EXPECT = b"Expect: 100-continue\r\n"


async def test_no_100_continue_before_a_local_answer_and_the_client_is_not_left_hanging() -> None:
    recorder = Recorder()
    async with Backend(echo) as backend, serving(recorder, Routes(LIMITED), upstreams=(backend.url,)) as p:
        async with connected(p.port) as client:
            await client.send(
                b"POST /limited HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n" + EXPECT + b"\r\n"
            )
            got, rest, _ = await read_wire(client.reader, [b"POST"])
            assert [w.status for w in got] == [429]  # no 100 Continue came first
            assert got[0].body == b"slow down\n"
            assert got[0].header(b"retry-after") == b"1"
            # the body never came, so nothing after it can be read: the connection closes
            assert got[0].header(b"connection") == b"close"
            with contextlib.suppress(ConnectionError):
                await client.send(b"hello")  # a client that sends its body anyway, as curl does
            assert rest == b""
            assert await client.closed()
        async with connected(p.port) as client:
            # head and body in one write, and a request behind them: answered, then closed
            await client.send(req(b"/limited", b"POST", EXPECT, b"hello") + req(b"/after"))
            got, rest, closed = await read_wire(client.reader, [b"POST", b"GET"])
            assert [w.status for w in got] == [429]
            assert (rest, closed) == (b"", True)
        # what followed the answered request in the same read was not taken up (forwarded to an
        # upstream, answered on a connection already closing)
        assert recorder.entered == [b"/limited", b"/limited"]
        assert backend.requests == []


async def test_a_forwarded_request_still_gets_100_continue() -> None:
    stage = Routes({b"/limited": LIMITED[b"/limited"], b"/up": Forward(add=((b"X-Stage", b"1"),))})
    async with (
        Backend(echo) as backend,
        serving(stage, upstreams=(backend.url,)) as p,
        connected(p.port) as client,
    ):
        await client.send(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n" + EXPECT + b"\r\n")
        async with asyncio.timeout(5):
            interim = await client.reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await client.send(b"hello")
        [r] = await client.read_responses(1)
        assert (r.status, r.body) == (200, b"POST /up 5")
        await client.send(req(b"/up"))  # and the connection goes on
        [r] = await client.read_responses(1)
        assert r.status == 200
        [first, _] = backend.requests
        assert first.body == b"hello"
        assert first.header(b"expect") is None  # answered here: the upstream never waits
        assert first.header(b"x-stage") == b"1"


# -- 3. on_done exactly once ----------------------------------------------------------------------


async def test_on_done_is_called_once_with_the_outcome_whatever_happens() -> None:
    async def handler(request: Request) -> Reply:
        if request.target == b"/cut":
            return Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", close=True)
        if request.target.startswith(b"/slow"):
            await asyncio.Event().wait()
        return Reply(body=b"fine")

    recorder = Recorder()
    async with Backend(handler) as backend, Backend(never) as hung:
        route = Routes(
            {
                b"/local": Answer(403, b"no\n"),
                b"/dead": Forward(pool="dead"),
                b"/hung": Forward(pool="hung"),
            },
            pools=("dead", "hung"),
        )
        pools = (("dead", (dead_url(),)), ("hung", (hung.url,)))
        async with serving(recorder, route, upstreams=(backend.url,), pools=pools, response_timeout=0.3) as p:
            async with connected(p.port) as client:
                got = await ask(client, (b"GET", b"/ok"), (b"GET", b"/local"), (b"GET", b"/dead"))
                assert [w.status for w in got] == [200, 403, 502]
                [timeout] = await ask(client, (b"GET", b"/hung"))
                assert timeout.status == 504
            async with connected(p.port) as client:
                await client.send(req(b"/cut"))
                with contextlib.suppress(ConnectionError):
                    assert await client.closed()  # cut off, not left waiting for 97 bytes
            async with connected(p.port) as client:
                await client.send(req(b"/slow"))
                await until(lambda: any(r.target == b"/slow" for r in backend.requests))
                reset(client)  # gives up on its request
            await until(lambda: b"/slow" in recorder.calls)  # the engine noticed the client left
            async with connected(p.port) as client:
                # a client that only closes its side (FIN) may be half-closing to wait for its
                # answer (RFC 9112 section 9.6): the engine waits for the upstream, here in vain
                await client.send(req(b"/slow-fin"))
                await until(lambda: any(r.target == b"/slow-fin" for r in backend.requests))
            await until(lambda: b"/slow-fin" in recorder.calls)
            outcomes = {t: (o.kind, o.status) for t, o in recorder.outcomes.items()}
            assert outcomes == {
                b"/ok": (OutcomeKind.ANSWERED, 200),
                b"/local": (OutcomeKind.LOCAL, 403),
                b"/dead": (OutcomeKind.UPSTREAM_FAILED, 502),
                b"/hung": (OutcomeKind.TIMED_OUT, 504),
                b"/cut": (OutcomeKind.UPSTREAM_FAILED, 200),
                b"/slow": (OutcomeKind.CLIENT_GONE, 0),
                b"/slow-fin": (OutcomeKind.TIMED_OUT, 504),
            }
            assert recorder.outcomes[b"/ok"].upstream == f"127.0.0.1:{backend.port}"
            assert recorder.outcomes[b"/local"].upstream is None
        # once each, and still once after the server shut down
        assert set(recorder.calls.values()) == {1}


# -- 4. the way back --------------------------------------------------------------------------------


async def test_response_stages_run_last_first_and_both_amendments_arrive() -> None:
    async def handler(request: Request) -> Reply:
        return Reply(headers=[(b"X-Internal", b"secret")], body=b"up")

    seen: list[tuple[str, bytes, int]] = []
    outer, inner = Tagger("outer", seen), Tagger("inner", seen)
    local = Routes({b"/local": Answer(200, b"here", headers=((b"X-Internal", b"local"),))})
    async with (
        Backend(handler) as backend,
        serving(outer, inner, local, upstreams=(backend.url,)) as p,
        connected(p.port) as client,
    ):
        got = await ask(client, (b"GET", b"/up"), (b"GET", b"/local"), (b"GET", b"/up2"))
    assert [w.status for w in got] == [200, 200, 200]
    assert seen == [
        ("inner", b"/up", 200),
        ("outer", b"/up", 200),
        ("inner", b"/local", 200),
        ("outer", b"/local", 200),
        ("inner", b"/up2", 200),
        ("outer", b"/up2", 200),
    ]
    for w in got:
        assert w.values(b"x-seen") == [b"inner", b"outer"]
        assert w.header(b"x-internal") is None  # dropped on the way back, from both kinds of answer
    assert got[1].body == b"here"


class Revalidating(Stage):
    """Asks the upstream with the stored ETag and puts the stored 200 in place of its 304."""

    kind = "revalidating"

    def on_request(self, request: CoreRequest, tick: Tick) -> Effect | None:
        return Forward(add=((b"If-None-Match", b'"v1"'),))

    def on_response(self, request: CoreRequest, response: Response, tick: Tick) -> Amend | Answer | None:
        if response.status == 304:
            return Answer(200, b"stored body", headers=((b"ETag", b'"v1"'), (b"X-Cache", b"revalidated")))
        if request.path == b"/replace-200":
            return Answer(200, b"replaced", headers=((b"X-Cache", b"replaced"),))
        return None


async def test_a_response_replaced_on_the_way_back_reaches_the_client_and_the_connection_lives() -> None:
    async def handler(request: Request) -> Reply:
        if request.target == b"/stored":
            return Reply(raw=b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n')
        return Reply(body=b"upstream body " * 100)

    recorder = Recorder()
    async with (
        Backend(handler) as backend,
        serving(recorder, Revalidating(), upstreams=(backend.url,)) as p,
        connected(p.port) as client,
    ):  # one at a time: each reuses the upstream connection
        got = [w for t in (b"/stored", b"/replace-200", b"/plain") for w in await ask(client, (b"GET", t))]
        kept = backend.connections
        [again, *_] = await ask(client, (b"GET", b"/stored"), (b"GET", b"/replace-200"))
    assert [w.status for w in got] == [200, 200, 200]
    assert (got[0].body, got[0].header(b"x-cache"), got[0].header(b"etag")) == (
        b"stored body",
        b"revalidated",
        b'"v1"',
    )
    assert got[0].header(b"content-length") == b"11"
    assert (got[1].body, got[1].header(b"x-cache")) == (b"replaced", b"replaced")  # upstream body dropped
    assert got[2].body == b"upstream body " * 100
    assert again.body == b"stored body"
    assert kept == 1  # the upstream connection was kept too: the replaced body was read to its end
    assert all(r.header(b"if-none-match") == b'"v1"' for r in backend.requests)
    assert recorder.outcomes[b"/stored"].status == 200


async def test_forward_respond_fields_appear_on_upstream_and_local_answers() -> None:
    variant = Routes({}, default=Forward(respond=((b"X-Variant", b"b"),)), name="variant")
    local = Routes({b"/local": Answer(200, b"here"), b"/gone": Answer(204)}, name="local")
    async with (
        Backend() as backend,
        serving(variant, local, upstreams=(backend.url,)) as p,
        connected(p.port) as client,
    ):
        got = await ask(client, (b"GET", b"/up"), (b"GET", b"/local"), (b"GET", b"/gone"))
    assert [w.status for w in got] == [200, 200, 204]
    assert [w.values(b"x-variant") for w in got] == [[b"b"]] * 3
    assert all(r.header(b"x-variant") is None for r in backend.requests)  # a response field only


# -- 5. Forward.capture --------------------------------------------------------------------------


class Capturing(Recorder):
    """Captures up to ``limit`` bytes of each response body; notes what on_body got."""

    kind = "capturing"

    def __init__(self, limit: int) -> None:
        super().__init__("capturing")
        self.limit = limit
        self.bodies: dict[bytes, bytes] = {}

    def on_request(self, request: CoreRequest, tick: Tick) -> Effect | None:
        return Forward(capture=self.limit)

    def on_body(self, request: CoreRequest, response: Response, body: bytes, tick: Tick) -> Call | None:
        assert request.target not in self.bodies
        self.bodies[request.target] = body
        return None


async def test_a_captured_body_is_whole_when_it_fits_and_absent_when_larger() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"abc", b"defg", b"hij"):
            yield piece

    async def handler(request: Request) -> Reply:
        if request.target == b"/chunked":
            return Reply(chunks=pieces())
        size = int(request.target.rpartition(b"/")[2])
        return Reply(body=b"x" * size)

    stage = Capturing(100)
    async with (
        Backend(handler) as backend,
        serving(stage, upstreams=(backend.url,)) as p,
        connected(p.port) as client,
    ):
        got = await ask(
            client,
            (b"GET", b"/n/50"),
            (b"GET", b"/n/100"),
            (b"GET", b"/n/101"),
            (b"GET", b"/chunked"),
            (b"HEAD", b"/n/5"),
        )
    assert [len(w.body) for w in got] == [50, 100, 101, 10, 0]  # the client gets everything either way
    assert stage.bodies == {
        b"/n/50": b"x" * 50,
        b"/n/100": b"x" * 100,
        b"/chunked": b"abcdefghij",
        b"/n/5": b"",
    }
    assert {t: o.body for t, o in stage.outcomes.items()} == {
        b"/n/50": b"x" * 50,
        b"/n/100": b"x" * 100,
        b"/n/101": None,
        b"/chunked": b"abcdefghij",
        b"/n/5": b"",
    }


# -- 6. named pools and preference orders ---------------------------------------------------------


def name_of(backend: Backend) -> str:
    return f"127.0.0.1:{backend.port}"


async def test_stages_forward_to_named_pools_in_preference_order() -> None:
    async with Backend() as a, Backend() as b2, Backend() as b3:
        route = Routes(
            {b"/a": Forward(pool="a"), b"/b": Forward(pool="b", order=(name_of(b3), name_of(b2)))},
            pools=("a", "b"),
        )
        pools = (("a", (a.url,)), ("b", (b2.url, b3.url)))
        async with serving(route, pools=pools) as p, connected(p.port) as client:
            got = await ask(client, (b"GET", b"/a"), (b"GET", b"/b"), (b"GET", b"/b"), (b"GET", b"/other"))
    assert [w.status for w in got] == [200] * 4
    assert [r.target for r in a.requests] == [b"/a", b"/other"]  # the first pool is the default
    assert [r.target for r in b3.requests] == [b"/b", b"/b"]  # first in the order, every time
    assert b2.requests == []


async def test_failover_keeps_to_the_order_and_a_dropped_post_is_not_resent() -> None:
    async def drops_posts(request: Request) -> Reply:
        if request.method == b"POST":
            return Reply(raw=b"", close=True)  # received, then the connection dropped unanswered
        return Reply(body=b"dropper")

    dead = dead_url()
    dead_name = dead.removeprefix("http://")
    async with Backend() as second, Backend() as outsider, Backend(drops_posts) as dropper:
        route = Routes(
            {
                b"/failover": Forward(pool="b", order=(dead_name, name_of(second))),
                b"/only-dead": Forward(pool="b", order=(dead_name,)),
                b"/post": Forward(pool="b", order=(name_of(dropper), name_of(second))),
            },
            pools=("b",),
        )
        pools = (("b", (second.url, dead, outsider.url, dropper.url)),)
        async with serving(route, pools=pools) as p, connected(p.port) as client:
            got = await ask(client, (b"GET", b"/failover"), (b"GET", b"/failover"), (b"GET", b"/only-dead"))
            assert [w.status for w in got] == [200, 200, 502]
            [warm] = await ask(client, (b"GET", b"/post"))  # a kept connection to the dropper
            assert warm.body == b"dropper"
            await client.send(req(b"/post", b"POST", body=b"once"))
            got, _, _ = await read_wire(client.reader, [b"POST"])
            assert [w.status for w in got] == [502]
    assert [r.target for r in second.requests] == [b"/failover", b"/failover"]
    assert outsider.requests == []  # a pool member outside the order never sees a request
    assert [(r.method, r.body) for r in dropper.requests] == [(b"GET", b""), (b"POST", b"once")]


# -- 7. a stage that raises ------------------------------------------------------------------------


class Boom(Stage):
    kind = "boom"
    name = "exploding-gate"

    def on_request(self, request: CoreRequest, tick: Tick) -> Effect | None:
        if request.path == b"/boom":
            raise RuntimeError("kaboom")
        return None

    def on_response(self, request: CoreRequest, response: Response, tick: Tick) -> Amend | Answer | None:
        if request.path == b"/late":
            raise RuntimeError("late kaboom")
        return None


async def test_a_stage_that_raises_costs_its_request_a_500_and_nothing_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before, after = Recorder("before"), Recorder("after")
    async with (
        Backend() as backend,
        serving(before, Boom(), after, upstreams=(backend.url,)) as p,
        connected(p.port) as client,
    ):
        got = await ask(client, (b"GET", b"/boom"), (b"GET", b"/ok"), (b"GET", b"/boom"))
        got += await ask(client, (b"GET", b"/late"), (b"GET", b"/ok2"))
    assert [w.status for w in got] == [500, 200, 500, 500, 200]
    assert b"exploding-gate" in got[0].body
    assert b"kaboom" in got[0].body
    assert b"exploding-gate" in got[3].body  # raised in on_response: the upstream's answer replaced
    assert b"late kaboom" in got[3].body
    assert before.calls == Counter({b"/boom": 2, b"/ok": 1, b"/late": 1, b"/ok2": 1})
    assert before.outcomes[b"/boom"].kind is OutcomeKind.LOCAL  # entered before the one that raised
    assert before.outcomes[b"/boom"].status == 500
    assert before.outcomes[b"/late"].status == 500
    assert after.calls == Counter({b"/ok": 1, b"/late": 1, b"/ok2": 1})  # never entered for /boom
    assert [r.target for r in backend.requests] == [b"/ok", b"/late", b"/ok2"]
    assert any(
        "exploding-gate" in rec.getMessage() for rec in caplog.records if rec.name == "distpat.pipeline"
    )


# -- 8. effects the server is not configured for ---------------------------------------------------


async def test_effects_without_their_carriers_are_answered_and_name_what_is_missing() -> None:
    results: list[CallResult] = []

    def call(request: CoreRequest) -> Effect:
        def then(result: CallResult) -> Effect:
            results.append(result)
            return Answer(503, (result.error or "").encode())

        return Call((b"INCR", b"k"), then)

    def fetch(request: CoreRequest) -> Effect:
        return Fetch((SubRequest(None, b"/x"),), lambda results: Answer(200))

    def join(request: CoreRequest) -> Effect:
        return Join(b"key", lambda flight: None)

    route = Routes(
        {
            b"/call": call,
            b"/fetch": fetch,
            b"/join": join,
            b"/mirror": Forward(mirror=("default",)),
            b"/nopool": Forward(pool="nowhere"),
        }
    )
    async with (
        Backend() as backend,
        serving(route, upstreams=(backend.url,)) as p,
        connected(p.port) as client,
    ):
        carriers = p.state.carriers  # a server made without them (ProxyServer wires all but Redis)
        carriers.fetch = carriers.join = carriers.mirror = None
        got = await ask(
            client,
            (b"GET", b"/call"),
            (b"GET", b"/fetch"),
            (b"GET", b"/join"),
            (b"GET", b"/mirror"),
            (b"GET", b"/nopool"),
            (b"GET", b"/ok"),
        )
    assert [w.status for w in got] == [503, 500, 500, 500, 500, 200]
    [result] = results
    assert result.value is None
    assert result.error is not None
    assert result.error.startswith("unavailable")
    assert got[0].body.startswith(b"unavailable")
    assert b"sub-requests" in got[1].body
    assert b"request coalescing" in got[2].body
    assert b"mirror" in got[3].body
    assert b"'nowhere'" in got[4].body
    assert [r.target for r in backend.requests] == [b"/ok"]


# -- 9. the hot path -------------------------------------------------------------------------------


class AddOnly(Stage):
    kind = "add-only"

    def __init__(self, reads: frozenset[bytes] = frozenset()) -> None:
        self.reads = reads

    def on_request(self, request: CoreRequest, tick: Tick) -> Effect | None:
        return Forward(add=((b"X-Route", request.field(b"x-user") or b"anon"),))


async def test_a_stage_that_only_forwards_keeps_the_one_pass_forwarder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def general(*args: object) -> None:
        raise AssertionError("the general path was taken")

    monkeypatch.setattr(distpat.net.server, "forward_general", general)
    async with Backend() as backend:
        async with serving(AddOnly(frozenset({b"x-user"})), upstreams=(backend.url,)) as p:
            [r] = await _ask_once(p.port, req(b"/hot", fields=b"X-User: u1\r\n"))
        assert r.status == 200
        [forwarded] = backend.requests
        assert forwarded.header(b"x-route") == b"u1"
        # a stage reading every field keeps it too: they are captured in the same pass
        async with serving(AddOnly(ALL_FIELDS), upstreams=(backend.url,)) as p:
            [r] = await _ask_once(p.port, req(b"/all", fields=b"X-User: u2\r\n"))
        assert r.status == 200
        assert backend.requests[-1].header(b"x-route") == b"u2"
        # the control: a Connection field naming another field takes the general path, so the
        # patch is in force
        async with serving(AddOnly(ALL_FIELDS), upstreams=(backend.url,)) as p:
            [r] = await _ask_once(p.port, req(b"/general", fields=b"Connection: x-extra\r\nX-Extra: 1\r\n"))
        assert r.status != 200
        assert len(backend.requests) == 2


async def _ask_once(port: int, raw: bytes) -> list[Wire]:
    async with connected(port) as client:
        await client.send(raw)
        got, _, _ = await read_wire(client.reader, [b"GET"])
        return got
