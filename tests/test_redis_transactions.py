"""Transactions through ``distpat redis-shard``: MULTI/EXEC/DISCARD and WATCH, with real redis-servers.

redis-py's ``pipeline()`` defaults to ``transaction=True`` (MULTI, the commands, EXEC): through the
ambassador a block whose keys share a server runs there as one transaction; one whose keys span servers
raises and changes nothing anywhere. What each shard holds is always asked of the shard itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import cast

import hiredis
import pytest
import redis
import redis.asyncio as aredis
from redis.exceptions import ExecAbortError, ResponseError, WatchError

from distpat.config.redis_shard import build_shard_options
from distpat.net.redis_shard import ShardService, ShardSettings
from tests.nutcracker import free_ports
from tests.rediskit import (
    HOST,
    RedisServer,
    commands_run,
    keys_apart,
    pool_yaml,
    raw_connection,
    raw_pipeline,
    raw_session,
    redis_servers,
    running_redis_shard,
    shard_service,
)

SHARDS = 2


@pytest.fixture
async def shards(tmp_path: Path) -> AsyncIterator[list[RedisServer]]:
    async with redis_servers(tmp_path / "redis", SHARDS) as servers:
        yield servers


@pytest.fixture
async def service(shards: list[RedisServer]) -> AsyncIterator[ShardService]:
    text = pool_yaml("alpha", 1, [s.port for s in shards], hash_tag="{}", extra={"timeout": "2000"})
    async with shard_service(text) as svc:
        yield svc


async def on_shards(shards: Sequence[RedisServer], key: bytes) -> list[bytes | None]:
    """The value of ``key`` on each shard, asked of each directly."""
    out: list[bytes | None] = []
    for server in shards:
        async with server.client() as direct:
            out.append(cast(bytes | None, await direct.get(key)))
    return out


# --------------------------------------------------------------------------
# redis-py's default pipeline


@pytest.mark.parametrize("protocol", [None, 2], ids=["default-client", "protocol-2"])
async def test_default_pipeline_on_one_shard_is_one_transaction(
    shards: list[RedisServer], service: ShardService, protocol: int | None
) -> None:
    port = service.pools[0].port
    options = {} if protocol is None else {"protocol": protocol}
    async with aredis.Redis(host=HOST, port=port, **options) as c:  # type: ignore[arg-type]
        pipe = c.pipeline()  # transaction=True, redis-py's default
        pipe.incr("{t}:cnt")
        pipe.incr("{t}:cnt")
        pipe.set("{t}:name", "x")
        pipe.get("{t}:name")
        assert await pipe.execute() == [1, 2, True, b"x"]
    values = await on_shards(shards, b"{t}:cnt")
    assert sorted(values, key=lambda v: v is None) == [b"2", None]  # on one shard only
    holder = shards[values.index(b"2")]
    assert await commands_run(holder, "multi") == 1
    assert await commands_run(holder, "exec") == 1
    assert await commands_run(holder, "incrby") == 2  # redis-py's incr()


async def test_sync_redis_py_pipeline_through_the_process(tmp_path: Path, shards: list[RedisServer]) -> None:
    (listen,) = free_ports(1)
    config = tmp_path / "nutcracker.yml"
    config.write_text(pool_yaml("alpha", listen, [s.port for s in shards], hash_tag="{}"))
    async with running_redis_shard(tmp_path, listen, "--config", str(config)):

        def run() -> tuple[list[object], type[BaseException] | None]:
            with redis.Redis(host=HOST, port=listen, socket_timeout=10) as c:
                pipe = c.pipeline()
                pipe.incr("{p}:cnt")
                pipe.incr("{p}:cnt")
                results = pipe.execute()
                keys = [f"spread-{i}-key" for i in range(50)]
                pipe = c.pipeline()
                for key in keys:
                    pipe.incr(key)
                try:
                    pipe.execute()
                except ResponseError as exc:
                    return results, type(exc)
                return results, None

        results, raised = await asyncio.to_thread(run)
    assert results == [1, 2]
    assert raised is ExecAbortError
    assert sorted(await on_shards(shards, b"{p}:cnt"), key=lambda v: v is None) == [b"2", None]
    for i in range(50):  # the spanning block: applied nowhere
        assert await on_shards(shards, f"spread-{i}-key".encode()) == [None, None]


@pytest.mark.parametrize("protocol", [None, 2], ids=["default-client", "protocol-2"])
async def test_a_pipeline_spanning_shards_raises_and_changes_nothing(
    shards: list[RedisServer], service: ShardService, protocol: int | None
) -> None:
    pool = service.pools[0]
    first, other = keys_apart(pool, "span")
    options = {} if protocol is None else {"protocol": protocol}
    async with aredis.Redis(host=HOST, port=pool.port, **options) as c:  # type: ignore[arg-type]
        await c.set(first, "0")
        pipe = c.pipeline()
        pipe.incr(first)
        pipe.incr(other)
        pipe.incr(first)
        with pytest.raises(ExecAbortError, match="same server"):
            await pipe.execute()
        assert await c.get(first) == b"0"  # the connection goes on, nothing applied
    assert sorted(await on_shards(shards, first), key=lambda v: v is None) == [b"0", None]
    assert await on_shards(shards, other) == [None, None]
    for server in shards:
        assert await commands_run(server, "incrby") == 0
        assert await commands_run(server, "exec") == 0
    assert pool.refusals.get("transaction_servers") == 1


# --------------------------------------------------------------------------
# WATCH


async def test_watch_with_a_concurrent_writer_aborts_as_redis_does(
    shards: list[RedisServer], service: ShardService
) -> None:
    port = service.pools[0].port
    async with aredis.Redis(host=HOST, port=port) as c, aredis.Redis(host=HOST, port=port) as writer:
        await c.set("{w}:balance", "10")
        async with c.pipeline() as pipe:
            await pipe.watch("{w}:balance")
            value = int(cast(bytes, await pipe.get("{w}:balance")))
            await writer.set("{w}:balance", "100")  # another client, through the proxy
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set("{w}:balance", value + 1)
            pipe.set("{w}:seen", "yes")
            with pytest.raises(WatchError):
                await pipe.execute()
        assert await c.get("{w}:balance") == b"100"
        assert await c.get("{w}:seen") is None

        # No writer: the same transaction goes through.
        async with c.pipeline() as pipe:
            await pipe.watch("{w}:balance")
            value = int(cast(bytes, await pipe.get("{w}:balance")))
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set("{w}:balance", value + 1)
            assert await pipe.execute() == [True]
        assert await c.get("{w}:balance") == b"101"

        # redis-py's transaction() helper retries on WatchError, as with a plain Redis.
        async def bump(pipe: aredis.client.Pipeline) -> None:
            current = int(cast(bytes, await pipe.get("{w}:balance")))
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set("{w}:balance", current + 1)

        await c.transaction(bump, "{w}:balance")
        assert await c.get("{w}:balance") == b"102"
    assert service.pools[0].counters["transactions_watch_aborted"] == 1
    await asyncio.sleep(0.2)
    assert all(s.tx_connections == 0 for s in service.pools[0].servers.values())


async def test_a_writer_straight_to_the_shard_aborts_exec_too(
    shards: list[RedisServer], service: ShardService
) -> None:
    port = service.pools[0].port
    async with raw_session(port) as session:
        assert (await session.call("SET", "{d}:k", "1"))[1] == b"+OK\r\n"
        assert (await session.call("WATCH", "{d}:k"))[1] == b"+OK\r\n"
        for server in shards:
            async with server.client() as direct:
                if await direct.exists("{d}:k"):
                    await direct.set("{d}:k", "changed")
        assert (await session.call("MULTI"))[1] == b"+OK\r\n"
        assert (await session.call("SET", "{d}:k", "mine"))[1] == b"+QUEUED\r\n"
        assert (await session.call("EXEC"))[1] in (b"*-1\r\n", b"_\r\n")
        assert (await session.call("GET", "{d}:k"))[0] == b"changed"


async def test_watch_keys_on_two_servers_are_refused(service: ShardService) -> None:
    first, other = keys_apart(service.pools[0], "watch")
    async with raw_session(service.pools[0].port) as session:
        _, reply = await session.call("WATCH", first, other)
        assert reply.startswith(b"-CROSSSLOT "), reply
        assert (await session.call("WATCH", first))[1] == b"+OK\r\n"
        _, reply = await session.call("WATCH", other)
        assert reply.startswith(b"-CROSSSLOT "), reply
        assert (await session.call("MULTI"))[1] == b"+OK\r\n"
        assert (await session.call("SET", other, "1"))[1] == b"+QUEUED\r\n"
        _, reply = await session.call("EXEC")
        assert reply.startswith(b"-EXECABORT "), reply  # the block's key is not on the WATCH's server
        assert (await session.call("UNWATCH"))[1] == b"+OK\r\n"
        assert (await session.call("GET", other))[1] == b"$-1\r\n"


# --------------------------------------------------------------------------
# What Redis answers, on the wire


async def test_queue_time_errors_abort_exec_and_apply_nothing(
    shards: list[RedisServer], service: ShardService
) -> None:
    flagging = [
        [b"NOSUCH", b"x"],  # unknown
        [b"GET"],  # wrong arity
        [b"KEYS", b"*"],  # refused
        [b"PING"],  # no key to choose the server by
        [b"EVAL", b"return 1", b"1", b"{q}:a"],  # scripts are refused by default
        [b"SORT", b"{q}:list", b"BY", b"w_*"],  # reads keys it does not name
    ]
    for bad in flagging:
        async with raw_session(service.pools[0].port) as session:
            assert (await session.call("MULTI"))[1] == b"+OK\r\n"
            assert (await session.call("SET", "{q}:a", "1"))[1] == b"+QUEUED\r\n"
            _, reply = await session.call(*bad)
            assert reply.startswith(b"-ERR "), (bad, reply)
            assert (await session.call("SET", "{q}:b", "1"))[1] == b"+QUEUED\r\n"
            _, reply = await session.call("EXEC")
            assert reply == b"-EXECABORT Transaction discarded because of previous errors.\r\n", bad
            assert (await session.call("GET", "{q}:a"))[1] == b"$-1\r\n"
    for server in shards:
        assert await commands_run(server, "set") == 0


def test_max_transaction_bytes_is_an_option_with_an_8_mib_default() -> None:
    opts = build_shard_options({"server": ["127.0.0.1:1"]}, environ={})
    assert opts.settings.max_transaction_bytes == 8 << 20
    environ = {"DISTPAT_MAX_TRANSACTION_BYTES": "1m"}
    opts = build_shard_options({"server": ["127.0.0.1:1"]}, environ=environ)
    assert opts.settings.max_transaction_bytes == 1 << 20


async def test_a_block_over_max_transaction_bytes_is_refused_at_queue_time_and_exec_aborts(
    shards: list[RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="distpat.redis")
    text = pool_yaml("alpha", 1, [s.port for s in shards], hash_tag="{}")
    limit = 64 * 1024
    async with shard_service(text, ShardSettings(max_transaction_bytes=limit)) as service:
        flood = [[b"MULTI"]] + [[b"GET", b"{f}:%d" % i] for i in range(limit // 16)] + [[b"EXEC"]]
        replies = await raw_pipeline(service.pools[0].port, flood)
        queued = [r for r in replies[1:-1] if r == b"QUEUED"]
        refused = [r for r in replies[1:-1] if isinstance(r, hiredis.ReplyError)]
        assert len(refused) == 1
        assert "transaction larger than 65536 bytes" in str(refused[0])
        assert len(queued) == len(flood) - 3  # a flagged block goes on answering +QUEUED, as Redis does
        assert isinstance(replies[-1], hiredis.ReplyError)
        assert str(replies[-1]).startswith("EXECABORT")
        pool = service.pools[0]
        assert pool.refusals["transaction_too_large"] == 1
        assert pool.refusals["transaction_aborted"] == 1
        assert "refused (transaction_too_large)" in caplog.text
    for server in shards:
        assert await commands_run(server, "get") == 0


async def test_multi_discard_and_their_misuse_answer_as_redis_does(service: ShardService) -> None:
    async with raw_session(service.pools[0].port) as session:
        assert (await session.call("EXEC"))[1] == b"-ERR EXEC without MULTI\r\n"
        assert (await session.call("DISCARD"))[1] == b"-ERR DISCARD without MULTI\r\n"
        assert (await session.call("MULTI"))[1] == b"+OK\r\n"
        assert (await session.call("MULTI"))[1] == b"-ERR MULTI calls can not be nested\r\n"
        assert (await session.call("WATCH", "x"))[1] == b"-ERR WATCH inside MULTI is not allowed\r\n"
        assert (await session.call("SET", "{m}:a", "1"))[1] == b"+QUEUED\r\n"
        assert (await session.call("DISCARD"))[1] == b"+OK\r\n"
        assert (await session.call("GET", "{m}:a"))[1] == b"$-1\r\n"  # discarded: never sent
        assert (await session.call("MULTI"))[1] == b"+OK\r\n"
        assert (await session.call("EXEC"))[1] == b"*0\r\n"  # an empty block, as Redis answers
        assert (await session.call("MULTI"))[1] == b"+OK\r\n"
        assert (await session.call("MGET", "{m}:a", "{m}:b"))[1] == b"+QUEUED\r\n"
        assert (await session.call("DEL", "{m}:a"))[1] == b"+QUEUED\r\n"
        assert (await session.call("EXEC"))[1] == b"*2\r\n*2\r\n$-1\r\n$-1\r\n:0\r\n"
        assert (await session.call("PING"))[1] == b"+PONG\r\n"


async def test_pipelined_commands_keep_their_order_across_a_transaction(
    shards: list[RedisServer], service: ShardService
) -> None:
    pool = service.pools[0]
    first, other = keys_apart(pool, "order")
    commands: list[list[bytes]] = []
    expected: list[object] = []
    for round_ in range(20):
        value = b"%d" % round_
        commands += [
            [b"SET", first, value],
            [b"SET", other, value],
            [b"MULTI"],
            [b"INCR", first],
            [b"APPEND", first, b"x"],
            [b"EXEC"],
            [b"GET", first],
            [b"GET", other],
        ]
        incremented = b"%d" % (round_ + 1)
        expected += [b"OK", b"OK", b"OK", b"QUEUED", b"QUEUED", [round_ + 1, len(incremented) + 1]]
        expected += [incremented + b"x", value]
    replies = await raw_pipeline(pool.port, commands)
    assert replies == expected


# --------------------------------------------------------------------------
# Failures: nothing applied, nothing leaked


async def test_a_client_gone_mid_transaction_leaves_nothing_applied(
    shards: list[RedisServer], service: ShardService
) -> None:
    pool = service.pools[0]
    async with raw_connection(pool.port) as (reader, writer):
        writer.write(b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$5\r\n{g}:a\r\n$1\r\n1\r\n")
        await writer.drain()
        assert (
            await asyncio.wait_for(reader.readexactly(len(b"+OK\r\n+QUEUED\r\n")), 5) == b"+OK\r\n+QUEUED\r\n"
        )
    async with raw_connection(pool.port) as (reader, writer):  # gone while pinned by WATCH
        writer.write(b"*2\r\n$5\r\nWATCH\r\n$5\r\n{g}:a\r\n*1\r\n$5\r\nMULTI\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(10), 5) == b"+OK\r\n+OK\r\n"
    for _ in range(100):
        if not any(s.tx_connections for s in pool.servers.values()) and not pool.clients:
            break
        await asyncio.sleep(0.05)
    assert not any(s.tx_connections for s in pool.servers.values())
    assert await on_shards(shards, b"{g}:a") == [None, None]
    for server in shards:
        assert await commands_run(server, "set") == 0
        async with server.client() as direct:  # only the pool's own connections, if any, remain
            listed = await direct.client_list()
        assert all(entry.get("cmd") != "watch" for entry in listed), listed


async def test_a_shard_down_at_exec_gets_an_error_and_nothing_is_applied(
    shards: list[RedisServer], service: ShardService
) -> None:
    pool = service.pools[0]
    holder = shards[list(pool.servers).index(pool.locate(b"{x}:a"))]
    async with raw_session(pool.port) as session:
        assert (await session.call("MULTI"))[1] == b"+OK\r\n"
        assert (await session.call("SET", "{x}:a", "1"))[1] == b"+QUEUED\r\n"
        await holder.stop()
        try:
            _, reply = await session.call("EXEC")
            assert reply.startswith(b"-ERR "), reply
            assert b"nothing was sent" in reply, reply
            assert (await session.call("PING"))[1] == b"+PONG\r\n"
        finally:
            await holder.start()
    assert await on_shards(shards, b"{x}:a") == [None, None]


async def test_a_hung_shard_times_out_the_transaction_with_a_clear_error(
    shards: list[RedisServer], service: ShardService
) -> None:
    pool = service.pools[0]  # timeout: 2000 ms
    async with raw_session(pool.port) as session:
        assert (await session.call("SET", "{h}:a", "0"))[1] == b"+OK\r\n"
        holder = shards[(await on_shards(shards, b"{h}:a")).index(b"0")]
        assert (await session.call("MULTI"))[1] == b"+OK\r\n"
        assert (await session.call("INCR", "{h}:a"))[1] == b"+QUEUED\r\n"
        assert holder.process is not None
        holder.process.send_signal(signal.SIGSTOP)
        try:
            _, reply = await session.call("EXEC")
            assert reply.startswith(b"-ERR timeout: "), reply
            assert b"whether it ran is unknown" in reply, reply
        finally:
            holder.process.send_signal(signal.SIGCONT)
    assert pool.refusals.get("server_failed", 0) >= 1


async def test_hello_cannot_change_the_protocol_under_a_watch(service: ShardService) -> None:
    async with raw_session(service.pools[0].port) as session:
        assert (await session.call("WATCH", "{p}:k"))[1] == b"+OK\r\n"
        _, reply = await session.call("HELLO", "3")
        assert reply.startswith(b"-ERR HELLO cannot change the protocol while a WATCH"), reply
        assert (await session.call("UNWATCH"))[1] == b"+OK\r\n"
        assert (await session.call("HELLO", "3"))[1].startswith(b"%7\r\n")


async def test_a_block_for_an_ejected_shard_is_aborted_before_anything_is_sent(
    shards: list[RedisServer],
) -> None:
    extra = {"timeout": "500", "auto_eject_hosts": "true", "server_failure_limit": "1"}
    extra["server_retry_timeout"] = "60000"
    text = pool_yaml("alpha", 1, [s.port for s in shards], hash_tag="{}", extra=extra)
    async with shard_service(text, ShardSettings(keep_ring=True)) as service:
        pool = service.pools[0]
        holder = shards[list(pool.servers).index(pool.locate(b"{e}:a"))]
        await holder.stop()
        try:
            async with raw_session(pool.port) as session:
                _, reply = await session.call("GET", "{e}:a")  # the failure that ejects it
                assert reply.startswith(b"-ERR "), reply
                assert pool.stats["server_ejects"] == 1
                assert (await session.call("MULTI"))[1] == b"+OK\r\n"
                assert (await session.call("SET", "{e}:a", "1"))[1] == b"+QUEUED\r\n"
                _, reply = await session.call("EXEC")
                assert reply.startswith(b"-EXECABORT Transaction discarded, nothing was applied: "), reply
                assert b"ejected" in reply, reply
        finally:
            await holder.start()
    assert await on_shards(shards, b"{e}:a") == [None, None]
    assert pool.refusals["transaction_servers"] == 1


async def test_concurrent_optimistic_increments_lose_nothing(
    shards: list[RedisServer], service: ShardService
) -> None:
    """Ten clients, each 20 WATCH/GET/MULTI/SET/EXEC increments of one key (redis-py retries on
    WatchError): the count is exact, and each pipelined block's two INCRs got consecutive values."""
    port = service.pools[0].port

    async def worker() -> list[list[int]]:
        pairs: list[list[int]] = []
        async with aredis.Redis(host=HOST, port=port) as c:

            async def bump(pipe: aredis.client.Pipeline) -> None:
                current = int(cast(bytes, await pipe.get("{c}:n")) or 0)
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set("{c}:n", current + 1)

            for _ in range(20):
                await c.transaction(bump, "{c}:n")
                pipe = c.pipeline()
                pipe.incr("{c}:pair")
                pipe.incr("{c}:pair")
                pairs.append(await pipe.execute())
        return pairs

    results = await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(10))), 120)
    async with aredis.Redis(host=HOST, port=port) as c:
        assert await c.get("{c}:n") == b"200"
        assert await c.get("{c}:pair") == b"400"
    for pairs in results:
        assert all(b == a + 1 for a, b in pairs), pairs
    assert sorted(v for pairs in results for pair in pairs for v in pair) == list(range(1, 401))
    await asyncio.sleep(0.2)
    assert all(s.tx_connections == 0 for s in service.pools[0].servers.values())


