"""The scatter/gather root: its stage's decisions (pure), and the root in a real server over leaves."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from distpat.config.leaf import build_leaf_config
from distpat.config.scatter import build_scatter_config, parse_hedge
from distpat.core.scatter_stage import MIN_SAMPLES, ScatterStage
from distpat.core.stage import Answer, Fetch, Request, SubRequest, SubResult, Tick
from distpat.errors import ConfigError
from distpat.net.proxy import ProxyServer
from tests.httpkit import Backend, Reply, exchange
from tests.httpkit import Request as BackendRequest
from tests.nutcracker import free_ports

TICK = Tick(1.0, 1e9, 0)
SHARDS = [("shard-0", ("a:1", "a:2")), ("shard-1", ("b:1", "b:2"))]


def leaf_json(*hits: tuple[str, float]) -> bytes:
    return json.dumps({"hits": [{"id": i, "score": s, "snippet": ""} for i, s in hits]}).encode()


def ok(sub: SubRequest, body: bytes, elapsed: float = 0.001, hedged: bool = False) -> SubResult:
    return SubResult(sub, 200, (), body, None, "x", elapsed, hedged)


def ask(stage: ScatterStage, target: bytes = b"/search?q=raft&k=3") -> Fetch | Answer:
    effect = stage.on_request(Request(b"GET", target, "127.0.0.1"), TICK)
    assert isinstance(effect, Fetch | Answer)
    return effect


def test_a_query_goes_to_every_shard_in_replica_order_and_the_merge_is_by_score_then_id() -> None:
    stage = ScatterStage(SHARDS, deadline=0.5)
    fetch = ask(stage)
    assert isinstance(fetch, Fetch)
    assert [(s.pool, s.order, s.target) for s in fetch.requests] == [
        ("shard-0", ("a:1", "a:2"), b"/search?q=raft&k=3"),
        ("shard-1", ("b:1", "b:2"), b"/search?q=raft&k=3"),
    ]
    assert (fetch.deadline, fetch.hedge_after, fetch.hedge_max) == (0.5, None, 0)
    s0, s1 = fetch.requests
    answer = fetch.then(
        (ok(s0, leaf_json(("x", 2.0), ("b", 1.0))), ok(s1, leaf_json(("a", 1.0), ("y", 0.5))))
    )
    assert isinstance(answer, Answer)
    body = json.loads(answer.body)
    assert [h["id"] for h in body["hits"]] == ["x", "a", "b"]
    assert body["shards"] == {"total": 2, "ok": 2, "failed": 0, "timed_out": 0}
    assert (answer.status, body["partial"]) == (200, False)


@pytest.mark.parametrize(
    ("need", "results", "status", "counts"),
    [
        ("any", ["ok", "timeout"], 200, (1, 0, 1)),
        ("any", ["connect", "timeout"], 502, (0, 1, 1)),
        ("any", ["timeout", "timeout"], 504, (0, 0, 2)),
        ("all", ["ok", "timeout"], 504, (1, 0, 1)),
        ("all", ["ok", "connect"], 502, (1, 1, 0)),
        ("all", ["ok", "bad json"], 502, (1, 1, 0)),
        (2, ["ok", "ok"], 200, (2, 0, 0)),
        (2, ["ok", "500"], 502, (1, 1, 0)),
    ],
)
def test_partial_answers_say_so_and_need_makes_them_errors(
    need: Any, results: list[str], status: int, counts: tuple[int, int, int]
) -> None:
    fetch = ask(ScatterStage(SHARDS, need=need))
    assert isinstance(fetch, Fetch)
    made = []
    for sub, what in zip(fetch.requests, results, strict=True):
        if what == "ok":
            made.append(ok(sub, leaf_json(("d", 1.0))))
        elif what == "bad json":
            made.append(ok(sub, b"<html>"))
        elif what == "500":
            made.append(SubResult(sub, 500, (), b"", None))
        else:
            made.append(SubResult(sub, error=what))
    answer = fetch.then(tuple(made))
    assert isinstance(answer, Answer)
    body = json.loads(answer.body)
    shards = body["shards"]
    assert answer.status == status
    assert (shards["ok"], shards["failed"], shards["timed_out"]) == counts
    assert body["partial"] == (counts[0] < 2)


def test_bad_queries_and_paths() -> None:
    stage = ScatterStage(SHARDS)
    for target, status in ((b"/search", 400), (b"/search?q=x&k=0", 400), (b"/other", 404)):
        answer = ask(stage, target)
        assert isinstance(answer, Answer)
        assert answer.status == status
        assert "error" in json.loads(answer.body)


def test_the_hedge_budget_stays_under_the_percentage() -> None:
    stage = ScatterStage(SHARDS, hedge_after=0.01, hedge_max_percent=10)
    allowed = 0
    for _ in range(200):
        fetch = ask(stage)
        assert isinstance(fetch, Fetch)
        allowed += fetch.hedge_max
        # every request slow: every one the budget allowed is charged
        fetch.then(tuple(ok(s, leaf_json(("d", 1.0)), elapsed=0.05) for s in fetch.requests))
        assert stage.hedges <= 0.10 * stage.sent
    assert stage.sent == 400
    assert 35 <= allowed <= 40


def test_a_percentile_hedge_follows_the_observed_latencies() -> None:
    stage = ScatterStage(SHARDS, hedge_percentile=95, hedge_after=0.02)
    assert stage.hedge_delay() == 0.02  # too few samples yet: the fixed fallback
    for i in range(MIN_SAMPLES * 5):
        fetch = ask(stage)
        assert isinstance(fetch, Fetch)
        fetch.then(tuple(ok(s, leaf_json(("d", 1.0)), elapsed=0.001 * (i % 100 + 1)) for s in fetch.requests))
    assert stage._percentile() == pytest.approx(0.095)
    delay = stage.hedge_delay()  # recomputed every RECOMPUTE queries, not per query
    assert delay is not None
    assert 0.02 <= delay <= 0.095


def test_options() -> None:
    assert parse_hedge("off") == (None, None)
    assert parse_hedge("20") == (0.02, None)
    assert parse_hedge("p95") == (None, 95)
    for bad in ("p0", "p100", "soon"):
        with pytest.raises(ConfigError):
            parse_hedge(bad)
    with pytest.raises(ConfigError, match="no leaves"):
        build_scatter_config({"listen": "127.0.0.1:1"})
    with pytest.raises(ConfigError, match="need must be all, any or a number"):
        ScatterStage(SHARDS, need=3)


# -- in a real server -----------------------------------------------------------------------------


def leaf_handler(*hits: tuple[str, float], delay: float = 0.0) -> Any:
    async def handler(request: BackendRequest) -> Reply:
        return Reply(body=leaf_json(*hits), delay=delay, headers=[(b"Content-Type", b"application/json")])

    return handler


@asynccontextmanager
async def root(*leaves: str, **flags: Any) -> AsyncIterator[int]:
    config, _ = build_scatter_config({"listen": "127.0.0.1:0", "leaf": list(leaves), **flags})
    server = ProxyServer(replace(config, listen=("127.0.0.1", 0)))
    await server.start()
    try:
        yield server.port
    finally:
        await server.shutdown(1)


async def search(port: int, target: bytes = b"/search?q=raft&k=5") -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    [response] = await exchange(
        port, b"GET " + target + b" HTTP/1.1\r\nHost: root\r\nConnection: close\r\n\r\n"
    )
    return response.status, json.loads(response.body), time.monotonic() - started


async def test_a_dead_shard_gives_a_partial_answer_well_within_the_deadline() -> None:
    [dead] = free_ports(1)
    async with (
        Backend(leaf_handler(("a", 1.0))) as live,
        root(live.url, f"http://127.0.0.1:{dead}", deadline="2000") as port,
    ):
        status, body, took = await search(port)
    assert status == 200
    assert body["shards"] == {"total": 2, "ok": 1, "failed": 1, "timed_out": 0}
    assert body["partial"] is True
    assert [h["id"] for h in body["hits"]] == ["a"]
    assert took < 1.0


async def test_a_slow_shard_times_out_at_the_deadline_never_later() -> None:
    async with (
        Backend(leaf_handler(("a", 1.0))) as live,
        Backend(leaf_handler(("z", 9.0), delay=5.0)) as slow,
        root(live.url, slow.url, deadline="300") as port,
    ):
        status, body, took = await search(port)
        async with root(live.url, slow.url, deadline="300", need="all") as strict:
            need_all_status, strict_body, _ = await search(strict)
    assert status == 200
    assert body["shards"] == {"total": 2, "ok": 1, "failed": 0, "timed_out": 1}
    assert 0.3 <= took < 1.3
    assert need_all_status == 504
    assert strict_body["partial"] is True


class SlowReplica:
    """A leaf that answers after ``delay`` unless its client goes away first (recorded)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.requests = 0
        self.abandoned = 0
        self.answered = 0
        self.server: asyncio.base_events.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                self.requests += 1
                try:
                    more = await asyncio.wait_for(reader.read(1), self.delay)
                except TimeoutError:
                    more = None
                if more == b"":  # the client closed the connection: the request was abandoned
                    self.abandoned += 1
                    return
                body = leaf_json(("slow", 5.0))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                self.answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_a_hedge_goes_to_the_next_replica_and_the_slow_copy_is_abandoned() -> None:
    slow = SlowReplica(delay=3.0)
    async with (
        slow as slow_url,
        Backend(leaf_handler(("fast", 1.0))) as fast,
        root(f"{slow_url},{fast.url}", deadline="2000", hedge_after="20", hedge_max_percent=100) as port,
    ):
        status, body, took = await search(port)
        await asyncio.sleep(0.3)  # the aborted copy's close reaches the slow replica
    assert status == 200
    assert [h["id"] for h in body["hits"]] == ["fast"]
    assert took < 1.0
    assert len(fast.requests) == 1
    assert (slow.requests, slow.abandoned, slow.answered) == (1, 1, 0)


