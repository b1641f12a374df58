"""The cache stage in a real ProxyServer on 127.0.0.1, in front of a recording backend.

Hits served without the backend, Vary variants side by side, 304s from the store, revalidation,
coalesced misses (and hit-for-miss, and the coalescing timeout), stale-if-error and
stale-while-revalidate, PURGE and bans, what is never shared, invalidation by unsafe methods,
objects too large to keep, and the stage's samples on /metrics. Every wait is bounded; no
timing is asserted. Staleness comes from an ``Age`` the backend sends, never from sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from distpat.core.cache_policy import CachePolicy
from distpat.core.cache_stage import CacheSettings, CacheStage
from distpat.core.cache_store import MemoryStore
from distpat.core.real_ip import TrustedProxies
from distpat.net.proxy import ProxyConfig, ProxyServer
from tests.effectkit import until
from tests.httpkit import HOST, Backend, RawClient, Reply, Request, Response, exchange
from tests.test_observe_tls import scrape

Handler = Callable[[Request], Awaitable[Reply]]


@dataclass
class Cached:
    server: ProxyServer
    backend: Backend
    stage: CacheStage

    @property
    def port(self) -> int:
        return self.server.port

    def seen(self, target: bytes = b"") -> list[Request]:
        """The requests the backend received (for ``target`` only, when given)."""
        return [r for r in self.backend.requests if not target or r.target == target]


@contextlib.asynccontextmanager
async def cached(
    handler: Handler,
    *,
    max_bytes: int = 1 << 20,
    max_object_bytes: int = 1 << 16,
    purge_from: str | None = None,
    settings: CacheSettings | None = None,
    admin: bool = False,
) -> AsyncIterator[Cached]:
    stage = CacheStage(
        MemoryStore(max_bytes, max_object_bytes),
        policy=CachePolicy(),
        settings=settings,
        purge_from=TrustedProxies.parse([purge_from]) if purge_from else None,
        name="cache",
    )
    async with Backend(handler) as backend:
        server = ProxyServer(
            ProxyConfig(
                listen=(HOST, 0),
                upstreams=(backend.url,),
                stages=(stage,),
                admin=(HOST, 0) if admin else None,
            )
        )
        await server.start()
        try:
            yield Cached(server, backend, stage)
        finally:
            await server.shutdown(1)


async def get(port: int, target: bytes = b"/", *fields: bytes, method: bytes = b"GET") -> Response:
    head = b"".join(f + b"\r\n" for f in fields)
    raw = method + b" " + target + b" HTTP/1.1\r\nHost: site\r\n" + head + b"Connection: close\r\n\r\n"
    (response,) = await exchange(port, raw)
    return response


def reply(body: bytes, *fields: tuple[bytes, bytes], status: int = 200) -> Reply:
    return Reply(status=status, headers=list(fields), body=body)


def status_of(response: Response) -> bytes:
    return response.header(b"cache-status") or b""


@dataclass
class Versions:
    """A handler answering ``v1``, ``v2``... with the fields given, counting what it answered."""

    fields: tuple[tuple[bytes, bytes], ...]
    answered: int = 0

    async def __call__(self, request: Request) -> Reply:
        self.answered += 1
        return reply(b"v%d" % self.answered, *self.fields)


FRESH = (b"Cache-Control", b"max-age=60")


# -- hits and misses ----------------------------------------------------------------------------


async def test_a_hit_is_served_without_the_backend_with_age_and_cache_status() -> None:
    async with cached(Versions((FRESH, (b"Age", b"3")))) as c:
        miss = await get(c.port, b"/a")
        hits = [await get(c.port, b"/a") for _ in range(3)]
        assert len(c.seen()) == 1
    assert (miss.status, miss.body) == (200, b"v1")
    assert status_of(miss) == b"distpat; fwd=uri-miss; stored"
    for hit in hits:
        assert (hit.status, hit.body) == (200, b"v1")
        assert hit.header(b"age") is not None
        assert int(hit.header(b"age") or b"0") >= 3
        assert status_of(hit).startswith(b"distpat; hit; ttl=")
        assert hit.header(b"content-length") == b"2"


async def test_head_is_answered_from_the_stored_get_and_other_urls_miss() -> None:
    async with cached(Versions((FRESH,))) as c:
        await get(c.port, b"/a")
        client = await RawClient.connect(c.port)
        try:
            await client.send(b"HEAD /a HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n")
            head = await client.read_until_closed()
        finally:
            await client.close()
        other = await get(c.port, b"/b")
        assert [r.target for r in c.seen()] == [b"/a", b"/b"]
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\ncache-status: distpat; hit; ttl=" in head.lower()
    assert head.endswith(b"\r\n\r\n")  # no body
    assert other.body == b"v2"


async def test_vary_variants_are_stored_side_by_side_and_each_served_to_its_own_clients() -> None:
    async def handler(request: Request) -> Reply:
        language = request.header(b"accept-language") or b"none"
        return reply(b"in " + language, FRESH, (b"Vary", b"Accept-Language"))

    async with cached(handler) as c:
        en = await get(c.port, b"/v", b"Accept-Language: en")
        fr = await get(c.port, b"/v", b"Accept-Language: fr")
        again = [
            await get(c.port, b"/v", b"Accept-Language: %s" % lang) for lang in (b"fr", b"en", b"fr", b"en")
        ]
        assert len(c.seen()) == 2
        assert len(c.stage.store) == 2
    assert (en.body, fr.body) == (b"in en", b"in fr")
    assert status_of(fr) == b"distpat; fwd=vary-miss; stored"
    assert [r.body for r in again] == [b"in fr", b"in en", b"in fr", b"in en"]
    assert all(status_of(r).startswith(b"distpat; hit") for r in again)


async def test_a_conditional_request_is_answered_304_from_the_store() -> None:
    fields = (FRESH, (b"ETag", b'"e1"'), (b"Last-Modified", b"Mon, 01 Jan 2024 00:00:00 GMT"))
    async with cached(Versions(fields)) as c:
        await get(c.port, b"/c")
        matching = await get(c.port, b"/c", b'If-None-Match: "e1"')
        weak = await get(c.port, b"/c", b'If-None-Match: W/"e1", "other"')
        since = await get(c.port, b"/c", b"If-Modified-Since: Tue, 02 Jan 2024 00:00:00 GMT")
        other = await get(c.port, b"/c", b'If-None-Match: "e2"')
        assert len(c.seen()) == 1
    for response in (matching, weak, since):
        assert (response.status, response.body) == (304, b"")
        assert response.header(b"etag") == b'"e1"'
        assert status_of(response) == b"distpat; hit"
    assert (other.status, other.body) == (200, b"v1")


async def test_revalidation_with_etag_and_last_modified_freshens_the_stored_response() -> None:
    lm = b"Mon, 01 Jan 2024 00:00:00 GMT"

    async def handler(request: Request) -> Reply:
        if request.header(b"if-none-match") == b'"e1"':
            return reply(
                b"", (b"Cache-Control", b"max-age=60"), (b"ETag", b'"e1"'), (b"X-Rev", b"2"), status=304
            )
        return reply(
            b"body",
            (b"Cache-Control", b"max-age=1"),
            (b"Age", b"5"),
            (b"ETag", b'"e1"'),
            (b"Last-Modified", lm),
            (b"X-Rev", b"1"),
        )

    async with cached(handler) as c:
        first = await get(c.port, b"/r")
        validated = await get(c.port, b"/r")
        hit = await get(c.port, b"/r")
        requests = c.seen()
    assert (first.body, first.header(b"x-rev")) == (b"body", b"1")
    assert len(requests) == 2
    assert requests[1].header(b"if-none-match") == b'"e1"'
    assert requests[1].header(b"if-modified-since") == lm
    assert (validated.status, validated.body) == (200, b"body")
    assert validated.header(b"x-rev") == b"2"
    assert validated.header(b"cache-control") == b"max-age=60"
    assert status_of(validated) == b"distpat; fwd=stale; fwd-status=304"
    assert (hit.body, hit.header(b"x-rev")) == (b"body", b"2")
    assert status_of(hit).startswith(b"distpat; hit")


async def test_revalidation_with_last_modified_only() -> None:
    lm = b"Mon, 01 Jan 2024 00:00:00 GMT"

    async def handler(request: Request) -> Reply:
        if request.header(b"if-modified-since") == lm:
            return reply(b"", (b"Cache-Control", b"max-age=60"), status=304)
        return reply(b"old", (b"Cache-Control", b"max-age=1"), (b"Age", b"5"), (b"Last-Modified", lm))

    async with cached(handler) as c:
        await get(c.port, b"/lm")
        validated = await get(c.port, b"/lm")
        hit = await get(c.port, b"/lm")
        requests = c.seen()
    assert len(requests) == 2
    assert requests[1].header(b"if-none-match") is None
    assert (validated.status, validated.body, hit.body) == (200, b"old", b"old")
    assert status_of(hit).startswith(b"distpat; hit")


# -- coalescing -----------------------------------------------------------------------------------


@dataclass
class Held:
    """A handler that holds the first request until :attr:`release` is set; counts in flight."""

    first: tuple[tuple[bytes, bytes], ...]
    later: tuple[tuple[bytes, bytes], ...] = ()
    barrier: int = 0
    """The later requests wait (bounded) until this many are in flight at once."""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    everyone: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: int = 0
    in_flight: int = 0
    most: int = 0

    async def __call__(self, request: Request) -> Reply:
        self.arrived += 1
        number = self.arrived
        if number == 1:
            async with asyncio.timeout(10):
                await self.release.wait()
            return reply(b"slow body", *self.first)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self.in_flight >= self.barrier:
            self.everyone.set()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3):
                    await self.everyone.wait()
            return reply(b"own %d" % number, *self.later)
        finally:
            self.in_flight -= 1


async def test_200_concurrent_misses_make_one_upstream_request_and_all_get_the_body() -> None:
    held = Held((FRESH,))
    async with asyncio.timeout(20), cached(held) as c:
        clients = [asyncio.ensure_future(get(c.port, b"/slow")) for _ in range(200)]
        await until(lambda: held.arrived == 1)
        await asyncio.sleep(0.2)  # let the others reach the flight (none reaches the backend)
        held.release.set()
        answers = await asyncio.gather(*clients)
        assert len(c.seen()) == 1
        assert c.stage.counts.get("coalesced", 0) >= 1
    assert all((a.status, a.body) == (200, b"slow body") for a in answers)
    statuses = [status_of(a) for a in answers]
    assert statuses.count(b"distpat; fwd=uri-miss; stored") == 1
    assert all(s.startswith(b"distpat; hit") for s in statuses if b"stored" not in s)


async def test_hit_for_miss_releases_every_waiter_at_once_and_later_requests_do_not_wait() -> None:
    waiters = 30
    held = Held(((b"Cache-Control", b"private"),), ((b"Cache-Control", b"private"),), barrier=waiters)
    async with asyncio.timeout(20), cached(held) as c:
        clients = [asyncio.ensure_future(get(c.port, b"/p")) for _ in range(waiters + 1)]
        await until(lambda: held.arrived == 1)
        await until(lambda: c.stage.counts.get("miss", 0) == waiters + 1)
        held.release.set()
        answers = await asyncio.gather(*clients)
        assert held.arrived == waiters + 1
        assert held.most == waiters  # all waiters were upstream at once, not one after another
        # later requests go straight upstream: two concurrent ones are both in flight at once
        held.everyone.clear()
        held.barrier = 2
        later = await asyncio.gather(get(c.port, b"/p"), get(c.port, b"/p"))
        assert held.most == waiters
        assert held.arrived == waiters + 3
    assert all(a.status == 200 for a in answers)
    bodies = sorted(a.body for a in answers)
    assert bodies.count(b"slow body") == 1
    assert len(set(bodies)) == waiters + 1  # each waiter got its own response
    assert all(b"detail=private" in status_of(a) for a in answers)
    assert all(r.body.startswith(b"own ") for r in later)


async def test_a_waiter_over_the_coalesce_timeout_goes_upstream_on_its_own() -> None:
    held = Held((FRESH,), (FRESH,), barrier=1)
    async with asyncio.timeout(20), cached(held, settings=CacheSettings(coalesce_timeout=0.2)) as c:
        leader = asyncio.ensure_future(get(c.port, b"/t"))
        await until(lambda: held.arrived == 1)
        waiter = await get(c.port, b"/t")  # answered while the leader is still held
        assert held.arrived == 2
        held.release.set()
        first = await leader
    assert (first.body, waiter.body) == (b"slow body", b"own 2")


# -- stale-if-error and stale-while-revalidate -----------------------------------------------------


async def stop(backend: Backend) -> None:
    """Close the backend's listener and connections: connecting to it is refused from now on."""
    server = backend.server
    assert server is not None
    server.close()
    for transport in list(backend.transports):
        transport.close()
    async with asyncio.timeout(5):
        await server.wait_closed()


