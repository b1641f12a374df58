"""The cache stage's shared store: Redis as the store of record, this process's store as its copy.

With ``--store redis://...`` several cache processes share what each fetched
(:mod:`distpat.core.cache_redis` has the layout). :class:`SharedStore` makes the
:class:`~distpat.core.stage.Call` effects the stage needs and keeps the process's
:class:`~distpat.core.cache_store.MemoryStore` in step with what Redis answered:

* every GET or HEAD first reads the URL's variants from Redis (one round trip,
  :meth:`SharedStore.lookup`), which replace this process's copy of them, and is then decided
  against that copy exactly as without Redis: what another process stored is a hit here, what
  another process purged is gone here;
* what the stage stores (a response, a 304's update, a background refresh) is written through
  (:meth:`SharedStore.write`), invalidations and purges delete in Redis too;
* when Redis does not answer, or answers an error, the request is decided against this
  process's copy as it is, and the failure is counted (``redis_error``): a cache whose Redis is
  down degrades to a per-process cache, never to an error.

Writes and deletes are fire-and-forget, sent as ``EVAL`` with the script's text (a lost write
costs a later miss, so there is no ``NOSCRIPT`` round trip to wait for); the purge a client asked
for waits for its count.
"""

from __future__ import annotations

from collections.abc import Callable

from distpat.core.cache_policy import Stored
from distpat.core.cache_redis import (
    ban_prefix_command,
    ban_tag_command,
    hash_key,
    lookup_command,
    purge_command,
    read_count,
    read_lookup,
    store_command,
    ttl_ms,
)
from distpat.core.cache_store import MemoryStore
from distpat.core.stage import Call, CallResult, Effect
from distpat.errors import CacheStoreError

__all__ = ["REDIS_TIMEOUT", "SharedStore"]

REDIS_TIMEOUT = 0.5
"""Seconds a lookup waits for Redis before the request is decided by this process's copy."""


class SharedStore:
    """See the module's docstring; ``counts`` has ``redis_error`` and ``redis_corrupt``."""

    def __init__(self, store: MemoryStore, timeout: float = REDIS_TIMEOUT) -> None:
        self.store = store
        self.timeout = timeout
        self.counts: dict[str, int] = {}

    def _count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def lookup(self, key: bytes, then: Callable[[], Effect | None]) -> Call:
        """Read ``key``'s variants into the local store, then decide (``then``)."""

        def synced(result: CallResult) -> Effect | None:
            self.sync(key, result)
            return then()

        return Call(lookup_command(key), synced, self.timeout)

    def sync(self, key: bytes, result: CallResult) -> None:
        """Make the local copy of ``key`` what Redis answered (kept as it is on an error)."""
        if result.error is not None:
            self._count("redis_error")
            return
        try:
            entries, corrupt = read_lookup(result.value)
        except CacheStoreError:
            self._count("redis_error")
            return
        if corrupt:
            self._count("redis_corrupt", corrupt)
        store = self.store
        variants = store.variants(key)
        held = dict(variants) if variants else {}
        seen = set()
        for stored, body in entries:
            seen.add(stored.vary_key)
            old = held.get(stored.vary_key)
            if old is not None and old.stored == stored and old.body == body:
                continue  # unchanged: keep the local entry (and its prebuilt answer)
            store.put(key, stored, body)
        for variant, entry in held.items():
            if variant not in seen:
                store.remove(entry)  # gone from Redis: purged, or expired, elsewhere

    def write(self, key: bytes, stored: Stored, body: bytes, now: float) -> Call:
        """Store one response in Redis too (fire-and-forget)."""
        return Call(store_command(key, stored, body, ttl_ms(stored, now), load=True), None, self.timeout)

    def delete(self, keys: list[bytes]) -> Call:
        """Delete URLs' entries in Redis (an invalidation; fire-and-forget)."""
        return Call((b"DEL", *(hash_key(k) for k in keys)), None, self.timeout)

    def purge(self, how: str, what: list[bytes], local: int, answer: Callable[[int], Effect]) -> Call:
        """A client's PURGE (``how``: ``key``, ``prefix`` or ``tag``; several tags are banned one
        call after another), answered with the count Redis gives, never less than the ``local``
        one (which is all there is when Redis fails)."""
        command = {"key": purge_command, "prefix": ban_prefix_command, "tag": ban_tag_command}[how]

        def step(index: int, total: int) -> Call:
            def counted(result: CallResult) -> Effect:
                got = 0
                if result.error is not None:
                    self._count("redis_error")
                else:
                    try:
                        got = read_count(result.value)
                    except CacheStoreError:
                        self._count("redis_error")
                if index + 1 < len(what):
                    return step(index + 1, total + got)
                return answer(max(local, total + got))

            return Call(command(what[index], load=True), counted, self.timeout)

        return step(0, 0)
