"""The engine's client timeouts on a fake clock: an event loop whose time the test moves.

The engine reads the time for a connection's timeouts only from its event loop (``loop.time()``
and ``loop.call_at`` in net/client_timeouts.py, net/server.py, net/exchange.py), so running it on
a loop whose clock moves only when the test says tests a 10-second header timeout, a 75-second
keep-alive and a 60-second response timeout in milliseconds, with nothing slept. The peers (the
raw client, the recording backend) run on the same loop, over real loopback sockets. (Upstream
ejection reads ``UpstreamGroup.clock`` and stages' ticks ``EngineState.mono``: both
``time.monotonic`` unless given, so not this clock.)

A test moves the clock with :meth:`FakeClockLoop.advance` and then awaits what should follow;
what should *not* happen yet is checked with a read still pending after the loop has run every
callback that was due (:func:`settle`). A timer on a fake clock cannot time a test out, so each
test runs under a real-time watchdog that cancels it (:func:`run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import TypeVar

import pytest

from distpat.net.proxy import ProxyConfig, ProxyServer
from distpat.net.server import EngineSettings
from tests.httpkit import Backend, RawClient, Reply, Request

T = TypeVar("T")

REAL_LIMIT = 10.0
"""Real seconds a test may take before the watchdog cancels it (a hang, not a slow test)."""


class FakeClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock stands still until :meth:`advance` moves it.

    asyncio schedules every timer (``call_at``, ``call_later``, ``sleep``, ``timeout``) against
    ``time()``, so they all follow the fake clock; I/O is real.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 1_000.0

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock on; timers now due run in the loop's next turn."""
        self.now += seconds


def run(test: Callable[[FakeClockLoop], Coroutine[object, object, None]]) -> None:
    """Run ``test`` on a fresh :class:`FakeClockLoop`, cancelled after REAL_LIMIT real seconds."""
    loop = FakeClockLoop()
    task = loop.create_task(test(loop))
    watchdog = threading.Timer(REAL_LIMIT, loop.call_soon_threadsafe, (task.cancel,))
    watchdog.start()
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pytest.fail(f"the test hung: cancelled after {REAL_LIMIT:g} real seconds")
    finally:
        watchdog.cancel()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def settle(turns: int = 20) -> None:
    """Let the loop run what is due (callbacks, I/O already arrived) without moving the clock."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def soon(awaitable: Awaitable[T], turns: int = 500) -> T:
    """What ``awaitable`` gives once the loop has run what is due, the clock standing still:
    failing, not hanging, when it does not come (a timer that should have fired did not)."""
    task = asyncio.ensure_future(awaitable)
    for _ in range(turns):
        if task.done():
            return task.result()
        await asyncio.sleep(0)
    task.cancel()
    raise AssertionError(
        f"nothing came in {turns} turns of the loop at t={asyncio.get_running_loop().time()}"
    )


async def drive(loop: FakeClockLoop, awaitable: Awaitable[T], step: float = 0.05, turns: int = 2000) -> T:
    """Await ``awaitable`` while moving the clock ``step`` per loop turn (for a shutdown, which
    waits on timers of its own); bounded to ``turns``."""
    task = asyncio.ensure_future(awaitable)
    for _ in range(turns):
        if task.done():
            break
        loop.advance(step)
        await asyncio.sleep(0)
    return await task


@contextlib.asynccontextmanager
async def proxy_on(loop: FakeClockLoop, *urls: str, **settings: object) -> AsyncIterator[ProxyServer]:
    server = ProxyServer(
        ProxyConfig(
            listen=("127.0.0.1", 0),
            upstreams=urls,
            settings=replace(EngineSettings(), **settings),  # type: ignore[arg-type]
        )
    )
    await server.start()
    try:
        yield server
    finally:
        await drive(loop, server.shutdown(1))


@contextlib.asynccontextmanager
async def connected(port: int) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(port)
    try:
        yield client
    finally:
        await client.close()


def reading(client: RawClient) -> asyncio.Future[bytes]:
    """Everything ``client`` receives until the server closes (a task, checked while pending)."""
    return asyncio.ensure_future(client.reader.read())


HEAD = b"GET / HTTP/1.1\r\nHost: h\r\n"


def test_a_head_is_answered_408_at_the_header_timeout_and_not_before() -> None:
    async def test(loop: FakeClockLoop) -> None:
        async with Backend() as backend, proxy_on(loop, backend.url, header_timeout=10.0) as p:
            async with connected(p.port) as late, connected(p.port) as in_time:
                await late.send(HEAD)  # never finished
                await in_time.send(HEAD)
                late_read = reading(late)
                loop.advance(9.9)
                await settle()
                assert not late_read.done()  # 9.9 s: still waiting for the head
                await in_time.send(b"\r\n")  # finished in time: served
                [r] = await soon(in_time.read_responses(1))
                assert r.status == 200
                loop.advance(0.2)
                data = await soon(late_read)
                assert data.startswith(b"HTTP/1.1 408 ")
            assert [q.target for q in backend.requests] == [b"/"]

    run(test)


def test_a_head_trickling_in_is_still_cut_at_the_header_timeout() -> None:
    async def test(loop: FakeClockLoop) -> None:
        async with Backend() as backend, proxy_on(loop, backend.url, header_timeout=10.0) as p:
            async with connected(p.port) as slow:
                await slow.send(HEAD)
                data = reading(slow)
                for i in range(3):  # a field line every 3 s: bytes keep coming, the head never ends
                    loop.advance(3.0)
                    await settle()
                    assert not data.done()
                    await slow.send(b"X-Line-%d: x\r\n" % i)
                loop.advance(1.1)  # 10.1 s from the head's first byte
                assert (await soon(data)).startswith(b"HTTP/1.1 408 ")
            assert backend.requests == []

    run(test)


def test_an_idle_keepalive_connection_is_closed_at_the_keepalive_timeout() -> None:
    async def test(loop: FakeClockLoop) -> None:
        async with Backend() as backend, proxy_on(loop, backend.url, keepalive_timeout=75.0) as p:
            async with connected(p.port) as client:
                for _ in range(2):  # idle 74.9 s: kept, and the idle time starts again
                    await client.send(HEAD + b"\r\n")
                    [r] = await soon(client.read_responses(1))
                    assert r.status == 200
                    loop.advance(74.9)
                    await settle()
                closed = reading(client)
                await settle()
                assert not closed.done()
                loop.advance(0.2)
                assert await soon(closed) == b""  # closed without a word, as an idle connection is
            assert len(backend.requests) == 2

    run(test)


def test_an_upstream_that_does_not_answer_gets_504_at_the_response_timeout() -> None:
    async def never(request: Request) -> Reply:
        await asyncio.Event().wait()  # cancelled when the backend stops
        raise AssertionError("unreachable")

    async def test(loop: FakeClockLoop) -> None:
        async with (
            Backend(never) as backend,
            proxy_on(loop, backend.url, response_timeout=60.0) as p,
            connected(p.port) as client,
        ):
            await client.send(HEAD + b"\r\n")
            answer = asyncio.ensure_future(client.reader.readuntil(b"\r\n\r\n"))
            await settle()
            assert [q.target for q in backend.requests] == [b"/"]
            loop.advance(59.9)
            await settle()
            assert not answer.done()
            loop.advance(0.2)
            assert (await soon(answer)).startswith(b"HTTP/1.1 504 ")

    run(test)