async def test_stale_if_error_serves_the_stale_copy_when_the_backend_is_gone() -> None:
    async with cached(Versions(((b"Cache-Control", b"max-age=1, stale-if-error=60"), (b"Age", b"5")))) as c:
        await get(c.port, b"/s")
        await stop(c.backend)
        stale = await get(c.port, b"/s")
    assert (stale.status, stale.body) == (200, b"v1")
    assert status_of(stale).startswith(b"distpat; fwd=stale; fwd-status=50")
    assert status_of(stale).endswith(b"detail=stale-if-error")


async def test_stale_if_error_serves_the_stale_copy_in_place_of_a_500() -> None:
    answers = [
        reply(b"good", (b"Cache-Control", b"max-age=1, stale-if-error=60"), (b"Age", b"5")),
        reply(b"broken", status=500),
    ]

    async def handler(request: Request) -> Reply:
        return answers.pop(0)

    async with cached(handler) as c:
        await get(c.port, b"/s")
        stale = await get(c.port, b"/s")
        assert len(c.seen()) == 2
    assert (stale.status, stale.body) == (200, b"good")
    assert status_of(stale) == b"distpat; fwd=stale; fwd-status=500; detail=stale-if-error"


async def test_without_stale_if_error_the_client_gets_the_error() -> None:
    answers = [reply(b"good", (b"Cache-Control", b"max-age=1"), (b"Age", b"5")), reply(b"broken", status=500)]

    async def handler(request: Request) -> Reply:
        return answers.pop(0)

    async with cached(handler) as c:
        await get(c.port, b"/s")
        error = await get(c.port, b"/s")
        await stop(c.backend)
        refused = await get(c.port, b"/s")
    assert (error.status, error.body) == (500, b"broken")
    assert refused.status == 502


