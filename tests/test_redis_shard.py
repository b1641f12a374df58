"""``distpat redis-shard`` against real redis-server shards, real nutcracker and redis-py's asyncio client.

Every test starts its own redis-servers on free 127.0.0.1 ports (no persistence, see
``tests/rediskit.py``) and drives either an in-process :class:`~distpat.net.redis_shard.ShardService`
or the real ``python -m distpat redis-shard`` process where process behaviour matters (the stats port,
SIGHUP, ``--max-request-bytes``). Where a key landed is always checked on the shards themselves, never by
asking distpat's ring. redis-py is used with its defaults (redis-py 8: RESP3, ``HELLO 3`` and
``CLIENT SETINFO`` on connect) and with ``protocol=2``.

Every loop has a deadline; durations are only checked against generous upper bounds.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import hiredis
import pytest
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ClusterCrossSlotError, ResponseError

from distpat.net.redis_shard import ShardSettings
from tests.nutcracker import free_ports, running_nutcracker_config
from tests.rediskit import (
    HOST,
    RedisServer,
    blocking_exchange,
    pool_yaml,
    raw_connection,
    raw_exchange,
    raw_pipeline,
    raw_session,
    read_lines,
    read_until_closed,
    redis_servers,
    running_redis_shard,
    shard_service,
    tap,
)

SHARDS = 3
#: No single request may take longer than this (seconds), whatever happens to a shard.
REQUEST_BOUND = 5.0

Protocol = int | None  # None: redis-py's default (RESP3 in redis-py 8)
PROTOCOLS = [pytest.param(None, id="default-client"), pytest.param(2, id="protocol-2")]


@pytest.fixture
async def shards(tmp_path: Path) -> AsyncIterator[list[RedisServer]]:
    async with redis_servers(tmp_path / "redis", SHARDS) as servers:
        yield servers


def client(port: int, protocol: Protocol = None, **options: object) -> redis.Redis:
    """redis-py's asyncio client with nothing but what the test asks for."""
    if protocol is not None:
        options["protocol"] = protocol
    return redis.Redis(host=HOST, port=port, **options)  # type: ignore[arg-type]


def spread(prefix: str, count: int) -> list[bytes]:
    """``count`` keys that spread over the shards.

    twemproxy's fnv1a_64 keeps only the low 32 bits, which the last bytes of a key barely move: keys
    differing only at their end (``fan:0``, ``fan:1``, ...) all land on one server, with nutcracker as
    with distpat. The part that varies is put before a fixed tail.
    """
    return [f"{prefix}-{i}-key".encode() for i in range(count)]


async def holders(servers: Sequence[RedisServer], keys: Sequence[bytes]) -> list[list[int]]:
    """For each key, the indexes of the shards holding it (asked of each shard directly)."""
    found: list[list[int]] = [[] for _ in keys]
    for index, server in enumerate(servers):
        async with server.client() as direct:
            pipe = direct.pipeline(transaction=False)
            for key in keys:
                pipe.exists(key)
            for i, count in enumerate(await pipe.execute()):
                if count:
                    found[i].append(index)
    return found


async def values_on(server: RedisServer, keys: Sequence[bytes]) -> list[bytes | None]:
    async with server.client() as direct:
        return cast(list[bytes | None], await direct.mget(list(keys)))


async def run_command(c: redis.Redis, *args: object) -> Any:
    """Any command through redis-py (whose execute_command is untyped), its reply as redis-py parses it."""
    return await c.execute_command(*args)  # type: ignore[no-untyped-call]


async def shard_of(servers: Sequence[RedisServer], keys: Sequence[bytes]) -> dict[bytes, int]:
    """Where each key is, asserting it is on exactly one shard."""
    found = await holders(servers, keys)
    wrong = [(k, h) for k, h in zip(keys, found, strict=True) if len(h) != 1]
    assert not wrong, f"{len(wrong)} keys not on exactly one shard, e.g. {wrong[:5]}"
    return {k: h[0] for k, h in zip(keys, found, strict=True)}


# --------------------------------------------------------------------------
# 0. What redis-py's default client sends on connect, and that it works


async def handshake(port: int, protocol: Protocol) -> tuple[list[list[bytes]], list[object]]:
    """What redis-py sends on connect (and for PING, SET, GET) through a tap, and the replies."""
    async with tap(port) as recorder:
        c = client(recorder.port, protocol)
        try:
            assert await c.ping() is True
            assert await c.set("greeting", "héllo") is True
            assert await c.get("greeting") == "héllo".encode()
        finally:
            await c.aclose()
        return recorder.commands(), recorder.replies()


