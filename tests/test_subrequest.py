"""Sub-requests over real loopback sockets: the requests written, results in order, the deadline
with partial results, hedging and its bound, failover, limits, done exactly once, cancel
(distpat.net.subrequest)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from distpat.core.stage import Fetch, SubRequest, SubResult
from distpat.net.subrequest import SubRequests, subrequest_bytes
from tests.effectkit import dead_url, group_of, name_of, until
from tests.httpkit import Backend, Reply, Request

VIA = b"1.1 distpat"


def fetch(*requests: SubRequest, **options: object) -> Fetch:
    return Fetch(requests, then=lambda results: None, **options)  # type: ignore[arg-type]


class Done:
    """A ``done`` callback that must be called exactly once."""

    def __init__(self) -> None:
        self.calls: list[tuple[SubResult, ...]] = []

    def __call__(self, results: tuple[SubResult, ...]) -> None:
        self.calls.append(results)

    async def results(self, timeout: float = 5.0) -> tuple[SubResult, ...]:
        await until(lambda: bool(self.calls), timeout)
        await asyncio.sleep(0.02)  # a second call would land here
        assert len(self.calls) == 1
        return self.calls[0]


@pytest.fixture
async def gate() -> AsyncIterator[asyncio.Event]:
    event = asyncio.Event()
    yield event
    event.set()


async def reply_with(request: Request) -> Reply:
    return Reply(headers=[(b"X-Seen", request.target)], body=b"answer to " + request.target)


def test_the_request_written() -> None:
    request = SubRequest(
        None,
        b"/search?q=1",
        method=b"POST",
        headers=((b"X-Trace", b"t1"), (b"Connection", b"close"), (b"Content-Length", b"99"), (b"TE", b"x")),
        body=b"payload",
    )
    assert subrequest_bytes(request, b"10.0.0.1:8080", VIA) == (
        b"POST /search?q=1 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nX-Trace: t1\r\n"
        b"Content-Length: 7\r\nVia: 1.1 distpat\r\n\r\npayload"
    )
    get = SubRequest(None, b"/", headers=((b"host", b"api.example"),))
    assert (
        subrequest_bytes(get, b"h:1", VIA)
        == b"GET / HTTP/1.1\r\nHost: api.example\r\nVia: 1.1 distpat\r\n\r\n"
    )
    empty_put = SubRequest(None, b"/k", method=b"PUT")
    assert b"\r\nContent-Length: 0\r\n" in subrequest_bytes(empty_put, b"h:1", VIA)


async def test_results_come_in_request_order_with_what_each_upstream_sent() -> None:
    async with Backend(reply_with) as a, Backend(reply_with) as b:
        pools = {None: group_of(a.url), "b": group_of(b.url, name="b")}
        subs = SubRequests(pools, via=VIA, connect_timeout=2.0)
        done = Done()
        requests = (
            SubRequest("b", b"/one", headers=((b"X-Trace", b"t1"),)),
            SubRequest(None, b"/two", method=b"POST", body=b"xyz"),
        )
        subs.fetch(fetch(*requests), done)
        assert done.calls == []  # never from inside fetch()
        one, two = await done.results()
        assert (one.request, one.status, one.body, one.upstream) == (
            requests[0],
            200,
            b"answer to /one",
            name_of(b.url),
        )
        assert (b"X-Seen", b"/one") in one.headers
        assert one.ok
        assert not one.hedged
        assert one.elapsed > 0
        assert (two.status, two.body, two.upstream) == (200, b"answer to /two", name_of(a.url))
        [seen_b] = b.requests
        assert seen_b.header(b"host") == pools["b"].upstreams[0].host_field
        assert seen_b.header(b"via") == VIA
        assert seen_b.header(b"x-trace") == b"t1"
        [seen_a] = a.requests
        assert (seen_a.method, seen_a.body, seen_a.header(b"content-length")) == (b"POST", b"xyz", b"3")
        # a second fetch reuses the pooled connections
        again = Done()
        subs.fetch(fetch(*requests), again)
        assert [r.status for r in await again.results()] == [200, 200]
        assert (a.connections, b.connections) == (1, 1)
        assert subs.in_flight == 0
        await subs.close()
        for group in pools.values():
            await group.close()


async def test_unknown_pools_and_orders_are_results_not_exceptions() -> None:
    async with Backend() as a:
        pools = {None: group_of(a.url)}
        subs = SubRequests(pools, via=VIA, connect_timeout=2.0)
        done = Done()
        subs.fetch(
            fetch(
                SubRequest("nowhere", b"/"),
                SubRequest(None, b"/", order=("127.0.0.1:1",)),
                SubRequest(None, b"/bad target"),
                SubRequest(None, b"/fine"),
            ),
            done,
        )
        results = await done.results()
        assert [r.error for r in results] == ["no_pool", "no_upstream", "invalid", None]
        assert results[3].status == 200
        nothing = Done()
        subs.fetch(fetch(), nothing)
        assert await nothing.results() == ()
        await subs.close()
        await pools[None].close()


async def test_the_deadline_gives_partial_results_and_closes_the_late_connection(gate: asyncio.Event) -> None:
    async def held(request: Request) -> Reply:
        await gate.wait()
        return Reply()

    async with Backend(reply_with) as fast, Backend(held) as slow:
        pools = {"fast": group_of(fast.url, name="fast"), "slow": group_of(slow.url, name="slow")}
        subs = SubRequests(pools, via=VIA, connect_timeout=2.0)
        done = Done()
        subs.fetch(fetch(SubRequest("slow", b"/late"), SubRequest("fast", b"/quick"), deadline=0.3), done)
        late, quick = await done.results()
        assert (quick.status, quick.body) == (200, b"answer to /quick")
        assert (late.status, late.error, late.upstream) == (0, "timeout", name_of(slow.url))
        assert not late.ok
        await until(lambda: not slow.transports)  # the late one's connection was closed
        assert pools["slow"].upstreams[0].outstanding == 0
        await subs.close()
        for group in pools.values():
            await group.close()


async def test_a_hedge_wins_against_a_slow_replica_and_the_loser_is_closed(gate: asyncio.Event) -> None:
    async def held(request: Request) -> Reply:
        await gate.wait()
        return Reply(body=b"too late")

    async with Backend(held) as slow, Backend(reply_with) as fast:
        replicas = group_of(slow.url, fast.url, name="replicas")
        subs = SubRequests({"replicas": replicas}, via=VIA, connect_timeout=2.0)
        done = Done()
        order = (name_of(slow.url), name_of(fast.url))
        request = SubRequest("replicas", b"/item", order=order)
        subs.fetch(fetch(request, deadline=5.0, hedge_after=0.05, hedge_max=1), done)
        [result] = await done.results()
        assert (result.status, result.body, result.upstream) == (200, b"answer to /item", name_of(fast.url))
        assert result.hedged
        await until(lambda: not slow.transports)  # the loser's connection was closed, not left reading
        assert len(slow.requests) == 1
        assert [u.outstanding for u in replicas.upstreams] == [0, 0]
        await subs.close()
        await replicas.close()


async def test_hedge_max_bounds_the_hedges_of_a_fetch(gate: asyncio.Event) -> None:
    async def held(request: Request) -> Reply:
        await gate.wait()
        return Reply()

    async with Backend(held) as slow, Backend(reply_with) as fast:
        replicas = group_of(slow.url, fast.url, name="replicas")
        subs = SubRequests({"replicas": replicas}, via=VIA, connect_timeout=2.0)
        order = (name_of(slow.url), name_of(fast.url))
        requests = [SubRequest("replicas", b"/%d" % i, order=order) for i in range(3)]
        done = Done()
        handle = subs.fetch(fetch(*requests, deadline=1.5, hedge_after=0.02, hedge_max=1), done)
        results = await done.results()
        assert [(r.status, r.error, r.hedged) for r in results] == [
            (200, None, True),  # the first unanswered one, in request order, got the one hedge
            (0, "timeout", False),
            (0, "timeout", False),
        ]
        assert [r.target for r in fast.requests] == [b"/0"]
        assert handle.hedges_left == 0
        await until(lambda: not slow.transports)
        await subs.close()
        await replicas.close()


async def test_no_hedge_is_sent_for_an_answered_request_or_a_pool_of_one() -> None:
    async with Backend(reply_with) as only:
        pool = group_of(only.url)
        subs = SubRequests({None: pool}, via=VIA, connect_timeout=2.0)
        done = Done()
        subs.fetch(fetch(SubRequest(None, b"/a"), deadline=5.0, hedge_after=2.0, hedge_max=3), done)
        [result] = await done.results()
        assert (result.status, result.hedged) == (200, False)
        assert len(only.requests) == 1
        await subs.close()
        await pool.close()


async def test_a_hedge_that_fails_leaves_the_request_to_the_first_copy(gate: asyncio.Event) -> None:
    async def held(request: Request) -> Reply:
        await gate.wait()
        return Reply(body=b"first")

    async def cut(request: Request) -> Reply:
        gate.set()  # the hedge arrived: let the first copy answer, after this one broke
        return Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", close=True)

    async with Backend(held) as first, Backend(cut) as broken:
        replicas = group_of(first.url, broken.url, name="replicas")
        subs = SubRequests({"replicas": replicas}, via=VIA, connect_timeout=2.0)
        done = Done()
        order = (name_of(first.url), name_of(broken.url))
        subs.fetch(fetch(SubRequest("replicas", b"/x", order=order), hedge_after=0.02, hedge_max=1), done)
        [result] = await done.results()
        assert (result.status, result.body, result.hedged) == (200, b"first", False)
        await subs.close()
        await replicas.close()


async def test_a_connect_failure_fails_over_once_along_the_order() -> None:
    async with Backend(reply_with) as fast:
        dead1, dead2 = dead_url(), dead_url()
        pool = group_of(dead1, dead2, fast.url, name="p")
        subs = SubRequests({"p": pool}, via=VIA, connect_timeout=2.0)
        done = Done()
        subs.fetch(
            fetch(
                SubRequest("p", b"/over", order=(name_of(dead1), name_of(fast.url))),
                SubRequest("p", b"/twice", order=(name_of(dead1), name_of(dead2), name_of(fast.url))),
            ),
            done,
        )
        over, twice = await done.results()
        assert (over.status, over.upstream, over.hedged) == (200, name_of(fast.url), False)
        assert (twice.error, twice.upstream) == ("connect", name_of(dead2))
        assert [r.target for r in fast.requests] == [b"/over"]
        await subs.close()
        await pool.close()


async def test_bodies_over_max_body_broken_and_invalid_responses_are_errors() -> None:
    async def varied(request: Request) -> Reply:
        if request.target == b"/big":
            return Reply(body=b"x" * 100)
        if request.target == b"/cut":
            return Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart", close=True)
        if request.target == b"/junk":
            return Reply(raw=b"SMTP ready\r\n\r\n")
        if request.target == b"/twice-chunked":
            return Reply(raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n")
        if request.target == b"/switch":
            return Reply(raw=b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n")
        if request.target == b"/eof":
            return Reply(raw=b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", close=True)
        return Reply(body=b"x" * 10)

    async with Backend(varied) as backend:
        pool = group_of(backend.url)
        subs = SubRequests({None: pool}, via=VIA, connect_timeout=2.0)
        done = Done()
        subs.fetch(
            fetch(
                SubRequest(None, b"/big", max_body=99),
                SubRequest(None, b"/fits", max_body=10),
                SubRequest(None, b"/cut"),
                SubRequest(None, b"/junk"),
                SubRequest(None, b"/eof"),
                SubRequest(None, b"/twice-chunked"),
                SubRequest(None, b"/switch"),
            ),
            done,
        )
        big, fits, cut, junk, eof, twice_chunked, switch = await done.results()
        assert twice_chunked.error == switch.error == "protocol"
        assert (big.error, big.body) == ("too_large", b"")
        assert (fits.error, fits.body) == (None, b"x" * 10)
        assert cut.error == "broken"
        assert junk.error == "protocol"
        assert (eof.status, eof.body) == (200, b"until the end")  # a body delimited by the close
        await until(lambda: len(backend.transports) == 1)
        assert len(pool.upstreams[0].idle) == 1  # only the clean keep-alive answer was pooled
        await subs.close()
        await pool.close()


async def test_cancel_stops_everything_and_never_calls_done(gate: asyncio.Event) -> None:
    async def held(request: Request) -> Reply:
        await gate.wait()
        return Reply()

    async with Backend(held) as slow:
        pool = group_of(slow.url)
        subs = SubRequests({None: pool}, via=VIA, connect_timeout=2.0)
        done = Done()
        handle = subs.fetch(fetch(SubRequest(None, b"/a"), SubRequest(None, b"/b"), deadline=0.2), done)
        await until(lambda: len(slow.requests) == 2)
        handle.cancel()
        handle.cancel()  # twice is harmless
        assert handle.state == "cancelled"
        await until(lambda: not slow.transports)
        await asyncio.sleep(0.3)  # past the deadline: its timer was cancelled too
        assert done.calls == []
        assert subs.in_flight == 0
        # cancelled between finishing and delivering: still no call
        early = Done()
        subs.fetch(fetch(SubRequest("nowhere", b"/")), early).cancel()
        await asyncio.sleep(0.02)
        assert early.calls == []
        # cancelled while connecting
        connecting = Done()
        dead = group_of(dead_url(), name="dead")
        SubRequests({None: dead}, via=VIA, connect_timeout=2.0).fetch(
            fetch(SubRequest(None, b"/")), connecting
        ).cancel()
        await asyncio.sleep(0.05)
        assert connecting.calls == []
        await subs.close()
        await pool.close()
        await dead.close()


async def test_close_cancels_the_fetches_in_flight(gate: asyncio.Event) -> None:
    async def held(request: Request) -> Reply:
        await gate.wait()
        return Reply()

    async with Backend(held) as slow:
        pool = group_of(slow.url)
        subs = SubRequests({None: pool}, via=VIA, connect_timeout=2.0)
        done = Done()
        handle = subs.fetch(fetch(SubRequest(None, b"/a")), done)
        await until(lambda: len(slow.requests) == 1)
        await subs.close()
        assert handle.state == "cancelled"
        await until(lambda: not slow.transports)
        assert done.calls == []
        await pool.close()


async def test_interim_responses_and_head_are_read_right_and_the_connection_kept() -> None:
    async def varied(request: Request) -> Reply:
        if request.method == b"HEAD":
            return Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        return Reply(
            raw=b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )

    async with Backend(varied) as backend:
        pool = group_of(backend.url)
        subs = SubRequests({None: pool}, via=VIA, connect_timeout=2.0)
        for request in (
            SubRequest(None, b"/h", method=b"HEAD"),
            SubRequest(None, b"/i"),
            SubRequest(None, b"/h"),
        ):
            done = Done()
            subs.fetch(fetch(request), done)
            [result] = await done.results()
            assert (result.status, result.error) == (200, None)
            assert result.body == (b"" if request.method == b"HEAD" else b"ok")
        assert backend.connections == 1
        await subs.close()
        await pool.close()


async def test_a_pooled_connection_found_closed_is_replaced_for_an_idempotent_request() -> None:
    async with Backend(reply_with) as backend:
        pool = group_of(backend.url)
        upstream = pool.upstreams[0]
        subs = SubRequests({None: pool}, via=VIA, connect_timeout=2.0)

        async def stale_pooled_connection() -> None:
            """One pooled connection the backend has closed, unnoticed (its reading paused)."""
            done = Done()
            subs.fetch(fetch(SubRequest(None, b"/warm")), done)
            await done.results()
            [conn] = upstream.idle
            assert conn.transport is not None
            conn.transport.pause_reading()
            for transport in list(backend.transports):
                transport.close()
            await until(lambda: not backend.transports)

        async def through_it(request: SubRequest) -> SubResult:
            [conn] = upstream.idle
            done = Done()
            subs.fetch(fetch(request), done)
            assert conn.handler is not None  # the pooled connection was taken
            assert conn.transport is not None
            conn.transport.resume_reading()  # now its end is seen
            [result] = await done.results()
            return result

        await stale_pooled_connection()
        get = await through_it(SubRequest(None, b"/again"))
        assert (get.status, get.body) == (200, b"answer to /again")  # sent again on a new connection
        assert backend.connections == 2
        await stale_pooled_connection()
        post = await through_it(SubRequest(None, b"/once", method=b"POST", body=b"x"))
        assert post.error == "broken"  # not idempotent: never sent twice
        assert [r.target for r in backend.requests] == [b"/warm", b"/again", b"/warm"]
        await subs.close()
        await pool.close()