async def test_stale_while_revalidate_serves_stale_at_once_and_refreshes_once_in_the_background() -> None:
    release = asyncio.Event()
    arrived: list[Request] = []

    async def handler(request: Request) -> Reply:
        arrived.append(request)
        if len(arrived) == 1:
            return reply(b"old", (b"Cache-Control", b"max-age=1, stale-while-revalidate=60"), (b"Age", b"5"))
        async with asyncio.timeout(10):
            await release.wait()
        return reply(b"new", FRESH)

    async with asyncio.timeout(20), cached(handler) as c:
        await get(c.port, b"/w")
        stale = [await get(c.port, b"/w") for _ in range(4)]  # the refresh is held meanwhile
        await until(lambda: len(arrived) == 2)
        await asyncio.sleep(0.1)
        assert len(arrived) == 2  # exactly one background request
        release.set()
        await until(lambda: c.stage.counts.get("refresh", 0) == 1)
        fresh = await get(c.port, b"/w")
        assert len(arrived) == 2
    assert all((r.status, r.body) == (200, b"old") for r in stale)
    assert all(status_of(r).startswith(b"distpat; hit") for r in stale)
    assert fresh.body == b"new"
    assert status_of(fresh).startswith(b"distpat; hit")


async def test_a_background_refresh_answered_304_freshens_the_stored_response() -> None:
    async def handler(request: Request) -> Reply:
        if request.header(b"if-none-match") == b'"e1"':
            return reply(b"", FRESH, (b"ETag", b'"e1"'), (b"X-Rev", b"2"), status=304)
        swr = (b"Cache-Control", b"max-age=1, stale-while-revalidate=60")
        return reply(b"body", swr, (b"Age", b"5"), (b"ETag", b'"e1"'), (b"X-Rev", b"1"))

    async with asyncio.timeout(10), cached(handler) as c:
        await get(c.port, b"/w")
        stale = await get(c.port, b"/w")
        await until(lambda: len(c.seen()) == 2 and not c.stage.refreshing)
        fresh = await get(c.port, b"/w")
        requests = c.seen()
    assert len(requests) == 2
    assert requests[1].header(b"if-none-match") == b'"e1"'
    assert (stale.body, stale.header(b"x-rev")) == (b"body", b"1")
    assert (fresh.body, fresh.header(b"x-rev"), fresh.header(b"cache-control")) == (
        b"body",
        b"2",
        b"max-age=60",
    )
    assert status_of(fresh).startswith(b"distpat; hit")


