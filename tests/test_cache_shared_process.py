"""Two ``distpat cache --store redis://...`` processes sharing one store of record (real processes,
a real redis-server): what one fetched is a hit at the other, Vary variants included; a purge or a
POST at one is seen by the other; with Redis stopped each still answers (its own copy, or the
backend) with no hang, and sharing resumes once Redis is back on the same port.

Writes and deletes are fire-and-forget (src/distpat/core/cache_shared.py): the test waits,
bounded, until Redis holds (or no longer holds) a URL's hash before asking the other process.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import redis.asyncio as redis

from tests.httpkit import HOST, Backend, Reply, Request, Response, exchange
from tests.nutcracker import free_ports
from tests.rediskit import RedisServer
from tests.tlskit import running_distpat


class Versions:
    """``target vN``: N counts the backend's answers, fresh for a minute, varying on Accept-Language."""

    def __init__(self) -> None:
        self.answered = 0

    async def __call__(self, request: Request) -> Reply:
        self.answered += 1
        if request.method == b"POST":
            return Reply(status=204)
        body = b"%s v%d" % (request.target, self.answered)
        return Reply(headers=[(b"Cache-Control", b"max-age=60"), (b"Vary", b"Accept-Language")], body=body)


async def get(port: int, target: bytes, *fields: bytes, method: bytes = b"GET") -> Response:
    head = b"".join(f + b"\r\n" for f in fields)
    raw = method + b" " + target + b" HTTP/1.1\r\nHost: h\r\n" + head + b"Content-Length: 0\r\n"
    (response,) = await exchange(port, raw + b"Connection: close\r\n\r\n", timeout=5.0)
    return response


def status(response: Response) -> bytes:
    return response.header(b"cache-status") or b""


async def held(client: redis.Redis, target: bytes, want: bool) -> None:
    """Wait (at most 5 s) until Redis does (``want``) or does not hold ``target``'s hash."""
    for _ in range(250):
        if bool(await client.exists(b"distpat:cache:h" + target)) == want:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"Redis never {'held' if want else 'dropped'} {target!r}")


async def test_two_caches_share_one_redis_store(tmp_path: Path) -> None:
    redis_port, a, b = free_ports(3)
    server = RedisServer(redis_port, tmp_path / "redis")
    await server.start()
    client = server.client()
    versions = Versions()
    try:
        async with Backend(versions) as backend:
            common = ["--upstream", backend.url, "--store", f"redis://{HOST}:{redis_port}"]
            common += ["--purge-from", "127.0.0.1", "--max-bytes", "1m", "--max-object-bytes", "64k"]
            async with (
                running_distpat("cache", tmp_path, a, ["--listen", f"{HOST}:{a}", *common]),
                running_distpat("cache", tmp_path, b, ["--listen", f"{HOST}:{b}", *common]),
            ):
                # a GET through A is a hit at B
                first = await get(a, b"/a", b"Accept-Language: en")
                assert (first.body, status(first)) == (b"/a v1", b"distpat; fwd=uri-miss; stored")
                await held(client, b"/a", True)
                shared = await get(b, b"/a", b"Accept-Language: en")
                assert shared.body == b"/a v1"
                assert status(shared).startswith(b"distpat; hit; ttl=")
                assert len(backend.requests) == 1

                # Vary variants stored by A are served by B to the matching clients
                fr = await get(a, b"/a", b"Accept-Language: fr")
                assert fr.body == b"/a v2"
                for _ in range(250):
                    if await client.hlen(b"distpat:cache:h/a") == 2:
                        break
                    await asyncio.sleep(0.02)
                en_b = await get(b, b"/a", b"Accept-Language: en")
                fr_b = await get(b, b"/a", b"Accept-Language: fr")
                assert (en_b.body, fr_b.body) == (b"/a v1", b"/a v2")
                assert status(fr_b).startswith(b"distpat; hit")
                assert len(backend.requests) == 2

                # PURGE at B answers the count, and the next GET at A misses
                purged = await get(b, b"/a", method=b"PURGE")
                assert json.loads(purged.body) == {"purged": 2}
                again = await get(a, b"/a", b"Accept-Language: en")
                assert (again.body, status(again)) == (b"/a v3", b"distpat; fwd=uri-miss; stored")
                assert len(backend.requests) == 3

                # a POST through A invalidates for B
                await held(client, b"/a", True)
                assert (await get(b, b"/a", b"Accept-Language: en")).body == b"/a v3"
                posted = await get(a, b"/a", method=b"POST")
                assert posted.status == 204
                await held(client, b"/a", False)
                after = await get(b, b"/a", b"Accept-Language: en")
                assert after.body == b"/a v5"
                assert not status(after).startswith(b"distpat; hit")
                await held(client, b"/a", True)

                # Redis stopped: A's own copy hits at A, B misses and goes to the backend
                await client.aclose()
                await server.stop()
                own = await get(a, b"/b")
                assert own.body == b"/b v6"  # A had no copy of /b: a miss, stored locally
                own_hit = await get(a, b"/b")
                assert own_hit.body == b"/b v6"
                assert status(own_hit).startswith(b"distpat; hit")
                alone = await get(b, b"/b")
                assert alone.body == b"/b v7"
                assert not status(alone).startswith(b"distpat; hit")
                assert len(backend.requests) == 7

                # Redis back on the same port (empty): sharing resumes. A's client fails calls at
                # once for retry_after (1 s) after a failure (net/resp_client.py), so A fetches new
                # URLs until one of them is written through (bounded).
                await server.start()
                client = server.client()
                target = b""
                for i in range(40):
                    target = b"/c%d" % i
                    fresh = await get(a, target)
                    assert fresh.body.startswith(target + b" v")
                    if await client.exists(b"distpat:cache:h" + target):
                        break
                    await asyncio.sleep(0.1)
                await held(client, target, True)
                asked = len(backend.requests)
                resumed = await get(b, target)
                assert resumed.body == fresh.body
                assert status(resumed).startswith(b"distpat; hit")
                assert len(backend.requests) == asked
    finally:
        await client.aclose()
        await server.stop()
