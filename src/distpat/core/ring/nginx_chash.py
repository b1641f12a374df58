"""nginx's ``hash $key consistent``, point for point.

:class:`NginxChashRing` puts every key on the server nginx's upstream hash
module picks for ``upstream { hash <key> consistent; server ...; }`` over the
same server list, so a site can move its sharding from nginx to distpat (or
back) without a key changing servers. The construction follows
``ngx_http_upstream_update_chash`` and ``ngx_http_upstream_find_chash_point``
in nginx's ``src/http/modules/ngx_http_upstream_hash_module.c``:

* a server's name is its address exactly as written in the ``server``
  directive (``127.0.0.1:8081``, ``backend.example:80``, ``unix:/run/app.sock``),
  split into host and port: a ``unix:`` prefix (any case) is dropped and the
  rest is the host with no port; otherwise the port is what follows the last
  ``:`` when only digits follow it, else there is no port;
* the server's base is CRC-32 over ``host``, one NUL byte and ``port`` (the
  scheme of Cache::Memcached::Fast); its ``160 x weight`` points are a chain,
  each point the CRC-32 of the base followed by the previous point as four
  little-endian bytes (zero for the first), as nginx computes it on
  little-endian machines such as x86-64 (and, by its explicit byte order, on
  the others too);
* all points are sorted and, of equal points, only the first is kept. nginx
  sorts with the C library's ``qsort``, which glibc implements as a stable merge
  sort; points are made server by server in configuration order, so the point
  that stays is that of the server listed first. Python's sort is stable too;
* a key's hash is the CRC-32 of its bytes (nginx's ``ngx_crc32_long``, the
  reflected polynomial 0xEDB88320 with the usual pre- and post-inversion:
  the same function as :func:`zlib.crc32`), and the key goes to the first point
  at or above it, wrapping past the top.

For ``hash $request_uri consistent`` the key is the request line's target as
the client sent it, query string and percent-encodings included.

Failover differs from nginx on purpose. When its chosen server is down or
has failed, nginx moves to the *next point* (the next entry of the sorted
array, whoever owns it) up to 20 times, skipping servers already tried, and
then falls back to weighted round robin; an empty key goes to round robin at
once. distpat's :meth:`NginxChashRing.iter_nodes` instead yields the distinct
servers in the order their points follow the key's point clockwise: the ring's
own next distinct nodes, which is what replicas, failover and
:class:`~distpat.core.ring.bounded.BoundedLoads` ask for, and which has no
round-robin state. ``get_node`` is nginx's choice whenever every server is up.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import chain
from types import MappingProxyType
from typing import TypeVar

from distpat.core.ring.base import Key, NodesArg, Ring, normalize_nodes, to_bytes
from distpat.errors import RingError

__all__ = [
    "MAX_POINTS",
    "MEMO_ENTRIES",
    "MEMO_KEY_MAX",
    "NGINX_POINTS_PER_WEIGHT",
    "NginxChashRing",
    "server_points",
    "split_server",
]

T = TypeVar("T")

NGINX_POINTS_PER_WEIGHT = 160
"""Points a server gets per unit of its ``weight=`` (nginx's figure)."""

MAX_POINTS = 1 << 22
"""Most points a ring may have (a total weight of 26214): a ring a few seconds can build."""

MEMO_ENTRIES = 4096
"""Lookups remembered per ring (key to point index); the memo is emptied when it is full."""

MEMO_KEY_MAX = 256
"""Keys longer than this (characters of a str, or bytes) are looked up every time, never remembered."""


def split_server(name: str) -> tuple[bytes, bytes]:
    """The (host, port) bytes nginx hashes for a server written as ``name``.

    ``unix:/path`` (the prefix in any case) gives the path and no port;
    otherwise the port is what follows the last ``:`` if only digits (or
    nothing) follow it, and there is no port when a non-digit comes first.
    So ``[::1]:80`` is ``[::1]`` and ``80``, while ``[::1]`` has no port.
    """
    raw = name.encode("utf-8")
    if raw[:5].lower() == b"unix:":
        return raw[5:], b""
    for j in range(len(raw) - 1, -1, -1):
        c = raw[j]
        if c == 0x3A:  # ':'
            return raw[:j], raw[j + 1 :]
        if not 0x30 <= c <= 0x39:
            break
    return raw, b""


def server_points(name: str, weight: int) -> list[int]:
    """The ``160 x weight`` points of one server, in the order nginx makes them."""
    host, port = split_server(name)
    base = zlib.crc32(port, zlib.crc32(b"\0", zlib.crc32(host)))
    crc = zlib.crc32
    out: list[int] = []
    prev = 0
    for _ in range(NGINX_POINTS_PER_WEIGHT * weight):
        prev = crc(prev.to_bytes(4, "little"), base)
        out.append(prev)
    return out


def _locator(
    hashes: Sequence[int],
    answers: Sequence[T],
    memo_str: dict[str, int],
    memo_bytes: dict[bytes, int],
) -> Callable[[Key], T]:
    """A lookup returning ``answers[i]``, ``i`` the index of the key's point.

    With ``answers`` the owner of every point this is ``get_node``; with
    ``range(len(hashes))`` it gives the index itself. Both share the memo of
    point indices. str and bytes keys have a memo each, so that a str is never
    compared with bytes (which ``python -b`` would warn about).
    """
    n = len(hashes)

    def lookup(key: Key, _crc: Callable[[bytes], int] = zlib.crc32) -> T:
        cls = key.__class__
        if cls is str:
            i = memo_str.get(key)  # type: ignore[arg-type]
            if i is not None:
                return answers[i]
            try:
                data = key.encode("utf-8")  # type: ignore[union-attr]
            except UnicodeEncodeError:
                data = to_bytes(key)  # raises RingError naming the bad key
            memo: dict[str, int] | dict[bytes, int] = memo_str
        elif cls is bytes:
            i = memo_bytes.get(key)  # type: ignore[arg-type]
            if i is not None:
                return answers[i]
            data = key
            memo = memo_bytes
        else:  # bytearray, memoryview, a str subclass: not remembered; TypeError for the rest
            i = bisect_left(hashes, _crc(to_bytes(key)))
            return answers[i if i < n else 0]
        i = bisect_left(hashes, _crc(data))
        if i == n:
            i = 0
        if len(key) <= MEMO_KEY_MAX:
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            memo[key] = i  # type: ignore[index]
        return answers[i]

    return lookup


class NginxChashRing(Ring):
    """nginx's ``hash ... consistent`` upstream: the same server for every key.

    ``servers`` are the addresses as written in nginx's ``server`` directives,
    an iterable (weight 1 each) or a mapping to integer weights (nginx's
    ``weight=``), in configuration order: the order decides which server keeps
    a point two servers share (see the module's docstring). Two names that
    nginx hashes alike (``unix:/s`` and ``/s``, ``host`` and ``host:``) share
    every point, so the later one gets no keys, as in nginx; :meth:`points`
    shows it as 0, and :meth:`iter_nodes` lists such servers last.

    A lookup is one CRC-32 and a binary search over the sorted points, and the
    ring remembers the point of up to :data:`MEMO_ENTRIES` recent keys of at
    most :data:`MEMO_KEY_MAX` characters or bytes, so a repeated key costs one
    dict lookup. The memo is a cache of a pure function of the key: it changes
    no answer, and a derived ring starts with its own.
    """

    __slots__ = ("_hashes", "_index", "_owners", "_weights", "get_node")

    _index: Callable[[Key], int]

    _integral_weights = True

    _weights: dict[str, int]
    _hashes: list[int]
    _owners: list[str]

    def __init__(self, servers: NodesArg) -> None:
        weights = {name: int(w) for name, w in normalize_nodes(servers, integral=True).items()}
        total = sum(weights.values()) * NGINX_POINTS_PER_WEIGHT
        if total > MAX_POINTS:
            raise RingError(
                f"the servers' weights add up to {total // NGINX_POINTS_PER_WEIGHT}, which would give "
                f"{total} points ({NGINX_POINTS_PER_WEIGHT} per unit of weight); at most {MAX_POINTS} "
                "are allowed: lower the weights"
            )
        self._weights = weights
        # (point, server position): sorting the pairs is a stable sort by point,
        # so of equal points the first kept is that of the server listed first.
        pairs = [(p, pos) for pos, (name, w) in enumerate(weights.items()) for p in server_points(name, w)]
        pairs.sort()
        names = list(weights)
        hashes: list[int] = []
        owners: list[str] = []
        last = -1
        for p, pos in pairs:
            if p != last:
                hashes.append(p)
                owners.append(names[pos])
                last = p
        self._hashes = hashes
        self._owners = owners
        memo_str: dict[str, int] = {}
        memo_bytes: dict[bytes, int] = {}
        self.get_node = _locator(hashes, owners, memo_str, memo_bytes)
        self._index = _locator(hashes, range(len(hashes)), memo_str, memo_bytes)

    @property
    def weights(self) -> Mapping[str, float]:
        return MappingProxyType(self._weights)

    def key_hash(self, key: Key) -> int:
        """The 32-bit hash nginx looks ``key`` up with: CRC-32 of its bytes."""
        return zlib.crc32(to_bytes(key))

    def point_index(self, key: Key) -> int:
        """Index in :meth:`continuum` of the point that owns ``key``."""
        return self._index(key)

    def continuum(self) -> list[tuple[int, str]]:
        """Every (point, server) in ring order, after duplicates are dropped, as nginx's array holds them."""
        return list(zip(self._hashes, self._owners, strict=True))

    def points(self) -> dict[str, int]:
        """How many points each server holds once duplicates are dropped (``160 x weight``, almost always)."""
        out = dict.fromkeys(self._weights, 0)
        for name in self._owners:
            out[name] += 1
        return out

    def shares(self) -> dict[str, float]:
        """Each server's exact fraction of the 32-bit hash space."""
        hashes, owners = self._hashes, self._owners
        out = dict.fromkeys(self._weights, 0)
        prev = hashes[-1] - (1 << 32)  # the first point owns the hashes past the last one
        for p, name in zip(hashes, owners, strict=True):
            out[name] += p - prev
            prev = p
        return {name: arc / (1 << 32) for name, arc in out.items()}

    def iter_nodes(self, key: Key) -> Iterator[str]:
        """Every server once: the owners of the points from the key's point on, clockwise.

        The first is :meth:`get_node`'s answer; servers that hold no point come
        last, in membership order. nginx's own retries differ (see the module's
        docstring).
        """
        return self._walk(self._index(key))

    def _walk(self, start: int) -> Iterator[str]:
        owners = self._owners
        remaining = dict.fromkeys(self._weights)
        for i in chain(range(start, len(owners)), range(start)):
            name = owners[i]
            if name in remaining:
                del remaining[name]
                yield name
                if not remaining:
                    return
        yield from remaining

    def _derive(self, weights: dict[str, float]) -> NginxChashRing:
        return NginxChashRing(weights)