# -- purge and bans -------------------------------------------------------------------------------


async def test_purge_removes_every_variant_from_an_allowed_address_only() -> None:
    async def handler(request: Request) -> Reply:
        return reply(request.header(b"accept-language") or b"-", FRESH, (b"Vary", b"Accept-Language"))

    async with cached(handler, purge_from="127.0.0.1") as c:
        for lang in (b"en", b"fr"):
            await get(c.port, b"/v", b"Accept-Language: " + lang)
        purged = await get(c.port, b"/v", method=b"PURGE")
        again = await get(c.port, b"/v", b"Accept-Language: en")
        assert len(c.seen()) == 3
    assert purged.status == 200
    assert json.loads(purged.body) == {"purged": 2}
    assert purged.header(b"content-type") == b"application/json"
    assert status_of(again) == b"distpat; fwd=uri-miss; stored"
    async with cached(handler, purge_from="10.0.0.0/8") as c:
        await get(c.port, b"/v")
        refused = await get(c.port, b"/v", method=b"PURGE")
        still = await get(c.port, b"/v")
        assert len(c.seen()) == 1
    assert refused.status == 405
    assert b"not allowed from this address" in refused.body
    assert status_of(still).startswith(b"distpat; hit")
    async with cached(handler) as c:
        assert (await get(c.port, b"/v", method=b"PURGE")).status == 405


