"""The engine carrying out stages' effects beyond forwarding, over real loopback sockets: mirror
copies, sub-requests (Fetch) and keyed flights (Join), wired by ProxyServer."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from pathlib import Path

from distpat.core.stage import (
    Amend,
    Answer,
    Call,
    CallResult,
    Effect,
    Fetch,
    Flight,
    FlightRole,
    Forward,
    Hold,
    Join,
    Outcome,
    Request,
    Response,
    Stage,
    SubRequest,
    SubResult,
    Tick,
)
from distpat.net.proxy import ProxyConfig, ProxyServer
from tests.effectkit import dead_url, until
from tests.httpkit import Backend, Reply, exchange
from tests.httpkit import Request as SeenRequest
from tests.rediskit import raw_exchange, redis_servers


class Mirror(Stage):
    kind = "mirror"
    pools = ("shadow",)

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        return Forward(mirror=("shadow",))


async def test_a_mirror_gets_a_copy_with_its_body_and_the_primary_answers() -> None:
    async with Backend() as primary, Backend() as shadow:
        config = ProxyConfig(
            listen=("127.0.0.1", 0),
            upstreams=(primary.url,),
            pools=(("shadow", (shadow.url,)),),
            stages=(Mirror(),),
        )
        server = ProxyServer(config)
        await server.start()
        try:
            [answer] = await exchange(
                server.port, b"POST /orders HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
            )
            assert answer.status == 200
            await until(lambda: len(shadow.requests) == 1)
        finally:
            await server.shutdown(1)
        assert [r.body for r in primary.requests] == [b"hello"]
        assert shadow.requests[0].target == b"/orders"
        assert shadow.requests[0].body == b"hello"
        text = server.metrics.render()[0].decode()
        assert 'distpat_mirror_requests_total{pool="shadow",result="sent"} 1.0' in text


async def test_a_dead_mirror_is_counted_failed_and_the_primary_is_unaffected() -> None:
    async with Backend() as primary:
        config = ProxyConfig(
            listen=("127.0.0.1", 0),
            upstreams=(primary.url,),
            pools=(("shadow", (dead_url(),)),),
            stages=(Mirror(),),
        )
        server = ProxyServer(config)
        await server.start()
        try:
            answers = await exchange(server.port, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n" * 3, count=3)
            assert [a.status for a in answers] == [200, 200, 200]
            await until(lambda: b'result="failed"} 3.0' in server.metrics.render()[0])
        finally:
            await server.shutdown(1)


class Gather(Stage):
    """Asks two leaves and answers with what came back (the scatter/gather root's shape)."""

    kind = "gather"
    pools = ("leaves",)

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        def merge(results: tuple[SubResult, ...]) -> Effect:
            body = json.dumps([[r.status, r.body.decode(), r.error] for r in results]).encode()
            return Answer(200, body, content_type=b"application/json")

        subs = tuple(SubRequest("leaves", b"/leaf" + request.target, order=(name,)) for name in self.leaves)
        return Fetch(subs, then=merge, deadline=0.5)

    def __init__(self, leaves: tuple[str, ...]) -> None:
        self.leaves = leaves


async def test_a_fetch_fans_out_and_answers_with_complete_and_partial_results() -> None:
    async def fast(request: SeenRequest) -> Reply:
        return Reply(body=b"fast:" + request.target)

    async def slow(request: SeenRequest) -> Reply:
        return Reply(body=b"slow", delay=3.0)

    async with Backend(fast) as a, Backend(slow) as b:
        names = (a.url.removeprefix("http://"), b.url.removeprefix("http://"))
        config = ProxyConfig(
            listen=("127.0.0.1", 0),
            upstreams=(a.url,),
            pools=(("leaves", (a.url, b.url)),),
            stages=(Gather(names),),
        )
        server = ProxyServer(config)
        await server.start()
        try:
            [answer] = await exchange(server.port, b"GET /q HTTP/1.1\r\nHost: h\r\n\r\n")
        finally:
            await server.shutdown(1)
        assert answer.status == 200
        assert json.loads(answer.body) == [[200, "fast:/leaf/q", None], [0, "", "timeout"]]


class Coalesce(Stage):
    kind = "coalesce"

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        def woken(flight: Flight) -> Effect | None:
            if flight.role is FlightRole.LEADER:
                return Forward(capture=1 << 16)
            outcome = flight.outcome
            if flight.role is FlightRole.SHARED and outcome is not None and outcome.body is not None:
                return Answer(outcome.status, outcome.body, headers=((b"X-Shared", b"1"),))
            return None

        return Join(request.target, then=woken, timeout=2.0)


async def test_concurrent_requests_for_one_key_make_one_upstream_request() -> None:
    async def slowish(request: SeenRequest) -> Reply:
        return Reply(body=b"the answer", delay=0.3)

    async with Backend(slowish) as origin:
        server = ProxyServer(
            ProxyConfig(listen=("127.0.0.1", 0), upstreams=(origin.url,), stages=(Coalesce(),))
        )
        await server.start()
        try:
            answers = await asyncio.gather(
                *(exchange(server.port, b"GET /hot HTTP/1.1\r\nHost: h\r\n\r\n") for _ in range(5))
            )
        finally:
            await server.shutdown(1)
        assert [a.body for [a] in answers] == [b"the answer"] * 5
        assert sum(1 for [a] in answers if a.header(b"x-shared") == b"1") == 4
        assert len(origin.requests) == 1


class Cookie(Stage):
    kind = "cookie"
    FORWARD = Forward(respond=((b"Set-Cookie", b"sid=new"),))

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        return self.FORWARD


class StaleIfError(Stage):
    """Puts a stored copy in place of an error (the shape of RFC 5861's stale-if-error)."""

    kind = "stale"

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, int]] = []

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        return Forward(respond=((b"Set-Cookie", b"sid=abc"),))

    def on_response(self, request: Request, response: Response, tick: Tick) -> Amend | Answer | None:
        if response.status >= 500 and response.upstream is None:
            return Answer(200, b"stale copy", headers=((b"Warning", b'110 - "stale"'),))
        return None

    def on_done(self, request: Request, outcome: Outcome, tick: Tick) -> None:
        self.outcomes.append((outcome.kind.value, outcome.status))


