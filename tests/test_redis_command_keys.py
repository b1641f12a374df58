"""Commands with several keys (a destination, numkeys, options naming keys), through ``distpat redis-shard``.

Table-driven, with real redis-servers: each command is sent with its keys on two different shards (it
must be refused with CROSSSLOT, and no shard may have run it), then with the keys kept together by a
hash tag (it must run, and write its destination next to its source). Scripts are refused unless
``allow_scripts``. What each shard ran is read from the shard itself (INFO commandstats).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from distpat.core.redis_commands import COMMANDS, Kind
from distpat.net.redis_pool import ShardPool
from distpat.net.redis_shard import ShardService, ShardSettings
from tests.nutcracker import free_ports
from tests.rediskit import (
    RedisServer,
    commands_run,
    keys_apart,
    pool_yaml,
    raw_session,
    redis_servers,
    running_redis_shard,
    shard_service,
)


@dataclass(frozen=True)
class Case:
    """``command`` uses S (a source) and D (a second key, often the destination); ``setup`` fills S."""

    command: str
    setup: str = ""
    writes: bool = True  # D exists afterwards (next to S)

    @property
    def name(self) -> str:
        return self.command.split()[0].lower()


CASES = [
    Case("SORT S STORE D", "RPUSH S 3 1 2"),
    Case("SORT S BY nosort LIMIT 0 2 STORE D", "RPUSH S 3 1 2"),
    Case("SMOVE S D m", "SADD S m"),
    Case("RPOPLPUSH S D", "RPUSH S a"),
    Case("LMOVE S D LEFT RIGHT", "RPUSH S a"),
    Case("SINTERSTORE D S", "SADD S a"),
    Case("SUNIONSTORE D S", "SADD S a"),
    Case("SDIFFSTORE D S", "SADD S a"),
    Case("ZUNIONSTORE D 1 S", "ZADD S 1 a"),
    Case("ZINTERSTORE D 1 S", "ZADD S 1 a"),
    Case("ZDIFFSTORE D 1 S", "ZADD S 1 a"),
    Case("ZRANGESTORE D S 0 -1", "ZADD S 1 a"),
    Case("GEORADIUS S 15 37 200 km STORE D", "GEOADD S 13.361389 38.115556 Palermo"),
    Case("GEORADIUS S 15 37 200 km STOREDIST D", "GEOADD S 13.361389 38.115556 Palermo"),
    Case("GEORADIUSBYMEMBER S Palermo 200 km STORE D", "GEOADD S 13.361389 38.115556 Palermo"),
    Case("GEOSEARCHSTORE D S FROMLONLAT 15 37 BYRADIUS 200 km", "GEOADD S 13.361389 38.115556 Palermo"),
    Case("COPY S D", "SET S v"),
    Case("RENAME S D", "SET S v"),
    Case("RENAMENX S D", "SET S v"),
    Case("BITOP OR D S", "SET S v"),
    Case("PFMERGE D S", "PFADD S a"),
    Case("LMPOP 2 S D LEFT", "RPUSH S a", writes=False),
    Case("ZMPOP 2 S D MIN", "ZADD S 1 a", writes=False),
    Case("SINTERCARD 2 S D", "SADD S a", writes=False),
    Case("ZUNION 2 S D", "ZADD S 1 a", writes=False),
    Case("ZINTER 2 S D", "ZADD S 1 a", writes=False),
    Case("ZDIFF 2 S D", "ZADD S 1 a", writes=False),
    Case("ZINTERCARD 2 S D", "ZADD S 1 a", writes=False),
    Case("SUNION S D", "SADD S a", writes=False),
    Case("SINTER S D", "SADD S a", writes=False),
    Case("SDIFF S D", "SADD S a", writes=False),
    Case("LCS S D", "SET S v", writes=False),
    Case("PFCOUNT S D", "PFADD S a", writes=False),
]


@pytest.fixture
async def shards(tmp_path: Path) -> AsyncIterator[list[RedisServer]]:
    async with redis_servers(tmp_path / "redis", 2) as servers:
        yield servers


@pytest.fixture
async def service(shards: list[RedisServer]) -> AsyncIterator[ShardService]:
    text = pool_yaml("alpha", 1, [s.port for s in shards], hash_tag="{}")
    async with shard_service(text) as svc:
        yield svc


def apart(pool: ShardPool, prefix: str) -> tuple[str, str]:
    first, other = keys_apart(pool, prefix)
    return first.decode(), other.decode()


def words(template: str, source: str, second: str) -> list[str]:
    return [source if w == "S" else second if w == "D" else w for w in template.split()]


async def calls(shards: list[RedisServer], name: str) -> int:
    """How many times the shards ran command ``name``, together."""
    return sum([await commands_run(server, name) for server in shards])


async def holders(shards: list[RedisServer], key: str) -> list[int]:
    found = []
    for i, server in enumerate(shards):
        async with server.client() as direct:
            if await direct.exists(key):
                found.append(i)
    return found


def test_the_table_covers_every_command_with_several_keys() -> None:
    """Every command of the table that may take two keys is a case here (or split and merged)."""
    multi = {
        name.decode()
        for name, spec in COMMANDS.items()
        if spec.kind is Kind.KEYS and not spec.simple and name not in (b"xinfo", b"xgroup", b"sort_ro")
    }
    assert multi <= {case.name for case in CASES}, sorted(multi - {case.name for case in CASES})


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.command)
async def test_keys_on_two_shards_are_refused_and_nothing_runs(
    shards: list[RedisServer], service: ShardService, case: Case
) -> None:
    pool = service.pools[0]
    source, second = apart(pool, case.name)
    async with raw_session(pool.port) as session:
        if case.setup:
            _, reply = await session.call(*words(case.setup, source, second))
            assert not reply.startswith(b"-"), reply
        _, reply = await session.call(*words(case.command, source, second))
        assert reply.startswith(b"-CROSSSLOT Keys in request don't hash to the same server"), reply
        assert (await session.call("PING"))[1] == b"+PONG\r\n"
    assert await calls(shards, case.name) == 0
    assert await holders(shards, second) == []
    assert pool.refusals.get("crossslot") == 1


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.command)
async def test_keys_kept_together_by_a_hash_tag_run_on_their_shard(
    shards: list[RedisServer], service: ShardService, case: Case
) -> None:
    source, second = f"{{{case.name}}}:src", f"{{{case.name}}}:dst"
    async with raw_session(service.pools[0].port) as session:
        if case.setup:
            await session.call(*words(case.setup, source, second))
        before = await holders(shards, source)
        _, reply = await session.call(*words(case.command, source, second))
        assert not reply.startswith(b"-"), reply
    assert await calls(shards, case.name) == 1
    if case.writes:
        assert await holders(shards, second) == before  # written on the source's shard


REFUSED = [
    ("SORT S BY w_* STORE D", "BY patterns read other keys"),
    ("SORT S GET o_*", "GET patterns read other keys"),
    ("SORT_RO S BY w_*", "BY patterns read other keys"),
    ("COPY S D DB 1", "DB is not allowed"),
]


@pytest.mark.parametrize(("template", "reason"), REFUSED, ids=[r[0] for r in REFUSED])
async def test_options_that_reach_other_keys_are_refused(
    shards: list[RedisServer], service: ShardService, template: str, reason: str
) -> None:
    async with raw_session(service.pools[0].port) as session:
        await session.call("RPUSH", "{r}:s", "1")
        _, reply = await session.call(*words(template, "{r}:s", "{r}:d"))
        assert reply.startswith(b"-ERR "), reply
        assert reason.encode() in reply, reply
    assert await calls(shards, template.split()[0].lower()) == 0


# --------------------------------------------------------------------------
# Scripts


async def test_scripts_are_refused_by_default_naming_the_option(shards: list[RedisServer]) -> None:
    text = pool_yaml("alpha", 1, [s.port for s in shards], hash_tag="{}")
    async with shard_service(text) as service, raw_session(service.pools[0].port) as session:
        await session.call("SET", "{s}:kept", "1")
        for command in (
            ["EVAL", "redis.call('FLUSHALL') return 1", "1", "{s}:kept"],
            ["EVAL_RO", "return 1", "1", "{s}:kept"],
            ["EVALSHA", "0" * 40, "1", "{s}:kept"],
            ["EVALSHA_RO", "0" * 40, "1", "{s}:kept"],
            ["FCALL", "f", "1", "{s}:kept"],
            ["FCALL_RO", "f", "1", "{s}:kept"],
            ["SCRIPT", "LOAD", "return 1"],
            ["FUNCTION", "FLUSH"],
        ):
            _, reply = await session.call(*command)
            assert reply.startswith(b"-ERR "), (command, reply)
            assert b"--allow-scripts" in reply, (command, reply)
        assert (await session.call("GET", "{s}:kept"))[0] == b"1"
        assert service.pools[0].refusals["script"] == 6
    for name in ("eval", "eval_ro", "evalsha", "evalsha_ro", "fcall", "fcall_ro", "script", "function"):
        assert await calls(shards, name) == 0


async def test_allowed_scripts_route_by_their_declared_keys(shards: list[RedisServer]) -> None:
    text = pool_yaml("alpha", 1, [s.port for s in shards], hash_tag="{}")
    async with shard_service(text, ShardSettings(allow_scripts=True)) as service:
        pool = service.pools[0]
        source, second = apart(pool, "script")
        async with raw_session(pool.port) as session:
            script = "redis.call('SET', KEYS[2], redis.call('GET', KEYS[1])) return 1"
            await session.call("SET", "{e}:a", "v")
            assert (await session.call("EVAL", script, "2", "{e}:a", "{e}:b"))[1] == b":1\r\n"
            assert (await session.call("GET", "{e}:b"))[0] == b"v"
            _, reply = await session.call("EVAL", script, "2", source, second)
            assert reply.startswith(b"-CROSSSLOT "), reply
            _, reply = await session.call("EVAL", "return 1", "0")
            assert reply.startswith(b"-ERR "), reply
            assert b"at least one key" in reply, reply
    assert await calls(shards, "eval") == 1


async def test_allow_scripts_is_a_flag_of_the_process(tmp_path: Path, shards: list[RedisServer]) -> None:
    """`distpat redis-shard --allow-scripts`: the flag reaches ShardSettings (without it, see above)."""
    (listen,) = free_ports(1)
    config = tmp_path / "nutcracker.yml"
    config.write_text(pool_yaml("alpha", listen, [s.port for s in shards], hash_tag="{}"))
    async with (
        running_redis_shard(tmp_path, listen, "--config", str(config), "--allow-scripts"),
        raw_session(listen) as session,
    ):
        assert (await session.call("EVAL", "return redis.call('INCR', KEYS[1])", "1", "{f}:n"))[
            1
        ] == b":1\r\n"
        assert (await session.call("GET", "{f}:n"))[0] == b"1"
