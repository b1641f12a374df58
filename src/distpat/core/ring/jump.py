"""Jump consistent hash (Lamping & Veach, 2014) over numbered shards."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType

import mmh3

from distpat.core.ring.base import Key, NodesArg, Ring, normalize_nodes, safe_key
from distpat.errors import RingError

__all__ = ["JumpRing", "jump_hash"]

_MASK64 = (1 << 64) - 1


def jump_hash(key: int, buckets: int) -> int:
    """The bucket in ``range(buckets)`` for 64-bit ``key``, as in the paper's listing."""
    if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key <= _MASK64:
        raise RingError(f"jump hash key must be an unsigned 64-bit integer, not {key!r}")
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise RingError(f"jump hash needs a whole number of buckets, at least 1, not {buckets!r}")
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777608413 + 1) & _MASK64
        j = int((b + 1) * (2147483648.0 / float((key >> 33) + 1)))
    return b


class JumpRing(Ring):
    """Jump consistent hash: shard ``i`` is the ``i``-th node.

    No table and no points: a lookup is a 64-bit murmur3 and about ``ln(n)``
    steps of a pseudo-random walk, and the key spread is as even as the hash.
    Shards are numbered, so it suits data partitioned into numbered shards:
    adding a node appends shard ``n`` and moves only the keys that go to it;
    only the last shard can be removed (removing another would renumber the
    rest and move most keys); weights are not supported.
    """

    __slots__ = ("_names", "_weights")

    def __init__(self, nodes: NodesArg) -> None:
        self._weights = normalize_nodes(nodes)
        if any(w != 1 for w in self._weights.values()):
            raise RingError("jump hash does not support weights; give node names only")
        self._names = tuple(self._weights)

    @property
    def weights(self) -> Mapping[str, float]:
        return MappingProxyType(self._weights)

    def get_node(self, key: Key) -> str:
        return self._names[
            jump_hash(mmh3.hash64(safe_key(key), 0, True, False)[0] & _MASK64, len(self._names))
        ]

    def iter_nodes(self, key: Key) -> Iterator[str]:
        """Distinct shards for successive reseedings of the key, then the rest in shard order."""
        names = self._names
        key = safe_key(key)
        seen: set[int] = set()
        for seed in range(8 * len(names)):
            b = jump_hash(mmh3.hash64(key, seed, True, False)[0] & _MASK64, len(names))
            if b not in seen:
                seen.add(b)
                yield names[b]
                if len(seen) == len(names):
                    return
        first = next(iter(seen))
        for i in range(1, len(names)):
            b = (first + i) % len(names)
            if b not in seen:
                seen.add(b)
                yield names[b]

    def _derive(self, weights: dict[str, float]) -> JumpRing:
        names = list(weights)
        old = list(self._names)
        if names[: len(old)] != old and old[: len(names)] != names:
            raise RingError(
                "jump hash numbers its shards: nodes can only be appended, or removed from the end "
                f"(last shard: {old[-1]!r})"
            )
        return JumpRing(weights)