@pytest.mark.parametrize("protocol", [None, 2], ids=["default-client", "protocol-2"])
async def test_transactions_on_a_pool_with_redis_auth_and_redis_db(
    tmp_path: Path, protocol: int | None
) -> None:
    """The block's own connection is set up as the shared ones are: AUTH (or HELLO 3 AUTH), SELECT."""
    password = "tx pass"
    async with redis_servers(tmp_path / "redis", SHARDS, password=password) as servers:
        extra = {"redis_auth": f"'{password}'", "redis_db": "3"}
        text = pool_yaml("alpha", 1, [s.port for s in servers], hash_tag="{}", extra=extra)
        async with shard_service(text) as service:
            options = {} if protocol is None else {"protocol": protocol}
            port = service.pools[0].port
            async with aredis.Redis(host=HOST, port=port, password=password, db=3, **options) as c:  # type: ignore[arg-type]
                async with c.pipeline() as pipe:
                    await pipe.watch("{a}:n")
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.incr("{a}:n")
                    assert await pipe.execute() == [1]
                pipe = c.pipeline()
                pipe.incr("{a}:n")
                pipe.incr("{a}:n")
                assert await pipe.execute() == [2, 3]
        found = []
        for server in servers:
            async with server.client(db=3) as direct:
                found.append(await direct.get("{a}:n"))
    assert sorted(found, key=lambda v: v is None) == [b"3", None]  # in database 3 of one shard


