"""The scatter/gather root in the engine: real loopback leaves (tests/httpkit.py backends that
answer the leaf contract's JSON with canned hits), `distpat scatter`'s configuration."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from distpat.config.scatter import build_scatter_config
from distpat.core.scatter_stage import ScatterStage
from distpat.net.proxy import ProxyServer
from distpat.net.stage_metrics import stage_families
from tests.effectkit import dead_url, until
from tests.httpkit import Backend, RawClient, Reply, Request, exchange


def leaf(doc: str, score: float, *, gate: asyncio.Event | None = None, delay: float = 0.0) -> Backend:
    """A leaf answering one canned hit; with ``gate``, it holds each request until the gate opens."""

    async def handler(request: Request) -> Reply:
        if gate is not None:
            await gate.wait()
        body = {
            "hits": [{"id": doc, "score": score, "snippet": doc}],
            "shard": "0/1",
            "docs": 1,
            "took_ms": 0.1,
        }
        return Reply(
            body=json.dumps(body).encode(), headers=[(b"Content-Type", b"application/json")], delay=delay
        )

    return Backend(handler)


@contextlib.asynccontextmanager
async def root(*leaves: str, **flags: str) -> AsyncIterator[ProxyServer]:
    """`distpat scatter` in this process: ``leaves`` are the --leaf values."""
    config, _ = build_scatter_config({"listen": "127.0.0.1:0", "leaf": list(leaves), **flags})
    server = ProxyServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(1)


async def search(port: int, query: bytes = b"q=cat", timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    [answer] = await exchange(port, b"GET /search?%s HTTP/1.1\r\nHost: h\r\n\r\n" % query, timeout=timeout)
    return answer.status, json.loads(answer.body)


def scatter_stage(server: ProxyServer) -> ScatterStage:
    (stage,) = server.config.stages
    assert isinstance(stage, ScatterStage)
    return stage


async def test_the_hits_of_every_shard_are_merged() -> None:
    async with leaf("a.txt", 1.0) as a, leaf("b.txt", 2.0) as b, root(a.url, b.url) as server:
        status, body = await search(server.port, b"q=cat&k=5")
    assert status == 200
    assert [h["id"] for h in body["hits"]] == ["b.txt", "a.txt"]
    assert body["shards"] == {"total": 2, "ok": 2, "failed": 0, "timed_out": 0}
    assert body["partial"] is False
    assert a.requests[0].target == b"/search?q=cat&k=5"


async def test_a_dead_shard_gives_a_partial_answer_well_within_the_deadline() -> None:
    async with leaf("a.txt", 1.0) as a, root(a.url, dead_url(), deadline="10000") as server:
        # bounded well under the 10 s deadline: a refused connection is a failed shard at once
        status, body = await search(server.port, timeout=3.0)
    assert status == 200
    assert body["shards"] == {"total": 2, "ok": 1, "failed": 1, "timed_out": 0}
    assert body["partial"] is True
    assert [h["id"] for h in body["hits"]] == ["a.txt"]


async def test_a_slow_shard_times_out_at_the_deadline_never_later() -> None:
    gate = asyncio.Event()  # never opened: the slow leaf holds its request
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(leaf("a.txt", 1.0))
        b = await stack.enter_async_context(leaf("b.txt", 2.0, gate=gate))
        server = await stack.enter_async_context(root(a.url, b.url, deadline="300"))
        strict = await stack.enter_async_context(root(a.url, b.url, deadline="300", need="all"))
        status, body = await search(server.port, timeout=0.3 + 1.0)  # before the deadline + 1 s
        strict_status, strict_body = await search(strict.port, timeout=1.3)
    assert status == 200
    assert body["shards"] == {"total": 2, "ok": 1, "failed": 0, "timed_out": 1}
    assert body["partial"] is True
    assert body["took_ms"] <= 300
    assert strict_status == 504
    assert strict_body["shards"]["timed_out"] == 1


async def test_a_slow_replica_is_hedged_and_its_connection_closed() -> None:
    gate = asyncio.Event()
    async with (
        leaf("slow.txt", 1.0, gate=gate) as slow,
        leaf("fast.txt", 1.0) as fast,
        root(f"{slow.url},{fast.url}", deadline="5000", hedge_after="20", hedge_max_percent="100") as server,
    ):
        status, body = await search(server.port, timeout=3.0)
        await until(lambda: not slow.transports, timeout=3.0)  # the slow replica saw its client go
        stage = scatter_stage(server)
        assert stage.won == 1
    assert status == 200
    assert [h["id"] for h in body["hits"]] == ["fast.txt"]
    assert len(slow.requests) == 1  # asked once: no second full read
    assert len(fast.requests) == 1


async def test_the_hedge_cap_holds_over_200_queries() -> None:
    async with contextlib.AsyncExitStack() as stack:
        slow = await stack.enter_async_context(leaf("slow.txt", 1.0, delay=0.03))
        fast = await stack.enter_async_context(leaf("fast.txt", 1.0))
        server = await stack.enter_async_context(
            root(f"{slow.url},{fast.url}", hedge_after="5", hedge_max_percent="10")
        )

        async def client() -> list[int]:
            conn = await RawClient.connect(server.port)
            statuses = []
            try:
                for _ in range(20):
                    await conn.send(b"GET /search?q=cat HTTP/1.1\r\nHost: h\r\n\r\n")
                    [answer] = await conn.read_responses(1, timeout=5.0)
                    statuses.append(answer.status)
            finally:
                await conn.close()
            return statuses

        results = await asyncio.gather(*(client() for _ in range(10)))
        stage = scatter_stage(server)
    assert [s for r in results for s in r] == [200] * 200
    assert stage.sent == 200
    assert 0 < len(fast.requests) <= 20  # the hedges: at most 10% of the 200 sub-requests
    assert len(fast.requests) <= stage.charged
    assert len(slow.requests) == 200


async def test_the_metrics_name_the_shards() -> None:
    async with leaf("a.txt", 1.0) as a, root(a.url, dead_url()) as server:
        await search(server.port)
        stats = {(s.name, s.labels): s.value for s in scatter_stage(server).stats()}
    labels = (("stage", "scatter"), ("shard", "1"), ("result", "failed"))
    assert stats["distpat_scatter_shard_results", labels] == 1
    assert stats["distpat_scatter_answers", (("stage", "scatter"), ("result", "partial"))] == 1
    families = {f.name: f for f in stage_families([scatter_stage(server)])}
    histogram = families["distpat_scatter_shard_seconds"]
    assert histogram.type == "histogram"
    names = {sample.name for sample in histogram.samples}
    assert names == {f"distpat_scatter_shard_seconds_{s}" for s in ("bucket", "count", "sum")}
