"""What the Redis ambassador tells operators: twemproxy's stats JSON and Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from distpat.net.redis_pool import ShardPool
    from distpat.net.redis_shard import ShardService

__all__ = ["ShardMetrics", "StatsProtocol", "stats_document"]


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
        per_server = {
            key: CounterMetricFamily(f"distpat_redis_{key}", text, labels=["pool", "server"])
            for key, text in (
                ("requests", "Commands sent to the server"),
                ("responses", "Replies from the server"),
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
            for state in pool.servers.values():
                labels = [pool.name, state.name]
                for key, family in per_server.items():
                    family.add_metric(labels, state.stats[key])
                ejected.add_metric(labels, 1 if state.ejected_until else 0)
                in_queue.add_metric(
                    labels, sum(len(c.inflight) for c in state.conns.values() if not c.closed)
                )
        yield clients
        yield ejects
        yield fragments
        yield from per_server.values()
        yield ejected
        yield in_queue

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class StatsProtocol(asyncio.Protocol):
    """twemproxy's stats port: each connection gets the JSON document, then is closed."""

    def __init__(self, service: ShardService) -> None:
        self.service = service

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.service.stats())  # type: ignore[attr-defined]
        transport.close()
