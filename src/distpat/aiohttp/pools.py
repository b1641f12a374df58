"""Named pools of upstream servers, as the aiohttp driver forwards to them.

A pool is a name and a list of ``http://host:port`` (or ``https://``) URLs. Each upstream is
named ``host:port``, as :mod:`distpat.net` names its upstreams, so a stage's
:attr:`Forward.order <distpat.core.stage.Forward.order>` means the same under both drivers.
Without an order the pool's upstreams take turns (round robin); with one, they are tried in
its order and never outside it (a shard and its replicas).

:class:`UpstreamPools` is also the :class:`~distpat.core.stage.Pools` view stages read
(``Request.pools``): members in configured order and requests in flight to each. This driver
keeps no health state of its own (no passive ejection): every member counts as available.
The default pool (``None``) is the aiohttp application itself, which has no members.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from yarl import URL

from distpat.errors import ConfigError

__all__ = ["Upstream", "UpstreamPool", "UpstreamPools", "parse_upstream"]


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream server of a pool."""

    name: str
    """``host:port`` (``[v6]:port`` for an IPv6 address), the name stages use in orders."""
    base: str
    """``scheme://host:port``, to which the request target is appended."""


def parse_upstream(text: str) -> Upstream:
    """``http://host:port`` -> :class:`Upstream`; raises :class:`ConfigError` for anything else
    (another scheme, a path, a query, credentials)."""
    try:
        url = URL(text)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"upstream {text!r}: not a URL ({exc})") from None
    if url.scheme not in ("http", "https"):
        raise ConfigError(f"upstream {text!r}: use http:// or https://")
    if not url.host:
        raise ConfigError(f"upstream {text!r}: no host")
    if url.path not in ("", "/") or url.query_string or url.fragment or url.user or url.password:
        raise ConfigError(f"upstream {text!r}: give scheme, host and port only")
    try:
        port = url.port
    except ValueError:
        raise ConfigError(f"upstream {text!r}: invalid port") from None
    host = url.raw_host or url.host
    shown = f"[{host}]" if ":" in host else host
    return Upstream(f"{shown}:{port}", f"{url.scheme}://{shown}:{port}")


class UpstreamPool:
    """One named pool: its upstreams, their turn, and requests in flight to each."""

    __slots__ = ("name", "upstreams", "_by_name", "_next", "_in_flight")

    def __init__(self, name: str, urls: Sequence[str]) -> None:
        if isinstance(urls, str):
            raise ConfigError(f"pool {name!r}: give a list of upstream URLs, not one string")
        if not urls:
            raise ConfigError(f"pool {name!r}: at least one upstream is needed")
        self.name = name
        self.upstreams = tuple(parse_upstream(u) for u in urls)
        self._by_name: dict[str, Upstream] = {}
        for upstream in self.upstreams:
            if upstream.name in self._by_name:
                raise ConfigError(f"pool {name!r}: {upstream.name} is listed twice")
            self._by_name[upstream.name] = upstream
        self._next = 0
        self._in_flight = dict.fromkeys(self._by_name, 0)

    def candidates(self, order: tuple[str, ...] = ()) -> tuple[Upstream, ...] | None:
        """The upstreams to try, first to last: ``order`` resolved to upstreams (None when it
        names one not in the pool), or with no order every upstream starting at the next in turn."""
        if order:
            try:
                return tuple(self._by_name[name] for name in order)
            except KeyError:
                return None
        start = self._next
        self._next = (start + 1) % len(self.upstreams)
        return self.upstreams[start:] + self.upstreams[:start]

    def enter(self, upstream: Upstream) -> None:
        """A request to ``upstream`` begins (counted in :meth:`in_flight` until :meth:`leave`)."""
        self._in_flight[upstream.name] += 1

    def leave(self, upstream: Upstream) -> None:
        self._in_flight[upstream.name] -= 1

    def in_flight(self) -> dict[str, int]:
        return dict(self._in_flight)

    def names(self) -> tuple[str, ...]:
        return tuple(u.name for u in self.upstreams)

    def __repr__(self) -> str:
        return f"<UpstreamPool {self.name} {' '.join(self.names())}>"


class UpstreamPools:
    """Every named pool, and the :class:`~distpat.core.stage.Pools` view of them for stages."""

    __slots__ = ("_pools",)

    def __init__(self, pools: Mapping[str, Sequence[str]] | None = None) -> None:
        self._pools: dict[str, UpstreamPool] = {}
        for name, urls in (pools or {}).items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"a pool needs a name, not {name!r}")
            self._pools[name] = UpstreamPool(name, urls)

    def get(self, name: str | None) -> UpstreamPool | None:
        return None if name is None else self._pools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._pools

    def __iter__(self) -> Iterator[str]:
        return iter(self._pools)

    def __len__(self) -> int:
        return len(self._pools)

    # -- distpat.core.stage.Pools ------------------------------------------------------

    def members(self, pool: str | None) -> tuple[str, ...]:
        found = self.get(pool)
        return () if found is None else found.names()

    def in_flight(self, pool: str | None) -> Mapping[str, int]:
        found = self.get(pool)
        return {} if found is None else found.in_flight()

    def available(self, pool: str | None, upstream: str) -> bool:
        return upstream in self.members(pool)

    def __repr__(self) -> str:
        return f"<UpstreamPools {' '.join(self._pools) or '(none)'}>"