def refused(sent: list[list[bytes]], replies: list[object]) -> list[list[bytes]]:
    return [cmd for cmd, r in zip(sent, replies, strict=True) if isinstance(r, hiredis.ReplyError)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_redis_py_connect_handshake_is_answered(shards: list[RedisServer], protocol: Protocol) -> None:
    text = pool_yaml("alpha", 1, [s.port for s in shards])
    async with shard_service(text) as service:
        sent, replies = await handshake(service.pools[0].port, protocol)
    assert len(replies) == len(sent)
    names = [b" ".join(cmd[:2]).upper() if cmd[0].upper() == b"CLIENT" else cmd[0].upper() for cmd in sent]
    if protocol is None:
        # redis-py 8 speaks RESP3 unless told otherwise: HELLO 3 comes first, and gets a RESP3 map.
        assert sent[0] == [b"HELLO", b"3"], sent[:4]
        assert isinstance(replies[0], dict), replies[0]
        assert replies[0][b"proto"] == 3
    else:
        assert b"HELLO" not in names, sent[:4]
    assert names.count(b"CLIENT SETINFO") == 2, sent[:5]  # LIB-NAME and LIB-VER
    # The oracle: the same client straight to a real redis-server. The proxy refuses nothing it accepts
    # (redis-py 8 also asks CLIENT MAINT_NOTIFICATIONS, which Redis 7.0 does not know, nor CLIENT SETINFO;
    # redis-py ignores those errors).
    direct_sent, direct_replies = await handshake(shards[0].port, protocol)
    assert [c[:2] for c in direct_sent] == [c[:2] for c in sent]
    proxy_refused, redis_refused = refused(sent, replies), refused(direct_sent, direct_replies)
    assert all(cmd in redis_refused for cmd in proxy_refused), (proxy_refused, redis_refused)


# --------------------------------------------------------------------------
# 1. Placement identical to a real nutcracker's


def placement_keys() -> list[bytes]:
    rng = random.Random(20240611)
    keys = [f"user:{i}".encode() for i in range(1000)] + [f"k{i}".encode() for i in range(400)]
    wide = ["ключ", "日本語のキー", "emoji-🙂", "naïve", "Ω{tag}x", "{日本}"]
    keys += [f"{w}:{i}".encode() for i in range(40) for w in wide[:5]]  # 200 non-ASCII keys
    tagged = [f"{{user:{i % 25}}}:field{i}".encode() for i in range(150)]
    tagged += [b"{}:empty-tag", b"{a}", b"a{b}c{d}", b"{", b"}{x}", b"{{x}}"]
    keys += tagged
    binary: set[bytes] = set()
    while len(binary) < 2000 - len(keys):
        binary.add(bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))))
    keys += sorted(binary)
    assert len(set(keys)) == len(keys) == 2000
    return keys


@pytest.mark.parametrize(
    ("hash_name", "hash_tag", "named"),
    [("fnv1a_64", "", False), ("fnv1a_64", "{}", False), ("md5", "", True)],
)
async def test_keys_land_where_nutcracker_puts_them(
    tmp_path: Path, shards: list[RedisServer], hash_name: str, hash_tag: str, named: bool
) -> None:
    keys = placement_keys()
    (listen,) = free_ports(1)
    names = ["shard-a", "\u03bd-b", "shard-c"] if named else []
    text = pool_yaml(
        "alpha", listen, [s.port for s in shards], hash=hash_name, hash_tag=hash_tag, names=names
    )

    # SET every key through a real nutcracker reading the same YAML.
    async with running_nutcracker_config(text, {"alpha": listen}, tmp_path / "nutcracker"):
        replies = await raw_pipeline(listen, [[b"SET", k, b"n:" + k] for k in keys])
    assert replies == [b"OK"] * len(keys)
    by_nutcracker = await shard_of(shards, keys)
    assert len(set(by_nutcracker.values())) == SHARDS  # nutcracker spread them over every shard

    async with shard_service(text) as service:
        c = client(service.pools[0].port)
        try:
            # GET each through distpat: every key is found, with nutcracker's value.
            pipe = c.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            got = await pipe.execute()
            missing = [k for k, v in zip(keys, got, strict=True) if v != b"n:" + k]
            assert not missing, f"{len(missing)} of {len(keys)} keys not found through distpat: {missing[:5]}"
            # SET each through distpat: it overwrites nutcracker's copy, never makes a second one.
            pipe = c.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, b"d:" + key)
            assert await pipe.execute() == [True] * len(keys)
        finally:
            await c.aclose()
    assert await shard_of(shards, keys) == by_nutcracker
    for index, server in enumerate(shards):
        mine = [k for k in keys if by_nutcracker[k] == index]
        assert await values_on(server, mine) == [b"d:" + k for k in mine]


# --------------------------------------------------------------------------
# 2. Commands split over several shards


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_multi_key_commands_fan_out_and_merge(shards: list[RedisServer], protocol: Protocol) -> None:
    keys = spread("fan", 60)
    text = pool_yaml("alpha", 1, [s.port for s in shards])
    async with shard_service(text) as service:
        c = client(service.pools[0].port, protocol)
        try:
            assert await c.mset({k: b"v" + k for k in keys}) is True
            where = await shard_of(shards, keys)
            assert len(set(where.values())) == SHARDS  # MSET really went to every shard
            for index, server in enumerate(shards):
                mine = [k for k in keys if where[k] == index]
                assert await values_on(server, mine) == [b"v" + k for k in mine]

            # MGET: values in the order asked, missing keys as None, across shards.
            asked = [keys[0], b"nope-1-key", keys[17], keys[5], b"nope-2-key", keys[39], keys[17]]
            assert await c.mget(asked) == [b"v" + k if k.startswith(b"fan") else None for k in asked]
            fragments = service.pools[0].stats["fragments"]
            assert fragments >= SHARDS  # the MGET was split (the stat counts fragments sent)

            # Counts are summed over the shards (a repeated key counts twice, as in Redis).
            assert await c.exists(*keys, b"nope:3", keys[0]) == len(keys) + 1
            assert await c.touch(*keys[:20], b"nope:4") == 20
            assert await c.delete(*keys[:10], b"nope:5") == 10
            assert await c.unlink(*keys[10:25], *keys[:3]) == 15
            assert await c.exists(*keys) == len(keys) - 25
            assert await c.mget(keys[:3]) == [None, None, None]
        finally:
            await c.aclose()
    remaining = await holders(shards, keys)
    assert all(not h for h in remaining[:25])
    assert all(len(h) == 1 for h in remaining[25:])


# --------------------------------------------------------------------------
# 3. A long pipeline of mixed commands


