"""The limiter's bounded stores: buckets per key (:class:`KeyTable`), requests in flight per key
(:class:`Concurrency`). Pure: time comes in as ``now``.

**Why the table refuses instead of evicting.** nginx's ``limit_req`` keeps its keys in a
shared-memory zone with an LRU queue; before each new key it frees one or two of the oldest
entries whose bucket has drained (``ngx_http_limit_req_expire``), and when the zone is still
full it frees the oldest entry *by force*. That forced eviction is a hole: an attacker who
sends many new keys (spoofed forwarded addresses, random API keys) pushes an abusive key out,
and the abuser's next request finds a fresh bucket. :class:`KeyTable` closes it:

* it evicts **only idle entries**: a bucket that has drained to empty at ``now``
  (:meth:`~distpat.core.limiter.Limit.idle`, a level of exactly 0, which is stricter than
  nginx's ``excess - rate * elapsed <= 0``: nginx's test forgets the one request a drained key
  still owes). An idle entry decides exactly as a key never seen, so evicting it changes no
  decision: **eviction is invisible**, and no abuser can ever be handed a fresh bucket;
* before each new key it probes at most :data:`PROBES` of the least recently used entries,
  stopping at the first that is not idle (as nginx stops), so an insert costs O(1);
* when the table is still full, the **new key is refused**: :meth:`KeyTable.put` returns False
  and :meth:`KeyTable.decide` rejects the request (``Decision.table_full``), with Retry-After
  the time the oldest entry needs to drain. Keys already in the table are never affected.

A refusal happens only when the least recently used entry is still draining, and a bucket
drains within the limit's window ``w = ceil((burst + 1) / rate)`` of its last admitted
request, so every key in the table was seen within the last ``w`` seconds: a flood of new keys
can crowd out *new* clients for at most ``w`` seconds after it stops, never reset an old one.
Size ``max_keys`` for the number of clients active within a window.

**Memory.** An entry is an OrderedDict slot plus a ``(float, float)`` tuple: measured with
tracemalloc on CPython 3.11 (100,000 keys), about 195 bytes a key, plus the key object itself
(a 12-character str is 61 bytes more); nginx spends about 64 bytes plus the key in its zone.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Iterator

from distpat.core.limiter import Decision, DecisionKind, Limit, State, table_full
from distpat.errors import ConfigError

__all__ = ["PROBES", "Concurrency", "KeyTable"]

PROBES = 2
"""Least recently used entries examined for idleness before each new key (nginx: one or two)."""


def _check_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be an integer >= 1, not {value!r}")
    return value


class KeyTable:
    """The buckets of one :class:`~distpat.core.limiter.Limit`, one per key, at most ``max_keys``.

    ``get`` and ``put`` make a key the most recently used; see the module's docstring for
    what happens when the table is full. Every operation is O(1).
    """

    __slots__ = ("_entries", "limit", "max_keys")

    def __init__(self, max_keys: int, limit: Limit) -> None:
        self.max_keys = _check_size(max_keys, "max_keys")
        self.limit = limit
        self._entries: OrderedDict[Hashable, State] = OrderedDict()

    def __repr__(self) -> str:
        return f"KeyTable({self.limit.name!r}, {len(self._entries)}/{self.max_keys} keys)"

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Hashable]:
        """Keys from the least to the most recently used."""
        return iter(self._entries)

    def get(self, key: Hashable) -> State | None:
        """The key's state (None for a key the table does not hold), marked as just used."""
        state = self._entries.get(key)
        if state is not None:
            self._entries.move_to_end(key)
        return state

    def peek(self, key: Hashable) -> State | None:
        """The key's state without marking it used."""
        return self._entries.get(key)

    def put(self, key: Hashable, state: State, now: float) -> bool:
        """Store ``state`` for ``key``; False when a new key found no room (nothing is stored)."""
        entries = self._entries
        if key in entries:
            entries[key] = state
            entries.move_to_end(key)
            return True
        self._expire(now)
        if len(entries) >= self.max_keys:
            return False
        entries[key] = state
        return True

    def decide(self, key: Hashable, now: float, cost: float = 1) -> Decision:
        """Judge a request of ``key``: look its bucket up, decide, store what the decision says."""
        decision = self.limit.decide(self.get(key), now, cost)
        if decision.kind is DecisionKind.REJECT or decision.state is None:
            return decision
        if self.put(key, decision.state, now):
            return decision
        return table_full(self.limit, self.retry_after(now))

    def retry_after(self, now: float) -> int:
        """Seconds until the least recently used entry has drained (a refused key's Retry-After)."""
        for state in self._entries.values():
            return max(1, math.ceil(self.limit.level(state, now) / self.limit.rate))
        return 1

    def _expire(self, now: float) -> None:
        entries = self._entries
        limit = self.limit
        for _ in range(PROBES):
            if not entries:
                return
            key = next(iter(entries))
            if not limit.idle(entries[key], now):
                return
            del entries[key]


class Concurrency:
    """Requests in flight per key, at most ``limit`` each (nginx's ``limit_conn``).

    ``acquire`` takes a slot (False when the key already has ``limit``, or when
    ``max_keys`` distinct keys are in flight and this is a new one); the caller releases it
    exactly once when the request completes. Keys back at 0 are removed, so the table never
    holds more entries than there are requests in flight (nor more than ``max_keys``).
    """

    __slots__ = ("_counts", "limit", "max_keys")

    def __init__(self, limit: int, max_keys: int | None = None) -> None:
        self.limit = _check_size(limit, "concurrency limit")
        self.max_keys = None if max_keys is None else _check_size(max_keys, "max_keys")
        self._counts: dict[Hashable, int] = {}

    def __repr__(self) -> str:
        return f"Concurrency(limit={self.limit}, {len(self._counts)} keys in flight)"

    def __len__(self) -> int:
        return len(self._counts)

    def in_flight(self, key: Hashable) -> int:
        """The key's requests in flight."""
        return self._counts.get(key, 0)

    def acquire(self, key: Hashable) -> bool:
        """Take a slot for ``key``; False (nothing taken) when none is free."""
        counts = self._counts
        count = counts.get(key, 0)
        if count >= self.limit:
            return False
        if count == 0 and self.max_keys is not None and len(counts) >= self.max_keys:
            return False
        counts[key] = count + 1
        return True

    def release(self, key: Hashable) -> bool:
        """Give a slot back; False (and nothing changes) for a key with none taken."""
        counts = self._counts
        count = counts.get(key)
        if count is None:
            return False
        if count <= 1:
            del counts[key]
        else:
            counts[key] = count - 1
        return True
