"""The ambassador's memory bounds: a client far ahead of its replies stops being read, then resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from distpat.net import redis_shard
from tests.nutcracker import free_ports
from tests.rediskit import pool_yaml, raw_pipeline, redis_servers, shard_service


async def test_a_client_far_ahead_of_its_replies_is_paused_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_shard, "MAX_WAITING", 64)
    paused: list[int] = []
    real_flush = redis_shard.RedisClient.flush

    def watching_flush(self: redis_shard.RedisClient) -> None:
        if self.paused:
            paused.append(len(self.waiting))
        real_flush(self)

    monkeypatch.setattr(redis_shard.RedisClient, "flush", watching_flush)
    async with redis_servers(tmp_path, 2) as servers:
        text = pool_yaml("alpha", free_ports(1)[0], [s.port for s in servers])
        async with shard_service(text) as service:
            commands = [[b"SET", b"k-%d-x" % i, b"%d" % i] for i in range(3000)]
            commands += [[b"GET", b"k-%d-x" % i] for i in range(3000)]
            replies = await raw_pipeline(service.pools[0].port, commands)
    assert replies[:3000] == [b"OK"] * 3000
    assert replies[3000:] == [b"%d" % i for i in range(3000)]
    assert paused, "the client was never paused"
