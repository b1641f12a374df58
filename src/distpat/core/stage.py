"""The pipeline's vocabulary: what a stage sees, what it may answer, and how a request ended.

A *stage* is a pure, synchronous object (as h11 is): it does no I/O, reads no clock and draws
no random numbers. The engine that drives it (:mod:`distpat.net`, or :mod:`distpat.aiohttp`)
hands every call a :class:`Tick` (monotonic time, wall time, random bits) and a
:class:`Request`, and the stage answers with an **effect value** that the engine carries out:

==============  ===========================================================================
:class:`Answer`   answer the request locally (a 429, a cache hit, ``GET /variant``)
:class:`Forward`  forward it: to a named pool, in a preference order failover keeps to, with
                  fields added or dropped, the target rewritten, fields added to the response,
                  copies mirrored to other pools, the response body captured for the stage
:class:`Fetch`    make sub-requests concurrently (deadline, hedging), then continue
:class:`Call`     one Redis round trip (a command, or a script), then continue
:class:`Join`     join a keyed flight (request coalescing), then continue
:class:`Hold`     hold the request back a while (a rate limiter's delay), then continue
``None``          nothing to say: the next stage decides
==============  ===========================================================================

:meth:`Stage.on_done` and :meth:`Stage.on_body` may return a :class:`Call` or a :class:`Fetch`
as a fire-and-forget effect, carried out after the request, never holding its client: a
stored object, a released permit, a stale copy refreshed in the background once (RFC 5861
section 3, ``stale-while-revalidate``).

Effects that need a result carry a continuation, ``then``: a pure function the engine calls
with what came back, which answers with another effect (or None) in the stage's place. A test
of a stage feeds it a request and a tick, checks the effect, and calls ``then`` with a made-up
result: no sockets, no loop, no sleeping.

The effects that wait (Fetch, Call, Join, Hold) are defined in :mod:`distpat.core.stage_waits` and
exported here. The request passes the stages in order; every stage's :meth:`Stage.on_request` is called
until one answers with :class:`Answer` (the others' ``Forward`` values are merged in order,
see :meth:`Forward.merge`). The response passes back out through the stages that saw the
request, **last first** (the outermost stage has the final say, as in aiohttp's middlewares
and Envoy's encoder filters), but the stage that answered it locally, which made that answer:
:meth:`Stage.on_response` may add fields or replace the reply.
:meth:`Stage.on_done` is called exactly once for every request a stage saw, whatever happened
(answered, answered locally, upstream failed, timed out, client gone): permits, in-flight
counts and stale-if-error hang on it. See ``docs/pipeline.md``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, Protocol, TypeAlias

from distpat.core.stage_waits import (
    Call,
    CallResult,
    Fetch,
    Flight,
    FlightRole,
    Hold,
    Join,
    SubRequest,
    SubResult,
)
from distpat.errors import LocalProtocolError

__all__ = [
    "ALL_FIELDS",
    "Amend",
    "Answer",
    "Call",
    "CallResult",
    "Effect",
    "NO_TICK",
    "Fetch",
    "Flight",
    "FlightRole",
    "Forward",
    "Hold",
    "Join",
    "Outcome",
    "OutcomeKind",
    "Pools",
    "Request",
    "Response",
    "Stage",
    "SubRequest",
    "Stat",
    "SubResult",
    "Tick",
]

Fields: TypeAlias = tuple[tuple[bytes, bytes], ...]

ALL_FIELDS: frozenset[bytes] = frozenset({b"*"})
"""``Stage.reads = ALL_FIELDS``: the stage reads every request field: :attr:`Request.headers` has
them as received, and :attr:`Request.fields` every one by lowercase name (captured in the engine's
one pass, as declared fields are; Host, X-Forwarded-For and Via only when declared by name too)."""

_FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"connection"})

PASS_FIELDS: frozenset[bytes] = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-real-ip",
        b"via",
        b"forwarded",
    }
)
"""Request fields the engine's one pass reads or drops itself: with every other field captured
(:attr:`Request.complete`), :meth:`Request.field` still looks these up in the raw headers."""


class Tick(NamedTuple):
    """What a stage may know of the world beyond the request: handed in, never read by the stage.

    (A named tuple, not a dataclass: the engine makes one per request, and a tuple costs a
    quarter of a frozen dataclass's construction.)"""

    mono: float
    """Seconds on a monotonic clock (for rates, ages, deadlines)."""
    wall: float
    """Seconds since the Unix epoch (for ``Date``, ``Age``, ``Expires``)."""
    rand: int
    """64 random bits, fresh for each request (a visitor's new ID, a sampling draw)."""


NO_TICK = Tick(0.0, 0.0, 0)
"""What a pipeline whose stages all say ``uses_tick = False`` is handed."""


class Pools(Protocol):
    """The live state of the engine's upstream pools, as a stage may read it."""

    def members(self, pool: str | None) -> tuple[str, ...]:
        """The upstream names of ``pool`` (None: the default pool), in configured order."""
        ...

    def in_flight(self, pool: str | None) -> Mapping[str, int]:
        """Requests in flight to each upstream of ``pool`` right now."""
        ...

    def available(self, pool: str | None, upstream: str) -> bool:
        """Whether ``upstream`` of ``pool`` is in rotation (not ejected, not failing its checks)."""
        ...


class Request:
    """A request as stages see it. ``notes`` is the stages' own: state from ``on_request`` for
    ``on_response`` and ``on_done``, keyed by the stage's name."""

    __slots__ = (
        "method",
        "target",
        "http10",
        "client",
        "scheme",
        "fields",
        "headers",
        "pools",
        "notes",
        "complete",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        client: str,
        scheme: str = "http",
        http10: bool = False,
        fields: Mapping[bytes, bytes] | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        pools: Pools | None = None,
    ) -> None:
        self.method = method
        self.target = target
        """As the request line has it (nginx's ``$request_uri``)."""
        self.http10 = http10
        self.client = client
        """The peer's address (the stage decides whether to trust X-Forwarded-For)."""
        self.scheme = scheme
        self.fields: Mapping[bytes, bytes] = fields if fields is not None else {}
        """The fields the pipeline declared (``Stage.reads``), by lowercase name; repeated fields
        joined with ``", "`` (Cookie with ``"; "``, RFC 9110 section 5.3 / RFC 6265 section 5.4)."""
        self.headers = headers
        """Every field as received, only when a stage declared :data:`ALL_FIELDS`."""
        self.pools = pools
        self.notes: dict[str, object] = {}
        self.complete = False
        """``fields`` holds every field but those the engine's pass reads for itself (the framing
        fields, Connection, Host, X-Forwarded-For, Via...): :meth:`field` then looks no further
        for the others (set by the engine for a stage that reads every field)."""

    def field(self, name: bytes) -> bytes | None:
        """A declared field's value by lowercase name, or None when the request has none."""
        value = self.fields.get(name)
        if (
            value is None
            and self.headers is not None
            and (not self.complete or name in PASS_FIELDS or b"_" in name)
        ):
            for n, v in self.headers:
                if n.lower() == name:
                    return v
        return value

    @property
    def path(self) -> bytes:
        """The target without its query."""
        return self.target.partition(b"?")[0]

    @property
    def query(self) -> bytes:
        return self.target.partition(b"?")[2]

    def __repr__(self) -> str:
        return f"<Request {self.method.decode('latin-1')} {self.target[:60]!r} from {self.client}>"


def _lines(fields: Fields) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in fields)


