"""The ambassador's bounds and review regressions: paused clients, stalled servers, HELLO, reload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import hiredis
import pytest

from distpat.config.twemproxy import parse_twemproxy
from distpat.net import redis_client, redis_pool, redis_server
from distpat.net.redis_shard import ShardService, ShardSettings
from tests.nutcracker import free_ports
from tests.rediskit import encode, pool_yaml, raw_connection, raw_pipeline, redis_servers, shard_service


async def test_a_client_far_ahead_of_its_replies_is_paused_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_client, "MAX_WAITING", 64)
    paused: list[int] = []
    real_flush = redis_client.RedisClient.flush

    def watching_flush(self: redis_client.RedisClient) -> None:
        if self.paused:
            paused.append(len(self.waiting))
        real_flush(self)

    monkeypatch.setattr(redis_client.RedisClient, "flush", watching_flush)
    async with redis_servers(tmp_path, 2) as servers:
        text = pool_yaml("alpha", free_ports(1)[0], [s.port for s in servers])
        async with shard_service(text) as service:
            commands = [[b"SET", b"k-%d-x" % i, b"%d" % i] for i in range(3000)]
            commands += [[b"GET", b"k-%d-x" % i] for i in range(3000)]
            replies = await raw_pipeline(service.pools[0].port, commands)
    assert replies[:3000] == [b"OK"] * 3000
    assert replies[3000:] == [b"%d" % i for i in range(3000)]
    assert paused, "the client was never paused"


async def test_a_server_that_stops_reading_stops_the_clients_not_the_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no timeout, a stalled server holds at most SERVER_BACKLOG bytes; clients then wait, unread."""
    monkeypatch.setattr(redis_server, "SERVER_BACKLOG", 1 << 20)
    async with redis_servers(tmp_path, 1) as [server]:
        text = pool_yaml("alpha", free_ports(1)[0], [server.port])
        async with shard_service(text) as service, raw_connection(service.pools[0].port) as (_reader, writer):
            assert await raw_pipeline(service.pools[0].port, [[b"PING"], [b"SET", b"k", b"v"]]) == [
                b"PONG",
                b"OK",
            ]
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            try:
                value = b"x" * (1 << 20)
                stalled = False
                for _ in range(200):  # at most 200 MiB offered; the proxy must stop taking them long before
                    writer.write(encode([b"SET", b"big", value]))
                    try:
                        await asyncio.wait_for(writer.drain(), 2.0)
                    except TimeoutError:
                        stalled = True
                        break
                assert stalled, "the proxy kept reading a client while its server read nothing"
                for _ in range(200):  # a slow drain on a loaded machine may come before the backlog fills
                    if service.pools[0].congested:
                        break
                    await asyncio.sleep(0.05)
                assert service.pools[0].congested
            finally:
                server.process.send_signal(signal.SIGCONT)
            writer.write(encode([b"GET", b"k"]))
            await asyncio.wait_for(writer.drain(), 30.0)  # the server drains; the client is read again
            for _ in range(200):  # the last of the backlog may still be on its way to the server
                if not service.pools[0].congested:
                    break
                await asyncio.sleep(0.05)
            assert not service.pools[0].congested


async def test_hello_cannot_switch_protocols_under_commands_in_flight(tmp_path: Path) -> None:
    async with redis_servers(tmp_path, 1) as [server]:
        text = pool_yaml("alpha", free_ports(1)[0], [server.port])
        async with shard_service(text) as service:
            replies = await raw_pipeline(
                service.pools[0].port,
                [[b"SET", b"k", b"v1"], [b"HELLO", b"3"], [b"SET", b"k", b"v2"], [b"GET", b"k"]],
            )
    assert replies[0] == b"OK"
    assert isinstance(replies[1], hiredis.ReplyError)
    assert "HELLO cannot change the protocol" in str(replies[1])
    assert replies[2:] == [b"OK", b"v2"]