@dataclass
class Model:
    """What a single Redis would hold; each method returns the reply redis-py gives."""

    data: dict[bytes, object]

    def kind(self, key: bytes) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        return "list" if isinstance(value, list) else "hash" if isinstance(value, dict) else "string"


WRONGTYPE = "WRONGTYPE"
NOT_INTEGER = "value is not an integer"


def mixed_pipeline(
    rng: random.Random, count: int
) -> tuple[list[tuple[str, tuple[object, ...]]], list[object]]:
    """``count`` (method, args) for a redis-py pipeline, and the reply expected for each.

    An expected error is given as the start of its message (a string); everything else as redis-py
    returns it.
    """
    strings = [*spread("s", 150), "ş:é".encode(), "s:日本".encode()]
    counters, hashes, lists = spread("c", 40), spread("h", 40), spread("l", 40)
    every = strings + counters + hashes + lists
    model = Model({})
    data = model.data
    calls: list[tuple[str, tuple[object, ...]]] = []
    expected: list[object] = []

    def value() -> bytes:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 12)))

    for _ in range(count):
        op = rng.choice(["set", "get", "incr", "delete", "mget", "exists", "hset", "hget", "lpush", "lrange"])
        op = rng.choice([op, op, "mset", "getwrong"]) if rng.random() < 0.05 else op
        if op == "set":
            key = rng.choice(strings + counters[:5])
            v = b"x" if key in counters else value()
            calls.append(("set", (key, v)))
            data[key] = v
            expected.append(True)
        elif op == "get":
            key = rng.choice(strings + counters)
            calls.append(("get", (key,)))
            expected.append(data.get(key))
        elif op == "getwrong":
            key = rng.choice(hashes + lists)
            calls.append(("get", (key,)))
            expected.append(WRONGTYPE if key in data else None)
        elif op == "incr":
            key = rng.choice(counters)
            calls.append(("incr", (key,)))
            current = data.get(key, b"0")
            assert isinstance(current, bytes)
            if current.lstrip(b"-").isdigit():
                data[key] = b"%d" % (int(current) + 1)
                expected.append(int(current) + 1)
            else:
                expected.append(NOT_INTEGER)
        elif op == "delete":
            picked = rng.sample(every, rng.randint(1, 4))
            calls.append(("delete", tuple(picked)))
            expected.append(sum(1 for k in picked if k in data))
            for k in picked:
                data.pop(k, None)
        elif op == "mget":
            picked = [rng.choice(every) for _ in range(rng.randint(1, 6))]
            calls.append(("mget", (picked,)))
            expected.append([data.get(k) if model.kind(k) == "string" else None for k in picked])
        elif op == "mset":
            picked = rng.sample(strings, rng.randint(1, 5))
            mapping = {k: value() for k in picked}
            calls.append(("mset", (mapping,)))
            data.update(mapping)
            expected.append(True)
        elif op == "exists":
            picked = [rng.choice(every) for _ in range(rng.randint(1, 5))]
            calls.append(("exists", tuple(picked)))
            expected.append(sum(1 for k in picked if k in data))
        elif op == "hset":
            key, field_name, v = rng.choice(hashes), rng.choice([b"a", b"b", b"c", "é".encode()]), value()
            calls.append(("hset", (key, field_name, v)))
            h = data.setdefault(key, {})
            assert isinstance(h, dict)
            expected.append(0 if field_name in h else 1)
            h[field_name] = v
        elif op == "hget":
            key, field_name = rng.choice(hashes), rng.choice([b"a", b"b", b"c"])
            calls.append(("hget", (key, field_name)))
            h = data.get(key, {})
            assert isinstance(h, dict)
            expected.append(h.get(field_name))
        elif op == "lpush":
            key = rng.choice(lists)
            items = [value() for _ in range(rng.randint(1, 3))]
            calls.append(("lpush", (key, *items)))
            lst = data.setdefault(key, [])
            assert isinstance(lst, list)
            lst[:0] = reversed(items)
            expected.append(len(lst))
        else:  # lrange
            key = rng.choice(lists)
            calls.append(("lrange", (key, 0, -1)))
            lst = data.get(key, [])
            assert isinstance(lst, list)
            expected.append(list(lst))
    return calls, expected


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_pipeline_of_ten_thousand_mixed_commands(shards: list[RedisServer], protocol: Protocol) -> None:
    calls, expected = mixed_pipeline(random.Random(7), 10_000)
    assert sum(1 for e in expected if isinstance(e, str)) > 10  # some errors are expected in the middle
    text = pool_yaml("alpha", 1, [s.port for s in shards])
    async with shard_service(text) as service:
        c = client(service.pools[0].port, protocol)
        try:
            pipe = c.pipeline(transaction=False)
            for method, args in calls:
                getattr(pipe, method)(*args)
            got = await asyncio.wait_for(pipe.execute(raise_on_error=False), 60)
            assert await c.ping() is True  # the connection is fine after it
        finally:
            await c.aclose()
    assert len(got) == len(expected)
    wrong = []
    for i, (call, want, have) in enumerate(zip(calls, expected, got, strict=True)):
        ok = isinstance(have, ResponseError) and want in str(have) if isinstance(want, str) else have == want
        if not ok:
            wrong.append((i, call, want, have))
    assert not wrong, f"{len(wrong)} of {len(calls)} replies wrong, first: {wrong[:3]}"
    # The keys really are spread: every shard holds some.
    for server in shards:
        async with server.client() as direct:
            assert await direct.dbsize() > 0


# --------------------------------------------------------------------------
# 4. Hash tags: keys kept together, commands over several keys


