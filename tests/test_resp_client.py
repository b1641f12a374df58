"""distpat.net.resp_client.RespClient: against a real redis-server on 127.0.0.1, and small fake servers
(one that never answers, one that closes, one that sends garbage) for what a real one will not do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from distpat.core.resp_decode import ErrorReply
from distpat.net.resp_client import Done, RespClient
from tests.nutcracker import free_ports
from tests.rediskit import HOST, redis_servers

Outcome = tuple[object, str | None]


class Calls:
    """Every call's outcome by key; a callback called twice is recorded in ``twice``."""

    def __init__(self) -> None:
        self.outcomes: dict[object, Outcome] = {}
        self.order: list[object] = []
        self.twice: list[object] = []

    def done(self, key: object) -> Done:
        def done(value: object, error: str | None) -> None:
            if key in self.outcomes:
                self.twice.append(key)
            self.outcomes[key] = (value, error)
            self.order.append(key)

        return done

    async def wait(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.outcomes) < count:
                await asyncio.sleep(0.005)


async def ask(client: RespClient, *args: bytes, timeout: float = 5.0) -> Outcome:
    calls = Calls()
    client.call(args, calls.done(0), timeout)
    await calls.wait(1)
    await asyncio.sleep(0.01)  # a second call of the callback would land here
    assert not calls.twice
    return calls.outcomes[0]


@contextlib.asynccontextmanager
async def client_of(port: int, **options: Any) -> AsyncIterator[RespClient]:
    client = RespClient(HOST, port, **options)
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def fake_server(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[int, list[int]]]:
    """A server on 127.0.0.1 running ``serve`` for each connection; yields its port and a list that
    gets one entry per connection accepted."""
    accepted: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await serve(reader, writer)

    server = await asyncio.start_server(handler, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()
        for writer in writers:
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5.0)


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(65536):
        pass


# -- a real redis-server ---------------------------------------------------------------------------


async def test_values_come_decoded(tmp_path: Path) -> None:
    async with redis_servers(tmp_path, 1) as [server], client_of(server.port) as client:
        assert await ask(client, b"SET", b"k", b"a\r\nb\x00") == (b"OK", None)
        assert await ask(client, b"GET", b"k") == (b"a\r\nb\x00", None)
        assert await ask(client, b"GET", b"missing") == (None, None)
        assert await ask(client, b"INCR", b"n") == (1, None)
        assert await ask(client, b"RPUSH", b"l", b"x", b"y") == (2, None)
        assert await ask(client, b"LRANGE", b"l", b"0", b"-1") == ([b"x", b"y"], None)
        assert await ask(client, b"LRANGE", b"empty", b"0", b"-1") == ([], None)
        assert await ask(client, b"MULTI") == (b"OK", None)
        assert await ask(client, b"SET", b"s", b"text") == (b"QUEUED", None)
        assert await ask(client, b"INCR", b"s") == (b"QUEUED", None)
        value, error = await ask(client, b"EXEC")
        assert error is None
        assert isinstance(value, list)
        assert value[0] == b"OK"
        assert isinstance(value[1], ErrorReply)
        assert value[1].message.startswith("ERR value is not an integer")


async def test_error_replies_are_the_server_s_text_and_the_connection_goes_on(tmp_path: Path) -> None:
    async with redis_servers(tmp_path, 1) as [server], client_of(server.port) as client:
        value, error = await ask(client, b"NOSUCHCOMMAND", b"x")
        assert value is None
        assert error is not None
        assert error.startswith("ERR unknown command")
        assert await ask(client, b"RPUSH", b"list", b"x") == (1, None)
        value, error = await ask(client, b"INCR", b"list")
        assert value is None
        assert error is not None
        assert error.startswith("WRONGTYPE")
        assert await ask(client, b"PING") == (b"PONG", None)