async def test_the_hedge_cap_holds_over_many_queries() -> None:
    slow = SlowReplica(delay=0.05)
    async with (
        slow as slow_url,
        Backend(leaf_handler(("fast", 1.0))) as fast,
        root(f"{slow_url},{fast.url}", deadline="2000", hedge_after="5", hedge_max_percent=10) as port,
    ):
        for _ in range(60):
            status, _, _ = await search(port)
            assert status == 200
    assert len(fast.requests) <= 6  # 10% of 60 sub-requests
    assert len(fast.requests) >= 1


def test_leaves_cover_the_corpus_once_and_score_alike(tmp_path: Path) -> None:
    words = ["raft", "paxos", "cache", "shard", "ring", "log", "quorum"]
    for i in range(30):
        (tmp_path / f"d{i:02d}.txt").write_text(" ".join(words[(i * j) % 7] for j in range(1, 9)))
    (tmp_path / "binary.bin").write_bytes(b"\0\1\2")
    whole, _ = build_leaf_config({"listen": "127.0.0.1:1", "corpus": str(tmp_path)})
    parts = [
        build_leaf_config({"listen": "127.0.0.1:1", "corpus": str(tmp_path), "shard": f"{i}/3"})[0]
        for i in range(3)
    ]
    sizes = [len(p.stages[0].index) for p in parts]  # type: ignore[attr-defined]
    assert sum(sizes) == len(whole.stages[0].index) == 30  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="no such directory"):
        build_leaf_config({"listen": "127.0.0.1:1", "corpus": str(tmp_path / "missing")})
