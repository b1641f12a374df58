"""The default consistent-hashing ring: murmur3 points and a slot table in front."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType

import mmh3

from distpat.core.ring.base import Key, NodesArg, Ring, normalize_nodes, safe_key, to_bytes
from distpat.core.ring.continuum import Continuum
from distpat.errors import RingError

__all__ = ["DEFAULT_VNODES", "GRID_BITS", "MAX_NODE_POINTS", "MAX_VNODES", "HashRing"]

MAX_VNODES = 1 << 16
MAX_NODE_POINTS = 1 << 22
"""Points one node may have: enough for any sane weighting, and a ring a few seconds can build."""

DEFAULT_VNODES = 1024
"""Points per unit of weight. 1024 keeps ten equal nodes within about 10% of
their mean share (peak/mean 1.046 median, 1.096 at the 99th percentile over
random node names); 160, ketama's figure, gives 1.12 median and 1.24 worst."""

GRID_BITS = 18
"""A key's position is its hash with the low 32 - 18 bits set: 2**18 positions,
so that a table of 2**18 slots answers every lookup with no search."""

_MASK32 = 0xFFFFFFFF
_LOW_BITS = (1 << (32 - GRID_BITS)) - 1


def node_points(name: str, count: int) -> Iterator[int]:
    """The first ``count`` ring points of node ``name``.

    Point ``k`` is 32-bit word ``k % 4`` of ``murmur3_x64_128(name + "#" +
    str(k // 4))``. A node's points depend on its name alone, and raising its
    count only appends points, so a weight change moves only that node's keys.
    """
    base = name.encode("utf-8") + b"#"
    hash128 = mmh3.hash128
    for j in range((count + 3) // 4):
        h = hash128(base + str(j).encode("ascii"), 0, True, False)
        for w in range(min(4, count - 4 * j)):
            yield (h >> (32 * w)) & _MASK32


def _identity(name: str) -> str:
    return name


def _locator(continuum: Continuum) -> Callable[[Key], str]:
    """``get_node`` for a continuum on the fixed grid: the hot path of every sharded request."""
    table, names, shift = continuum.table, continuum.slot_names, continuum.shift

    def get_node(key: Key, _hash: Callable[[Key], int] = mmh3.hash) -> str:
        """The node that owns ``key`` (``str`` is hashed as UTF-8)."""
        # mmh3 5.x crashes on a str it cannot encode as UTF-8: only ASCII
        # goes to it as str (the test costs ~10 ns; the crash is worse).
        try:
            h = _hash(key) if key.isascii() else _hash(to_bytes(key))
        except AttributeError:
            raise TypeError(f"a ring key must be str or bytes, not {type(key).__name__}") from None
        # mmh3.hash is signed; shifting keeps the sign, and a negative index
        # counts from the table's end: exactly the unsigned value's slot. Every
        # key of a slot has the same owner, so the table is the whole answer.
        return names[table[h >> shift]]  # type: ignore[return-value]

    return get_node


class HashRing(Ring):
    """A consistent-hashing ring of murmur3 points.

    ``nodes`` is an iterable of names (weight 1 each) or a mapping of name to
    a positive weight. Each node gets ``round(vnodes * weight)`` points (at
    least one). A key (``str`` as UTF-8, or ``bytes``) sits at ``mmh3.hash(key)``
    as an unsigned 32-bit number with its low 14 bits set (one of 2**18
    positions, see :data:`GRID_BITS`), and belongs to the node of the first
    point at or after that position, wrapping past the top. Equal points are
    ordered by node name, so placement depends only on the membership, never on
    how it was reached.
    """

    __slots__ = ("_continuum", "_counts", "_vnodes", "_weights", "get_node")

    _weights: dict[str, float]
    _counts: dict[str, int]

    def __init__(self, nodes: NodesArg, *, vnodes: int = DEFAULT_VNODES) -> None:
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or not 1 <= vnodes <= MAX_VNODES:
            raise RingError(f"vnodes must be a whole number from 1 to {MAX_VNODES}, not {vnodes!r}")
        self._vnodes = vnodes
        self._weights = normalize_nodes(nodes)
        self._counts = {name: self._count(w) for name, w in self._weights.items()}
        self._set(
            Continuum.build(
                [(name, node_points(name, c)) for name, c in self._counts.items()], _identity, GRID_BITS
            )
        )

    def _count(self, weight: float) -> int:
        count = max(1, round(self._vnodes * weight))
        if count > MAX_NODE_POINTS:
            raise RingError(
                f"a node of weight {weight!r} would get {count} points (vnodes x weight); "
                f"at most {MAX_NODE_POINTS} are allowed: lower vnodes or the weights"
            )
        return count

    def _set(self, continuum: Continuum) -> None:
        self._continuum = continuum
        self.get_node = _locator(continuum)

    @property
    def vnodes(self) -> int:
        """Points per unit of weight."""
        return self._vnodes

    @property
    def weights(self) -> Mapping[str, float]:
        return MappingProxyType(self._weights)

    def points(self) -> dict[str, int]:
        """How many points each node has on the ring."""
        return dict(self._counts)

    def shares(self) -> dict[str, float]:
        """Each node's exact fraction of the hash space (the keys it would get on average)."""
        return self._continuum.shares()

    def key_hash(self, key: Key) -> int:
        """The unsigned 32-bit position of ``key`` on the ring (its hash, low bits set)."""
        return mmh3.hash(safe_key(key)) & _MASK32 | _LOW_BITS

    def iter_nodes(self, key: Key) -> Iterator[str]:
        return self._continuum.distinct(mmh3.hash(safe_key(key)) & _MASK32, self._weights)

    def _derive(self, weights: dict[str, float]) -> HashRing:
        """A ring over ``weights``, built from this one by moving only the points that change."""
        old_weights, old = self._weights, self._counts
        counts = {
            name: old[name] if old_weights.get(name) == w else self._count(w) for name, w in weights.items()
        }
        remove: list[tuple[str, list[int]]] = []
        add: list[tuple[str, list[int]]] = []
        for name, c in old.items():
            target = counts.get(name, 0)
            if target < c:
                remove.append((name, list(node_points(name, c))[target:]))
        for name, c in counts.items():
            have = old.get(name, 0)
            if c > have:
                add.append((name, list(node_points(name, c))[have:]))
        out = HashRing.__new__(HashRing)
        out._vnodes = self._vnodes
        out._weights = weights
        out._counts = counts
        moved = sum(len(p) for _, p in remove) + sum(len(p) for _, p in add)
        if moved * 4 > len(self._continuum):
            members = [(name, node_points(name, c)) for name, c in counts.items()]
            out._set(Continuum.build(members, _identity, GRID_BITS))
        else:
            gone = [name for name in old if name not in counts]
            out._set(self._continuum.change(remove, add, gone))
        return out

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f" vnodes={self._vnodes}>"
