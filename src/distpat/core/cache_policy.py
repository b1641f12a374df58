"""RFC 9111 for a shared cache: what may be stored, for how long it is fresh, when it may be reused.

Pure: every function gets the wall-clock time it needs (``now``, ``request_time``,
``response_time``: Unix seconds) from its caller, and none remembers anything; the store
(:mod:`distpat.core.cache_store`) and the stage (:mod:`distpat.core.cache_stage`) keep the state.
Sections are RFC 9111's unless said otherwise; RFC 5861 gives ``stale-while-revalidate`` and
``stale-if-error``, RFC 9213 ``CDN-Cache-Control``.

* **Storing (section 3).** Only final responses to GET; never with ``no-store`` (in the request
  or the response; unless ``must-understand`` with a status this cache understands, 5.2.2.3),
  ``private`` (5.2.2.7), ``Vary: *`` (4.1), a request's ``Authorization`` (unless
  ``public``, ``must-revalidate`` or ``s-maxage``, 3.5), a ``Set-Cookie`` (unless ``public``:
  this cache never shares a cookie by default), a 206 or a 304; and only with explicit
  freshness, a validator the next request can revalidate with, or a heuristically cacheable
  status (4.2.2). A ``CDN-Cache-Control`` field, when valid, is used instead of
  ``Cache-Control`` for all of this (RFC 9213 section 2.1).
* **Freshness (4.2.1).** ``s-maxage``, then ``max-age``, then ``Expires - Date``; heuristic
  freshness (10% of ``Date - Last-Modified``, capped at a day) only when configured, because
  the conformance suite requires caches not to reuse responses that carry no freshness
  information. An invalid ``Age`` or ``Expires`` makes the response stale.
* **Age (4.2.3)**, exactly: ``corrected_initial_age = max(apparent_age, age_value +
  response_delay)``, and ``current_age = corrected_initial_age + resident_time``.
* **Reuse (4, 4.2.4, 5.2.1).** A stored response is used fresh; stale only as the request's
  ``max-stale`` allows (never past ``must-revalidate``, ``proxy-revalidate`` or ``s-maxage``)
  or within ``stale-while-revalidate`` (then refreshed in the background); otherwise it is
  validated (4.3.1): a request with ``no-cache`` (or ``Pragma: no-cache`` without any
  Cache-Control, 5.4), a response with ``no-cache``, a request ``max-age`` or ``min-fresh``
  that the age passes.
* **Validation (4.3)** (conditional requests from ``ETag`` / ``Last-Modified``, a 304 updating the
  stored fields of the responses it selects) and **invalidation (4.4)** after an unsafe method's
  success are :mod:`distpat.core.cache_validation`'s.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from distpat.core.cache_control import (
    DELTA_MAX,
    EMPTY,
    Directives,
    parse_age,
    parse_directives,
    parse_http_date,
)
from distpat.core.fields import HOP_BY_HOP
from distpat.core.stage import Request

__all__ = [
    "HEURISTIC_STATUSES",
    "CachePolicy",
    "Fields",
    "Stored",
    "Use",
    "current_age",
    "header_values",
    "make_stored",
    "request_directives",
    "response_directives",
    "stale_if_error_allows",
    "storable",
    "usable",
    "vary_names",
    "vary_values",
]

Fields = tuple[tuple[bytes, bytes], ...]

HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
"""Statuses cacheable by default (RFC 9110 section 15.1), 206 left out: ranges are not stored."""

UNDERSTOOD = HEURISTIC_STATUSES | frozenset({302, 303, 307})
"""The final statuses this cache stores when a response's freshness allows it."""

_NOT_STORED_FIELDS = HOP_BY_HOP | frozenset({b"proxy-authentication-info", b"content-length", b"age"})
"""Fields a stored response keeps no copy of: hop-by-hop ones (3.1), Content-Length (the engine
frames every answer itself) and Age (computed per answer)."""

NOT_UPDATED = _NOT_STORED_FIELDS | frozenset({b"content-encoding", b"content-md5", b"content-range"})
"""Fields a 304 does not replace in the stored response (3.2): those describing the stored body
as it was encoded (the conformance suite requires Content-Type to be updated, these not)."""


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The cache's own settings."""

    heuristic: bool = False
    """Heuristic freshness (4.2.2) for responses without explicit freshness."""
    heuristic_fraction: float = 0.1
    heuristic_max: float = 86400.0
    cdn: bool = True
    """Honour ``CDN-Cache-Control`` (RFC 9213) over ``Cache-Control``."""


def header_values(headers: Fields, name: bytes) -> list[bytes]:
    """Every line of field ``name`` (lowercase) in ``headers``, in order."""
    return [v for n, v in headers if n.lower() == name]


