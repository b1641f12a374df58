"""Pools of upstreams: several servers balanced round robin or by fewest outstanding requests,
skipping ejected ones, and kept to a stage's preference order when it gives one."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from distpat.errors import ConfigError
from distpat.net.upstream import Upstream

__all__ = ["UpstreamGroup"]


class UpstreamGroup:
    """Several upstreams, balanced round robin or by fewest outstanding requests."""

    __slots__ = ("upstreams", "balance", "_cycle", "clock", "name", "_orders", "_by_name")

    def __init__(
        self,
        upstreams: list[Upstream],
        *,
        balance: str = "round_robin",
        clock: Callable[[], float] = time.monotonic,
        name: str = "default",
        allow_empty: bool = False,
    ) -> None:
        if not upstreams and not allow_empty:  # empty: a server whose stages answer everything
            raise ConfigError("at least one upstream is needed")
        if balance not in ("round_robin", "least_outstanding"):
            raise ConfigError(f"balance must be round_robin or least_outstanding, not {balance!r}")
        self.upstreams = upstreams
        self.balance = balance
        self._cycle = itertools.cycle(range(len(upstreams)))
        self.clock = clock
        self.name = name
        """The pool's name (``[pools.NAME]``); ``default`` for the proxy's ``--upstream`` list."""
        self._orders: dict[tuple[str, ...], tuple[Upstream, ...]] = {}
        self._by_name = {u.name: u for u in reversed(upstreams)}  # the first of a name, as before

    def by_name(self, name: str) -> Upstream | None:
        """The upstream called ``name`` (``host:port``), or None."""
        return self._by_name.get(name)

    def resolve(self, order: tuple[str, ...]) -> tuple[Upstream, ...] | None:
        """A stage's preference order as upstreams, or None when it names one not in the group.
        Orders are remembered (a ring's are few: one per point of a node's replicas)."""
        found = self._orders.get(order)
        if found is None:
            by_name = {u.name: u for u in self.upstreams}
            try:
                found = tuple(by_name[name] for name in order)
            except KeyError:
                return None
            if len(self._orders) >= 4096:
                self._orders.clear()
            self._orders[order] = found
        return found

    def in_flight(self) -> dict[str, int]:
        """Requests in flight to each upstream, by name."""
        return {u.name: u.outstanding for u in self.upstreams}

    def names(self) -> tuple[str, ...]:
        return tuple(u.name for u in self.upstreams)

    def healthy(self) -> list[Upstream]:
        now = self.clock()
        return [u for u in self.upstreams if u.available(now)]

    def untried(self, tried: frozenset[Upstream], order: tuple[Upstream, ...] = ()) -> bool:
        """Whether an upstream of ``order`` (or of the pool, without one) is left to try."""
        return any(u not in tried for u in order or self.upstreams)

    def choose(
        self, exclude: frozenset[Upstream] = frozenset(), order: tuple[Upstream, ...] = ()
    ) -> Upstream | None:
        """The next upstream to try, or None when every one is ejected or excluded.

        With ``order`` (a stage's preference order: a shard and its replicas), the first of it
        that is neither excluded nor ejected; failover never leaves ``order``. When all of it
        not yet tried is ejected, the one whose ejection ends first (as without an order).
        """
        if order:
            first = order[0]
            if first.health.ejected_until == 0.0 and first not in exclude:
                return first  # the usual case: the key's own shard, in rotation (no clock read)
            now = self.clock()
            for u in order:
                if u not in exclude and u.available(now):
                    return u
            rest = [u for u in order if u not in exclude]
            return min(rest, key=lambda u: u.ejected_until) if rest else None
        if len(self.upstreams) == 1 and not exclude:
            return self.upstreams[0]  # the only one: ejected or not, it is the one to try
        now = self.clock()
        if self.balance == "least_outstanding":
            candidates = [u for u in self.upstreams if u not in exclude and u.available(now)]
            if not candidates:
                return self._least_recently_ejected(exclude)
            return min(candidates, key=lambda u: u.outstanding)
        for _ in range(len(self.upstreams)):
            u = self.upstreams[next(self._cycle)]
            if u not in exclude and u.available(now):
                return u
        return self._least_recently_ejected(exclude)

    def _least_recently_ejected(self, exclude: frozenset[Upstream]) -> Upstream | None:
        # When every upstream is ejected, refusing all traffic until one's
        # timeout ends would turn a blip into an outage: try the one whose
        # ejection ends first (nginx likewise ignores max_fails then).
        rest = [u for u in self.upstreams if u not in exclude]
        return min(rest, key=lambda u: u.ejected_until) if rest else None

    async def close(self) -> None:
        for u in self.upstreams:
            await u.close()
