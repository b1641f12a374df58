"""Hostile upstream response heads: the response-head limit (issue 10, "Hostile input").

An upstream sending a head larger than ``max_response_header_bytes`` -- many lines, one endless line,
or lines forever -- fails the exchange at once: the client gets 502, the upstream connection is
closed, and the proxy holds no more than the limit plus one read of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.httpkit import HOST, Backend, Reply, Request, exchange, running_proxy

LIMIT = 4096


def proxy(url: str, **overrides: object) -> contextlib.AbstractAsyncContextManager[Any]:
    return running_proxy(url, max_response_header_bytes=LIMIT, **overrides)


def head_of(lines: int, value_bytes: int) -> bytes:
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * value_bytes) for i in range(lines))
    return b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok"


@settings(max_examples=10, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 200), st.integers(0, 300)), min_size=1, max_size=6))
def test_heads_over_the_limit_get_502_and_the_others_pass(shapes: list[tuple[int, int]]) -> None:
    async def run() -> None:
        raws = [head_of(lines, size) for lines, size in shapes]

        async def handler(request: Request) -> Reply:
            return Reply(raw=raws[int(request.target[1:])])

        async with Backend(handler) as backend, proxy(backend.url) as p:
            for i, (lines, size) in enumerate(shapes):
                [r] = await exchange(p.port, b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i, timeout=10.0)
                fields = lines * (len(b"X-F: ") + 2 + size) + sum(len(b"%d" % n) for n in range(lines))
                if fields + len(b"Content-Length: 2\r\n") <= LIMIT - 64:
                    assert r.status == 200, (lines, size, r)
                    assert r.body == b"ok"
                    assert r.header(b"x-f0") == b"v" * size
                elif fields > LIMIT + 64:
                    assert r.status == 502, (lines, size, r)
                    assert r.header(b"x-f0") is None  # nothing of the head relayed
                    assert b"X-F0" not in r.body
                else:
                    assert r.status in (200, 502)  # within the per-line accounting of the boundary

    asyncio.run(run())


async def flood_server(
    chunk: bytes, total: int, first: bytes = b"HTTP/1.1 200 OK\r\n"
) -> tuple[asyncio.base_events.Server, asyncio.Event, list[int]]:
    """An upstream that answers with ``first`` then ``chunk`` repeated up to ``total`` bytes."""
    closed = asyncio.Event()
    sent = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(first)
            while sent[0] < total:
                writer.write(chunk)
                sent[0] += len(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            closed.set()
            writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    return server, closed, sent


async def test_a_flood_of_header_lines_gets_502_before_it_ends() -> None:
    total = 8 << 20
    for chunk in (b"X-Flood: " + b"f" * 50 + b"\r\n", b"g" * 1024):  # many lines; one endless line
        server, closed, sent = await flood_server(chunk, total)
        port = server.sockets[0].getsockname()[1]
        try:
            async with proxy(f"http://{HOST}:{port}") as p:
                [r] = await exchange(p.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", timeout=30.0)
                assert r.status == 502
                assert b"upstream" in r.body
                async with asyncio.timeout(30):
                    await closed.wait()  # the proxy closed the upstream connection ...
                assert sent[0] < total  # ... before the flood ended
        finally:
            server.close()
            await server.wait_closed()


async def test_an_informational_response_does_not_count_against_the_final_head() -> None:
    head = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + head_of(1, LIMIT // 2)
    async with Backend(lambda request: _reply(head)) as backend, proxy(backend.url) as p:
        for _ in range(3):  # and the pooled connection starts each head from zero
            # HTTP/1.0: the 103 is not relayed, so the one response read is the final one
            [r] = await exchange(p.port, b"GET / HTTP/1.0\r\nHost: h\r\n\r\n", timeout=10.0)
            assert r.status == 200
            assert r.body == b"ok"


async def _reply(raw: bytes) -> Reply:
    return Reply(raw=raw)


async def test_a_small_head_read_with_a_large_body_passes() -> None:
    body = b"b" * 300_000  # the first read holds the head and far more than the limit of body

    async def handler(request: Request) -> Reply:
        return Reply(headers=[(b"X-Small", b"s" * 100)], body=body)

    async with Backend(handler) as backend, proxy(backend.url) as p:
        for _ in range(3):
            [r] = await exchange(p.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", timeout=10.0)
            assert r.status == 200
            assert r.body == body


@settings(max_examples=8, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 5), st.booleans()), min_size=1, max_size=6))
def test_a_response_content_length_reaches_the_client_canonical(cases: list[tuple[int, int, bool]]) -> None:
    async def run() -> None:
        raws = [
            b"HTTP/1.1 200 OK\r\nContent-Length: %s%d\r\n%s\r\n%s"
            % (b"0" * zeros, n, b"Connection: X-Opt\r\n" if general else b"", b"r" * n)
            for n, zeros, general in cases
        ]

        async def handler(request: Request) -> Reply:
            return Reply(raw=raws[int(request.target[1:])])

        async with Backend(handler) as backend, proxy(backend.url) as p:
            for i, (n, _, _) in enumerate(cases):
                [r] = await exchange(p.port, b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i, timeout=10.0)
                assert r.status == 200
                assert [v for k, v in r.headers if k.lower() == b"content-length"] == [b"%d" % n]
                assert r.body == b"r" * n

    asyncio.run(run())