def _check_fields(fields: Fields, what: str) -> None:
    for name, value in fields:
        if (
            not name
            or any(c in name for c in b" \t\r\n:")
            or b"\r" in value
            or b"\n" in value
            or b"\0" in value
        ):
            raise LocalProtocolError(f"{what}: invalid field {name!r}: {value[:40]!r}")


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer the request locally. The engine frames it by RFC 9110: no body and no
    Content-Length on 1xx/204/304, no body to HEAD (its Content-Length is the GET's), no
    ``100 Continue`` sent before it; Content-Type is sent only with a body."""

    status: int
    body: bytes = b""
    headers: Fields = ()
    content_type: bytes = b"text/plain; charset=utf-8"
    reason: str = ""
    """Why (for the access log and the refusal log); empty for an ordinary answer (a cache hit)."""
    wire: list[tuple[bytes, int]] = field(default_factory=list, init=False, repr=False, compare=False)
    """The engine's: the answer as framed for a keep-alive HTTP/1.1 GET (bytes, body size), once
    it has been, so a
    stage that reuses one Answer value (a limiter's refusal) is framed once, not per request."""

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise LocalProtocolError(f"a local answer needs a final status (200-599), not {self.status}")
        for name, _ in self.headers:
            if name.lower() in _FRAMING_FIELDS:
                raise LocalProtocolError(f"a local answer sets {name.decode('latin-1')} itself")
        _check_fields(self.headers, "local answer")


@dataclass(frozen=True, slots=True)
class Forward:
    """Forward the request. Every part is optional; the stages' values are merged in order."""

    pool: str | None = None
    """The named pool; None leaves it to a later stage, or the default pool."""
    order: tuple[str, ...] = ()
    """Upstreams of the pool in preference order: tried in this order, skipping ejected ones,
    and failover never leaves it (a shard's replicas). Empty: the pool's balancer chooses."""
    add: Fields = ()
    """Request fields added."""
    drop: frozenset[bytes] = frozenset()
    """Request fields removed (lowercase names)."""
    target: bytes | None = None
    """A new request target (origin form)."""
    respond: Fields = ()
    """Fields added to the response, whoever answers: the upstream, a stage, or the engine itself
    (its 502 and 504); a variant's name, a sticky cookie."""
    capture: int = 0
    """Capture up to this many bytes of the response body for :meth:`Stage.on_body`."""
    mirror: tuple[str, ...] = ()
    """Pools that get a copy of the request, body included; their responses are discarded."""
    add_lines: bytes = field(init=False, repr=False, compare=False)
    """``add`` as field lines, serialised once (a stage builds its Forward values once and reuses them)."""
    respond_lines: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_fields(self.add, "forwarded request")
        _check_fields(self.respond, "response")
        object.__setattr__(self, "add_lines", _lines(self.add))
        object.__setattr__(self, "respond_lines", _lines(self.respond))
        if self.target is not None and (
            not self.target.startswith(b"/") or any(c in self.target for c in b" \r\n\0")
        ):
            raise LocalProtocolError(f"a forwarded target must be origin-form, not {self.target[:60]!r}")
        if self.capture < 0:
            raise LocalProtocolError(f"capture must be 0 or more bytes, not {self.capture}")

    def merge(self, later: Forward) -> Forward:
        """This value followed by a later stage's: fields, drops and mirrors add up; the pool,
        order and target are the later stage's where it sets them; the capture is the larger."""
        return Forward(
            pool=later.pool if later.pool is not None else self.pool,
            order=later.order if later.pool is not None or later.order else self.order,
            add=self.add + later.add,
            drop=self.drop | later.drop,
            target=later.target if later.target is not None else self.target,
            respond=self.respond + later.respond,
            capture=max(self.capture, later.capture),
            mirror=self.mirror + later.mirror,
        )


Effect: TypeAlias = Answer | Forward | Fetch | Call | Join | Hold


@dataclass(frozen=True, slots=True)
class Response:
    """A response head as stages see it on its way back."""

    status: int
    headers: Fields
    upstream: str | None = None
    """The upstream that answered; None for a local answer."""

    def field(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class Amend:
    """Change a response on its way back: fields added, fields removed (lowercase names)."""

    add: Fields = ()
    drop: frozenset[bytes] = frozenset()

    def __post_init__(self) -> None:
        _check_fields(self.add, "response")
        for name in self.drop:
            if name in _FRAMING_FIELDS:
                raise LocalProtocolError(f"a response's {name.decode('latin-1')} is the engine's to set")


class OutcomeKind(enum.Enum):
    ANSWERED = "answered"
    """An upstream answered and the answer reached the client whole."""
    LOCAL = "local"
    """A stage answered."""
    UPSTREAM_FAILED = "upstream_failed"
    """No upstream could be reached, or one broke (the client got 502, or a cut response)."""
    TIMED_OUT = "timed_out"
    """The upstream did not answer in time (504)."""
    CLIENT_GONE = "client_gone"
    """The client went away before its answer was complete."""


class Outcome(NamedTuple):
    """How a request ended, for :meth:`Stage.on_done` (and a flight's waiters). (A named tuple:
    the engine makes one per request that a stage's ``on_done`` hears of.)"""

    kind: OutcomeKind
    status: int = 0
    """The status the client got (0 when none was sent)."""
    upstream: str | None = None
    headers: Fields = ()
    """The final response's fields as the upstream (or the local answer) gave them."""
    body: bytes | None = None
    """The captured response body, when a stage asked for one and it was complete within the limit."""
    received: int = 0
    sent: int = 0
    duration: float = 0.0


class Stat(NamedTuple):
    """One sample a stage reports for ``/metrics`` (:meth:`Stage.stats`): read at scrape time,
    never per request. ``name`` is the metric family's (``distpat_ratelimit_decisions``; a
    counter's without ``_total``), ``kind`` is ``"counter"``, ``"gauge"`` or ``"histogram"`` (its
    samples named in full: ``NAME_bucket`` with an ``le`` label, ``NAME_sum``, ``NAME_count``)."""

    name: str
    help: str
    kind: str
    labels: tuple[tuple[str, str], ...]
    value: float


class Stage:
    """The base of every stage: override the calls the stage needs.

    A subclass declares the request fields it reads in :attr:`reads` (lowercase names), so the
    engine's one-pass forwarder captures them in the pass it already makes; the engine calls
    :meth:`on_response`, :meth:`on_body` and :meth:`on_done` only on stages that override them.
    """

    kind: ClassVar[str] = "stage"
    """The registry name (``[[stage]] kind = ...``)."""
    reads: frozenset[bytes] = frozenset()
    name: str = ""
    """Unique in a pipeline (``[[stage]] name = ...``); the kind and position when not set."""
    pools: tuple[str, ...] = ()
    """The named pools this stage may forward, mirror or send sub-requests to: the engine checks
    at start that each is configured, so a typo fails the configuration, not a request."""
    uses_tick: bool = True
    """False: the stage never reads its tick (a router keyed by a field), and the engine may hand
    it :data:`NO_TICK` instead of reading the clocks for it, one request at a time."""
    uses_done: bool = True
    """False: this stage's :meth:`on_done` has nothing to do (a limiter without a concurrency
    bound), and the engine may skip building the :class:`Outcome` for it."""
    redis_url: str | None = None
    """The Redis server this stage's :class:`Call` effects go to (``redis://host:port/db``); the
    engine keeps one client for all its stages, so stages naming two servers are refused."""
    drops: frozenset[bytes] = frozenset()
    """Request fields always removed before forwarding (lowercase names), whatever a client sends
    under them: a field the stage itself sets (a variant header). Dropped in the one pass;
    ``Forward.drop``, decided per request, takes the general path."""

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        """Decide about ``request``: an effect, or None to leave it to the next stage."""
        return None

    def on_response(self, request: Request, response: Response, tick: Tick) -> Amend | Answer | None:
        """See the response head: change its fields (:class:`Amend`), replace it (:class:`Answer`,
        e.g. a stored 200 for an upstream 304), or None."""
        return None

    def on_body(self, request: Request, response: Response, body: bytes, tick: Tick) -> Call | Fetch | None:
        """The captured response body (``Forward.capture``), complete; a Call or a Fetch is
        fire-and-forget (see :class:`Fetch`)."""
        return None

    def on_done(self, request: Request, outcome: Outcome, tick: Tick) -> Call | Fetch | None:
        """Called exactly once per request this stage saw; a Call or a Fetch is fire-and-forget,
        carried out after the request ended."""
        return None

    def wants_done(self, request: Request) -> bool:
        """False when :meth:`on_done` has nothing to do for ``request`` (a cache hit), so that the
        engine may skip building its :class:`Outcome` and calling it. True by default."""
        return True

    def stats(self) -> tuple[Stat, ...]:
        """What the stage counts, for ``/metrics`` (read at each scrape); none by default."""
        return ()

    def decision(self, request: Request) -> str | None:
        """What this stage decided for ``request``, for the metrics (``distpat_stage_decisions_total``
        by stage and decision: a variant, a shard); by default what it noted under its name."""
        note = request.notes.get(self.name)
        return note if isinstance(note, str) else None

    @classmethod
    def overrides(cls, method: str) -> bool:
        return getattr(cls, method) is not getattr(Stage, method)