async def test_hash_tags_keep_keys_together_and_cross_server_commands_fail(shards: list[RedisServer]) -> None:
    text = pool_yaml("alpha", 1, [s.port for s in shards], hash_tag="{}")
    async with shard_service(text, ShardSettings(allow_scripts=True)) as service:
        c = client(service.pools[0].port, single_connection_client=True)
        try:
            me = await c.client_id()
            tagged = [b"{user:1}:a", b"{user:1}:b", b"{user:1}:dest", b"{user:1}:str", b"{user:1}:str2"]
            await c.sadd(tagged[0], "x", "y")
            await c.sadd(tagged[1], "y", "z")
            await c.set(tagged[3], "text")
            assert await c.sunionstore(tagged[2], [tagged[0], tagged[1]]) == 3
            assert await c.smembers(tagged[2]) == {b"x", b"y", b"z"}
            assert await c.rename(tagged[3], tagged[4]) is True
            script = "return {redis.call('GET', KEYS[1]), redis.call('SCARD', KEYS[2])}"
            assert await c.eval(script, 2, tagged[4], tagged[2]) == [b"text", 3]
            where = await holders(shards, [k for k in tagged if k != tagged[3]])
            assert all(len(h) == 1 for h in where), where
            assert len({h[0] for h in where}) == 1, where

            # Two untagged keys on different shards (found by asking the shards).
            plain = spread("plain", 30)
            assert await c.mset(dict.fromkeys(plain, b"1")) is True
            at = await shard_of(shards, plain)
            first = plain[0]
            other = next(k for k in plain if at[k] != at[first])
            attempts = [
                ("rename", (first, other)),
                ("sunionstore", (first, [first, other])),
                ("eval", ("return 1", 2, first, other)),
                ("sinter", ([first, other],)),
            ]
            for method, args in attempts:
                # redis-py raises this class for an error reply whose code is CROSSSLOT
                with pytest.raises(ClusterCrossSlotError):
                    await getattr(c, method)(*args)
                assert await c.ping() is True  # and the connection goes on
            assert await c.get(first) == b"1"
            assert await c.get(other) == b"1"
            assert await c.client_id() == me  # the very same connection throughout
        finally:
            await c.aclose()
        async with raw_session(service.pools[0].port) as raw:
            crossing: list[list[bytes | str]] = [
                ["RENAME", first, other],
                ["SUNIONSTORE", first, first, other],
            ]
            for words in crossing:
                assert (await raw.call(*words))[1].startswith(b"-CROSSSLOT "), words
                assert (await raw.call("GET", other))[1] == b"$1\r\n1\r\n"


# --------------------------------------------------------------------------
# 5. Refused and malformed input


REFUSED = [
    ([b"KEYS", b"*"], "every key of a server"),
    ([b"SCAN", b"0"], "every key of a server"),
    ([b"FLUSHALL"], "every key of a server"),
    ([b"EVAL", b"return redis.call('FLUSHALL')", b"1", b"k"], "--allow-scripts"),
    ([b"SCRIPT", b"LOAD", b"return 1"], "no key to route by"),
    ([b"SUBSCRIBE", b"news"], "pub/sub"),
    ([b"BLPOP", b"queue", b"0"], "blocking"),
    ([b"INFO"], "administration"),
    ([b"NOSUCHCOMMAND", b"x"], "unknown"),
]


async def test_refused_commands_name_the_reason_and_the_connection_goes_on(shards: list[RedisServer]) -> None:
    text = pool_yaml("alpha", 1, [s.port for s in shards])
    async with shard_service(text) as service:
        port = service.pools[0].port
        async with raw_session(port) as session:
            assert (await session.call("SET", "kept", "1"))[0] == b"OK"
            for command, reason in REFUSED:
                _reply, raw = await session.call(*command)
                assert raw.startswith(b"-ERR "), (command, raw)
                assert reason in raw.decode(), (command, raw)
                assert (await session.call("PING"))[1] == b"+PONG\r\n", command
            assert (await session.call("GET", "kept"))[0] == b"1"  # FLUSHALL did nothing
        c = client(port)
        try:
            for command, reason in REFUSED:
                with pytest.raises(ResponseError, match=reason):
                    await run_command(c, *command)
                assert await c.ping() is True
        finally:
            await c.aclose()
    found = await holders(shards, [b"kept"])
    assert len(found[0]) == 1


MALFORMED = [
    pytest.param(b"*1\r\n+x\r\n", id="simple-string-in-request"),
    pytest.param(b"*x\r\n", id="bad-multibulk-length"),
    pytest.param(b"*1\r\n$abc\r\n", id="bad-bulk-length"),
    pytest.param(b"*2\r\n$3\r\nGET\r\n:1\r\n", id="integer-in-request"),
    pytest.param(b"*1\r\n$4\r\nPINGxx\r\n", id="bulk-not-crlf-terminated"),
]


@pytest.mark.parametrize("garbage", MALFORMED)
async def test_malformed_resp_gets_a_protocol_error_and_the_connection_closes(
    shards: list[RedisServer], garbage: bytes
) -> None:
    text = pool_yaml("alpha", 1, [s.port for s in shards])
    async with shard_service(text) as service:
        port = service.pools[0].port
        data, closed = await raw_exchange(port, garbage)
        assert data.startswith(b"-ERR Protocol error:"), data
        assert data.count(b"\r\n") == 1, data  # one reply only
        assert closed, data
        # A good command before the garbage in the same write is answered first.
        data, closed = await raw_exchange(port, b"*1\r\n$4\r\nPING\r\n" + garbage)
        assert data.startswith(b"+PONG\r\n-ERR Protocol error:"), data
        assert closed
        # The listener goes on.
        c = client(port)
        try:
            assert await c.ping() is True
        finally:
            await c.aclose()


