"""Hostile RESP lengths through ``distpat redis-shard``: refused when the length is read, nothing forwarded.

Each class (a bulk length past the limit, a multibulk count past what the limit allows, lengths that
are not numbers, lengths adding up past the limit) is a generator of variants (seeded, so a failure
replays), each sent after a few valid commands on a fresh connection. The client must get the valid
commands' replies, then ``-ERR Protocol error: ...`` and the close; taps in front of the shards must
have carried nothing of the hostile command; the refusal is counted and logged. The parsers themselves
are property-tested with hypothesis in ``tests/test_resp.py``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from distpat.net import redis_pool
from distpat.net.redis_shard import ShardSettings
from tests.rediskit import (
    encode,
    pool_yaml,
    raw_exchange,
    raw_pipeline,
    redis_servers,
    shard_service,
    tap,
)

LIMIT = 1 << 20
VARIANTS = 12  # per class

Variant = tuple[bytes, bytes]  # the hostile bytes, and the reply's message


def bulk_too_long(rng: random.Random, marker: bytes) -> Variant:
    length = rng.choice([LIMIT + 1, LIMIT * 2, 10**9, 999_999_999_999, 2**63 - 1, 2**63, 2**64 + 1, 10**25])
    args = [b"SET", marker, b"value", b"EX", b"100"]
    position = rng.randrange(1, len(args))
    head = b"*%d\r\n" % len(args) + b"".join(encode([a])[4:] for a in args[:position])
    return head + b"$%d\r\n" % length + b"x" * rng.randrange(0, 4096), b"invalid bulk length"


def count_too_large(rng: random.Random, marker: bytes) -> Variant:
    count = rng.choice([LIMIT // 6 + 1, 1024 * 1024 + 1, 10**7, 10**10, 99_999_999_999])
    return b"*%d\r\n$3\r\nDEL\r\n$%d\r\n%b\r\n" % (count, len(marker), marker), b"invalid multibulk length"


def length_not_a_number(rng: random.Random, marker: bytes) -> Variant:
    line = rng.choice([b"$-5", b"$+3", b"$ 3", b"$3x", b"$0x10", b"$", b"$-1", b"$1e3", b"$\xef\xbc\x93"])
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n%b\r\nabc\r\n" % (
        len(marker),
        marker,
        line,
    ), b"invalid bulk length"


def lengths_add_up_past_the_limit(rng: random.Random, marker: bytes) -> Variant:
    size = rng.randrange(LIMIT // 3, LIMIT // 2)
    parts = [encode([b"MSET"])[4:], encode([marker])[4:]]
    sent = b"".join(parts)
    while len(sent) <= LIMIT:
        sent += b"$%d\r\n" % size + b"v" * size + b"\r\n"
    return b"*101\r\n" + sent, b"request larger than %d bytes" % LIMIT


CLASSES: list[Callable[[random.Random, bytes], Variant]] = [
    bulk_too_long,
    count_too_large,
    length_not_a_number,
    lengths_add_up_past_the_limit,
]


@pytest.mark.parametrize("make", CLASSES, ids=lambda f: f.__name__)
async def test_hostile_lengths_are_refused_and_reach_no_shard(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[random.Random, bytes], Variant],
) -> None:
    monkeypatch.setattr(redis_pool, "LOG_INTERVAL", 0.0)  # every refusal its own line
    rng = random.Random(f"hostile-{make.__name__}")
    caplog.set_level(logging.INFO, logger="distpat.redis")
    async with redis_servers(tmp_path, 2) as servers, tap(servers[0].port) as t0, tap(servers[1].port) as t1:
        text = pool_yaml("alpha", 1, [t0.port, t1.port])
        async with shard_service(text, ShardSettings(max_request_bytes=LIMIT)) as service:
            pool = service.pools[0]
            sent_valid = 0
            for i in range(VARIANTS):
                marker = b"hostile-%d-key" % i
                hostile, message = make(rng, marker)
                valid = [[b"SET", b"before-%d-%d-key" % (i, n), b"ok"] for n in range(rng.randrange(0, 3))]
                sent_valid += len(valid)
                data = b"".join(encode(c) for c in valid) + hostile
                reply, closed = await raw_exchange(pool.port, data)
                assert reply == b"+OK\r\n" * len(valid) + b"-ERR Protocol error: " + message + b"\r\n", (
                    i,
                    hostile[:80],
                    reply,
                )
                assert closed
            # A bystander is served throughout, and the shards saw none of the hostile commands.
            assert await raw_pipeline(pool.port, [[b"SET", b"after", b"1"], [b"GET", b"after"]]) == [
                b"OK",
                b"1",
            ]
            assert pool.refusals["protocol_error"] == VARIANTS
    carried = bytes(t0.to_server) + bytes(t1.to_server)
    assert b"hostile-" not in carried
    assert carried.count(b"before-") == sent_valid  # what came before each was forwarded, once
    logged = [r for r in caplog.records if r.name == "distpat.redis" and "protocol_error" in r.getMessage()]
    assert len(logged) == VARIANTS
