"""Two ``distpat cache --store redis://`` processes sharing one real redis-server as their store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from tests.httpkit import Backend, Response
from tests.nutcracker import free_ports
from tests.rediskit import RedisServer
from tests.test_cache_cli import HOST, Versions, get
from tests.tlskit import running_distpat


@asynccontextmanager
async def two_caches(tmp_path: Path, backend: Backend, redis_port: int) -> AsyncIterator[tuple[int, int]]:
    a, b = free_ports(2)
    store = f"redis://{HOST}:{redis_port}/0"
    async with AsyncExitStack() as stack:
        for port in (a, b):
            argv = ["--listen", f"{HOST}:{port}", "--upstream", backend.url, "--store", store]
            argv += ["--purge-from", "127.0.0.1"]
            await stack.enter_async_context(running_distpat("cache", tmp_path / str(port), port, argv))
        yield a, b


def status(response: Response) -> bytes:
    return response.header(b"cache-status") or b""


async def settled() -> None:
    """Writes to the shared store are fire-and-forget: give one a moment to land."""
    await asyncio.sleep(0.2)


async def test_what_one_cache_fetched_is_a_hit_in_the_other(tmp_path: Path) -> None:
    redis_port, _ = free_ports(2)
    redis = RedisServer(redis_port, tmp_path / "redis")
    await redis.start()
    try:
        async with Backend(Versions()) as backend, two_caches(tmp_path, backend, redis_port) as (a, b):
            async with asyncio.timeout(30):
                first = await get(a, b"/x", b"Accept-Language: en")
                await settled()
                at_b = await get(b, b"/x", b"Accept-Language: en")
                other = await get(b, b"/x", b"Accept-Language: fr")  # another variant: a miss at B
                await settled()
                other_at_a = await get(a, b"/x", b"Accept-Language: fr")
                purged = await get(b, b"/x", method=b"PURGE")
                after = await get(a, b"/x", b"Accept-Language: en")
            assert first.body == at_b.body == b"/x v1"
            assert status(at_b).startswith(b"distpat; hit")
            assert other.body == other_at_a.body == b"/x v2"
            assert status(other_at_a).startswith(b"distpat; hit")
            assert json.loads(purged.body) == {"purged": 2}  # both variants, purged through B, gone for A
            assert after.body == b"/x v3"
            assert status(after).startswith(b"distpat; fwd=uri-miss")
            assert len(backend.requests) == 3
    finally:
        await redis.stop()


async def test_an_unsafe_method_through_one_invalidates_for_the_other(tmp_path: Path) -> None:
    redis_port, _ = free_ports(2)
    redis = RedisServer(redis_port, tmp_path / "redis")
    await redis.start()
    try:
        async with Backend(Versions()) as backend, two_caches(tmp_path, backend, redis_port) as (a, b):
            async with asyncio.timeout(30):
                await get(a, b"/doc")
                await settled()
                assert status(await get(b, b"/doc")).startswith(b"distpat; hit")
                posted = await get(a, b"/doc", method=b"POST")
                await settled()
                again = await get(b, b"/doc")
            assert posted.status == 200
            assert status(again).startswith(b"distpat; fwd=uri-miss")
    finally:
        await redis.stop()


async def test_redis_down_each_cache_keeps_its_own_copy_then_sharing_resumes(tmp_path: Path) -> None:
    redis_port, _ = free_ports(2)
    redis = RedisServer(redis_port, tmp_path / "redis")
    await redis.start()
    try:
        async with Backend(Versions()) as backend, two_caches(tmp_path, backend, redis_port) as (a, b):
            async with asyncio.timeout(30):
                await get(a, b"/k")
                await redis.stop()
                own = await get(a, b"/k")  # A's own copy answers, Redis or not
                elsewhere = await get(b, b"/k")  # B has none: to the backend, no hang
                await redis.start()
                await asyncio.sleep(1.2)  # the client waits a second after a failure before reconnecting
                await get(a, b"/new")
                await settled()
                shared = await get(b, b"/new")
            assert status(own).startswith(b"distpat; hit")
            assert elsewhere.status == 200
            assert status(elsewhere).startswith(b"distpat; fwd=uri-miss")
            assert status(shared).startswith(b"distpat; hit")
    finally:
        await redis.stop()
