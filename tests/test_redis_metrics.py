"""What ``distpat redis-shard`` tells operators: /metrics (latency, bytes, refusals) and its own log lines."""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.core import HistogramMetricFamily

from distpat.net import redis_pool
from distpat.net.redis_metrics import LATENCY_BUCKETS, Latency
from tests.nutcracker import free_ports
from tests.rediskit import (
    HOST,
    pool_yaml,
    raw_exchange,
    raw_pipeline,
    raw_session,
    redis_servers,
    running_redis_shard,
    shard_service,
)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text``."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


async def test_metrics_of_the_process_show_latency_bytes_refusals_and_transactions(tmp_path: Path) -> None:
    listen, admin = free_ports(2)
    async with redis_servers(tmp_path, 2) as servers:
        config = tmp_path / "nutcracker.yml"
        config.write_text(pool_yaml("alpha", listen, [s.port for s in servers], hash_tag="{}"))
        args = ("--config", str(config), "--admin", f"{HOST}:{admin}")
        async with running_redis_shard(tmp_path, listen, *args, also=[admin]) as shard:
            commands = [[b"SET", b"k-%d-x" % i, b"v"] for i in range(200)] + [[b"GET", b"k-1-x"]]
            replies = await raw_pipeline(listen, commands)
            assert replies[-1] == b"v"
            async with raw_session(listen) as session:
                await session.call("KEYS", "*")
                await session.call("NOSUCH")
                await session.call("EVAL", "return 1", "1", "k")
                await session.call("MULTI")
                await session.call("INCR", "{t}:n")
                assert (await session.call("EXEC"))[0] == [1]

            def scrape() -> str:
                with urllib.request.urlopen(f"http://{HOST}:{admin}/metrics", timeout=10) as response:
                    return str(response.read().decode())

            text = await asyncio.to_thread(scrape)
            log = shard.log()
    pool = {"pool": "alpha"}
    command = {**pool, "class": "command"}
    assert sample(text, "distpat_redis_latency_seconds_count", **command) >= 201
    # a loopback round trip takes well under 10 ms: the fine buckets are fed (perf_counter, not loop.time)
    assert sample(text, "distpat_redis_latency_seconds_bucket", **command, le="0.01") > 0
    assert sample(text, "distpat_redis_latency_seconds_sum", **command) > 0
    assert sample(text, "distpat_redis_latency_seconds_count", **pool, **{"class": "transaction"}) == 1
    assert sample(text, "distpat_redis_client_request_bytes_total", **pool) > 200 * 20
    assert sample(text, "distpat_redis_client_response_bytes_total", **pool) >= 200 * 5
    for reason in ("unsupported_command", "unknown_command", "script"):
        assert sample(text, "distpat_redis_refusals_total", **pool, reason=reason) == 1
    assert sample(text, "distpat_redis_transactions_total", **pool) == 1
    sent = sum(
        sample(text, "distpat_redis_request_bytes_total", **pool, server=f"{HOST}:{s.port}") for s in servers
    )
    assert sent > 200 * 20
    for reason in ("unsupported_command", "unknown_command", "script"):
        assert re.search(rf"distpat\.redis INFO pool alpha: client \d+: refused \({reason}\)", log), log
    assert "distpat.proxy" not in log.replace("signal received: draining", "")


async def test_refusals_are_logged_under_distpat_redis(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with redis_servers(tmp_path, 1) as servers:
        text = pool_yaml("alpha", 1, [servers[0].port])
        async with shard_service(text) as service, raw_session(service.pools[0].port) as session:
            await session.call("FLUSHALL")
            await session.call("GET")
            assert service.pools[0].refusals == {"unsupported_command": 1, "bad_arguments": 1}
    names = {r.name for r in caplog.records if "refused" in r.getMessage()}
    assert names == {"distpat.redis"}


async def test_clients_over_client_connections_are_refused_and_counted(tmp_path: Path) -> None:
    async with redis_servers(tmp_path, 1) as servers:
        text = pool_yaml("alpha", 1, [servers[0].port], extra={"client_connections": "1"})
        async with shard_service(text) as service, raw_session(service.pools[0].port) as first:
            assert (await first.call("PING"))[1] == b"+PONG\r\n"
            reply, closed = await raw_exchange(service.pools[0].port, b"*1\r\n$4\r\nPING\r\n")
            assert reply == b"-ERR max number of clients reached\r\n"
            assert closed
            assert service.pools[0].refusals == {"max_clients": 1}


async def test_a_flood_of_refusals_is_counted_whole_and_logged_once_a_second_per_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_pool, "LOG_INTERVAL", 3600.0)
    caplog.set_level(logging.INFO, logger="distpat.redis")
    async with redis_servers(tmp_path, 1) as servers:
        text = pool_yaml("alpha", 1, [servers[0].port])
        async with shard_service(text) as service:
            replies = await raw_pipeline(service.pools[0].port, [[b"NOSUCH"]] * 500 + [[b"KEYS", b"*"]])
            assert len(replies) == 501
            assert service.pools[0].refusals == {"unknown_command": 500, "unsupported_command": 1}
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "(unknown_command)" in lines[0]
    assert "(unsupported_command)" in lines[1]


def test_the_latency_histogram_is_cumulative_with_sub_millisecond_buckets() -> None:
    latency = Latency()
    for seconds in (0.00004, 0.00007, 0.0003, 0.0009, 0.004, 20.0):
        latency.observe(seconds)
    family = HistogramMetricFamily("h", "test", labels=["pool"])
    latency.add_to(family, ["alpha"])
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "h_bucket"}
    assert buckets["5e-05"] == 1
    assert buckets["0.0001"] == 2
    assert buckets["0.001"] == 4
    assert buckets["0.005"] == 5
    assert buckets["10.0"] == 5
    assert buckets["+Inf"] == 6
    assert [s.value for s in family.samples if s.name == "h_count"] == [6]
    assert LATENCY_BUCKETS[0] < 0.001