def response_directives(headers: Fields, policy: CachePolicy) -> Directives:
    """The directives that govern storing and freshness: a field targeted at this cache when
    present, ``CDN-Cache-Control`` (RFC 9213) or else ``Surrogate-Control`` (Edge Architecture
    1.0, the one Varnish and Fastly read), instead of ``Cache-Control``."""
    if policy.cdn:
        lines = header_values(headers, b"cdn-cache-control")
        if lines:
            targeted = parse_directives(lines)
            if targeted != Directives(present=True):  # valid: it says something (RFC 9213 section 2.1)
                return targeted
        lines = header_values(headers, b"surrogate-control")
        if lines:  # a directive may name the surrogate it targets (max-age=60;edge): any is this one
            return parse_directives([_untargeted(line) for line in lines])
    return parse_directives(header_values(headers, b"cache-control"))


def _untargeted(line: bytes) -> bytes:
    out = []
    for element in line.split(b","):
        out.append(element.split(b";", 1)[0])
    return b",".join(out)


def request_directives(request: Request) -> tuple[Directives, bool]:
    """The request's Cache-Control directives, and whether it asks for validation (``no-cache``,
    or ``Pragma: no-cache`` when no Cache-Control is present, section 5.4)."""
    value = request.field(b"cache-control")
    directives = parse_directives([value]) if value is not None else EMPTY
    no_cache = directives.no_cache
    if not directives.present:
        pragma = request.field(b"pragma")
        if pragma is not None and b"no-cache" in pragma.lower():
            no_cache = True
    return directives, no_cache


def vary_names(headers: Fields) -> tuple[bytes, ...] | None:
    """The request fields a response varies on (lowercase, sorted, deduplicated), or None for
    ``Vary: *`` (it matches no later request, section 4.1)."""
    names: set[bytes] = set()
    for line in header_values(headers, b"vary"):
        for part in line.split(b","):
            name = part.strip(b" \t").lower()
            if name == b"*":
                return None
            if name:
                names.add(name)
    return tuple(sorted(names))


def _normalise(value: bytes | None) -> bytes | None:
    """A selecting field's value, normalised (section 4.1): list elements trimmed, joined with ", "."""
    if value is None:
        return None
    return b", ".join(part.strip(b" \t") for part in value.split(b","))


def vary_values(names: Sequence[bytes], request: Request) -> tuple[bytes | None, ...]:
    """The request's values of the selecting fields ``names``, normalised."""
    return tuple(_normalise(request.field(name)) for name in names)


@dataclass(frozen=True, slots=True)
class Stored:
    """What the cache keeps of one response, beside its body."""

    status: int
    headers: Fields
    """The fields to answer with (the excluded ones of section 3.1 and Age removed)."""
    request_time: float
    response_time: float
    vary: tuple[bytes, ...]
    """The selecting fields (lowercase names)."""
    vary_key: tuple[bytes | None, ...]
    """The request's normalised values of them."""
    directives: Directives
    initial_age: float
    """``corrected_initial_age`` (4.2.3); ``DELTA_MAX`` for an invalid Age (always stale)."""
    lifetime: float
    """The freshness lifetime (4.2.1), 0 for none."""
    etag: bytes | None
    last_modified: bytes | None
    tags: frozenset[bytes] = frozenset()
    """``Cache-Tag`` / ``Surrogate-Key`` values, for bans."""

    @property
    def must_revalidate(self) -> bool:
        d = self.directives
        return d.must_revalidate or d.proxy_revalidate or d.s_maxage is not None

    @property
    def validatable(self) -> bool:
        return self.etag is not None or self.last_modified is not None


def storable(
    method: bytes,
    request: Request,
    status: int,
    headers: Fields,
    directives: Directives,
    policy: CachePolicy,
) -> str | None:
    """None when the response may be stored (section 3), else why not (a Cache-Status detail)."""
    if method != b"GET":
        return "method"
    if status < 200 or status in (206, 304):
        return "status"
    req, _ = request_directives(request)
    if req.no_store:
        return "request-no-store"
    if directives.must_understand and status not in UNDERSTOOD:
        return "must-understand"
    if directives.no_store and not directives.must_understand:
        return "no-store"  # must-understand overrides no-store for a status understood (5.2.2.3)
    if directives.private and not directives.private_fields:
        return "private"
    if vary_names(headers) is None:
        return "vary-star"
    explicitly_public = directives.public
    if request.field(b"authorization") is not None and not (
        explicitly_public or directives.must_revalidate or directives.s_maxage is not None
    ):
        return "authorization"
    if not explicitly_public and header_values(headers, b"set-cookie"):
        return "set-cookie"
    explicit = (
        directives.max_age is not None
        or directives.s_maxage is not None
        or bool(header_values(headers, b"expires"))
        or explicitly_public
    )
    if explicit:
        return None  # any final status with explicit freshness (section 3)
    if status not in UNDERSTOOD:
        return "status"
    if status in HEURISTIC_STATUSES and (
        policy.heuristic or header_values(headers, b"etag") or header_values(headers, b"last-modified")
    ):
        return None  # stored to be revalidated (or heuristically fresh when configured)
    return "no-freshness"