async def test_prefix_and_tag_bans() -> None:
    async def handler(request: Request) -> Reply:
        tag = b"red" if request.target.endswith(b"1") else b"blue"
        return reply(request.target, FRESH, (b"Cache-Tag", tag))

    targets = (b"/a/1", b"/a/2", b"/b/1", b"/b/2")
    async with cached(handler, purge_from="127.0.0.0/8") as c:
        for target in targets:
            await get(c.port, target)
        prefix = await get(c.port, b"/a/", b"X-Purge: prefix", method=b"PURGE")
        tag = await get(c.port, b"/", b"X-Purge-Tag: red", method=b"PURGE")
        for target in targets:
            await get(c.port, target)
        assert [r.target for r in c.seen()] == [*targets, b"/a/1", b"/a/2", b"/b/1"]
    assert json.loads(prefix.body) == {"purged": 2}
    assert json.loads(tag.body) == {"purged": 1}  # /a/1 went with the prefix already


# -- never shared ---------------------------------------------------------------------------------


async def test_private_set_cookie_and_authorized_responses_reach_the_backend_for_each_client() -> None:
    async def handler(request: Request) -> Reply:
        who = request.header(b"cookie") or request.header(b"authorization") or b"-"
        if request.target == b"/private":
            return reply(b"for " + who, (b"Cache-Control", b"private, max-age=60"))
        if request.target == b"/cookie":
            return reply(b"for " + who, FRESH, (b"Set-Cookie", b"sid=" + who))
        return reply(b"for " + who, FRESH)

    async with cached(handler) as c:
        got = {}
        for target in (b"/private", b"/cookie"):
            got[target] = [await get(c.port, target, b"Cookie: " + who) for who in (b"alice", b"bob")]
        got[b"/auth"] = [
            await get(c.port, b"/auth", b"Authorization: Basic " + who) for who in (b"YQ==", b"Yg==")
        ]
        assert len(c.seen()) == 6
        assert len(c.stage.store) == 0
    assert [r.body for r in got[b"/private"]] == [b"for alice", b"for bob"]
    assert [r.body for r in got[b"/cookie"]] == [b"for alice", b"for bob"]
    assert [r.body for r in got[b"/auth"]] == [b"for Basic YQ==", b"for Basic Yg=="]
    assert b"detail=private" in status_of(got[b"/private"][1])
    assert b"detail=set-cookie" in status_of(got[b"/cookie"][1])
    assert b"detail=authorization" in status_of(got[b"/auth"][1])