async def test_calls_of_one_turn_go_out_in_one_write_and_are_answered_in_order(tmp_path: Path) -> None:
    async with redis_servers(tmp_path, 1) as [server], client_of(server.port) as client:
        assert await ask(client, b"PING") == (b"PONG", None)  # connected
        conn = client._conn
        assert conn is not None
        assert conn.transport is not None
        writes: list[int] = []
        write = conn.transport.write

        def counting_write(data: bytes | bytearray | memoryview) -> None:
            writes.append(len(data))
            write(data)

        conn.transport.write = counting_write  # type: ignore[method-assign]
        calls = Calls()
        for i in range(500):
            client.call((b"INCR", b"counter"), calls.done(i), 10.0)
        await calls.wait(500)
        assert calls.order == list(range(500))
        assert [calls.outcomes[i] for i in range(500)] == [(i + 1, None) for i in range(500)]
        assert len(writes) == 1
        assert not calls.twice


async def test_calls_made_while_connecting_go_out_after_the_setup(tmp_path: Path) -> None:
    async with redis_servers(tmp_path, 1, password="pw") as [server]:
        async with client_of(server.port, password="pw", db=3) as client:
            calls = Calls()
            client.call((b"SET", b"in-db-3", b"yes"), calls.done("set"), 5.0)
            client.call((b"GET", b"in-db-3"), calls.done("get"), 5.0)
            await calls.wait(2)
            assert calls.outcomes == {"set": (b"OK", None), "get": (b"yes", None)}
        async with server.client(db=3) as direct:
            assert await direct.get("in-db-3") == b"yes"
        async with server.client(db=0) as direct:
            assert await direct.get("in-db-3") is None
        async with client_of(server.port, password="wrong") as client:
            value, error = await ask(client, b"PING")
            assert value is None
            assert error is not None
            assert error.startswith("unavailable: the server refused the connection setup: WRONGPASS")
        async with client_of(server.port) as client:  # no password: the server's own error reply
            value, error = await ask(client, b"PING")
            assert value is None
            assert error is not None
            assert error.startswith("NOAUTH")


async def test_a_restarted_server_is_reached_again_after_the_back_off(tmp_path: Path) -> None:
    async with redis_servers(tmp_path, 1) as [server], client_of(server.port, retry_after=0.3) as client:
        assert await ask(client, b"SET", b"k", b"1") == (b"OK", None)
        await server.stop()
        value, error = await ask(client, b"GET", b"k")
        assert value is None
        assert error is not None
        assert error.startswith("unavailable: ")
        loop = asyncio.get_running_loop()
        started = loop.time()
        value, again = await ask(client, b"GET", b"k")  # within the back-off: at once, the same reason
        assert value is None
        assert again == error
        assert loop.time() - started < 0.25
        await server.start()
        deadline = loop.time() + 10.0
        outcome = await ask(client, b"PING")
        while outcome != (b"PONG", None) and loop.time() < deadline:
            assert outcome[1] is not None
            assert outcome[1].startswith("unavailable: ")
            await asyncio.sleep(0.1)
            outcome = await ask(client, b"PING")
        assert outcome == (b"PONG", None)


async def test_a_stopped_server_fails_the_calls_waiting_on_it_once(tmp_path: Path) -> None:
    async with redis_servers(tmp_path, 1) as [server], client_of(server.port) as client:
        assert await ask(client, b"PING") == (b"PONG", None)
        calls = Calls()
        client.call((b"BLPOP", b"nothing", b"0"), calls.done("blocked"), 30.0)  # waits on the server
        client.call((b"PING",), calls.done("behind"), 30.0)
        await asyncio.sleep(0.1)
        await server.stop()
        await calls.wait(2)
        for key in ("blocked", "behind"):
            value, error = calls.outcomes[key]
            assert value is None
            assert error is not None
            assert error.startswith("unavailable: ")
        await asyncio.sleep(0.05)
        assert not calls.twice