async def test_inline_commands_from_a_raw_socket(shards: list[RedisServer]) -> None:
    text = pool_yaml("alpha", 1, [s.port for s in shards])
    async with shard_service(text) as service, raw_connection(service.pools[0].port) as (reader, writer):
        writer.write(b"PING\r\nSET inline-key hello\r\nGET inline-key\r\n")
        await writer.drain()
        assert await read_lines(reader, 4) == [b"+PONG\r\n", b"+OK\r\n", b"$5\r\n", b"hello\r\n"]
        writer.write(b"ECHO   spaced\n")  # a bare LF and extra spaces, as telnet may send
        await writer.drain()
        assert await read_lines(reader, 2) == [b"$6\r\n", b"spaced\r\n"]
    [where] = await holders(shards, [b"inline-key"])
    assert len(where) == 1
    assert await values_on(shards[where[0]], [b"inline-key"]) == [b"hello"]


async def test_command_over_max_request_bytes_closes_that_client_only(
    tmp_path: Path, shards: list[RedisServer]
) -> None:
    (listen,) = free_ports(1)
    config = tmp_path / "nutcracker.yml"
    config.write_text(pool_yaml("alpha", listen, [s.port for s in shards]))
    limit = 1 << 20
    args = ("--config", str(config), "--max-request-bytes", str(limit))
    async with running_redis_shard(tmp_path, listen, *args) as shard:
        bystander = client(listen)
        try:
            assert await bystander.set("before", "1") is True
            # The header announces 2 MiB: refused when the length is read, as redis-server does.
            big = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n" % (2 * limit) + b"x" * (limit + 65536)
            data, closed = await blocking_exchange(listen, big)
            assert data.startswith(b"-ERR Protocol error: invalid bulk length\r\n"), data[:200]
            assert closed
            # Lengths within the limit that add up to more than it: refused once they do.
            half = b"x" * (limit // 2 + 16)
            over = b"*4\r\n$4\r\nMSET\r\n$3\r\nbig\r\n$%d\r\n%b\r\n$%d\r\n" % (len(half), half, len(half))
            data, closed = await blocking_exchange(listen, over)
            assert data.startswith(b"-ERR Protocol error: request larger than 1048576 bytes"), data[:200]
            assert closed
            # Just under the limit is fine.
            ok_value = b"y" * (limit - 1024)
            assert await bystander.set("under", ok_value) is True
            assert await bystander.get("before") == b"1"
            assert await bystander.get("under") == ok_value
            fresh = client(listen)
            try:
                assert await fresh.ping() is True
                assert await fresh.get("big") is None  # the oversized SET never reached a shard
            finally:
                await fresh.aclose()
        finally:
            await bystander.aclose()
        assert shard.process.poll() is None


# --------------------------------------------------------------------------
# 6. Commands answered by the proxy itself, and AUTH


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_local_commands_through_redis_py(shards: list[RedisServer], protocol: Protocol) -> None:
    text = pool_yaml("alpha", 1, [s.port for s in shards])
    async with shard_service(text) as service:
        c = client(service.pools[0].port, protocol, single_connection_client=True)
        try:
            assert await c.ping() is True
            assert await c.echo("hé") == "hé".encode()
            assert await run_command(c, "SELECT", 0) in (True, b"OK", "OK")
            with pytest.raises(ResponseError, match="SELECT"):
                await run_command(c, "SELECT", 1)
            assert await c.command_count() > 50
            assert await c.client_setname("shard-test") is True
            assert await c.client_getname() == "shard-test"  # redis-py decodes the name
            hello = await run_command(c, "HELLO", 2)
            pairs = dict(zip(hello[::2], hello[1::2], strict=True)) if isinstance(hello, list) else hello
            assert pairs[b"proto"] == 2
            assert pairs[b"server"] == b"redis"
        finally:
            await c.aclose()


async def test_local_commands_on_the_wire(shards: list[RedisServer]) -> None:
    text = pool_yaml("alpha", 1, [s.port for s in shards])
    async with shard_service(text) as service:
        port = service.pools[0].port
        async with raw_session(port) as s:
            assert (await s.call("PING"))[1] == b"+PONG\r\n"
            assert (await s.call("PING", "hi"))[1] == b"$2\r\nhi\r\n"
            assert (await s.call("ECHO", "x y"))[1] == b"$3\r\nx y\r\n"
            assert (await s.call("SELECT", "0"))[1] == b"+OK\r\n"
            assert (await s.call("SELECT", "1"))[1].startswith(b"-ERR ")
            count, raw = await s.call("COMMAND", "COUNT")
            assert raw.startswith(b":")
            assert isinstance(count, int)
            assert count > 50
            assert (await s.call("CLIENT", "SETNAME", "wire"))[1] == b"+OK\r\n"
            assert (await s.call("CLIENT", "GETNAME"))[1] == b"$4\r\nwire\r\n"
            assert (await s.call("GET", "missing"))[1] == b"$-1\r\n"

            hello, raw = await s.call("HELLO", "3")
            assert raw.startswith(b"%"), raw  # a RESP3 map
            assert isinstance(hello, dict)
            assert hello[b"proto"] == 3
            assert hello[b"server"] == b"redis"
            assert (await s.call("GET", "missing"))[1] == b"_\r\n"  # RESP3 null, from the shard
            assert (await s.call("HSET", "h", "f", "v"))[1] == b":1\r\n"
            assert (await s.call("HGETALL", "h"))[1] == b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"  # a map from redis

            hello, raw = await s.call("HELLO", "2")
            assert raw.startswith(b"*14\r\n"), raw  # back to RESP2: a flat array
            assert (await s.call("GET", "missing"))[1] == b"$-1\r\n"
            assert (await s.call("HGETALL", "h"))[1] == b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
            assert (await s.call("HELLO", "4"))[1].startswith(b"-NOPROTO")

            await s.send(b"*1\r\n$4\r\nQUIT\r\n")
            data, closed = await read_until_closed(s.reader)
            assert data == b"+OK\r\n"
            assert closed


async def test_auth(tmp_path: Path) -> None:
    password = "s3cret pass"
    async with redis_servers(tmp_path / "redis", SHARDS, password=password) as servers:
        text = pool_yaml("alpha", 1, [s.port for s in servers], extra={"redis_auth": f"'{password}'"})
        async with shard_service(text) as service:
            port = service.pools[0].port
            async with raw_session(port) as s:
                assert (await s.call("PING"))[1].startswith(b"-NOAUTH")
                assert (await s.call("GET", "k"))[1].startswith(b"-NOAUTH")
                assert (await s.call("HELLO", "3"))[1].startswith(b"-NOAUTH")
                assert (await s.call("AUTH", "wrong"))[1].startswith(b"-WRONGPASS")
                assert (await s.call("GET", "k"))[1].startswith(b"-NOAUTH")
                assert (await s.call("AUTH", password))[1] == b"+OK\r\n"
                assert (await s.call("SET", "auth:raw", "1"))[1] == b"+OK\r\n"
                assert (await s.call("GET", "auth:raw"))[1] == b"$1\r\n1\r\n"

            # Refused as the shards themselves refuse: the same exception for every client setup.
            # (Without retry=: redis-py retries a failed connection setup for some 4 s, with Redis too.)
            for options in ({}, {"protocol": 2}, {"password": "nope"}, {"password": "nope", "protocol": 2}):
                raised: list[type[Exception]] = []
                for target in (port, servers[0].port):
                    bad = client(target, retry=Retry(NoBackoff(), 0), **options)
                    try:
                        with pytest.raises(AuthenticationError) as caught:
                            await bad.get("k")
                        raised.append(type(caught.value))
                    finally:
                        await bad.aclose()
                assert raised[0] is raised[1], options

            keys = spread("auth", 60)
            for protocol in (None, 2):
                c = client(port, protocol, password=password)
                try:
                    assert await c.mset(dict.fromkeys(keys, b"p")) is True
                    assert await c.mget(keys) == [b"p"] * len(keys)
                    assert await c.incr("auth:counter") >= 1
                finally:
                    await c.aclose()
        where = await shard_of(servers, keys)  # the shards' own clients send the password
        assert len(set(where.values())) == SHARDS


# --------------------------------------------------------------------------
# 7. A shard killed and restarted under load


@dataclass(frozen=True, slots=True)
class Outcome:
    started: float
    took: float
    shard: int
    result: str  # "ok", "error" (an error reply), "wrong" (a wrong value) or an exception's name
    detail: str = ""


async def mapped_keys(c: redis.Redis, servers: Sequence[RedisServer], count: int) -> dict[bytes, int]:
    keys = spread("load", count)
    assert await c.mset(dict.fromkeys(keys, b"0")) is True
    where = await shard_of(servers, keys)
    assert len(set(where.values())) == len(servers)
    return where


async def load_worker(
    c: redis.Redis, keys: Sequence[bytes], where: dict[bytes, int], out: list[Outcome], stop: asyncio.Event
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30  # a bound, whatever happens to the stop event
    i = 0
    while not stop.is_set() and loop.time() < deadline:
        key = keys[i % len(keys)]
        value = b"%d" % i
        i += 1
        started = loop.time()
        try:
            async with asyncio.timeout(REQUEST_BOUND * 2):
                ok = await c.set(key, value) is True and await c.get(key) == value
            result, detail = ("ok", "") if ok else ("wrong", "")
        except ResponseError as exc:
            result, detail = "error", str(exc)
        except Exception as exc:
            result, detail = type(exc).__name__, str(exc)
        out.append(Outcome(started, loop.time() - started, where[key], result, detail))
        await asyncio.sleep(0)


async def test_shard_killed_and_restarted_under_load(shards: list[RedisServer]) -> None:
    text = pool_yaml("alpha", 1, [s.port for s in shards], extra={"timeout": "500"})
    loop = asyncio.get_running_loop()
    async with shard_service(text) as service:
        port = service.pools[0].port
        clients = [client(port) for _ in range(4)]
        try:
            where = await mapped_keys(clients[0], shards, 240)
            keys = list(where)
            victim = where[keys[0]]
            out: list[Outcome] = []
            stop = asyncio.Event()
            workers = [
                asyncio.create_task(load_worker(c, keys[n::4], where, out, stop))
                for n, c in enumerate(clients)
            ]
            await asyncio.sleep(0.8)
            killed_at = loop.time()
            await shards[victim].stop()
            dead_from = loop.time()
            await asyncio.sleep(1.0)
            restart_at = loop.time()
            await shards[victim].start()
            back_from = loop.time()
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*workers), 30)
        finally:
            for c in clients:
                await c.aclose()

    assert len(out) > 200, len(out)
    unexpected = [o for o in out if o.result not in ("ok", "error")]
    assert not unexpected, f"{len(unexpected)} requests failed oddly: {unexpected[:3]}"
    slow = [o for o in out if o.took > REQUEST_BOUND]
    assert not slow, f"{len(slow)} requests waited over {REQUEST_BOUND} s: {slow[:3]}"
    others = [o for o in out if o.shard != victim]
    failed_others = [o for o in others if o.result != "ok"]
    assert not failed_others, f"the other shards' keys failed {len(failed_others)} times: {failed_others[:3]}"
    victims = [o for o in out if o.shard == victim]
    before = [o for o in victims if o.started + o.took < killed_at]
    down = [o for o in victims if dead_from <= o.started and o.started + o.took < restart_at]
    after = [o for o in victims if o.started >= back_from]
    assert before
    assert all(o.result == "ok" for o in before)
    assert len(down) > 5
    assert all(o.result == "error" for o in down), down[:3]
    assert after
    assert after[-1].result == "ok", after[-3:]
    first_ok = next(i for i, o in enumerate(after) if o.result == "ok")
    relapses = [o for o in after[first_ok:] if o.result != "ok"]
    assert not relapses, relapses[:3]


