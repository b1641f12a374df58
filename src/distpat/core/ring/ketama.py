"""twemproxy's distributions, placement for placement: ketama, modula and random.

These rings put every key on the server nutcracker (twemproxy) would choose for
the same pool, so a Redis or memcached deployment can move between the two
without a key changing shards. Their inputs are what twemproxy hashes:
``servers`` maps each server's *ring name* (its ``name`` in the YAML file, or
``host:port`` when it has none, or ``host`` alone for port 11211; see
:mod:`distpat.config.twemproxy`) to its integer weight, in any order: the
rings order servers as nutcracker does (by name length, then bytes).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from distpat.core.ring.base import Key, Ring, normalize_nodes, to_bytes
from distpat.core.ring.continuum import Continuum
from distpat.core.twemhash import hash_tag_key, twemproxy_hash
from distpat.errors import RingError

__all__ = ["KetamaRing", "ModulaRing", "RandomRing", "ketama_points"]

KETAMA_POINTS_PER_SERVER = 160
"""Points a server of average weight gets, four per MD5 digest."""

KETAMA_MAX_HOSTLEN = 86
"""The size of twemproxy's buffer for ``"<name>-<n>"``; longer strings overflow it."""

_f32 = struct.Struct("<f")
_u32_le = struct.Struct("<I").unpack_from

try:  # CPython's own MD5 costs half of OpenSSL's per call on short keys
    from _md5 import md5 as _md5
except ImportError:  # pragma: no cover - builds without the builtin module
    _md5 = hashlib.md5


def _float32(x: float) -> float:
    """``x`` rounded to the nearest C ``float``, as an x86-64 SSE operation leaves it."""
    return _f32.unpack(_f32.pack(x))[0]  # type: ignore[no-any-return]


def ketama_points(weight: int, total_weight: int, live: int) -> int:
    """Points twemproxy gives a server: ``floorf(pct * 160 / 4 * live) * 4``, in C float arithmetic.

    Each operation is rounded to single precision as the C code's ``float``
    operands are; the ``+ 0.0000000001`` twemproxy adds in double precision
    vanishes when converted back to ``float`` for ``floorf`` for every
    reachable value, so it is left out.
    """
    pct = _float32(_float32(weight) / _float32(total_weight))
    x = _float32(pct * KETAMA_POINTS_PER_SERVER)
    x = _float32(x / 4)
    x = _float32(x * _float32(live))
    x = _float32(x + 0.0000000001)
    return math.floor(x) * 4


