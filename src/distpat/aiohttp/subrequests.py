"""Carrying out a :class:`~distpat.core.stage.Fetch`: sub-requests to named pools, concurrently,
with a deadline and hedging.

Every sub-request is a task. Its first copy goes to the first upstream of its order (or the
pool's next in turn); a connect failure sends it to the next one. With ``hedge_after``, a
sub-request still unanswered after that many seconds is sent once more, to the next upstream,
while the Fetch has hedges left (``hedge_max``): the first answer wins and the other copy is
cancelled. At the deadline every sub-request still running is cancelled and reported as
``error="timeout"``; the results come back in the order of the requests.

Result errors: ``"timeout"``, ``"connect"`` (no upstream could be reached), ``"protocol"``
(an upstream broke the exchange), ``"too_large"`` (a body over ``max_body``),
``"unknown_pool"`` / ``"unknown_upstream"`` (the request names what the driver does not have).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace

import aiohttp

from distpat.aiohttp.pools import Upstream, UpstreamPool, UpstreamPools
from distpat.aiohttp.view import multidict
from distpat.core.stage import Fetch, SubRequest, SubResult

__all__ = ["fetch"]


class _Hedges:
    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def fetch(
    session: aiohttp.ClientSession, pools: UpstreamPools, effect: Fetch, *, connect_timeout: float = 5.0
) -> tuple[SubResult, ...]:
    """Every sub-request of ``effect``, answered or not by its deadline."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    hedges = _Hedges(effect.hedge_max)
    tasks = [
        asyncio.ensure_future(_one(session, pools, sub, effect, hedges, connect_timeout))
        for sub in effect.requests
    ]
    try:
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, effect.deadline))
    finally:
        await _cancel(tasks)
    results: list[SubResult] = []
    for sub, task in zip(effect.requests, tasks, strict=True):
        if not task.done() or task.cancelled() or task.exception() is not None:
            results.append(SubResult(sub, error="timeout", elapsed=loop.time() - started))
        else:
            results.append(task.result())
    return tuple(results)


async def _cancel(tasks: Sequence[asyncio.Future[SubResult]]) -> None:
    running = [t for t in tasks if not t.done()]
    for task in running:
        task.cancel()
    if running:
        # cancellation of an aiohttp request finishes at once; the bound only guards a bug
        await asyncio.wait(running, timeout=5.0)


async def _one(
    session: aiohttp.ClientSession,
    pools: UpstreamPools,
    sub: SubRequest,
    effect: Fetch,
    hedges: _Hedges,
    connect_timeout: float,
) -> SubResult:
    pool = pools.get(sub.pool)
    if pool is None:
        return SubResult(sub, error="unknown_pool")
    candidates = pool.candidates(sub.order)
    if candidates is None:
        return SubResult(sub, error="unknown_upstream")
    loop = asyncio.get_running_loop()
    started = loop.time()
    queue = list(candidates)
    running: dict[asyncio.Future[SubResult], bool] = {}  # a copy in flight -> whether it is the hedge
    hedge_at = None if effect.hedge_after is None else started + effect.hedge_after

    def launch(hedged: bool) -> None:
        upstream = queue.pop(0)
        running[asyncio.ensure_future(_attempt(session, pool, upstream, sub, connect_timeout))] = hedged

    launch(False)
    last: SubResult | None = None
    try:
        while running:
            wait = None
            if hedge_at is not None and queue:
                wait = max(0.0, hedge_at - loop.time())
            done, _ = await asyncio.wait(running, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if not done:  # the hedge's time came
                hedge_at = None
                if hedges.take():
                    launch(True)
                continue
            for task in done:
                hedged = running.pop(task)
                result = replace(task.result(), hedged=hedged, elapsed=loop.time() - started)
                if result.error is None:
                    return result
                last = result
            if not running and queue and last is not None and last.error == "connect":
                launch(False)
        assert last is not None
        return last
    finally:
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _attempt(
    session: aiohttp.ClientSession,
    pool: UpstreamPool,
    upstream: Upstream,
    sub: SubRequest,
    connect_timeout: float,
) -> SubResult:
    target = "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in sub.target)
    pool.enter(upstream)
    try:
        async with session.request(
            sub.method.decode("ascii", "replace"),
            upstream.base + target,
            headers=multidict(sub.headers, framing=False),
            data=sub.body or None,
            allow_redirects=False,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout),
        ) as response:
            fields = tuple(response.raw_headers)
            body = bytearray()
            while chunk := await response.content.readany():
                body += chunk
                if len(body) > sub.max_body:
                    return SubResult(sub, response.status, fields, error="too_large", upstream=upstream.name)
            return SubResult(sub, response.status, fields, bytes(body), upstream=upstream.name)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
        return SubResult(sub, error="connect", upstream=upstream.name)
    except TimeoutError:
        return SubResult(sub, error="timeout", upstream=upstream.name)
    except (aiohttp.ClientError, OSError, ValueError):
        return SubResult(sub, error="protocol", upstream=upstream.name)
    finally:
        pool.leave(upstream)
