"""What the Redis ambassador tells operators: twemproxy's stats JSON and Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from distpat.net.redis_pool import ShardPool
    from distpat.net.redis_shard import ShardService

__all__ = ["LATENCY_BUCKETS", "Latency", "ShardMetrics", "StatsProtocol", "stats_document"]

LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (seconds) of the latency histogram's buckets: from 50 µs, as a Redis round trip is."""


class Latency:
    """A histogram of durations (seconds, from ``time.perf_counter``), cheap enough for every reply.

    ``counts[i]`` counts durations up to ``LATENCY_BUCKETS[i]`` (above the last: the final count).
    """

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def add_to(self, family: HistogramMetricFamily, values: list[str]) -> None:
        """Add this histogram, with label ``values``, to ``family`` (Prometheus's cumulative buckets)."""
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        family.add_metric(values, buckets, self.total)


def stats_document(pools: list[ShardPool], started: float, source: str) -> bytes:
    """twemproxy's stats JSON: service, version, uptime, then one object per pool and per server."""
    now = time.time()
    doc: dict[str, Any] = {
        "service": "nutcracker",
        "source": source,
        "version": "0.5.0",
        "uptime": int(now - started),
        "timestamp": int(now),
        "total_connections": sum(p._client_ids for p in pools),
        "curr_connections": sum(len(p.clients) for p in pools),
    }
    for pool in pools:
        doc[pool.name] = pool.stats_json()
    return json.dumps(doc).encode() + b"\n"


class ShardMetrics:
    """The pools' counters in the Prometheus text format, read from the live objects at each scrape."""

    def __init__(self, service: ShardService) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        clients = GaugeMetricFamily(
            "distpat_redis_client_connections", "Open client connections", labels=["pool"]
        )
        ejects = CounterMetricFamily("distpat_redis_server_ejects", "Servers ejected", labels=["pool"])
        fragments = CounterMetricFamily(
            "distpat_redis_fragments", "Fragments of split commands sent", labels=["pool"]
        )
        per_pool = {
            key: CounterMetricFamily(f"distpat_redis_{key}", text, labels=["pool"])
            for key, text in (
                ("client_request_bytes", "Bytes read from clients"),
                ("client_response_bytes", "Bytes written to clients"),
                ("transactions", "MULTI...EXEC blocks sent to a server"),
                (
                    "transactions_watch_aborted",
                    "Transactions whose EXEC answered null (a WATCHed key changed)",
                ),
            )
        }
        refusals = CounterMetricFamily(
            "distpat_redis_refusals",
            "Commands answered with an error by the proxy itself, by reason",
            labels=["pool", "reason"],
        )
        latency = HistogramMetricFamily(
            "distpat_redis_latency_seconds",
            "From a command's write to its server to the reply (class: command, or transaction block)",
            labels=["pool", "class"],
        )
        tx_connections = GaugeMetricFamily(
            "distpat_redis_tx_connections",
            "Open connections of clients' own (WATCH, MULTI...EXEC)",
            labels=["pool", "server"],
        )
        per_server = {
            key: CounterMetricFamily(f"distpat_redis_{key}", text, labels=["pool", "server"])
            for key, text in (
                ("requests", "Commands sent to the server"),
                ("responses", "Replies from the server"),
                ("request_bytes", "Bytes sent to the server"),
                ("response_bytes", "Bytes received from the server"),
                ("server_eof", "Times the server closed the connection"),
                ("server_err", "Connection errors"),
                ("server_timedout", "Commands that timed out, closing the connection"),
            )
        }
        ejected = GaugeMetricFamily(
            "distpat_redis_server_ejected", "1 while the server is ejected", labels=["pool", "server"]
        )
        in_queue = GaugeMetricFamily(
            "distpat_redis_in_queue", "Commands waiting for the server's reply", labels=["pool", "server"]
        )
        for pool in self.service.pools:
            clients.add_metric([pool.name], len(pool.clients))
            ejects.add_metric([pool.name], pool.stats["server_ejects"])
            fragments.add_metric([pool.name], pool.stats["fragments"])
            for key, family in per_pool.items():
                family.add_metric([pool.name], pool.counters[key])
            for reason, count in sorted(pool.refusals.items()):
                refusals.add_metric([pool.name, reason], count)
            pool.latency.add_to(latency, [pool.name, "command"])
            pool.tx_latency.add_to(latency, [pool.name, "transaction"])
            for state in pool.servers.values():
                tx_connections.add_metric([pool.name, state.name], state.tx_connections)
                labels = [pool.name, state.name]
                for key, family in per_server.items():
                    family.add_metric(labels, state.stats[key])
                ejected.add_metric(labels, 1 if state.ejected_until else 0)
                in_queue.add_metric(
                    labels,
                    sum(entry[4] for c in state.conns.values() if not c.closed for entry in c.inflight),
                )
        yield clients
        yield ejects
        yield fragments
        yield from per_pool.values()
        yield refusals
        yield latency
        yield from per_server.values()
        yield ejected
        yield in_queue
        yield tx_connections

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class StatsProtocol(asyncio.Protocol):
    """twemproxy's stats port: each connection gets the JSON document, then is closed."""

    def __init__(self, service: ShardService) -> None:
        self.service = service

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.service.stats())  # type: ignore[attr-defined]
        transport.close()
