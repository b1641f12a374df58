"""Weighted rendezvous (highest random weight) hashing."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from types import MappingProxyType

import mmh3

from distpat.core.ring.base import Key, NodesArg, Ring, normalize_nodes, safe_key

__all__ = ["RendezvousRing"]

_SCALE = 1.0 / (1 << 32)


class RendezvousRing(Ring):
    """Rendezvous hashing (Thaler & Ravishankar, 1998), weighted.

    Each node scores the key with murmur3 seeded by the node's own hash; the
    score is ``-weight / ln(u)`` with ``u`` that hash mapped into (0, 1)
    (Schindler's logarithmic method), and the highest score wins. Weights are
    honoured exactly in expectation, a membership or weight change moves only
    the keys that must move, no table is kept, and the top ``n`` scores give
    replicas. The price is one hash per node on every lookup: O(nodes).
    """

    __slots__ = ("_seeds", "_weights")

    def __init__(self, nodes: NodesArg) -> None:
        self._weights = normalize_nodes(nodes)
        self._seeds = tuple(
            (name, mmh3.hash(name, 0x5EED, False), float(w)) for name, w in self._weights.items()
        )

    @property
    def weights(self) -> Mapping[str, float]:
        return MappingProxyType(self._weights)

    def scores(self, key: Key) -> dict[str, float]:
        """Every node's score for ``key`` (higher wins)."""
        h, log, key = mmh3.hash, math.log, safe_key(key)
        return {name: -w / log((h(key, seed, False) + 0.5) * _SCALE) for name, seed, w in self._seeds}

    def get_node(self, key: Key) -> str:
        h, log, key = mmh3.hash, math.log, safe_key(key)
        best_name = ""
        best = -1.0
        for name, seed, w in self._seeds:
            score = -w / log((h(key, seed, False) + 0.5) * _SCALE)
            if score > best or (score == best and name < best_name):
                best, best_name = score, name
        return best_name

    def iter_nodes(self, key: Key) -> Iterator[str]:
        """All nodes from highest score to lowest (ties by name)."""
        scores = self.scores(key)
        return iter(sorted(scores, key=lambda name: (-scores[name], name)))

    def _derive(self, weights: dict[str, float]) -> RendezvousRing:
        return RendezvousRing(weights)
