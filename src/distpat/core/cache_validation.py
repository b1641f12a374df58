"""RFC 9111 for a shared cache, validation and invalidation: the conditional requests that
revalidate a stored response (section 4.3.1), which stored responses a 304 updates and how (4.3.4,
3.2), whether a client's own conditional request is answered 304 (RFC 9110 section 13.2.2), and
what an unsafe method's success invalidates (4.4).

Pure, as :mod:`distpat.core.cache_policy` (storing, freshness, reuse), which this builds on.
"""

from __future__ import annotations

from dataclasses import replace

from distpat.core.cache_control import format_http_date, parse_http_date
from distpat.core.cache_policy import (
    NOT_UPDATED,
    CachePolicy,
    Fields,
    Stored,
    header_values,
    make_stored,
    response_directives,
)
from distpat.core.stage import Request

__all__ = [
    "client_not_modified",
    "freshen",
    "invalidated_targets",
    "is_unsafe",
    "selected_by_304",
    "validators",
]


def validators(stored: Stored) -> Fields:
    """The conditional fields that validate ``stored`` (section 4.3.1)."""
    out: list[tuple[bytes, bytes]] = []
    if stored.etag is not None:
        out.append((b"If-None-Match", stored.etag))
    if stored.last_modified is not None:
        out.append((b"If-Modified-Since", stored.last_modified))
    return tuple(out)


def _strong(tag: bytes) -> bytes | None:
    return None if tag.startswith(b"W/") else tag


def selected_by_304(stored: Stored, headers: Fields, *, asked: bool = False) -> bool:
    """Whether a 304 with ``headers`` updates ``stored`` (section 4.3.4): its ETag is the stored
    one (compared strongly, or weakly when the 304's is weak); without an ETag, its Last-Modified
    is; with neither, only a stored response without validators is selected, or the response the
    cache validated when it sent the request (``asked``)."""
    etags = header_values(headers, b"etag")
    if etags:
        tag = etags[0].strip()
        if stored.etag is None:
            return False
        if _strong(tag) is not None:
            return tag == _strong(stored.etag)
        return _weak(tag) == _weak(stored.etag)  # no strong validator: a weak one selects (4.3.4)
    lms = header_values(headers, b"last-modified")
    if lms:
        return stored.last_modified is not None and lms[0].strip() == stored.last_modified
    # No validator in the 304: only a stored response without one, or the one the cache itself
    # asked about (its validators were the request's conditions, so the 304 is about it).
    return asked or not stored.validatable


def freshen(
    stored: Stored,
    headers: Fields,
    request: Request,
    request_time: float,
    response_time: float,
    policy: CachePolicy,
) -> Stored:
    """``stored`` updated by a 304's ``headers`` (section 3.2): each field of the 304 replaces the
    stored field of that name, but for those about the body; freshness and age computed anew."""
    connection = {
        t.strip(b" \t").lower() for line in header_values(headers, b"connection") for t in line.split(b",")
    }
    names = {n.lower() for n, _ in headers if n.lower() not in NOT_UPDATED and n.lower() not in connection}
    merged = tuple((n, v) for n, v in stored.headers if n.lower() not in names) + tuple(
        (n, v) for n, v in headers if n.lower() in names
    )
    if b"date" not in names:  # a 304 without Date: dated when it came, as a response without one
        merged = (
            *((n, v) for n, v in merged if n.lower() != b"date"),
            (b"Date", format_http_date(response_time)),
        )
    if header_values(headers, b"age"):
        merged = (*merged, *((n, v) for n, v in headers if n.lower() == b"age"))
    directives = response_directives(merged, policy)
    fresh = make_stored(request, stored.status, merged, directives, request_time, response_time, policy)
    return replace(fresh, vary=stored.vary, vary_key=stored.vary_key)


def _etag_list(value: bytes) -> list[bytes]:
    return [t.strip(b" \t") for t in value.split(b",") if t.strip(b" \t")]


def _weak(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def client_not_modified(stored: Stored, request: Request) -> bool:
    """Whether the client's own conditional request is answered 304 by ``stored`` (RFC 9110
    section 13.2.2: If-None-Match, weakly compared, wins over If-Modified-Since)."""
    inm = request.field(b"if-none-match")
    if inm is not None:
        if stored.etag is None:
            return inm.strip() == b"*"
        mine = _weak(stored.etag)
        return any(t == b"*" or _weak(t) == mine for t in _etag_list(inm))
    ims = request.field(b"if-modified-since")
    if ims is not None and stored.last_modified is not None:
        since = parse_http_date(ims)
        modified = parse_http_date(stored.last_modified)
        return since is not None and modified is not None and modified <= since
    return False


_SAFE = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


def _relative(target: bytes, reference: bytes) -> bytes:
    """A relative reference resolved against the request's path (RFC 3986 section 5.2, paths only)."""
    base = target.partition(b"?")[0]
    return base[: base.rfind(b"/") + 1] + reference


def invalidated_targets(
    method: bytes, status: int, host: bytes | None, headers: Fields, target: bytes = b"/"
) -> list[bytes]:
    """The origin-form targets besides the request's own that an unsafe method's non-error response
    invalidates (section 4.4): ``Location`` and ``Content-Location`` on the same host. The
    request's own target is the caller's; an empty list for a safe method or an error status."""
    if method in _SAFE or not 200 <= status < 400:
        return []
    out: list[bytes] = []
    for name in (b"location", b"content-location"):
        for value in header_values(headers, name):
            value = value.strip()
            if value.startswith(b"/") and not value.startswith(b"//"):
                out.append(value)
            elif b"://" not in value and not value.startswith(b"//") and value:
                out.append(_relative(target, value))
            elif host is not None:
                for scheme in (b"http://", b"https://"):
                    prefix = scheme + host.lower()
                    if value.lower().startswith(prefix) and value[len(prefix) : len(prefix) + 1] in (
                        b"/",
                        b"",
                    ):
                        out.append(value[len(prefix) :] or b"/")
    return out


def is_unsafe(method: bytes) -> bool:
    """Methods whose success invalidates what is stored for the target (section 4.4)."""
    return method not in _SAFE