# --------------------------------------------------------------------------
# Differential: the same pipelines through the ambassador and straight to one redis-server

TAGGED = [b"{a}:x", b"{a}:y", b"{a}:z"]
FREE = [b"free-%d-key" % i for i in range(6)]


def random_session(rng: random.Random, length: int) -> list[list[bytes]]:
    """A pipeline of commands in and out of MULTI, WATCH, DISCARD and their misuse, whose transaction keys
    share a hash tag (so a sharding proxy and one Redis must answer alike, reply for reply)."""
    commands: list[list[bytes]] = []
    in_multi = False
    for _ in range(length):
        keys = TAGGED if in_multi else TAGGED + FREE
        value = rng.choice([b"%d" % rng.randrange(100), b"%d" % rng.randrange(100), b"text"])
        choice = rng.random()
        if choice < 0.25:
            commands.append([b"SET", rng.choice(keys), value])
        elif choice < 0.45:
            commands.append([b"INCR", rng.choice(keys)])  # on "text": an error inside EXEC's array
        elif choice < 0.50:
            commands.append([b"GET", rng.choice(keys)])
        elif choice < 0.55:
            commands.append(
                rng.choice(
                    [
                        [b"MGET", *rng.sample(TAGGED, 2)],
                        [b"DEL", rng.choice(TAGGED)],
                        [b"LPUSH", rng.choice(keys), value],  # on a string: WRONGTYPE inside EXEC
                        [b"APPEND", rng.choice(keys), value],
                        [b"GET"],  # wrong arity: aborts the block
                        [b"NOSUCH", value],  # unknown: aborts the block
                    ]
                )
            )
        elif choice < 0.68:
            commands.append([b"MULTI"])  # nested: an error that does not abort
            in_multi = True
        elif choice < 0.80:
            commands.append([b"EXEC"])  # without MULTI: an error
            in_multi = False
        elif choice < 0.86:
            commands.append([b"DISCARD"])
            in_multi = False
        elif choice < 0.95:
            commands.append([b"WATCH", rng.choice(TAGGED)])  # inside MULTI: an error
        else:
            commands.append([b"UNWATCH"] if not in_multi else [b"GET", rng.choice(TAGGED)])
    if in_multi:
        commands.append([b"EXEC"])
    return commands


