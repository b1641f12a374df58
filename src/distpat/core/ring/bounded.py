"""Consistent hashing with bounded loads (Mirrokni, Thorup & Zadimoghaddam, 2018)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction

from distpat.core.ring.base import Key, Ring
from distpat.errors import RingError

__all__ = ["BoundedLoads"]


class BoundedLoads:
    """Choose a node for a key without letting any node exceed ``c`` times the mean load.

    The caller keeps the live load of each node (open connections or requests
    in flight) and passes it in; nothing here counts or remembers. A key goes
    to the first node in its ring's preference order whose load, with this
    request added, stays within ``ceil(c * (total + 1) / nodes)``. With
    ``c >= 1`` such a node always exists. This is HAProxy's
    ``hash-balance-factor`` (``c = factor / 100``): a hot key spills over to
    the next nodes on the ring instead of overloading its own.
    """

    __slots__ = ("_factor", "ring")

    def __init__(self, ring: Ring, *, balance_factor: float = 1.25) -> None:
        if isinstance(balance_factor, bool) or not isinstance(balance_factor, (int, float)):
            raise RingError(f"balance_factor must be a number, not {balance_factor!r}")
        if not 1 <= balance_factor <= 1_000_000:  # also refuses NaN
            raise RingError(
                "balance_factor must be from 1 to 1000000 (1.25 allows 25% over the mean), "
                f"not {balance_factor!r}"
            )
        self.ring = ring
        # Exact arithmetic on the factor as given: the cap is never rounded up.
        self._factor = Fraction(balance_factor)

    @property
    def balance_factor(self) -> float:
        return float(self._factor)

    def capacity(self, loads: Mapping[str, int]) -> int:
        """The most load any node may carry once one more request is placed."""
        if not isinstance(loads, Mapping):
            raise TypeError(f"loads must be a mapping of node name to load, not {type(loads).__name__}")
        total = 0
        for name in self.ring.nodes:
            load = loads.get(name, 0)
            if isinstance(load, bool) or not isinstance(load, int) or load < 0:
                raise RingError(f"node {name!r}: load must be a whole number of at least 0, not {load!r}")
            total += load
        return math.ceil(self._factor * (total + 1) / len(self.ring))

    def get_node(self, key: Key, loads: Mapping[str, int]) -> str:
        """The node for ``key`` given each node's current ``loads`` (missing nodes count 0)."""
        cap = self.capacity(loads)
        for name in self.ring.iter_nodes(key):
            if loads.get(name, 0) + 1 <= cap:
                return name
        raise AssertionError("unreachable: with balance_factor >= 1 some node is under the cap")

    def __repr__(self) -> str:
        return f"<BoundedLoads c={float(self._factor):g} over {self.ring!r}>"
