"""The rate limiter's arithmetic: nginx's ``limit_req`` leaky bucket, with time passed in.

This module is the pure core of the limiter pattern: it parses rates, decides one request
against one :class:`Limit`, and writes the ``RateLimit-Policy`` / ``RateLimit`` fields of
draft-ietf-httpapi-ratelimit-headers. It reads no clock: every call gets ``now`` (monotonic
seconds, a float) from its caller. The keyed store and the in-flight counter live in
:mod:`distpat.core.limiter_table`.

**nginx's algorithm** (``ngx_http_limit_req_module.c``, read, not copied). nginx keeps, per
key, an *excess* and the time of the last accounted request. A request at ``now`` computes::

    excess' = max(0, excess - rate * elapsed + 1)

and then: ``excess' > burst`` rejects it (503 by default, 429 here; the stored state is left
as it was), ``excess' > delay`` delays it by ``(excess' - delay) / rate`` seconds, otherwise
it goes through at once. A key seen for the first time starts with ``excess' = 0``: the first
request is always free, so ``burst=5`` lets 6 back-to-back requests through and rejects the
7th (``rate=1r/s burst=5``: 1 at once + 5 delayed, or all 6 at once with ``nodelay``).
nginx counts in fixed point (requests per millisecond x 1000, excess x 1000, integer
milliseconds); here they are floats, with a tolerance of :data:`EPSILON` of a request so a
client sending at exactly the rate is never rejected by a rounding error.

**Costs.** nginx always charges 1. Charging ``cost`` the formula above would let a key whose
bucket has drained through a request of any cost for free (``max(0, -big + cost) = 0``), so a
cost is charged as the leaky bucket nginx's formula is an instance of. Call ``level = excess
+ 1`` the bucket's content right after a request (the request itself included), capacity
``burst + 1``; between requests it drains at ``rate`` down to 0; a request adds ``cost``::

    level_now = max(0, excess + 1 - rate * elapsed)       # 0 for a key never seen
    excess'   = level_now + cost - 1

which is nginx's formula for ``cost == 1``. From this follows the bound the tests check: over
any arrivals in ``[t0, t1]``, the admitted (and delayed) costs sum to at most
``burst + 1 + rate * (t1 - t0)`` (the level only rises by admitted costs, falls by at most
``rate`` per second, and stays within ``[0, burst + 1]``). A cost above ``burst + 1`` can never
be admitted; its rejection carries ``retry_after = None``.

**RateLimit fields** (draft-ietf-httpapi-ratelimit-headers, -08 to -10: the ``RateLimit-Policy``
and ``RateLimit`` fields, sf-lists of sf-string items with integer parameters). One consistent
definition, for every limit: the **quota** ``q = burst + 1`` requests (the bucket's capacity,
what a client that has been quiet may send at once), the **window** ``w = ceil(q / rate)``
seconds (the time an empty quota takes to refill), so ``q / w`` is also the rate, rounded
down. For a decision,
``r`` (remaining) is ``floor(q - level)`` at ``now`` after the request, clipped at 0: how many
more requests would pass right now (for an admitted request that is ``floor(burst - excess')``);
``t`` (reset) is ``ceil(level / rate)``: the seconds until the whole quota is back. Names are
sf-strings (RFC 8941 section 3.3.3): printable ASCII; ``"`` and ``\\`` are refused too, so a name
is written as it is.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

from distpat.errors import ConfigError

__all__ = [
    "DEFAULT_STATUS",
    "EPSILON",
    "Decision",
    "DecisionKind",
    "Limit",
    "State",
    "check_limit_name",
    "parse_rate",
    "policy_field",
    "ratelimit_field",
    "table_full",
]

State: TypeAlias = tuple[float, float]
"""A key's bucket: ``(excess, last)``, nginx's two numbers (``last`` in the caller's seconds)."""

DEFAULT_STATUS = 429
"""RFC 6585's Too Many Requests (nginx's ``limit_req_status`` defaults to 503)."""

EPSILON = 1e-6
"""Requests of slack in comparisons, so float rounding never rejects a client at the rate."""

_MAX_RATE_NUMBER = (2**63 - 1) // 1000  # nginx's ngx_int_t holds rate * 1000


def parse_rate(text: str) -> float:
    """Requests per second from nginx's ``rate=`` value: ``"10r/s"``, ``"600r/m"`` (or ``"10"``).

    As ``ngx_http_limit_req_zone``: a positive decimal integer with an optional ``r/s`` or
    ``r/m`` suffix (no suffix means per second); nginx keeps ``rate * 1000 / scale`` as an
    integer, so ``"1r/m"`` is 16/1000 r/s, not 1/60, and so is it here. No sign, spaces,
    fractions or other units (``"0.5r/s"``, ``"1r/h"``, ``"0r/s"`` are refused, as nginx
    refuses them); a number whose thousandfold overflows nginx's 64-bit integer is refused.
    """
    if not isinstance(text, str):
        raise ConfigError(f"rate must be a string like '10r/s' or '600r/m', not {text!r}")
    digits, scale = text, 1
    if text.endswith("r/s"):
        digits = text[:-3]
    elif text.endswith("r/m"):
        digits, scale = text[:-3], 60
    if not digits or not digits.isascii() or not digits.isdigit():
        raise ConfigError(f"invalid rate {text!r}: expected a positive integer and r/s or r/m, like '10r/s'")
    number = int(digits)
    if number <= 0 or number > _MAX_RATE_NUMBER:
        raise ConfigError(f"invalid rate {text!r}: the number must be between 1 and {_MAX_RATE_NUMBER}")
    return (number * 1000 // scale) / 1000


def check_limit_name(name: str) -> str:
    """A limit's name, refused unless it is a non-empty sf-string with nothing to escape."""
    if not isinstance(name, str) or not name or not name.isascii():
        raise ConfigError(f"limit name {name!r} must be non-empty printable ASCII")
    if any(not 0x20 <= ord(c) <= 0x7E or c in '"\\' for c in name):
        raise ConfigError(f'limit name {name!r} must be printable ASCII without " or \\ (an sf-string)')
    return name


class DecisionKind(enum.Enum):
    """What a limit says about one request."""

    ADMIT = "admit"
    DELAY = "delay"
    REJECT = "reject"


class Decision(NamedTuple):
    """One request judged by one limit (a named tuple: one is made per request and limit, and a
    tuple costs a fraction of a frozen dataclass's construction).

    ``state`` is what to store for the key (``None``: store nothing; a rejection hands back
    the state it was given, unchanged). ``delay`` is the seconds to hold a DELAY request
    before passing it on (0 otherwise). ``retry_after`` is the Retry-After seconds of a
    REJECT (``None`` when admitted, or when no wait would help: a cost above ``burst + 1``).
    ``remaining`` and ``reset`` are the RateLimit field's ``r`` and ``t``; ``table_full``
    says the key was refused because the key table had no room (see
    :class:`~distpat.core.limiter_table.KeyTable`), not by its own bucket.
    """

    kind: DecisionKind
    limit: Limit
    state: State | None
    delay: float = 0.0
    retry_after: int | None = None
    remaining: int = 0
    reset: int = 0
    table_full: bool = False

    @property
    def admitted(self) -> bool:
        """True for ADMIT and DELAY: the request goes on (maybe later)."""
        return self.kind is not DecisionKind.REJECT


@dataclass(frozen=True, slots=True)
class Limit:
    """One ``limit_req``: a name, a rate (requests per second), a burst and a delay threshold.

    ``delay`` is nginx's ``delay=N``: the first ``N`` requests of a burst pass at once, the
    rest up to ``burst`` are delayed; ``delay=0`` (nginx's default) delays all of them, and
    ``delay=burst`` is nginx's ``nodelay``. ``status`` is the rejection's HTTP status.
    """

    name: str
    rate: float
    burst: int = 0
    delay: int = 0
    status: int = DEFAULT_STATUS

    def __post_init__(self) -> None:
        check_limit_name(self.name)
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)):
            raise ConfigError(f"limit {self.name!r}: rate must be a number of requests per second")
        if not math.isfinite(self.rate) or self.rate <= 0:
            raise ConfigError(f"limit {self.name!r}: rate must be positive and finite, not {self.rate!r}")
        for what, value in (("burst", self.burst), ("delay", self.delay)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"limit {self.name!r}: {what} must be an integer >= 0, not {value!r}")
        if self.delay > self.burst:
            raise ConfigError(
                f"limit {self.name!r}: delay={self.delay} exceeds burst={self.burst} (delay=burst is nodelay)"
            )
        if isinstance(self.status, bool) or not isinstance(self.status, int) or not 400 <= self.status <= 599:
            raise ConfigError(
                f"limit {self.name!r}: status must be an HTTP error status 400-599, not {self.status!r}"
            )

    @classmethod
    def nodelay(cls, name: str, rate: float, burst: int = 0, status: int = DEFAULT_STATUS) -> Limit:
        """nginx's ``burst=N nodelay``: the whole burst passes at once."""
        return cls(name, rate, burst, burst, status)

    @property
    def quota(self) -> int:
        """The RateLimit ``q``: ``burst + 1`` requests, the bucket's capacity."""
        return self.burst + 1

    @property
    def window(self) -> int:
        """The RateLimit ``w``: ``ceil(quota / rate)`` seconds, the time an empty quota takes to refill."""
        return max(1, math.ceil(self.quota / self.rate - EPSILON))

    @property
    def max_delay(self) -> float:
        """The longest delay a decision can carry: ``(burst - delay) / rate`` seconds."""
        return (self.burst - self.delay) / self.rate

    def level(self, state: State | None, now: float) -> float:
        """The bucket's content at ``now`` (0 for a key never seen, at most ``burst + 1``).

        A clock that went back (``now`` before ``last``) counts as no time passed, as nginx. A
        level within :data:`EPSILON` of 0 is 0: drained, whatever the float rounding left.
        """
        if state is None:
            return 0.0
        excess, last = state
        elapsed = now - last
        level = excess + 1.0 - self.rate * elapsed if elapsed > 0 else excess + 1.0
        return level if level > EPSILON else 0.0

    def idle(self, state: State, now: float) -> bool:
        """True when ``state`` carries no information at ``now``: it decides as a key never seen."""
        return self.level(state, now) == 0.0

    def decide(self, state: State | None, now: float, cost: float = 1) -> Decision:
        """Judge one request of ``cost`` (>= 1) at ``now`` against the key's ``state``."""
        if cost < 1 or not math.isfinite(cost):
            raise ConfigError(
                f"limit {self.name!r}: a request's cost must be a finite number >= 1, not {cost!r}"
            )
        level = self.level(state, now)
        excess = level + cost - 1.0
        rate = self.rate
        burst = self.burst
        if excess > burst + EPSILON:
            retry: int | None = None
            if cost <= burst + 1:
                retry = max(1, math.ceil((excess - burst) / rate - EPSILON))
            return Decision(
                DecisionKind.REJECT,
                self,
                state,
                retry_after=retry,
                remaining=self._remaining(level),
                reset=self._reset(level),
            )
        if excess < 0.0:
            excess = 0.0
        last = now if state is None or now > state[1] else state[1]
        new_state = (excess, last)
        after = excess + 1.0
        if excess > self.delay + EPSILON:
            wait = (excess - self.delay) / rate
            max_delay = (burst - self.delay) / rate
            return Decision(
                DecisionKind.DELAY,
                self,
                new_state,
                delay=wait if wait < max_delay else max_delay,
                remaining=self._remaining(after),
                reset=self._reset(after),
            )
        return Decision(
            DecisionKind.ADMIT, self, new_state, remaining=self._remaining(after), reset=self._reset(after)
        )

    def _remaining(self, level: float) -> int:
        left = math.floor(self.burst + 1 - level + EPSILON)
        return left if left > 0 else 0

    def _reset(self, level: float) -> int:
        seconds = math.ceil(level / self.rate - EPSILON)
        return seconds if seconds > 0 else 0


def table_full(limit: Limit, retry_after: int) -> Decision:
    """The rejection of a new key that found its key table full of active keys."""
    return Decision(
        DecisionKind.REJECT,
        limit,
        None,
        retry_after=max(1, retry_after),
        remaining=0,
        reset=limit.window,
        table_full=True,
    )


def policy_field(limits: Iterable[Limit]) -> bytes:
    """The ``RateLimit-Policy`` value: ``"per-ip";q=6;w=6`` per limit, comma-joined (an sf-list)."""
    return b", ".join(f'"{limit.name}";q={limit.quota};w={limit.window}'.encode("ascii") for limit in limits)


def ratelimit_field(decisions: Iterable[Decision]) -> bytes:
    """The ``RateLimit`` value: ``"per-ip";r=5;t=1`` per decision, comma-joined (an sf-list)."""
    return b", ".join(f'"{d.limit.name}";r={d.remaining};t={d.reset}'.encode("ascii") for d in decisions)