def _server_points(name: str, count: int) -> list[int]:
    """Ketama points of one server: four little-endian words per MD5 of ``"<name>-<j>"``."""
    out: list[int] = []
    base = name.encode("utf-8") + b"-"
    for j in range(count // 4):
        host = base + str(j).encode("ascii")
        if len(host) >= KETAMA_MAX_HOSTLEN:
            raise RingError(
                f"server name {name!r} is too long for ketama: twemproxy hashes "
                f"'<name>-<n>' in a {KETAMA_MAX_HOSTLEN}-byte buffer, so a name of this "
                f"weight may have at most {KETAMA_MAX_HOSTLEN - len(str(count // 4 - 1)) - 3} bytes"
            )
        out.extend(struct.unpack("<4I", hashlib.md5(host).digest()))
    return out


def _key_bytes(key: Key) -> bytes:
    if key.__class__ is bytes:
        return key
    return to_bytes(key)


def _dispatch_order(item: tuple[str, float]) -> tuple[int, bytes]:
    name = item[0].encode("utf-8")
    return len(name), name


def _locator(
    continuum: Continuum, hash_fn: Callable[[bytes], int], tag: bytes, *, md5: bool
) -> Callable[[Key], str]:
    """``get_node`` for a ketama continuum, specialised for the common untagged MD5 case."""
    table, names, shift, resolve = continuum.table, continuum.slot_names, continuum.shift, continuum.resolve

    if md5 and not tag:

        def get_node_md5(key: Key, _md5: Callable[[bytes], Any] = _md5, _u32: Any = _u32_le) -> str:
            if key.__class__ is str:
                try:
                    key = key.encode("utf-8")
                except UnicodeEncodeError:
                    key = _key_bytes(key)  # raises RingError naming the bad key
            elif key.__class__ is not bytes:
                key = _key_bytes(key)
            h: int = _u32(_md5(key).digest())[0] if key else 0  # inlined: the hash is most of the cost
            i = table[h >> shift]
            return names[i] if i else resolve(h)  # type: ignore[return-value]

        return get_node_md5

    def get_node(key: Key) -> str:
        if key.__class__ is str:
            try:
                key = key.encode("utf-8")
            except UnicodeEncodeError:
                key = _key_bytes(key)  # raises RingError naming the bad key
        elif key.__class__ is not bytes:
            key = _key_bytes(key)
        if tag:
            key = hash_tag_key(key, tag)
        h = hash_fn(key) if key else 0
        i = table[h >> shift]
        return names[i] if i else resolve(h)  # type: ignore[return-value]

    return get_node


class _Twemproxy(Ring):
    """Options shared by the three twemproxy distributions."""

    __slots__ = ("_hash", "_hash_name", "_tag", "_weights")

    _integral_weights = True

    def __init__(
        self, servers: Mapping[str, int], *, hash: str = "fnv1a_64", hash_tag: str | bytes | None = None
    ) -> None:
        # nutcracker keeps a pool's servers sorted by name length, then bytes
        # (it sorts them to find duplicates): modula's slots and ketama's ties
        # follow that order, so the rings keep it whatever order they are given.
        self._weights = dict(sorted(normalize_nodes(servers, integral=True).items(), key=_dispatch_order))
        self._hash_name = hash
        self._hash = twemproxy_hash(hash)
        if isinstance(hash_tag, str):
            hash_tag = to_bytes(hash_tag)
        if hash_tag is not None and hash_tag != b"" and len(hash_tag) != 2:
            raise RingError(f"hash_tag must be two bytes, such as '{{}}', not {hash_tag!r}")
        self._tag = hash_tag or b""

    @property
    def weights(self) -> Mapping[str, float]:
        return MappingProxyType(self._weights)

    @property
    def hash_name(self) -> str:
        """The twemproxy name of the key hash."""
        return self._hash_name

    @property
    def hash_tag(self) -> bytes:
        """The two hash-tag bytes, or ``b""`` for none."""
        return self._tag

    def key_hash(self, key: Key) -> int:
        """The 32-bit value twemproxy dispatches ``key`` with (0 for an empty key or tag, or one server)."""
        data = _key_bytes(key)
        if len(self._weights) == 1:
            return 0
        if self._tag:
            data = hash_tag_key(data, self._tag)
        return self._hash(data) if data else 0

    def _derive(self, weights: dict[str, float]) -> _Twemproxy:
        return type(self)(weights, hash=self._hash_name, hash_tag=self._tag or None)  # type: ignore[arg-type]


class KetamaRing(_Twemproxy):
    """twemproxy's ``distribution: ketama``, point for point.

    Each server gets ``floorf(weight / total * 160 / 4 * nservers) * 4``
    points (160 for equal weights), four from each MD5 digest of
    ``"<name>-<j>"``; a key goes to the first point at or after its hash,
    wrapping. Equal points keep the servers' order, as twemproxy's sort does
    with glibc. With ``hash="md5"`` and equal weights this is also libketama's
    and uhashring's ``hash_fn="ketama"`` placement.

    Any membership change rebuilds the continuum, because every server's
    point count depends on the total weight (as in twemproxy).
    """

    __slots__ = ("_continuum", "get_node")

    def __init__(
        self, servers: Mapping[str, int], *, hash: str = "fnv1a_64", hash_tag: str | bytes | None = None
    ) -> None:
        super().__init__(servers, hash=hash, hash_tag=hash_tag)
        total = int(sum(self._weights.values()))
        live = len(self._weights)
        members = [
            (name, _server_points(name, ketama_points(int(w), total, live)))
            for name, w in self._weights.items()
        ]
        position = {name: i for i, name in enumerate(self._weights)}
        self._continuum = Continuum.build(members, position.__getitem__)
        self.get_node = _locator(self._continuum, self._hash, self._tag, md5=hash == "md5")

    def points(self) -> dict[str, int]:
        """How many points each server has on the continuum."""
        out = dict.fromkeys(self._weights, 0)
        for _, name in self._continuum.points():
            out[name] += 1
        return out

    def shares(self) -> dict[str, float]:
        """Each server's exact fraction of the hash space."""
        return self._continuum.shares()

    def iter_nodes(self, key: Key) -> Iterator[str]:
        return self._continuum.distinct(self.key_hash(key), self._weights)


class ModulaRing(_Twemproxy):
    """twemproxy's ``distribution: modula``: server ``hash % total_weight`` in weight order.

    Every server holds ``weight`` consecutive slots. This is not consistent
    hashing: changing the membership moves most keys.
    """

    __slots__ = ("_slots",)

    def __init__(
        self, servers: Mapping[str, int], *, hash: str = "fnv1a_64", hash_tag: str | bytes | None = None
    ) -> None:
        super().__init__(servers, hash=hash, hash_tag=hash_tag)
        self._slots = tuple(name for name, w in self._weights.items() for _ in range(int(w)))

    def get_node(self, key: Key) -> str:
        slots = self._slots
        return slots[self.key_hash(key) % len(slots)]

    def iter_nodes(self, key: Key) -> Iterator[str]:
        """Servers in slot order from the key's slot onward, each once."""
        slots = self._slots
        start = self.key_hash(key) % len(slots)
        remaining = dict.fromkeys(self._weights)
        for i in range(len(slots)):
            name = slots[(start + i) % len(slots)]
            if name in remaining:
                del remaining[name]
                yield name


class RandomRing(_Twemproxy):
    """twemproxy's ``distribution: random``: any server, whatever the key.

    The core draws no random numbers itself: ``draw`` is called for each
    lookup and must return a non-negative integer (for example
    ``random.Random().getrandbits(32)`` bound with ``functools.partial``). As in
    twemproxy, servers are picked uniformly, whatever their weights.
    """

    __slots__ = ("_draw", "_names")

    def __init__(
        self,
        servers: Mapping[str, int],
        *,
        draw: Callable[[], int],
        hash: str = "fnv1a_64",
        hash_tag: str | bytes | None = None,
    ) -> None:
        super().__init__(servers, hash=hash, hash_tag=hash_tag)
        if not callable(draw):
            raise RingError("RandomRing needs draw=, a callable returning a random non-negative integer")
        self._draw = draw
        self._names = tuple(self._weights)

    def get_node(self, key: Key) -> str:
        return self._names[self._draw() % len(self._names)]

    def iter_nodes(self, key: Key) -> Iterator[str]:
        """Every server once, from a random one onward (so not led by a separate ``get_node`` call)."""
        names = self._names
        start = self._draw() % len(names)
        return (names[(start + i) % len(names)] for i in range(len(names)))

    def _derive(self, weights: dict[str, float]) -> RandomRing:
        return RandomRing(weights, draw=self._draw, hash=self._hash_name, hash_tag=self._tag or None)  # type: ignore[arg-type]
