"""The HTTP/1.1 proxy engine over real loopback sockets, with recording upstreams."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from distpat.core.stage import Amend, Answer, Effect, Forward, Response, Stage, Tick
from distpat.core.stage import Request as CoreRequest
from distpat.net.health import HealthCheck
from distpat.net.proxy import ProxyConfig, ProxyServer
from distpat.net.server import EngineSettings
from tests.httpkit import Backend, RawClient, Reply, Request, echo, exchange


@contextlib.asynccontextmanager
async def proxy(*urls: str, **settings: object) -> AsyncIterator[ProxyServer]:
    server = ProxyServer(
        ProxyConfig(listen=("127.0.0.1", 0), upstreams=urls, settings=replace(EngineSettings(), **settings))  # type: ignore[arg-type]
    )
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(1)


async def test_get_is_forwarded_with_proxy_headers() -> None:
    async with Backend() as backend, proxy(backend.url) as p:
        [r] = await exchange(
            p.port,
            b"GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, X-Secret\r\n"
            b"X-Secret: s\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 10.1.1.1\r\nTE: trailers\r\n"
            b"User-Agent: t\r\n\r\n",
        )
        assert r.status == 200
        assert r.body == b"GET /a?b=1 0"
        assert r.header(b"via") == b"1.1 distpat"
        [req] = backend.requests
        assert req.target == b"/a?b=1"
        assert req.header(b"host") == b"example.test"
        assert req.header(b"x-forwarded-for") == b"10.1.1.1, 127.0.0.1"
        assert req.header(b"x-forwarded-proto") == b"http"
        assert req.header(b"x-forwarded-host") == b"example.test"
        assert req.header(b"user-agent") == b"t"
        # hop-by-hop headers, and every header the Connection header names, stop at the proxy
        assert not {b"x-secret", b"keep-alive", b"te"} & req.header_names()


async def test_hop_by_hop_response_headers_are_removed() -> None:
    async def handler(request: Request) -> Reply:
        return Reply(
            headers=[(b"Connection", b"X-Internal"), (b"X-Internal", b"1"), (b"X-Public", b"2")], body=b"ok"
        )

    async with Backend(handler) as backend, proxy(backend.url) as p:
        [r] = await exchange(p.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert r.header(b"x-public") == b"2"
        assert r.header(b"x-internal") is None
        assert r.header(b"connection") is None


async def test_keep_alive_reuses_client_and_upstream_connections() -> None:
    async with Backend() as backend, proxy(backend.url) as p:
        client = await RawClient.connect(p.port)
        try:
            for i in range(20):
                await client.send(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
                [r] = await client.read_responses(1)
                assert r.body == b"GET /%d 0" % i
        finally:
            await client.close()
        assert backend.connections == 1


async def test_pipelined_requests_are_answered_in_order() -> None:
    delays = {b"/slow": 0.2, b"/fast": 0.0}

    async def handler(request: Request) -> Reply:
        return Reply(body=request.target, delay=delays.get(request.target, 0.0))

    async with Backend(handler) as backend, proxy(backend.url) as p:
        raw = b"".join(
            b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % t for t in (b"/slow", b"/fast", b"/slow", b"/3")
        )
        responses = await exchange(p.port, raw, count=4)
        assert [r.body for r in responses] == [b"/slow", b"/fast", b"/slow", b"/3"]


async def test_content_length_and_chunked_uploads() -> None:
    async with Backend() as backend, proxy(backend.url) as p:
        [r] = await exchange(p.port, b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
        assert r.body == b"POST /u 5"
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (b"ab", b"cde", b"f" * 300))
        [r] = await exchange(
            p.port,
            b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n",
        )
        assert r.body == b"PUT /c 305"
        assert backend.requests[-1].body == b"abcde" + b"f" * 300
        assert backend.requests[-1].header(b"transfer-encoding") == b"chunked"


async def test_chunked_response_to_http10_client_is_close_delimited() -> None:
    async def handler(request: Request) -> Reply:
        async def pieces() -> AsyncIterator[bytes]:
            for piece in (b"one ", b"two"):
                yield piece

        return Reply(chunks=pieces())

    async with Backend(handler) as backend, proxy(backend.url) as p:
        [r] = await exchange(p.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert r.body == b"one two"
        assert r.header(b"transfer-encoding") == b"chunked"
        client = await RawClient.connect(p.port)
        try:
            await client.send(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
            raw = await client.read_until_closed()
        finally:
            await client.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"connection: close" in head.lower()
        assert body == b"one two"


async def test_head_and_no_body_statuses() -> None:
    async def handler(request: Request) -> Reply:
        if request.target == b"/204":
            return Reply(status=204, raw=b"HTTP/1.1 204 No Content\r\n\r\n")
        return Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")  # HEAD: no body follows

    async with Backend(handler) as backend, proxy(backend.url) as p:
        client = await RawClient.connect(p.port)
        try:
            # (the test's parser cannot know the first answer is to a HEAD, so read raw bytes)
            await client.send(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\nGET /204 HTTP/1.1\r\nHost: h\r\n\r\n")
            raw = b""
            async with asyncio.timeout(5):
                while raw.count(b"\r\n\r\n") < 2:
                    raw += await client.reader.read(65536)
        finally:
            await client.close()
        first, second, rest = raw.split(b"\r\n\r\n", 2)
        assert first.startswith(b"HTTP/1.1 200")
        assert b"Content-Length: 10" in first
        assert second.startswith(b"HTTP/1.1 204")  # nothing between: the HEAD answer has no body
        assert rest == b""


async def test_expect_100_continue_is_answered_by_the_proxy() -> None:
    async with Backend() as backend, proxy(backend.url) as p:
        client = await RawClient.connect(p.port)
        try:
            await client.send(
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
            )
            interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
            assert interim.startswith(b"HTTP/1.1 100")
            await client.send(b"abc")
            [r] = await client.read_responses(1)
            assert r.body == b"POST / 3"
        finally:
            await client.close()
        assert backend.requests[0].header(b"expect") is None


async def test_upstream_down_is_502() -> None:
    async with Backend() as backend:
        url = backend.url
    async with proxy(url) as p:  # the backend is closed: nothing listens there now
        [r] = await exchange(p.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert r.status == 502
        assert b"unreachable" in r.body


async def test_failover_to_the_next_upstream_for_idempotent_requests() -> None:
    async with Backend() as dead:
        dead_url = dead.url
    async with Backend() as live, proxy(dead_url, live.url) as p:
        statuses = [
            r.status for r in await exchange(p.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 4, count=4)
        ]
        assert statuses == [200] * 4
        # a POST is not retried elsewhere (it is not idempotent): it may see the dead one
        results = []
        for _ in range(4):
            [r] = await exchange(p.port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
            results.append(r.status)
        assert set(results) <= {200, 502}


async def test_slow_upstream_is_504_at_the_response_timeout() -> None:
    async def handler(request: Request) -> Reply:
        return Reply(body=b"late", delay=2.0)

    async with Backend(handler) as backend, proxy(backend.url, response_timeout=0.3) as p:
        loop = asyncio.get_running_loop()
        started = loop.time()
        [r] = await exchange(p.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert r.status == 504
        assert 0.25 < loop.time() - started < 1.5


SMUGGLING = [
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\nHost: h\n\n",
    b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n",
]


@pytest.mark.parametrize("raw", SMUGGLING, ids=range(len(SMUGGLING)))
async def test_smuggling_vectors_get_400_and_reach_no_upstream(raw: bytes) -> None:
    async with Backend() as backend, proxy(backend.url) as p:
        client = await RawClient.connect(p.port)
        try:
            await client.send(raw + b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n")
            data = await client.read_until_closed()
        finally:
            await client.close()
        assert data.startswith(b"HTTP/1.1 400 "), data[:80]
        assert data.count(b"HTTP/1.1") == 1
        assert backend.requests == []


async def test_limits_431_and_413() -> None:
    async with Backend() as backend, proxy(backend.url, max_header_bytes=1024, max_body_bytes=10) as p:
        [r] = await exchange(p.port, b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
        assert r.status == 431
        [r] = await exchange(p.port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n" + b"a" * 11)
        assert r.status == 413
        chunked = (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"8\r\naaaaaaaa\r\n8\r\naaaaaaaa\r\n0\r\n\r\n"
        )
        client = await RawClient.connect(p.port)
        try:
            await client.send(chunked)
            data = await client.read_until_closed()
        finally:
            await client.close()
        assert b" 413 " in data.split(b"\r\n")[0] or data.startswith(b"HTTP/1.1 413")


async def test_slowloris_is_cut_at_the_header_timeout_while_others_are_served() -> None:
    async with Backend() as backend, proxy(backend.url, header_timeout=0.5) as p:
        slow = await RawClient.connect(p.port)
        try:
            await slow.send(b"GET / HTTP/1.1\r\nHost: h\r\n")
            loop = asyncio.get_running_loop()
            started = loop.time()
            for _ in range(2):  # a header line every 0.2 s, the head never complete
                await asyncio.sleep(0.2)
                [r] = await exchange(p.port, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n")
                assert r.status == 200
                await slow.send(b"X-A: b\r\n")
            data = await slow.read_until_closed(timeout=3)
            assert data.startswith(b"HTTP/1.1 408")
            assert 0.4 < loop.time() - started < 1.5  # cut at the timeout, though bytes kept coming
        finally:
            await slow.close()


async def test_idle_keepalive_connections_are_closed() -> None:
    async with Backend() as backend, proxy(backend.url, keepalive_timeout=0.3) as p:
        client = await RawClient.connect(p.port)
        try:
            await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            await client.read_responses(1)
            assert await client.closed(timeout=2)
        finally:
            await client.close()


async def test_one_bad_connection_does_not_harm_another() -> None:
    async with Backend(echo) as backend, proxy(backend.url) as p:
        good = await RawClient.connect(p.port)
        bad = await RawClient.connect(p.port)
        try:
            await good.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab")
            await bad.send(b"\x00\x01garbage\r\n\r\n")
            assert (await bad.read_until_closed()).startswith(b"HTTP/1.1 400")
            await good.send(b"cd")
            [r] = await good.read_responses(1)
            assert r.body == b"POST / 4"
        finally:
            await good.close()
            await bad.close()


async def test_shutdown_finishes_requests_in_flight() -> None:
    async def handler(request: Request) -> Reply:
        return Reply(body=b"done", delay=0.3)

    async with Backend(handler) as backend:
        server = ProxyServer(ProxyConfig(listen=("127.0.0.1", 0), upstreams=(backend.url,)))
        await server.start()
        port = server.port
        pending = [
            asyncio.ensure_future(exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")) for _ in range(5)
        ]
        await asyncio.sleep(0.1)
        await server.shutdown(timeout=5)
        results = await asyncio.gather(*pending)
        assert [r.status for [r] in results] == [200] * 5
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)


class Gate(Stage):
    """A stage: answers /blocked itself, routes /b to the second upstream, tags both directions."""

    kind = "gate"

    def __init__(self, second: str) -> None:
        self.second = second
        self.seen: list[tuple[bytes, int]] = []

    def on_request(self, request: CoreRequest, tick: Tick) -> Effect | None:
        assert tick.mono > 0
        assert tick.wall > 1e9
        if request.target == b"/blocked":
            return Answer(403, b"blocked by policy\n", headers=((b"X-Gate", b"local"),))
        if request.target.startswith(b"/b"):
            return Forward(order=(self.second,), add=((b"X-Gate", b"in"),))
        return Forward(add=((b"X-Gate", b"in"),))

    def on_response(self, request: CoreRequest, response: Response, tick: Tick) -> Amend | None:
        self.seen.append((request.target, response.status))
        return Amend(add=((b"X-Gate-Out", b"%d" % response.status),))


async def test_stages_answer_locally_route_and_change_headers() -> None:
    async with Backend() as first, Backend() as second:
        gate = Gate(f"127.0.0.1:{second.port}")
        server = ProxyServer(
            ProxyConfig(listen=("127.0.0.1", 0), upstreams=(first.url, second.url), stages=(gate,))
        )
        await server.start()
        try:
            responses = await exchange(
                server.port,
                b"GET /blocked HTTP/1.1\r\nHost: h\r\n\r\n"
                b"GET /b1 HTTP/1.1\r\nHost: h\r\n\r\nGET /b2 HTTP/1.1\r\nHost: h\r\n\r\n",
                count=3,
            )
        finally:
            await server.shutdown(1)
        assert [r.status for r in responses] == [403, 200, 200]
        assert responses[0].body == b"blocked by policy\n"
        assert responses[0].header(b"x-gate") == b"local"
        # a stage does not see its own local answer on the way out (it made it); the upstreams' it does
        assert [r.header(b"x-gate-out") for r in responses] == [None, b"200", b"200"]
        assert first.requests == []  # /blocked reached nobody, /b* went to the second upstream
        assert [r.target for r in second.requests] == [b"/b1", b"/b2"]
        assert all(r.header(b"x-gate") == b"in" for r in second.requests)
        assert gate.seen == [(b"/b1", 200), (b"/b2", 200)]


async def test_active_health_checks_take_a_failing_upstream_out_and_back() -> None:
    healthy = {"sick": False}

    def handler_for(name: str):  # type: ignore[no-untyped-def]
        async def handler(request: Request) -> Reply:
            if request.target == b"/healthz":
                bad = name == "b" and healthy["sick"]
                return Reply(status=503 if bad else 200, body=b"health")
            return Reply(body=name.encode())

        return handler

    async with Backend(handler_for("a")) as a, Backend(handler_for("b")) as b:
        check = HealthCheck(path="/healthz", interval=0.05, timeout=1, fails=2)
        server = ProxyServer(
            ProxyConfig(listen=("127.0.0.1", 0), upstreams=(a.url, b.url), health_check=check)
        )
        await server.start()
        try:

            async def bodies() -> set[bytes]:
                rs = await exchange(server.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 6, count=6)
                return {r.body for r in rs}

            assert await bodies() == {b"a", b"b"}
            healthy["sick"] = True
            await asyncio.sleep(0.4)  # several intervals: two failures in a row
            assert await bodies() == {b"a"}
            assert server.ready()
            healthy["sick"] = False
            await asyncio.sleep(0.3)
            assert await bodies() == {b"a", b"b"}
        finally:
            await server.shutdown(1)
        assert any(r.header(b"user-agent") == b"distpat-health" for r in b.requests)


# -- regressions from review: a broken upstream must never corrupt what a client receives --------


async def read_all(client: RawClient, timeout: float = 3.0) -> bytes:
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(timeout):
            while chunk := await client.reader.read(65536):
                data += chunk
    return data


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\nabc",
    ],
)
async def test_a_truncated_response_cuts_the_client_connection(raw: bytes) -> None:
    async def handler(request: Request) -> Reply:
        return Reply(raw=raw, close=True) if request.target == b"/cut" else Reply(body=b"next")

    async with Backend(handler) as backend, proxy(backend.url) as p:
        client = await RawClient.connect(p.port)
        try:
            await client.send(b"GET /cut HTTP/1.1\r\nHost: h\r\n\r\n")
            await asyncio.sleep(0.2)
            with contextlib.suppress(ConnectionError):
                await client.send(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
            data = await read_all(client)
        finally:
            await client.close()
        assert data.count(b"HTTP/1.1 ") == 1  # no second response spliced into the cut body
        assert not data.endswith(b"0\r\n\r\n")  # and no terminating chunk pretending it was whole


async def test_bytes_an_upstream_sends_after_its_response_reach_no_other_request() -> None:
    async def handler(request: Request) -> Reply:
        if request.target == b"/first":
            return Reply(
                raw=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Injected: 1\r\n\r\nevil"
            )
        return Reply(body=b"good")

    async with Backend(handler) as backend, proxy(backend.url) as p:
        responses = await exchange(
            p.port, b"GET /first HTTP/1.1\r\nHost: h\r\n\r\nGET /second HTTP/1.1\r\nHost: h\r\n\r\n", count=2
        )
        assert [r.body for r in responses] == [b"ok", b"good"]
        assert responses[1].header(b"x-injected") is None


@pytest.mark.parametrize(
    "raw",
    [
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-No-Host: 1\r\n\r\n",
    ],
)
async def test_requests_the_engine_cannot_forward_are_refused_before_the_upstream(raw: bytes) -> None:
    async with Backend() as backend, proxy(backend.url) as p:
        client = await RawClient.connect(p.port)
        try:
            await client.send(raw)
            data = await read_all(client)
        finally:
            await client.close()
        assert data.split(b" ")[1] in (b"400", b"501", b"505")
        assert backend.requests == []


async def test_an_early_answer_closes_the_connection_cleanly_while_the_client_still_sends() -> None:
    done = asyncio.Event()

    async def answer_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")  # the head only: the body is never read
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
            await writer.drain()
            await done.wait()
        finally:
            writer.close()

    upstream = await asyncio.start_server(answer_at_once, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    try:
        async with proxy(f"http://127.0.0.1:{port}") as p:
            client = await RawClient.connect(p.port)
            try:
                await client.send(
                    b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 100_000
                )
                data = await read_all(client)
            finally:
                await client.close()
    finally:
        done.set()
        upstream.close()
        await upstream.wait_closed()
    # the answer arrives whole, says the connection closes, and is not destroyed by a reset
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in data.lower()
    assert data.endswith(b"early")


async def test_a_garbage_answer_on_a_reused_connection_is_not_retried() -> None:
    async def handler(request: Request) -> Reply:
        return Reply(raw=b"NOT HTTP\r\n\r\n") if request.target == b"/bad" else Reply(body=b"ok")

    async with Backend(handler) as backend, proxy(backend.url) as p:
        client = await RawClient.connect(p.port)
        try:
            await client.send(b"GET /warm HTTP/1.1\r\nHost: h\r\n\r\n")
            await client.read_responses(1)
            await client.send(b"DELETE /bad HTTP/1.1\r\nHost: h\r\n\r\n")
            [r] = await client.read_responses(1)
        finally:
            await client.close()
        assert r.status == 502
        assert [q.target for q in backend.requests].count(b"/bad") == 1  # it reached the upstream once


async def test_a_bad_pipelined_request_is_answered_400_after_those_before_it() -> None:
    async def handler(request: Request) -> Reply:
        return Reply(body=b"ok", delay=0.2)

    async with Backend(handler) as backend, proxy(backend.url) as p:
        client = await RawClient.connect(p.port)
        try:
            await client.send(
                b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n"
            )
            data = await read_all(client)
        finally:
            await client.close()
        first, _, rest = data.partition(b"ok")
        assert first.startswith(b"HTTP/1.1 200 OK")
        assert rest.startswith(b"HTTP/1.1 400 ")


async def test_an_http10_request_without_host_gets_the_upstreams_name() -> None:
    """HTTP/1.1 requires Host: a request forwarded as 1.1 carries the upstream's, as nginx's $proxy_host."""
    async with Backend() as backend, proxy(backend.url) as p:
        [r] = await exchange(p.port, b"GET /x HTTP/1.0\r\nUser-Agent: t\r\n\r\n")
        [r2] = await exchange(p.port, b"GET /y HTTP/1.0\r\nHost: named.test\r\n\r\n")
        assert (r.status, r2.status) == (200, 200)
        first, second = backend.requests
        assert first.header(b"host") == f"127.0.0.1:{backend.port}".encode()
        assert first.header(b"user-agent") == b"t"
        assert first.header(b"x-forwarded-host") is None
        assert second.header(b"host") == b"named.test"
        assert [v for n, v in second.headers if n.lower() == b"host"] == [b"named.test"]


async def test_access_log_request_time_counts_from_the_request_not_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Backend() as backend:
        server = ProxyServer(
            ProxyConfig(listen=("127.0.0.1", 0), upstreams=(backend.url,), access_log="json")
        )
        await server.start()
        try:
            client = await RawClient.connect(server.port)
            try:
                await asyncio.sleep(0.5)  # connected, idle before its first request
                with caplog.at_level("INFO", logger="distpat.access"):
                    await client.send(b"GET /t HTTP/1.1\r\nHost: example.test\r\n\r\n")
                    [r] = await client.read_responses(1)
            finally:
                await client.close()
        finally:
            await server.shutdown(1)
    assert r.status == 200
    [line] = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "distpat.access"]
    assert line["request"] == "GET /t HTTP/1.1"
    assert line["status"] == 200
    assert 0 <= line["request_time"] < 0.4