def _lifetime(status: int, headers: Fields, d: Directives, date: float, policy: CachePolicy) -> float:
    if d.s_maxage is not None:
        return float(d.s_maxage)
    if d.max_age is not None:
        return float(d.max_age)
    expires = header_values(headers, b"expires")
    if expires:
        if len(expires) != 1:
            return 0.0
        when = parse_http_date(expires[0])
        return max(0.0, when - date) if when is not None else 0.0
    if policy.heuristic and (status in HEURISTIC_STATUSES or d.public):
        lm = header_values(headers, b"last-modified")
        modified = parse_http_date(lm[0]) if len(lm) == 1 else None
        if modified is not None and modified < date:
            return min(policy.heuristic_max, (date - modified) * policy.heuristic_fraction)
    return 0.0


def make_stored(
    request: Request,
    status: int,
    headers: Fields,
    directives: Directives,
    request_time: float,
    response_time: float,
    policy: CachePolicy,
) -> Stored:
    """A response received at ``response_time`` (its request sent at ``request_time``), as stored."""
    dates = header_values(headers, b"date")
    date = parse_http_date(dates[0]) if len(dates) == 1 else None
    date_value = date if date is not None else response_time
    age_lines = header_values(headers, b"age")
    if age_lines:
        age_value = parse_age(age_lines)
        initial = float(DELTA_MAX) if age_value is None else 0.0
    else:
        age_value = 0
        initial = 0.0
    if age_value is not None:
        apparent = max(0.0, response_time - date_value)
        corrected = age_value + (response_time - request_time)
        initial = max(apparent, corrected)
    # private="f" and no-cache="f": f is never shared (5.2.2.7, 5.2.2.4); Connection's are hop-by-hop
    connection = {
        t.strip(b" \t").lower() for line in header_values(headers, b"connection") for t in line.split(b",")
    }
    dropped = _NOT_STORED_FIELDS | directives.private_fields | directives.no_cache_fields | connection
    kept = tuple((n, v) for n, v in headers if n.lower() not in dropped)
    names = vary_names(headers) or ()
    etags = header_values(headers, b"etag")
    lms = header_values(headers, b"last-modified")
    tags: set[bytes] = set()
    for name in (b"cache-tag", b"surrogate-key"):
        for line in header_values(headers, name):
            tags.update(t for t in line.replace(b",", b" ").split() if t)
    return Stored(
        status,
        kept,
        request_time,
        response_time,
        names,
        vary_values(names, request),
        directives,
        initial,
        _lifetime(status, headers, directives, date_value, policy),
        etags[0].strip() if len(etags) == 1 else None,
        lms[0].strip() if len(lms) == 1 else None,
        frozenset(tags),
    )


def current_age(stored: Stored, now: float) -> float:
    """Section 4.2.3's current_age at ``now`` (a clock gone back adds no residence time)."""
    resident = now - stored.response_time
    return stored.initial_age + (resident if resident > 0 else 0.0)


class Use(enum.Enum):
    """What a stored response may do for a request."""

    FRESH = "fresh"
    """Answer with it."""
    STALE = "stale"
    """Answer with it though stale: the request's max-stale allows it."""
    REFRESH = "refresh"
    """Answer with it stale, and refresh it in the background (stale-while-revalidate)."""
    VALIDATE = "validate"
    """Ask the origin whether it still holds (a conditional request), then answer."""
    MISS = "miss"
    """It cannot be used: forward the request as it is."""


def usable(
    stored: Stored, request: Request, now: float, directives: tuple[Directives, bool] | None = None
) -> Use:
    """How ``stored`` may serve ``request`` at ``now`` (sections 4, 4.2.4, 5.2.1; RFC 5861);
    ``directives`` is :func:`request_directives` of the request, when the caller has it already."""
    req, wants_validation = directives if directives is not None else request_directives(request)
    d = stored.directives
    if wants_validation or d.no_cache:
        return Use.VALIDATE if stored.validatable else Use.MISS
    age = current_age(stored, now)
    lifetime = stored.lifetime
    fresh = age < lifetime
    if fresh:
        too_old = req.max_age is not None and age > req.max_age
        if too_old or (req.min_fresh is not None and lifetime - age < req.min_fresh):
            fresh = False
        else:
            return Use.FRESH
    if not stored.must_revalidate and stored.initial_age < DELTA_MAX:
        staleness = age - lifetime
        if req.max_stale is not None and staleness <= req.max_stale and age >= lifetime:
            return Use.STALE
        swr = d.stale_while_revalidate
        if swr is not None and age >= lifetime and staleness <= swr and req.max_age is None:
            return Use.REFRESH
    return Use.VALIDATE if stored.validatable else Use.MISS


def stale_if_error_allows(stored: Stored, request: Request, now: float) -> bool:
    """Whether ``stored`` may answer in place of an error (RFC 5861 section 4): the response's or
    the request's ``stale-if-error`` window covers its staleness, and nothing forbids stale use."""
    if stored.must_revalidate or stored.directives.no_cache or stored.initial_age >= DELTA_MAX:
        return False
    req, _ = request_directives(request)
    window = req.stale_if_error if req.stale_if_error is not None else stored.directives.stale_if_error
    if window is None:
        return False
    return current_age(stored, now) - stored.lifetime <= window