async def test_a_reload_that_moves_a_named_server_moves_its_connections(tmp_path: Path) -> None:
    async with redis_servers(tmp_path, 2) as [a, b]:
        listen = free_ports(1)[0]
        texts = [
            pool_yaml("alpha", listen, [a.port], names=["s1"]),
            pool_yaml("alpha", listen, [b.port], names=["s1"]),
        ]
        current = [texts[0]]
        pools = lambda: list(parse_twemproxy(current[0]).values())  # noqa: E731
        service = ShardService(pools, listen=("127.0.0.1", 0))
        await service.start()
        try:
            port = service.pools[0].port
            assert await raw_pipeline(port, [[b"SET", b"k", b"before"]]) == [b"OK"]
            current[0] = texts[1]
            service.reload()
            assert await raw_pipeline(port, [[b"SET", b"k", b"after"], [b"XADD", b"st", b"*", b"f", b"v"]])
            assert await raw_pipeline(b.port, [[b"GET", b"k"]]) == [b"after"]
            assert await raw_pipeline(a.port, [[b"GET", b"k"]]) == [b"before"]
            info = await raw_pipeline(port, [[b"XINFO", b"STREAM", b"st"]])  # keyed by its second argument
            assert isinstance(info[0], list)
        finally:
            await service.shutdown(5.0)


async def test_clients_over_the_output_limit_are_each_counted_and_logged_once_a_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_pool, "LOG_INTERVAL", 3600.0)  # the whole test is within one interval
    caplog.set_level(logging.INFO, logger="distpat.redis")
    clients = 4
    async with redis_servers(tmp_path, 1) as servers:
        text = pool_yaml("alpha", free_ports(1)[0], [servers[0].port])
        async with shard_service(text, ShardSettings(max_client_output_bytes=1 << 20)) as service:
            pool = service.pools[0]
            assert await raw_pipeline(pool.port, [[b"SET", b"big", b"x" * (256 << 10)]]) == [b"OK"]
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(clients):  # each asks for 16 MiB of replies and reads none of them
                    _, writer = await stack.enter_async_context(raw_connection(pool.port))
                    writer.write(encode([b"GET", b"big"]) * 64)
                    await writer.drain()
                for _ in range(200):
                    if pool.refusals.get("output_limit", 0) >= clients:
                        break
                    await asyncio.sleep(0.05)
            assert pool.refusals["output_limit"] == clients
    lines = [r.getMessage() for r in caplog.records if "output buffer over its limit" in r.getMessage()]
    assert len(lines) == 1, lines


@contextlib.asynccontextmanager
async def split_answering_server(replies: int, *, close_after: int | None = None) -> AsyncIterator[int]:
    """A fake server that answers its first ``replies`` GETs (``$2 vN``) in two writes cut inside a
    reply, 50 ms apart; with ``close_after``, it sends that many replies and half of the next, then
    closes. Yields its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        while data.count(b"*2\r\n") < replies:
            chunk = await reader.read(65536)
            if not chunk:
                return
            data += chunk
        answers = b"".join(b"$2\r\nv%d\r\n" % (i % 10) for i in range(replies))
        cut = 8 * (close_after if close_after is not None else replies // 2) + 4
        writer.write(answers[:cut])
        await writer.drain()
        await asyncio.sleep(0.05)
        if close_after is None:
            writer.write(answers[cut:])
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_a_run_of_commands_answered_in_pieces_gets_every_reply_in_order() -> None:
    """Commands of one read for one server share one record; their replies may come in several reads."""
    async with split_answering_server(40) as port:
        text = pool_yaml("alpha", free_ports(1)[0], [port])
        async with shard_service(text) as service:
            replies = await raw_pipeline(service.pools[0].port, [[b"GET", b"k%d" % i] for i in range(40)])
            pool = service.pools[0]
            assert replies == [b"v%d" % (i % 10) for i in range(40)]
            stats = pool.stats_json()[f"127.0.0.1:{port}"]
            assert (stats["requests"], stats["responses"], stats["in_queue"]) == (40, 40, 0)
            assert sum(pool.latency.counts) == 40


async def test_a_server_lost_inside_a_run_answers_what_it_sent_and_errors_for_the_rest() -> None:
    async with split_answering_server(40, close_after=15) as port:
        text = pool_yaml("alpha", free_ports(1)[0], [port])
        async with shard_service(text) as service:
            replies = await raw_pipeline(service.pools[0].port, [[b"GET", b"k%d" % i] for i in range(40)])
            pool = service.pools[0]
    assert replies[:15] == [b"v%d" % (i % 10) for i in range(15)]
    assert all(isinstance(r, hiredis.ReplyError) and "closed the connection" in str(r) for r in replies[15:])
    assert pool.refusals["server_failed"] == 25
    assert sum(pool.latency.counts) == 15
