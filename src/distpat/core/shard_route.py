"""The sharding ambassador's decision: which shard of a pool a request belongs to.

Designing Distributed Systems (Burns, 2018), chapter 6, puts an *ambassador* beside the client
that knows how a service is sharded and sends each request to the one shard that holds its
data. :class:`ShardStage` is that decision as a pipeline stage (:mod:`distpat.core.stage`):
it takes a key from the request (:class:`~distpat.core.keys.KeySource`: ``uri`` by default,
nginx's ``$request_uri``), places it on a consistent-hashing ring
(:mod:`distpat.core.ring`), and answers a :class:`~distpat.core.stage.Forward` whose
``order`` is the key's shard followed by the ring's next distinct nodes:

* ``replicas = N``: the order is the first ``N`` distinct nodes of ``ring.iter_nodes(key)``.
  The engine tries them in that order, skipping ejected ones, and failover never leaves it: a
  request whose shard is down goes to the ring's next node, never to a random one (and a
  request that reached an upstream and is not idempotent is not sent again: the engine's rule).
* ``balance_factor = c``: consistent hashing with bounded loads (Mirrokni, Thorup and
  Zadimoghaddam, 2018; HAProxy's ``hash-balance-factor``, ``c = factor / 100``). The live
  in-flight counts come from ``request.pools`` (:class:`~distpat.core.stage.Pools`); of the
  upstreams in rotation, a request goes to the first in its ring order whose count, with this
  request added, stays within ``ceil(c x (total + 1) / live)``, the cap of
  :class:`~distpat.core.ring.bounded.BoundedLoads`; the order holds only upstreams under the
  cap, so failover does not pass it either. With no upstream in rotation the order is the
  ring's, as without a factor.
* A request with no key (the field, cookie or argument is absent, or empty) is left to the
  pool's balancer, as nginx's ``hash`` sends an empty key to round robin.

The ring's node names are what is hashed (for ``NginxChashRing``, the server as written in
nginx's ``server`` directive); ``upstreams`` maps each to the name the engine's pool knows it
by (``host:port``). The shard's name (an upstream name) goes in ``request.notes[self.name]``
for the per-shard metrics (:meth:`Stage.decision`), and in the response field
``shard_header`` when one is set (``Forward.respond``).

The hot path: the ring walk is a pure function of the key, so the stage remembers, for up to
:data:`MEMO_ENTRIES` keys of at most :data:`MEMO_KEY_MAX` bytes, the whole ``Forward`` (without
a factor) or the key's full ring order (with one, since loads change from one request to the
next: the order is then filtered by the live counts on each request, with whole-number
arithmetic). A memo is emptied when it is full; it is a cache of pure functions and changes
no answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from itertools import islice
from typing import ClassVar, Final

from distpat.core.keys import KeySource
from distpat.core.ring.base import Ring
from distpat.core.ring.bounded import BoundedLoads
from distpat.core.stage import Forward, Request, Stage, Tick
from distpat.errors import ConfigError, RingError

__all__ = ["KEY_KINDS", "MEMO_ENTRIES", "MEMO_KEY_MAX", "NO_KEY", "ShardStage"]

KEY_KINDS: Final = ("uri", "path", "header", "query", "cookie")
"""The key sources a shard may be chosen by (combinations with ``+`` too)."""

MEMO_ENTRIES: Final = 4096
"""Keys remembered (their Forward, or their ring order); a memo is emptied when full."""

MEMO_KEY_MAX: Final = 256
"""Keys longer than this many bytes are placed every time, never remembered."""

NO_KEY: Final = "no_key"
"""The decision noted for a request without a key (an upstream name always has a ``:port``)."""

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class ShardStage(Stage):
    """Send each request to its key's shard, then the ring's next nodes (see the module docstring).

    ``ring``: the shards, by the names that are hashed. ``key``: a :class:`KeySource` or its
    text. ``replicas``: how many distinct nodes the order holds (1: the shard alone).
    ``balance_factor``: None, or ``c`` from 1 (bounded loads). ``pool``: the named pool the
    shards are (None: the default pool). ``shard_header``: a response field naming the shard.
    ``upstreams``: ring node name to the pool's upstream name (default: the same names).
    Raises :class:`~distpat.errors.ConfigError` for a value it cannot work with.
    """

    kind: ClassVar[str] = "shard"
    uses_tick = False  # routing by key and live loads: no clock, no random draw

    def __init__(
        self,
        ring: Ring,
        *,
        key: KeySource | str = "uri",
        replicas: int = 1,
        balance_factor: float | None = None,
        pool: str | None = None,
        shard_header: str | None = None,
        upstreams: Mapping[str, str] | None = None,
        name: str = "",
        memo_entries: int = MEMO_ENTRIES,
    ) -> None:
        if not isinstance(ring, Ring):
            raise ConfigError(f"a shard stage needs a ring (distpat.ring), not {type(ring).__name__}")
        self.ring = ring
        self.key = key if isinstance(key, KeySource) else KeySource.parse(key, allowed=KEY_KINDS)
        size = len(ring)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= size:
            raise ConfigError(
                f"replicas must be a whole number from 1 to {size} (the number of shards), not {replicas!r}"
            )
        self.replicas = replicas
        self.balance_factor: float | None = None
        self._num = self._den = 1
        if balance_factor is not None:
            try:
                bounded = BoundedLoads(ring, balance_factor=balance_factor)
            except RingError as exc:
                raise ConfigError(str(exc).replace("balance_factor", "the balance factor")) from None
            self.balance_factor = bounded.balance_factor
            exact = Fraction(balance_factor)
            self._num, self._den = exact.numerator, exact.denominator
        self.upstreams = _upstream_names(ring, upstreams)
        if pool is not None and (not isinstance(pool, str) or not pool):
            raise ConfigError(f"a shard stage's pool must be a pool's name, not {pool!r}")
        self.pool = pool
        self.pools = () if pool is None else (pool,)
        self.shard_header = None if shard_header is None else _field_name(shard_header)
        if name:
            self.name = name
        self.reads = self.key.reads
        if isinstance(memo_entries, bool) or not isinstance(memo_entries, int) or memo_entries < 1:
            raise ConfigError(f"memo_entries must be a whole number of at least 1, not {memo_entries!r}")
        self.memo_entries = memo_entries
        self._memo: dict[bytes, Forward] = {}
        self._walks: dict[bytes, tuple[str, ...]] = {}
        self._forwards: dict[tuple[str, ...], Forward] = {}
        self._no_key = Forward(pool=pool)

    def __repr__(self) -> str:
        factor = "" if self.balance_factor is None else f" balance_factor={self.balance_factor:g}"
        return (
            f"<ShardStage {self.name or self.kind!r} key={self.key.text} {type(self.ring).__name__} "
            f"of {len(self.ring)} replicas={self.replicas}{factor}>"
        )

    # -- the decision ---------------------------------------------------------------------

    def on_request(self, request: Request, tick: Tick) -> Forward:
        key = self.key.extract(request)
        if not key:
            request.notes[self.name] = NO_KEY
            return self._no_key
        if self.balance_factor is not None:
            forward = self._bounded(key, request)
        else:
            found = self._memo.get(key)
            if found is None:
                found = self._forward(self.order(key))
                if len(key) <= MEMO_KEY_MAX:
                    memo = self._memo
                    if len(memo) >= self.memo_entries:
                        memo.clear()
                    memo[key] = found
            forward = found
        request.notes[self.name] = forward.order[0]
        return forward

    def order(self, key: bytes) -> tuple[str, ...]:
        """The key's shard and the ring's next distinct nodes, ``replicas`` of them, as upstream
        names: the order without a balance factor (or with one, when every load is 0)."""
        names = self.upstreams
        return tuple(names[node] for node in islice(self.ring.iter_nodes(key), self.replicas))

    def walk(self, key: bytes) -> tuple[str, ...]:
        """Every shard once, in the key's ring order, as upstream names (remembered)."""
        walk = self._walks.get(key)
        if walk is None:
            names = self.upstreams
            walk = tuple(names[node] for node in self.ring.iter_nodes(key))
            if len(key) <= MEMO_KEY_MAX:
                walks = self._walks
                if len(walks) >= self.memo_entries:
                    walks.clear()
                walks[key] = walk
        return walk

    def capacity(self, total: int, live: int) -> int:
        """The most in-flight requests an upstream may have once one more is placed, with ``total``
        in flight over ``live`` upstreams: ``ceil(c x (total + 1) / live)``, exactly (BoundedLoads)."""
        return -((-self._num * (total + 1)) // (self._den * live))

    def _bounded(self, key: bytes, request: Request) -> Forward:
        walk = self.walk(key)
        pools = request.pools
        order = walk[: self.replicas]
        if pools is not None:
            pool = self.pool
            loads = pools.in_flight(pool)
            live = [u for u in walk if pools.available(pool, u)]
            if live:
                cap = self.capacity(sum(loads.get(u, 0) for u in live), len(live))
                under: list[str] = []
                for u in live:
                    if loads.get(u, 0) < cap:
                        under.append(u)
                        if len(under) == self.replicas:
                            break
                order = tuple(under)
        forward = self._forwards.get(order)
        if forward is None:
            forward = self._forward(order)
            # Orders are few (each a prefix of some ring order filtered by the loads); bounded anyway.
            if len(self._forwards) >= self.memo_entries:
                self._forwards.clear()
            self._forwards[order] = forward
        return forward

    def _forward(self, order: tuple[str, ...]) -> Forward:
        header = self.shard_header
        respond = () if header is None else ((header, order[0].encode("utf-8")),)
        return Forward(pool=self.pool, order=order, respond=respond)


def _upstream_names(ring: Ring, upstreams: Mapping[str, str] | None) -> dict[str, str]:
    if upstreams is None:
        return {node: node for node in ring.nodes}
    names: dict[str, str] = {}
    seen: dict[str, str] = {}
    for node in ring.nodes:
        upstream = upstreams.get(node)
        if not isinstance(upstream, str) or not upstream:
            raise ConfigError(f"shard {node!r} has no upstream name")
        if upstream in seen:
            raise ConfigError(f"shards {seen[upstream]!r} and {node!r} are the same upstream, {upstream}")
        seen[upstream] = node
        names[node] = upstream
    extra = set(upstreams) - set(names)
    if extra:
        raise ConfigError(f"upstream names given for {sorted(extra)[0]!r}, which is not a shard of the ring")
    return names


def _field_name(text: str) -> bytes:
    raw = text.strip().encode("ascii", "replace") if isinstance(text, str) else b""
    if not raw or any(c not in _TOKEN for c in raw):
        raise ConfigError(f"the shard header must be a field name made of token characters, not {text!r}")
    return raw