async def test_nothing_listening_is_unavailable_at_once() -> None:
    [port] = free_ports(1)
    async with client_of(port) as client:
        value, error = await ask(client, b"PING")
        assert value is None
        assert error is not None
        assert error.startswith(f"unavailable: connect to {HOST}:{port} failed")


# -- servers a real one would not be -------------------------------------------------------------------


async def test_a_server_that_never_answers_times_the_calls_out() -> None:
    async with fake_server(never_answer) as (port, accepted), client_of(port, retry_after=0.3) as client:
        calls = Calls()
        client.call((b"GET", b"a"), calls.done("short"), 0.2)
        client.call((b"GET", b"b"), calls.done("long"), 30.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await calls.wait(2)
        assert loop.time() - started < 5.0  # the short timeout closed the connection for both
        for key in ("short", "long"):
            value, error = calls.outcomes[key]
            assert value is None
            assert error is not None
            assert error.startswith("unavailable: a reply did not come within its call's timeout")
        value, error = await ask(client, b"GET", b"c")  # within the back-off: not sent at all
        assert value is None
        assert error is not None
        assert error.startswith("unavailable: ")
        assert len(accepted) == 1
        await asyncio.sleep(0.35)
        client.call((b"GET", b"d"), calls.done("after"), 0.2)  # connects again, and times out again
        await calls.wait(3)
        assert len(accepted) == 2
        assert not calls.twice


async def test_closing_the_client_answers_what_waits_once() -> None:
    async with fake_server(never_answer) as (port, _accepted):
        client = RespClient(HOST, port)
        calls = Calls()
        for i in range(3):
            client.call((b"GET", b"k"), calls.done(i), 30.0)
        await asyncio.sleep(0.05)
        await client.close()
        await calls.wait(3)
        assert set(calls.outcomes.values()) == {(None, "unavailable: the client is closed")}
        assert await ask(client, b"PING") == (None, "unavailable: the client is closed")
        assert not calls.twice


async def test_a_server_that_closes_an_idle_connection_is_not_a_failure() -> None:
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"+PONG\r\n")
        await writer.drain()
        writer.close()

    async with fake_server(answer_once) as (port, accepted), client_of(port, retry_after=30.0) as client:
        assert await ask(client, b"PING") == (b"PONG", None)
        await asyncio.sleep(0.1)  # the server has closed it, with nothing waiting
        assert await ask(client, b"PING") == (b"PONG", None)  # no back-off: connected again at once
        assert len(accepted) == 2


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (b"?what\r\n", "the server sent an invalid reply"),
        (b"+PONG\r\n+EXTRA\r\n", "the server sent a reply nobody asked for"),
    ],
)
async def test_a_server_that_does_not_speak_resp_is_unavailable(sent: bytes, reason: str) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(sent)
        await writer.drain()
        await never_answer(reader, writer)

    async with fake_server(garbage) as (port, _accepted), client_of(port) as client:
        first = await ask(client, b"PING")
        second = await ask(client, b"PING")  # within the back-off: the same reason, at once
    if sent.startswith(b"+PONG"):
        assert first == (b"PONG", None)  # the one asked for is answered; the extra one ends it
    else:
        assert first[0] is None
        assert first[1] is not None
        assert first[1].startswith(f"unavailable: {reason}")
    assert second[0] is None
    assert second[1] is not None
    assert second[1].startswith(f"unavailable: {reason}")


async def test_a_callback_that_raises_is_reported_and_the_others_go_on(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with redis_servers(tmp_path, 1) as [server], client_of(server.port) as client:

            def broken(value: object, error: str | None) -> None:
                raise RuntimeError("a stage's bug")

            calls = Calls()
            client.call((b"PING",), broken, 5.0)
            client.call((b"ECHO", b"still"), calls.done("after"), 5.0)
            await calls.wait(1)
            assert calls.outcomes["after"] == (b"still", None)
    finally:
        loop.set_exception_handler(None)
    assert [str(c.get("exception")) for c in reported] == ["a stage's bug"]