EJECT = {
    "timeout": "500",
    "auto_eject_hosts": "true",
    "server_failure_limit": "2",
    "server_retry_timeout": "1000",
}


async def until(condition: Callable[[], Awaitable[bool]], what: str, *, timeout: float = 10.0) -> None:
    """Await ``condition()`` until it is true, for at most ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


async def try_set(c: redis.Redis, key: bytes, value: bytes) -> bool:
    """SET through the proxy: True if it worked, False on an error reply; never longer than the bound."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(REQUEST_BOUND * 2):
            return await c.set(key, value) is True
    except ResponseError:
        return False
    finally:
        assert loop.time() - started < REQUEST_BOUND


async def test_auto_eject_moves_keys_and_brings_them_back(shards: list[RedisServer]) -> None:
    text = pool_yaml("alpha", 1, [s.port for s in shards], extra=EJECT)
    async with shard_service(text) as service:
        c = client(service.pools[0].port)
        try:
            where = await mapped_keys(c, shards, 90)
            victim = where[b"load-0-key"]
            theirs = [k for k, s in where.items() if s == victim]
            ours = [k for k, s in where.items() if s != victim]
            await shards[victim].stop()

            failures = 0

            async def moved() -> bool:
                nonlocal failures
                ok = await try_set(c, theirs[0], b"moved")
                failures += not ok
                return ok

            await until(moved, "the dead shard's keys moved to the others")
            assert failures >= 1  # twemproxy's way: requests fail until the failure limit ejects it
            assert service.pools[0].stats["server_ejects"] >= 1
            for key in theirs:
                assert await try_set(c, key, b"moved"), key
            assert await c.mget(theirs) == [b"moved"] * len(theirs)
            survivors = [s for i, s in enumerate(shards) if i != victim]
            assert {i for h in await holders(survivors, theirs) for i in h} == {0, 1}  # spread over both
            assert all(len(h) == 1 for h in await holders(survivors, theirs))
            assert await c.mget(ours) == [b"0"] * len(ours)  # the others' keys stayed put

            await shards[victim].start()

            async def back() -> bool:
                await try_set(c, theirs[0], b"back")
                return await values_on(shards[victim], theirs[:1]) == [b"back"]

            await until(back, "the restarted shard took its keys back")
            for key in theirs:
                assert await try_set(c, key, b"home"), key
            assert await values_on(shards[victim], theirs) == [b"home"] * len(theirs)
        finally:
            await c.aclose()


