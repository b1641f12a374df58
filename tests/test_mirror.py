"""Mirror copies over real loopback sockets: sent whole, answered and discarded, bounded, timed out,
and never in anyone's way (distpat.net.mirror)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from distpat.net.batch import WriteBatch
from distpat.net.mirror import MirrorSender
from distpat.net.pool import UpstreamGroup
from tests import effectkit
from tests.effectkit import dead_url, until
from tests.httpkit import Backend, Reply, Request

GET = b"GET /copy HTTP/1.1\r\nHost: example\r\nX-Copy: 1\r\n\r\n"
CHUNKED_POST = (
    b"POST /upload HTTP/1.1\r\nHost: example\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)


def group_of(*urls: str, name: str = "mirror") -> UpstreamGroup:
    return effectkit.group_of(*urls, name=name)


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, pool: str, event: str) -> None:
        self.seen.append((pool, event))

    def count(self, event: str, pool: str | None = None) -> int:
        return sum(1 for p, e in self.seen if e == event and (pool is None or p == pool))


@pytest.fixture
async def gate() -> AsyncIterator[asyncio.Event]:
    event = asyncio.Event()
    yield event
    event.set()


async def test_a_copy_arrives_byte_for_byte_and_the_connection_is_reused() -> None:
    events = Events()
    async with Backend() as backend:
        group = group_of(backend.url)
        sender = MirrorSender(on_event=events)
        for i in range(3):
            assert sender.send(group, GET) is True
            await until(lambda i=i: events.count("sent") == i + 1)
        assert bytes(backend.raw) == GET * 3
        assert backend.connections == 1  # pooled after each complete keep-alive response
        assert [r.header(b"x-copy") for r in backend.requests] == [b"1"] * 3
        assert sender.counts == {"sent": 3, "failed": 0, "dropped": 0}
        assert sender.in_flight == 0
        await sender.close()
        await group.close()


async def test_a_chunked_body_goes_as_it_was_framed() -> None:
    events = Events()
    async with Backend() as backend:
        group = group_of(backend.url)
        sender = MirrorSender(on_event=events, batch=WriteBatch())  # written with the turn's writes
        assert sender.send(group, CHUNKED_POST)
        await until(lambda: events.count("sent") == 1)
        [request] = backend.requests
        assert (request.method, request.target, request.body) == (b"POST", b"/upload", b"hello world")
        assert bytes(backend.raw) == CHUNKED_POST
        await sender.close()
        await group.close()


async def test_copies_beyond_the_bound_are_dropped_and_counted(gate: asyncio.Event) -> None:
    async def held(request: Request) -> Reply:
        await gate.wait()
        return Reply(body=b"late")

    events = Events()
    async with Backend(held) as backend:
        group = group_of(backend.url, name="slow")
        sender = MirrorSender(max_in_flight=3, on_event=events)
        accepted = [sender.send(group, GET) for _ in range(5)]
        assert accepted == [True, True, True, False, False]
        assert events.seen == [("slow", "dropped"), ("slow", "dropped")]  # reported at once
        assert sender.in_flight == 3
        await until(lambda: len(backend.transports) == 3)
        gate.set()
        await until(lambda: events.count("sent") == 3)
        assert sender.in_flight == 0
        assert sender.send(group, GET)  # room again
        await until(lambda: events.count("sent") == 4)
        assert sender.counts == {"sent": 4, "failed": 0, "dropped": 2}
        await sender.close()
        await group.close()


async def test_a_dead_mirror_returns_at_once_and_is_counted_failed() -> None:
    events = Events()
    group = group_of(dead_url(), name="dead")
    sender = MirrorSender(on_event=events)
    assert sender.send(group, GET) is True
    assert sender.in_flight == 1
    assert events.seen == []
    await until(lambda: events.count("failed") == 1)
    assert events.seen == [("dead", "failed")]
    assert sender.in_flight == 0
    await sender.close()
    await group.close()


async def test_a_slow_mirror_times_out_and_its_connection_is_aborted(gate: asyncio.Event) -> None:
    async def stalled(request: Request) -> Reply:
        await gate.wait()
        return Reply()

    events = Events()
    async with Backend(stalled) as backend:
        group = group_of(backend.url, name="slow")
        sender = MirrorSender(timeout=0.2, on_event=events)
        assert sender.send(group, GET)
        await until(lambda: events.count("failed") == 1)
        await until(lambda: not backend.transports)  # the mirror closed its end
        assert not group.upstreams[0].open
        assert not group.upstreams[0].idle
        assert group.upstreams[0].outstanding == 0
        await sender.close()
        await group.close()


async def test_a_mirror_that_closes_mid_response_is_counted_failed() -> None:
    async def cut(request: Request) -> Reply:
        return Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part", close=True)

    events = Events()
    async with Backend(cut) as backend:
        group = group_of(backend.url)
        sender = MirrorSender(on_event=events)
        assert sender.send(group, GET)
        await until(lambda: events.count("failed") == 1)
        assert not group.upstreams[0].idle  # never pooled
        await sender.close()
        await group.close()


async def test_a_response_that_closes_the_connection_is_sent_but_not_pooled() -> None:
    async def closing(request: Request) -> Reply:
        return Reply(headers=[(b"Connection", b"close")], body=b"bye", close=True)

    events = Events()
    async with Backend(closing) as backend:
        group = group_of(backend.url)
        sender = MirrorSender(on_event=events)
        for i in range(2):
            assert sender.send(group, GET)
            await until(lambda i=i: events.count("sent") == i + 1)
        assert backend.connections == 2
        await sender.close()
        await group.close()


async def test_a_slow_mirror_does_not_hold_up_another(gate: asyncio.Event) -> None:
    async def held(request: Request) -> Reply:
        await gate.wait()
        return Reply()

    events = Events()
    async with Backend(held) as slow, Backend() as fast:
        slow_group, fast_group = group_of(slow.url, name="slow"), group_of(fast.url, name="fast")
        sender = MirrorSender(max_in_flight=8, on_event=events)
        assert sender.send(slow_group, GET)
        assert sender.send(group_of(dead_url(), name="dead"), GET)
        for i in range(4):
            assert sender.send(fast_group, GET)
            await until(lambda i=i: events.count("sent", "fast") == i + 1)
        assert events.count("sent", "slow") == 0  # still held, and it held nothing else up
        await until(lambda: events.count("failed", "dead") == 1)
        gate.set()
        await until(lambda: events.count("sent", "slow") == 1)
        await sender.close()
        await slow_group.close()
        await fast_group.close()


async def test_close_aborts_copies_in_flight_and_drops_later_ones(gate: asyncio.Event) -> None:
    async def held(request: Request) -> Reply:
        await gate.wait()
        return Reply()

    events = Events()
    async with Backend(held) as backend:
        group = group_of(backend.url)
        dead = group_of(dead_url(), name="dead")
        sender = MirrorSender(on_event=events)
        assert sender.send(group, GET)
        await until(lambda: len(backend.transports) == 1)
        assert sender.send(dead, GET)  # still connecting when closed
        assert sender.in_flight == 2
        await sender.close()
        assert sender.in_flight == 0
        await until(lambda: not backend.transports)
        assert sender.send(group, GET) is False
        assert events.seen == [("mirror", "dropped")]  # the aborted ones are not reported
        await group.close()
        await dead.close()


async def test_an_on_event_that_raises_goes_to_the_loop_handler() -> None:
    caught: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: caught.append(context))

    def broken(pool: str, event: str) -> None:
        raise RuntimeError("counter broke")

    try:
        async with Backend() as backend:
            group = group_of(backend.url)
            sender = MirrorSender(on_event=broken)
            assert sender.send(group, GET)
            await until(lambda: sender.counts["sent"] == 1)
            assert isinstance(caught[0]["exception"], RuntimeError)
            assert sender.send(group, GET)  # the connection went back to the pool regardless
            await until(lambda: sender.counts["sent"] == 2)
            assert backend.connections == 1
            await sender.close()
            await group.close()
    finally:
        loop.set_exception_handler(None)