async def dumps(servers: Sequence[RedisServer], key: bytes) -> list[bytes]:
    """``key`` serialized (DUMP: any type) wherever it exists."""
    found = []
    for server in servers:
        async with server.client() as direct:
            value = await direct.dump(key)
        if value is not None:
            found.append(value)
    return found


def normalized(replies: list[object]) -> list[object]:
    """Errors (hiredis.ReplyError objects, equal only to themselves) as their text, inside arrays too;
    for an unknown command only its code (the proxy words its reason its own way)."""

    def one(r: object) -> object:
        if isinstance(r, hiredis.ReplyError):
            return "error: ERR unknown command" if "unknown" in str(r) else f"error: {r}"
        return normalized(r) if isinstance(r, list) else r

    return [one(r) for r in replies]


@pytest.mark.parametrize("resp", [2, 3], ids=["resp2", "resp3"])
async def test_pipelines_get_the_replies_one_redis_gives(
    tmp_path: Path, shards: list[RedisServer], resp: int
) -> None:
    rng = random.Random(f"differential-{resp}")
    async with redis_servers(tmp_path / "reference", 1) as [reference]:
        text = pool_yaml("alpha", 1, [s.port for s in shards], hash_tag="{}")
        async with shard_service(text) as service:
            for round_ in range(60):
                session = [[b"HELLO", b"%d" % resp], *random_session(rng, 40)]
                for server in [*shards, reference]:
                    async with server.client() as direct:
                        await direct.flushall()
                # HELLO's own reply names the server (distpat, its id): the rest must be identical
                expected = normalized(await raw_pipeline(reference.port, session))[1:]
                got = normalized(await raw_pipeline(service.pools[0].port, session))[1:]
                assert got == expected, (round_, session)
                for key in TAGGED + FREE:  # and the data ends the same, each key on one shard
                    assert await dumps(shards, key) == await dumps([reference], key), (round_, key)