# -- invalidation ---------------------------------------------------------------------------------


async def test_a_successful_post_invalidates_the_url_and_its_same_host_location() -> None:
    async def handler(request: Request) -> Reply:
        if request.method == b"POST":
            return reply(
                b"made",
                (b"Location", b"http://site/item"),
                (b"Content-Location", b"//elsewhere/x"),
                status=201,
            )
        return reply(request.target, FRESH)

    async with cached(handler) as c:
        for target in (b"/list", b"/item", b"/other"):
            await get(c.port, target)
        posted = await get(c.port, b"/list", method=b"POST")
        for target in (b"/list", b"/item", b"/other"):
            await get(c.port, target)
        assert [r.target for r in c.seen()] == [b"/list", b"/item", b"/other", b"/list", b"/list", b"/item"]
    assert posted.status == 201
    assert status_of(posted) == b"distpat; fwd=bypass"


async def test_a_failed_post_invalidates_nothing() -> None:
    async def handler(request: Request) -> Reply:
        if request.method == b"DELETE":
            return reply(b"no", status=404)
        return reply(b"kept", FRESH)

    async with cached(handler) as c:
        await get(c.port, b"/x")
        await get(c.port, b"/x", method=b"DELETE")
        kept = await get(c.port, b"/x")
        assert len(c.seen()) == 2
    assert status_of(kept).startswith(b"distpat; hit")


# -- too large ------------------------------------------------------------------------------------


async def test_an_object_over_max_object_bytes_streams_through_whole_and_uncached() -> None:
    big = bytes(range(256)) * 400  # 100 KiB

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    async def handler(request: Request) -> Reply:
        if request.target == b"/chunked":
            return Reply(headers=[FRESH], chunks=pieces())
        return reply(big, FRESH)

    async with cached(handler, max_bytes=1 << 20, max_object_bytes=16384) as c:
        answers = [await get(c.port, target) for target in (b"/big", b"/big", b"/chunked", b"/chunked")]
        assert len(c.seen()) == 4
        assert len(c.stage.store) == 0
    assert all((r.status, r.body) == (200, big) for r in answers)


async def test_concurrent_requests_for_an_object_too_large_to_keep_all_get_it_whole() -> None:
    big = b"x" * 100_000
    held = Held((FRESH,), (FRESH,))

    async def handler(request: Request) -> Reply:
        answer = await held(request)
        return reply(big, *answer.headers)

    async with asyncio.timeout(20), cached(handler, max_object_bytes=16384) as c:
        clients = [asyncio.ensure_future(get(c.port, b"/huge")) for _ in range(10)]
        await until(lambda: held.arrived == 1)
        await until(lambda: c.stage.counts.get("miss", 0) == 10)
        held.release.set()
        answers = await asyncio.gather(*clients)
        assert len(c.stage.store) == 0
    assert all((a.status, a.body) == (200, big) for a in answers)


async def test_pipelined_requests_on_one_connection_miss_then_hit_in_order() -> None:
    async with cached(Versions((FRESH,))) as c:
        client = await RawClient.connect(c.port)
        try:
            await client.send(
                b"GET /p HTTP/1.1\r\nHost: site\r\n\r\n" * 3 + b"GET /q HTTP/1.1\r\nHost: site\r\n\r\n"
            )
            answers = await client.read_responses(4)
        finally:
            await client.close()
        assert [r.target for r in c.seen()] == [b"/p", b"/q"]
    assert [a.body for a in answers] == [b"v1", b"v1", b"v1", b"v2"]
    assert [status_of(a).split(b";")[1].strip() for a in answers] == [
        b"fwd=uri-miss",
        b"hit",
        b"hit",
        b"fwd=uri-miss",
    ]


