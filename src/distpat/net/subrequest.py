"""Sub-requests: the engine's carrier for a :class:`~distpat.core.stage.Fetch` (scatter/gather,
with a deadline and hedging).

:meth:`SubRequests.fetch` sends every :class:`~distpat.core.stage.SubRequest` of the effect at
once, each over its own :class:`~distpat.net.roundtrip.RoundTrip` (an idle keep-alive connection
of the chosen upstream, or a new one), and calls ``done`` exactly once with one
:class:`~distpat.core.stage.SubResult` per request, in request order:

* when every request is answered (or has failed), or at ``Fetch.deadline`` seconds, whichever
  comes first; the requests still out then get ``error="timeout"`` and their connections are
  closed;
* ``done`` is always called from a loop callback of its own (``loop.call_soon``), never from
  inside :meth:`~SubRequests.fetch` or an upstream connection's callbacks, so it may start the
  next effect at once; :meth:`FetchHandle.cancel` before that stops everything, and ``done``
  is never called.

**Upstreams.** A request goes to its pool's (``SubRequest.pool``) upstream chosen by
:meth:`~distpat.net.upstream.UpstreamGroup.choose` within ``SubRequest.order`` when it has one
(the first available of it), else by the pool's balancer. A connect failure (``OSError``, or
``connect_timeout`` passed) fails over once to the next upstream so chosen; a second, or none
left, is ``error="connect"``. Errors: ``no_pool`` (no pool of that name), ``no_upstream`` (the
order names an upstream the pool lacks, or none is left to choose), ``invalid`` (the request
cannot be written: a space in the target, a CR/LF in a field), and the round trip's
``connect`` / ``broken`` / ``protocol`` / ``too_large`` (``SubRequest.max_body``).

**Hedging** (*The Tail at Scale*, Dean and Barroso, 2013). With ``Fetch.hedge_after``, one timer
per fetch: at that time each request not yet answered, in request order, is sent again to the
next upstream of its order (or another upstream of the pool, ``choose(exclude=tried)``), while
the fetch has hedges left (``Fetch.hedge_max``); a request whose pool has no other upstream is
not hedged and costs none. The first response wins (``SubResult.hedged`` says whether it was
the hedge's); the other copy is aborted, its connection closed rather than left reading a
response nobody waits for. A copy that fails leaves the request to the other one.

**The request written.** ``METHOD target HTTP/1.1``, ``Host`` (the upstream's ``host:port``, or
the SubRequest's own Host field), the SubRequest's fields without hop-by-hop ones or
Content-Length (RFC 9110 section 7.6.1), ``Content-Length`` when there is a body or the method
defines one (POST, PUT, PATCH; RFC 9110 section 8.6), ``Via`` (RFC 9110 section 7.6.3), the body.
``elapsed`` is measured with ``perf_counter`` from the call to ``fetch``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from time import perf_counter

from distpat.core.http import HOP_BY_HOP, request_head
from distpat.core.stage import Fetch, SubRequest, SubResult
from distpat.errors import LocalProtocolError
from distpat.net.batch import WriteBatch
from distpat.net.pool import UpstreamGroup
from distpat.net.roundtrip import RoundTrip
from distpat.net.upstream import Upstream

__all__ = ["FetchHandle", "SubRequests", "subrequest_bytes"]

_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
_NOT_COPIED = HOP_BY_HOP | {b"content-length", b"host"}


def subrequest_bytes(request: SubRequest, host: bytes, via: bytes) -> bytes:
    """The whole request as written to an upstream whose Host field is ``host`` (see the module
    docstring); raises :class:`~distpat.errors.LocalProtocolError` for one that cannot be written."""
    fields = [(b"Host", host)]
    for name, value in request.headers:
        lower = name.lower()
        if lower == b"host":
            fields[0] = (b"Host", value)
        elif lower not in _NOT_COPIED:
            fields.append((name, value))
    body = request.body
    if body or request.method in _BODY_METHODS:
        fields.append((b"Content-Length", b"%d" % len(body)))
    fields.append((b"Via", via))
    return request_head(request.method, request.target, fields) + body


class _Slot:
    """One SubRequest of a fetch: where it may go, its copies in flight, its result once in."""

    __slots__ = ("request", "group", "order", "tried", "live", "asked", "result")

    def __init__(self, request: SubRequest, group: UpstreamGroup | None) -> None:
        self.request = request
        self.group = group
        self.order: tuple[Upstream, ...] = ()
        self.tried: set[Upstream] = set()
        self.live: list[RoundTrip] = []
        self.asked: Upstream | None = None
        self.result: SubResult | None = None


class FetchHandle:
    """One fetch in flight; :meth:`cancel` stops it without ``done``."""

    __slots__ = (
        "_owner",
        "effect",
        "_done",
        "_slots",
        "_left",
        "hedges_left",
        "_t0",
        "_timers",
        "_call",
        "state",
    )

    def __init__(
        self, owner: SubRequests, effect: Fetch, done: Callable[[tuple[SubResult, ...]], None]
    ) -> None:
        self._owner = owner
        self.effect = effect
        self._done = done
        self._slots: list[_Slot] = []
        self._left = 0
        self.hedges_left = effect.hedge_max
        """Hedges the fetch may still send."""
        self._t0 = perf_counter()
        self._timers: list[asyncio.TimerHandle] = []
        self._call: asyncio.Handle | None = None
        self.state = "running"
        """``running``, ``finishing`` (``done`` is scheduled), ``done`` or ``cancelled``."""

    def __repr__(self) -> str:
        return f"<FetchHandle {len(self._slots)} requests, {self._left} out, {self.state}>"

    # -- starting ---------------------------------------------------------------------

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        pools = self._owner.pools
        for request in self.effect.requests:
            slot = _Slot(request, pools.get(request.pool))
            self._slots.append(slot)
            if slot.group is None:
                slot.result = SubResult(request, error="no_pool")
                continue
            if request.order:
                order = slot.group.resolve(request.order)
                if order is None:
                    slot.result = SubResult(request, error="no_upstream")
                    continue
                slot.order = order
            error = self._send(slot, hedged=False, failed_over=False)
            if error is not None:
                slot.result = SubResult(request, error=error)
                continue
            self._left += 1
        if not self._left:
            self._finish(loop)
            return
        effect = self.effect
        self._timers.append(loop.call_later(max(effect.deadline, 0.0), self._deadline))
        if effect.hedge_after is not None and effect.hedge_max > 0 and effect.hedge_after < effect.deadline:
            self._timers.append(loop.call_later(max(effect.hedge_after, 0.0), self._hedge))

    def _send(self, slot: _Slot, *, hedged: bool, failed_over: bool) -> str | None:
        """Send a copy of ``slot``'s request to the next upstream; None, or why it was not sent."""
        assert slot.group is not None
        upstream = slot.group.choose(frozenset(slot.tried), slot.order)
        if upstream is None:
            return "no_upstream"
        owner = self._owner
        try:
            data = subrequest_bytes(slot.request, upstream.host_field, owner.via)
        except LocalProtocolError:
            return "invalid"
        slot.tried.add(upstream)
        slot.asked = upstream
        copy = RoundTrip(
            upstream,
            data,
            method=slot.request.method,
            on_end=functools.partial(self._ended, slot, hedged, failed_over),
            connect_timeout=owner.connect_timeout,
            max_body=slot.request.max_body,
            tasks=owner._tasks,
            batch=owner.batch,
        )
        slot.live.append(copy)
        copy.start()
        return None

    # -- results ------------------------------------------------------------------------

    def _ended(self, slot: _Slot, hedged: bool, failed_over: bool, copy: RoundTrip) -> None:
        if self.state != "running" or slot.result is not None:
            return
        slot.live.remove(copy)
        request = slot.request
        if copy.error is None:
            for loser in slot.live:
                loser.abort()
            slot.live.clear()
            slot.result = SubResult(
                request,
                status=copy.status,
                headers=tuple(copy.headers),
                body=b"".join(copy.body),
                upstream=copy.upstream.name,
                elapsed=perf_counter() - self._t0,
                hedged=hedged,
            )
        else:
            if (
                copy.error == "connect"
                and not failed_over
                and self._send(slot, hedged=hedged, failed_over=True) is None
            ):
                return  # failed over to the next upstream
            if slot.live:  # the other copy may still answer
                return
            slot.result = SubResult(
                request,
                error=copy.error,
                upstream=copy.upstream.name,
                elapsed=perf_counter() - self._t0,
                hedged=hedged,
            )
        self._left -= 1
        if not self._left:
            self._finish(asyncio.get_running_loop())

    def _hedge(self) -> None:
        for slot in self._slots:
            if self.hedges_left <= 0 or self.state != "running":
                return
            if slot.result is None and self._send(slot, hedged=True, failed_over=False) is None:
                self.hedges_left -= 1

    def _deadline(self) -> None:
        if self.state != "running":
            return
        elapsed = perf_counter() - self._t0
        for slot in self._slots:
            if slot.result is None:
                for copy in slot.live:
                    copy.abort()
                slot.live.clear()
                name = slot.asked.name if slot.asked is not None else None
                slot.result = SubResult(slot.request, error="timeout", upstream=name, elapsed=elapsed)
        self._left = 0
        self._finish(asyncio.get_running_loop())

    def _finish(self, loop: asyncio.AbstractEventLoop) -> None:
        self.state = "finishing"
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        results = tuple(slot.result for slot in self._slots if slot.result is not None)
        assert len(results) == len(self._slots)
        self._call = loop.call_soon(self._deliver, results)

    def _deliver(self, results: tuple[SubResult, ...]) -> None:
        self._call = None
        self.state = "done"
        self._owner._fetches.discard(self)
        self._done(results)

    # -- cancelling ---------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop: every copy in flight is aborted (its connection closed), ``done`` is never called.
        Nothing happens once ``done`` has been called."""
        if self.state in ("done", "cancelled"):
            return
        self.state = "cancelled"
        self._owner._fetches.discard(self)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._call is not None:
            self._call.cancel()
            self._call = None
        for slot in self._slots:
            for copy in slot.live:
                copy.abort()
            slot.live.clear()


class SubRequests:
    """Carries out :class:`~distpat.core.stage.Fetch` effects over the engine's pools.

    ``pools``: the upstream groups by pool name (None: the default pool). ``via``: the Via
    field's value (``EngineSettings.via``). ``batch``: the engine's write batch, or None to
    write at once.
    """

    __slots__ = ("pools", "via", "connect_timeout", "batch", "_tasks", "_fetches")

    def __init__(
        self,
        pools: Mapping[str | None, UpstreamGroup],
        *,
        via: bytes,
        connect_timeout: float,
        batch: WriteBatch | None = None,
    ) -> None:
        self.pools = pools
        self.via = via
        self.connect_timeout = connect_timeout
        self.batch = batch
        self._tasks: set[asyncio.Task[None]] = set()
        self._fetches: set[FetchHandle] = set()

    def __repr__(self) -> str:
        return f"<SubRequests pools={sorted(str(p) for p in self.pools)} fetches={len(self._fetches)}>"

    @property
    def in_flight(self) -> int:
        """Fetches whose ``done`` has not been called yet (nor cancelled)."""
        return len(self._fetches)

    def fetch(self, effect: Fetch, done: Callable[[tuple[SubResult, ...]], None]) -> FetchHandle:
        """Send ``effect``'s requests; ``done`` gets their results (see the module docstring)."""
        loop = asyncio.get_running_loop()
        handle = FetchHandle(self, effect, done)
        self._fetches.add(handle)
        handle._start(loop)
        return handle

    async def close(self) -> None:
        """Cancel every fetch in flight (no ``done``) and wait for the connects they started."""
        for handle in list(self._fetches):
            handle.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