async def test_the_engines_own_502_passes_the_response_stages_and_keeps_a_stages_fields() -> None:
    stage = StaleIfError()
    server = ProxyServer(ProxyConfig(listen=("127.0.0.1", 0), upstreams=(dead_url(),), stages=(stage,)))
    await server.start()
    try:
        [answer] = await exchange(server.port, b"GET /page HTTP/1.1\r\nHost: h\r\n\r\n")
    finally:
        await server.shutdown(1)
    assert answer.status == 200
    assert answer.body == b"stale copy"
    assert answer.header(b"warning") == b'110 - "stale"'
    assert stage.outcomes == [("upstream_failed", 200)]  # the failure it was, answered with the copy

    plain = Cookie()  # no on_response: the 502 is the engine's error_response, with the stage's fields
    server = ProxyServer(ProxyConfig(listen=("127.0.0.1", 0), upstreams=(dead_url(),), stages=(plain,)))
    await server.start()
    try:
        [answer] = await exchange(server.port, b"GET /page HTTP/1.1\r\nHost: h\r\n\r\n")
    finally:
        await server.shutdown(1)
    assert answer.status == 502
    assert answer.header(b"set-cookie") == b"sid=new"


class Counter(Stage):
    """Counts each client's requests in Redis and refuses the third (the shape of a shared limiter)."""

    kind = "counter"

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        def decide(result: CallResult) -> Effect | None:
            if result.error is not None:
                return Answer(503, result.error.encode())
            assert isinstance(result.value, int)
            return Answer(429, b"%d" % result.value) if result.value > 2 else None

        return Call((b"INCR", b"count:" + request.client.encode()), then=decide)


async def test_a_call_goes_to_the_configured_redis_and_its_reply_decides(tmp_path: Path) -> None:
    async with redis_servers(tmp_path, 1) as [redis], Backend() as origin:
        config = ProxyConfig(
            listen=("127.0.0.1", 0),
            upstreams=(origin.url,),
            stages=(Counter(),),
            redis=f"redis://127.0.0.1:{redis.port}/3",
        )
        server = ProxyServer(config)
        await server.start()
        try:
            answers = await exchange(server.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 3, count=3)
        finally:
            await server.shutdown(1)
        assert [a.status for a in answers] == [200, 200, 429]
        assert answers[2].body == b"3"
        assert len(origin.requests) == 2
        reply, _ = await raw_exchange(redis.port, b"SELECT 3\r\nGET count:127.0.0.1\r\nQUIT\r\n")
        assert reply == b"+OK\r\n$1\r\n3\r\n+OK\r\n"


async def test_a_pool_balances_as_its_own_balance_says() -> None:
    config = ProxyConfig(
        listen=("127.0.0.1", 0),
        upstreams=("http://127.0.0.1:9",),
        pools=(("x", ("http://127.0.0.1:10", "http://127.0.0.1:11")),),
        pool_balance=(("x", "least_outstanding"),),
    )
    server = ProxyServer(config)
    assert server.pools["x"].balance == "least_outstanding"
    assert server.pools["default"].balance == "round_robin"
    await server.shutdown(1)


class Holding(Stage):
    kind = "holding"

    def __init__(self) -> None:
        self.done: list[str] = []

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        return Hold(0.5)

    def on_done(self, request: Request, outcome: Outcome, tick: Tick) -> None:
        self.done.append(outcome.kind.value)


async def test_a_held_request_reaches_the_upstream_only_after_its_hold() -> None:
    stage = Holding()
    async with Backend() as origin:
        server = ProxyServer(ProxyConfig(listen=("127.0.0.1", 0), upstreams=(origin.url,), stages=(stage,)))
        await server.start()
        try:
            pending = asyncio.ensure_future(exchange(server.port, b"GET /held HTTP/1.1\r\nHost: h\r\n\r\n"))
            await asyncio.sleep(0.1)
            assert origin.requests == []  # still held (a slower machine only holds it longer)
            [answer] = await pending
            assert answer.status == 200
            assert [r.target for r in origin.requests] == [b"/held"]
            # a client that goes away while held: no upstream request, on_done once
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /gone HTTP/1.1\r\nHost: h\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            sock = writer.get_extra_info("socket")  # a reset, not a FIN (a FIN is a half-close: answered)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            await until(lambda: len(stage.done) == 2)
            await asyncio.sleep(0.6)  # past the hold: the timer was cancelled, nothing is sent
        finally:
            await server.shutdown(1)
        assert stage.done == ["answered", "client_gone"]
        assert [r.target for r in origin.requests] == [b"/held"]