async def test_keep_ring_answers_errors_instead_of_moving_keys(shards: list[RedisServer]) -> None:
    text = pool_yaml("alpha", 1, [s.port for s in shards], extra=EJECT)
    async with shard_service(text, ShardSettings(keep_ring=True)) as service:
        c = client(service.pools[0].port)
        try:
            where = await mapped_keys(c, shards, 90)
            victim = where[b"load-0-key"]
            theirs = [k for k, s in where.items() if s == victim]
            ours = [k for k, s in where.items() if s != victim]
            await shards[victim].stop()
            loop = asyncio.get_running_loop()
            until_time = loop.time() + 1.5  # longer than the retry timeout: still no move
            rounds = 0
            while loop.time() < until_time and rounds < 1000:
                rounds += 1
                assert not await try_set(c, theirs[rounds % len(theirs)], b"nowhere")
                assert await try_set(c, ours[rounds % len(ours)], b"fine")
                await asyncio.sleep(0.01)
            assert service.pools[0].stats["server_ejects"] >= 1
            survivors = [s for i, s in enumerate(shards) if i != victim]
            assert all(not h for h in await holders(survivors, theirs))  # nothing moved

            await shards[victim].start()

            async def back() -> bool:
                return await try_set(c, theirs[0], b"back")

            # After server_retry_timeout the server is tried again; it answers now.
            await until(back, "the restarted shard serves its keys again (keep_ring)", timeout=6.0)
            assert await values_on(shards[victim], theirs[:1]) == [b"back"]
        finally:
            await c.aclose()


async def test_a_hung_shard_times_out_without_holding_up_the_others(shards: list[RedisServer]) -> None:
    text = pool_yaml("alpha", 1, [s.port for s in shards], extra={"timeout": "500"})
    async with shard_service(text) as service:
        c = client(service.pools[0].port)
        other = client(service.pools[0].port)
        victim_process = None
        try:
            where = await mapped_keys(c, shards, 60)
            victim = where[b"load-0-key"]
            theirs = [k for k, s in where.items() if s == victim]
            ours = [k for k, s in where.items() if s != victim]
            victim_process = shards[victim].process
            assert victim_process is not None
            victim_process.send_signal(signal.SIGSTOP)  # alive, connected, silent
            hung = asyncio.create_task(try_set(c, theirs[0], b"late"))
            for key in ours:  # meanwhile, on another connection, the other shards answer
                assert await try_set(other, key, b"fine")
            assert await asyncio.wait_for(hung, REQUEST_BOUND * 2) is False  # an error, within the bound
            assert service.pools[0].stats_json()[shards[victim].address]["server_timedout"] >= 1
        finally:
            if victim_process is not None:
                victim_process.send_signal(signal.SIGCONT)
            await c.aclose()
            await other.aclose()


