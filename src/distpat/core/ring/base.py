"""What every ring shares: the key type, node validation and the lookup interface."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from typing import TypeVar

from distpat.errors import EmptyRingError, RingError

__all__ = ["MAX_WEIGHT", "Key", "Ring", "NodesArg", "normalize_nodes", "safe_key", "to_bytes"]

MAX_WEIGHT = 1_000_000
"""The largest weight a node may have; the lightest may be as small as 1/MAX_WEIGHT of it."""

Key = str | bytes
"""A key: ``str`` is hashed as its UTF-8 encoding, so ``"k"`` and ``b"k"`` place alike."""

NodesArg = Iterable[str] | Mapping[str, float]
"""Ring membership: names (each of weight 1) or a mapping of name to weight."""

K = TypeVar("K", bound=str | bytes)
R = TypeVar("R", bound="Ring")


def to_bytes(key: Key) -> bytes:
    """The bytes a key is hashed as.

    Raises ``TypeError`` for anything but str and bytes-like objects, and
    :class:`RingError` for a str that is not valid Unicode (a lone surrogate,
    as ``os.fsdecode`` makes of undecodable bytes).
    """
    if isinstance(key, str):
        try:
            return key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RingError(f"key {key!r} is not valid Unicode: {exc.reason} at index {exc.start}") from None
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"a ring key must be str or bytes, not {type(key).__name__}")


def safe_key(key: Key) -> Key:
    """``key`` itself when it is plain ASCII (any str or bytes hash function takes it), else its bytes.

    mmh3 5.x crashes the interpreter when handed a str it cannot encode as
    UTF-8; every str reaching it goes through here (or the same test inlined
    on the hot path) first.
    """
    try:
        if key.isascii():
            return key
    except AttributeError:
        pass
    return to_bytes(key)


def _check_weight(name: str, weight: object, *, integral: bool) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise RingError(f"node {name!r}: weight must be a number, not {type(weight).__name__}")
    if integral and not isinstance(weight, int):
        raise RingError(f"node {name!r}: weight must be a whole number, not {weight!r}")
    if (isinstance(weight, float) and not math.isfinite(weight)) or weight <= 0:
        raise RingError(f"node {name!r}: weight must be positive and finite, not {weight!r}")
    if weight > MAX_WEIGHT:
        shown = f"{weight:.3g}" if isinstance(weight, float) or weight < 10**15 else "past 10**15"
        raise RingError(f"node {name!r}: weight {shown} is above the largest allowed, {MAX_WEIGHT}")
    return weight


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise RingError(f"node names must be str, not {type(name).__name__} ({name!r})")
    if not name:
        raise RingError("node names must not be empty")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RingError(f"node name {name!r} is not valid Unicode: {exc.reason}") from None
    return name


def normalize_nodes(nodes: NodesArg, *, integral: bool = False) -> dict[str, float]:
    """Validate ring membership and return it as an ordered ``{name: weight}`` dict.

    Raises :class:`EmptyRingError` for no nodes and :class:`RingError` for a
    duplicate name, a non-str or empty name, or a weight that is not a
    positive finite number (a whole number when ``integral``).
    """
    if isinstance(nodes, (str, bytes)):
        raise RingError("nodes must be an iterable of names or a mapping, not a single string")
    out: dict[str, float] = {}
    if isinstance(nodes, Mapping):
        for name, weight in nodes.items():
            out[_check_name(name)] = _check_weight(name, weight, integral=integral)
    else:
        for name in nodes:
            if _check_name(name) in out:
                raise RingError(f"duplicate node name {name!r}")
            out[name] = 1
    if not out:
        raise EmptyRingError("a ring needs at least one node")
    return out


class Ring(ABC):
    """The lookup interface every placement algorithm offers.

    Rings are immutable snapshots: :meth:`add`, :meth:`remove` and
    :meth:`reweight` return a new ring and leave this one untouched, so a
    server can swap its ring with one assignment while lookups run.
    """

    __slots__ = ()

    @property
    @abstractmethod
    def weights(self) -> Mapping[str, float]:
        """Each node's weight, in membership order."""

    @property
    def nodes(self) -> tuple[str, ...]:
        """The node names, in membership order."""
        return tuple(self.weights)

    get_node: Callable[[Key], str]
    """The node that owns ``key``.

    Rings on the hot path (``HashRing``, ``KetamaRing``) set this per instance
    to a closure over their lookup table, which saves the attribute loads a
    method would make on every call; the others define it as a method.
    """

    @abstractmethod
    def iter_nodes(self, key: Key) -> Iterator[str]:
        """Every node once, in preference order for ``key``, produced lazily.

        The first is ``get_node(key)``; the rest are where the key goes when
        the ones before are down or full (replicas, failover, bounded loads).
        """

    def get_nodes(self, key: Key, n: int) -> list[str]:
        """``n`` distinct nodes for ``key`` in preference order; the first is ``get_node(key)``."""
        self._check_n(n)
        return list(islice(self.iter_nodes(key), n))

    def with_weights(self: R, weights: NodesArg) -> R:
        """A ring of the same kind and options over the given membership."""
        return self._derive(normalize_nodes(weights, integral=self._integral_weights))

    @abstractmethod
    def _derive(self: R, weights: dict[str, float]) -> R:
        """A ring of the same kind and options over validated ``weights``."""

    _integral_weights = False

    def add(self: R, node: str, weight: float = 1) -> R:
        """A new ring with ``node`` added; raises :class:`RingError` if it is already a member."""
        if _check_name(node) in self.weights:
            raise RingError(f"node {node!r} is already in the ring")
        weight = _check_weight(node, weight, integral=self._integral_weights)
        return self._derive({**self.weights, node: weight})

    def remove(self: R, node: str) -> R:
        """A new ring without ``node``; raises :class:`RingError` if it is not a member."""
        if node not in self.weights:
            raise RingError(f"node {node!r} is not in the ring")
        if len(self.weights) == 1:
            raise EmptyRingError(f"removing {node!r} would leave the ring empty")
        return self._derive({k: w for k, w in self.weights.items() if k != node})

    def reweight(self: R, node: str, weight: float) -> R:
        """A new ring with ``node``'s weight changed."""
        if node not in self.weights:
            raise RingError(f"node {node!r} is not in the ring")
        weight = _check_weight(node, weight, integral=self._integral_weights)
        return self._derive({**self.weights, node: weight})

    def group(self, keys: Iterable[K]) -> dict[str, list[K]]:
        """Keys grouped by owning node, each group in input order (multi-key fan-out)."""
        if isinstance(keys, (str, bytes)):
            raise TypeError("group() takes an iterable of keys, not a single key")
        out: dict[str, list[K]] = {}
        get = self.get_node
        for key in keys:
            node = get(key)
            bucket = out.get(node)
            if bucket is None:
                out[node] = [key]
            else:
                bucket.append(key)
        return out

    def _check_n(self, n: int) -> None:
        count = len(self.weights)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= count:
            raise RingError(f"n must be a whole number from 1 to {count} (the ring's size), not {n!r}")

    def __len__(self) -> int:
        return len(self.weights)

    def __contains__(self, node: object) -> bool:
        return node in self.weights

    def __iter__(self) -> Iterator[str]:
        return iter(self.weights)

    def __repr__(self) -> str:
        shown = ", ".join(list(self.weights)[:5])
        more = f", ... {len(self.weights) - 5} more" if len(self.weights) > 5 else ""
        return f"<{type(self).__name__} {len(self.weights)} nodes: {shown}{more}>"
