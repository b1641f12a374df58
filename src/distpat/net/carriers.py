"""The carriers of one server's stage effects, made together and closed together.

:class:`~distpat.net.engine.Carriers` is what :mod:`distpat.net.stage_driver` hands the effects
to; this module makes them from the server's settings: mirror copies (net/mirror.py),
sub-requests (net/subrequest.py), keyed flights (net/flights.py) and, with a Redis server
configured, Redis calls (net/resp_client.py).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from distpat.core.stage import Call, CallResult, Flight, Join, Outcome
from distpat.errors import ConfigError
from distpat.net.engine import Carriers, EngineState
from distpat.net.flights import Flights, FlightTicket
from distpat.net.mirror import MirrorSender
from distpat.net.resp_client import RespClient
from distpat.net.subrequest import SubRequests

__all__ = ["EffectCarriers", "parse_redis_url"]


def parse_redis_url(url: str) -> tuple[str, int, str | None, int]:
    """``redis://[:password@]host[:port][/db]`` -> (host, port, password, db); ConfigError else."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ConfigError(f"redis {url!r}: give redis://[:password@]host[:port][/db]")
    try:
        port = parts.port or 6379
        db = int(parts.path.strip("/") or 0)
    except ValueError:
        raise ConfigError(f"redis {url!r}: invalid port or database number") from None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, password, db


class EffectCarriers:
    """Mirror sender, sub-request client and flight table of one server, wired into its state."""

    __slots__ = ("mirrors", "subrequests", "flights", "redis")

    def __init__(
        self,
        state: EngineState,
        *,
        mirror_max_in_flight: int = 64,
        count_mirror: Callable[[str, str], None] | None = None,
        redis: str | None = None,
    ) -> None:
        settings = state.settings
        self.mirrors = MirrorSender(
            max_in_flight=mirror_max_in_flight,
            timeout=settings.response_timeout,
            connect_timeout=settings.connect_timeout,
            on_event=count_mirror,
            batch=state.batch,
        )
        self.subrequests = SubRequests(
            state.pools, via=settings.via, connect_timeout=settings.connect_timeout, batch=state.batch
        )
        self.flights = Flights()
        carriers: Carriers = state.carriers
        carriers.mirror = self.mirrors.send
        carriers.fetch = self.subrequests.fetch
        carriers.join = self._join
        carriers.land = self._land
        self.redis: RespClient | None = None
        if redis is not None:
            host, port, password, db = parse_redis_url(redis)
            self.redis = RespClient(host, port, password=password, db=db)
            carriers.call = self._call

    def _call(self, effect: Call, done: Callable[[CallResult], None]) -> None:
        assert self.redis is not None
        self.redis.call(effect.command, lambda value, error: done(CallResult(value, error)), effect.timeout)

    def _join(self, effect: Join, wake: Callable[[Flight], None]) -> FlightTicket:
        ticket = self.flights.join(effect.key, effect.timeout, effect.max_waiters, wake)
        if ticket.flight is not None:  # leading, or refused (full): known at once
            wake(ticket.flight)
        return ticket

    def _land(self, key: bytes, outcome: Outcome) -> None:
        self.flights.land(key, outcome)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()
        await self.mirrors.close()
        await self.subrequests.close()