# -- metrics --------------------------------------------------------------------------------------


async def test_metrics_count_requests_by_result_and_show_bytes_and_objects() -> None:
    async with cached(Versions((FRESH,)), admin=True) as c:
        await get(c.port, b"/m")
        await get(c.port, b"/m")
        await get(c.port, b"/m")
        await get(c.port, b"/n")
        await get(c.port, b"/m", method=b"POST")
        admin = c.server.admin_port
        assert admin is not None
        samples = await scrape(admin)
        held = c.stage.store.bytes_held
    results = {
        dict(labels)["result"]: value
        for (name, labels), value in samples.items()
        if name == "distpat_cache_requests_total"
    }
    assert results == {"hit": 2, "miss": 2, "invalidation": 1}
    assert samples[("distpat_cache_objects", frozenset({("stage", "cache")}))] == 1
    assert samples[("distpat_cache_bytes", frozenset({("stage", "cache")}))] == held > 0


# -- probes ---------------------------------------------------------------------------------------


async def test_a_conditional_request_that_misses_leaves_the_url_cacheable_and_coalesced() -> None:
    """A browser's If-None-Match on a cold cache goes upstream without it (the cache wants a whole
    response to store): the client gets that 200, and the next ten plain GETs are hits."""
    plain: list[Request] = []
    conditional_upstream: list[Request] = []

    async def handler(request: Request) -> Reply:
        if request.header(b"if-none-match") is not None:
            conditional_upstream.append(request)
            return reply(b"", FRESH, (b"ETag", b'"e1"'), status=304)
        plain.append(request)
        return reply(b"full", FRESH, (b"ETag", b'"e1"'))

    async with asyncio.timeout(20), cached(handler) as c:
        conditional = await get(c.port, b"/cond", b'If-None-Match: "e1"')
        answers = await asyncio.gather(*(get(c.port, b"/cond") for _ in range(10)))
    assert (conditional.status, conditional.body) == (200, b"full")
    assert conditional_upstream == []
    assert all(a.body == b"full" and status_of(a).startswith(b"distpat; hit") for a in answers)
    assert len(plain) == 1


async def test_a_leader_whose_client_goes_away_still_releases_its_waiters() -> None:
    held = Held((FRESH,))
    async with asyncio.timeout(10), cached(held, settings=CacheSettings(coalesce_timeout=30)) as c:
        leader = await RawClient.connect(c.port)
        await leader.send(b"GET /gone HTTP/1.1\r\nHost: site\r\n\r\n")
        await until(lambda: held.arrived == 1)
        waiters = [asyncio.ensure_future(get(c.port, b"/gone")) for _ in range(5)]
        await until(lambda: c.stage.counts.get("miss", 0) == 6)
        await leader.close()
        await asyncio.sleep(0.1)
        held.release.set()
        answers = await asyncio.gather(*waiters)
    assert all(a.status == 200 for a in answers)
    assert all(a.body in (b"slow body",) or a.body.startswith(b"own ") for a in answers)


async def test_an_upstream_failure_does_not_stop_coalescing_once_the_backend_answers() -> None:
    broken = [True]
    held = Held((FRESH,))

    async def handler(request: Request) -> Reply:
        if broken[0]:
            broken[0] = False
            return Reply(raw=b"", close=True)  # the connection closes with no response: a 502
        return await held(request)

    async with asyncio.timeout(20), cached(handler) as c:
        failed = await get(c.port, b"/flaky")
        clients = [asyncio.ensure_future(get(c.port, b"/flaky")) for _ in range(10)]
        await until(lambda: held.arrived >= 1)
        await until(lambda: c.stage.counts.get("miss", 0) == 11)
        held.release.set()
        answers = await asyncio.gather(*clients)
        upstream = held.arrived
    assert failed.status == 502
    assert all(a.status == 200 for a in answers)
    assert upstream == 1
