"""The answers the cache stage makes itself: a stored response (with ``Age`` and ``Cache-Status``,
RFC 9111 section 5.1 and RFC 9211), a 304 to a client's own conditional request (RFC 9110
section 15.4.5), the 504 of ``only-if-cached`` (RFC 9111 section 5.2.1.7), and a purge's count.
Pure; :mod:`distpat.core.cache_stage` decides which one a request gets.
"""

from __future__ import annotations

import math

from distpat.core.cache_policy import Stored
from distpat.core.cache_store import Entry
from distpat.core.stage import Answer

__all__ = ["NOT_MODIFIED_FIELDS", "hit_status", "not_modified", "only_if_cached", "purged", "stored_answer"]

NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"}
)
"""What a 304 answered from the store carries (RFC 9110 section 15.4.5)."""

_FLOOR = -(2**31)


def hit_status(stored: Stored, age: int) -> bytes:
    """A hit's ``Cache-Status``: ``distpat; hit; ttl=N``, the seconds of freshness left (negative
    once stale)."""
    left = stored.lifetime - age
    return b"distpat; hit; ttl=%d" % (math.floor(left) if left > _FLOOR else _FLOOR)


def stored_answer(entry: Entry, age: int, status: bytes | None = None) -> Answer:
    """``entry`` as an answer of the given ``age``; ``Cache-Status`` is ``status``, or a hit's."""
    stored = entry.stored
    if status is None:
        status = hit_status(stored, age)
    content_type = b""
    headers: list[tuple[bytes, bytes]] = []
    for name, value in stored.headers:
        if name.lower() == b"content-type":
            content_type = value
        else:
            headers.append((name, value))
    headers.append((b"Age", b"%d" % age))
    headers.append((b"Cache-Status", status))
    return Answer(stored.status, entry.body, tuple(headers), content_type)


def not_modified(stored: Stored, age: int, status: bytes = b"distpat; hit") -> Answer:
    """The 304 that answers a client whose validators match ``stored``."""
    headers = [(n, v) for n, v in stored.headers if n.lower() in NOT_MODIFIED_FIELDS]
    headers.append((b"Age", b"%d" % age))
    headers.append((b"Cache-Status", status))
    return Answer(304, b"", tuple(headers), b"")


def only_if_cached() -> Answer:
    """``only-if-cached`` with nothing usable stored: 504."""
    return Answer(
        504,
        b"504 Gateway Timeout: only-if-cached, and nothing usable is stored\n",
        headers=((b"Cache-Status", b"distpat; fwd=miss; detail=only-if-cached"),),
        reason="only-if-cached with nothing stored",
    )


def purged(count: int) -> Answer:
    """A purge or ban's answer: how many responses went."""
    return Answer(200, b'{"purged": %d}\n' % count, content_type=b"application/json")