# --------------------------------------------------------------------------
# 8. The stats port


async def read_stats(port: int) -> dict[str, Any]:
    data, closed = await raw_exchange(port, b"")
    assert closed, data
    stats: dict[str, Any] = json.loads(data)
    return stats


async def test_stats_port_serves_twemproxy_json(tmp_path: Path, shards: list[RedisServer]) -> None:
    listen, stats_port = free_ports(2)
    names = ["red-1", "red-2", "red-3"]
    config = tmp_path / "nutcracker.yml"
    config.write_text(pool_yaml("beta", listen, [s.port for s in shards], names=names))
    args = ("--config", str(config), "-s", str(stats_port))
    async with running_redis_shard(tmp_path, listen, *args, also=[stats_port]):
        c = client(listen)
        try:
            assert await c.mset(dict.fromkeys(spread("st", 60), b"1")) is True
            first = await read_stats(stats_port)
            assert first["service"] == "nutcracker"
            pool = first["beta"]
            assert isinstance(pool, dict)
            assert set(names) <= set(pool)
            assert all(pool[n]["responses"] >= 1 for n in names), pool  # the MSET was split over all three
            before = {n: (pool[n]["requests"], pool[n]["responses"]) for n in names}

            pipe = c.pipeline(transaction=False)
            for i in range(300):
                pipe.get(spread("st", 60)[i % 60])
            assert await pipe.execute() == [b"1"] * 300
            second = await read_stats(stats_port)
            pool = second["beta"]
            assert isinstance(pool, dict)
            after = {n: (pool[n]["requests"], pool[n]["responses"]) for n in names}
            assert all(after[n][0] > before[n][0] for n in names), (before, after)
            assert all(after[n][1] > before[n][1] for n in names), (before, after)
            assert sum(a[1] for a in after.values()) - sum(b[1] for b in before.values()) == 300
            assert pool["client_connections"] >= 1
            assert second["curr_connections"] >= 1
            # Every command sent was answered (the client holds every reply), so each server has
            # as many requests as responses: those sent while its connection was opening count too.
            assert {n: pool[n]["in_queue"] for n in names} == dict.fromkeys(names, 0)
            assert {n: pool[n]["requests"] for n in names} == {n: pool[n]["responses"] for n in names}
        finally:
            await c.aclose()


async def test_stats_document_has_nutcracker_s_fields(tmp_path: Path, shards: list[RedisServer]) -> None:
    """The same YAML (unnamed servers) to nutcracker and to distpat: the same keys at every level."""
    listen, stats_port = free_ports(2)
    text = pool_yaml("gamma", listen, [s.port for s in shards])
    async with running_nutcracker_config(text, {"gamma": listen}, tmp_path / "nutcracker") as run:
        theirs = await read_stats(run.stats_port)
    config = tmp_path / "nutcracker.yml"
    config.write_text(text)
    args = ("--config", str(config), "-s", str(stats_port))
    async with running_redis_shard(tmp_path, listen, *args, also=[stats_port]):
        ours = await read_stats(stats_port)
    assert set(ours) == set(theirs)
    theirs_pool, ours_pool = theirs["gamma"], ours["gamma"]
    assert isinstance(theirs_pool, dict)
    assert isinstance(ours_pool, dict)
    assert set(ours_pool) == set(theirs_pool)  # the pool's counters, and its servers named alike
    servers = sorted(k for k, v in theirs_pool.items() if isinstance(v, dict))
    assert len(servers) == SHARDS
    missing = {name: sorted(set(theirs_pool[name]) - set(ours_pool[name])) for name in servers}
    assert missing == {name: [] for name in servers}, "per-server counters nutcracker has, distpat lacks"


# --------------------------------------------------------------------------
# 9. SIGHUP: a new server list, clients kept


async def test_sighup_adds_a_server_without_dropping_clients(
    tmp_path: Path, shards: list[RedisServer]
) -> None:
    (listen,) = free_ports(1)
    config = tmp_path / "nutcracker.yml"
    config.write_text(pool_yaml("alpha", listen, [s.port for s in shards[:2]]))
    async with running_redis_shard(tmp_path, listen, "--config", str(config)) as shard:
        c = client(listen, single_connection_client=True)
        try:
            me = await c.client_id()
            first = spread("before", 100)
            assert await c.mset(dict.fromkeys(first, b"1")) is True
            assert all(len(h) == 0 for h in await holders(shards[2:], first))
            async with raw_session(listen) as raw:
                assert (await raw.call("PING"))[1] == b"+PONG\r\n"

                config.write_text(pool_yaml("alpha", listen, [s.port for s in shards]))
                mark = len(shard.log())
                shard.process.send_signal(signal.SIGHUP)
                await shard.wait_for_log("3 servers after reload", after=mark)

                assert (await raw.call("PING"))[1] == b"+PONG\r\n"  # the raw connection lives on
                assert (await raw.call("SET", "raw:after", "1"))[1] == b"+OK\r\n"
            assert await c.client_id() == me  # redis-py never reconnected
            second = spread("after", 100)
            assert await c.mset(dict.fromkeys(second, b"2")) is True
            assert await c.mget(second) == [b"2"] * len(second)
            on_third = [k for k, h in zip(second, await holders(shards, second), strict=True) if h == [2]]
            assert on_third, "no new key landed on the added server"
            # Old keys the new server now owns are not found (they were not moved); the rest still are.
            old = await c.mget(first)
            assert old.count(b"1") + old.count(None) == len(first)
            assert old.count(b"1") > len(first) // 3
            assert await c.client_id() == me
        finally:
            await c.aclose()
        assert shard.process.poll() is None
