"""The effects a stage waits on: sub-requests (:class:`Fetch`), Redis round trips (:class:`Call`),
keyed flights (:class:`Join`) and holds (:class:`Hold`), with what comes back for each.

Part of the pipeline's vocabulary (:mod:`distpat.core.stage`, which exports them all): each carries a
continuation, ``then``, that the engine calls with the result and that answers with the next effect.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from distpat.errors import LocalProtocolError

if TYPE_CHECKING:
    from distpat.core.stage import Effect, Outcome

__all__ = ["Call", "CallResult", "Fetch", "Flight", "FlightRole", "Hold", "Join", "SubRequest", "SubResult"]

Fields: TypeAlias = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class SubRequest:
    """One request of a :class:`Fetch`, to a named pool."""

    pool: str | None
    target: bytes
    method: bytes = b"GET"
    headers: Fields = ()
    body: bytes = b""
    order: tuple[str, ...] = ()
    """Preference order inside the pool: the first is asked first, a hedge goes to the next."""
    max_body: int = 16 << 20
    """A response body larger than this fails the sub-request (its result says so)."""


@dataclass(frozen=True, slots=True)
class SubResult:
    """What came back for one sub-request: a response, or why there is none."""

    request: SubRequest
    status: int = 0
    """0: no response (see ``error``)."""
    headers: Fields = ()
    body: bytes = b""
    error: str | None = None
    """``"timeout"`` (the deadline passed), ``"connect"``, ``"protocol"``, ``"too_large"``..."""
    upstream: str | None = None
    """The upstream that answered (or was asked last)."""
    elapsed: float = 0.0
    hedged: bool = False
    """The answer came from a hedge (a second copy sent after ``hedge_after``)."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.status != 0


@dataclass(frozen=True, slots=True)
class Fetch:
    """Send ``requests`` concurrently and continue with what came back by ``deadline``
    (seconds from now): ``then`` gets one :class:`SubResult` per request, in order, the late
    ones with ``error="timeout"``. With ``hedge_after``, a request unanswered after that many
    seconds is sent again to the next upstream of its order (the first answer wins, the loser
    is cancelled); at most ``hedge_max`` hedges per Fetch.

    From ``on_done`` or ``on_body`` a Fetch is fire-and-forget (a background refresh): the
    engine sends it once the request is over, bounded by its own deadline, and ``then`` gets the
    results so the stage can keep what came back. It should return None; whatever it returns is
    ignored, and one that raises is logged with the stage's name. A fetch still out when the
    server shuts down is cancelled, and its ``then`` is not called."""

    requests: tuple[SubRequest, ...]
    then: Callable[[tuple[SubResult, ...]], Effect | None]
    deadline: float = 10.0
    hedge_after: float | None = None
    hedge_max: int = 0


@dataclass(frozen=True, slots=True)
class CallResult:
    """A Redis reply (bytes, int, None, a list of them), or the error that came instead."""

    value: object = None
    error: str | None = None
    """The server's error reply (``-ERR ...``), or why there was no reply (``"unavailable: ..."``)."""


@dataclass(frozen=True, slots=True)
class Call:
    """One Redis round trip: ``command`` (``EVALSHA`` / ``EVAL`` for a script), then ``then``
    with the reply. A Call's ``then`` None makes it fire-and-forget (from ``on_done``)."""

    command: tuple[bytes, ...]
    then: Callable[[CallResult], Effect | None] | None = None
    timeout: float = 1.0


class FlightRole(enum.Enum):
    LEADER = "leader"
    """The first to join: it goes on (its continuation's effect is carried out), and whatever its
    request ends with is handed to every waiter."""
    SHARED = "shared"
    """A waiter woken with the leader's outcome."""
    TIMED_OUT = "timed_out"
    """A waiter that waited ``timeout`` seconds; the flight goes on without it."""
    FULL = "full"
    """The flight already had ``max_waiters``: not waiting at all."""


@dataclass(frozen=True, slots=True)
class Flight:
    role: FlightRole
    outcome: Outcome | None = None
    """The leader's outcome, for ``SHARED`` (its captured body included)."""


@dataclass(frozen=True, slots=True)
class Join:
    """Join the flight ``key`` (request coalescing, Go's singleflight): the first request in
    leads, the others wait for its outcome, at most ``timeout`` seconds and ``max_waiters`` of
    them; no waiter is left behind when the leader fails or its client goes away (they get its
    failed outcome)."""

    key: bytes
    then: Callable[[Flight], Effect | None]
    timeout: float = 5.0
    max_waiters: int = 1024


@dataclass(frozen=True, slots=True)
class Hold:
    """Hold the request back ``delay`` seconds, then go on: with ``then()``'s effect, or with the
    next stage when there is no ``then`` (a rate limiter's delayed excess, as nginx's
    ``limit_req ... delay``). The engine holds it with a timer, never with a task or a sleep of
    its own; a client that goes away meanwhile ends it (``on_done`` with CLIENT_GONE)."""

    delay: float
    then: Callable[[None], Effect | None] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.delay < 3600:
            raise LocalProtocolError(f"a hold is 0 to 3600 seconds, not {self.delay!r}")
