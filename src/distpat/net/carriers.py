"""The carriers of one server's stage effects, made together and closed together.

:class:`~distpat.net.engine.Carriers` is what :mod:`distpat.net.stage_driver` hands the effects
to; this module makes them from the server's settings: mirror copies (net/mirror.py),
sub-requests (net/subrequest.py) and keyed flights (net/flights.py). Redis calls are added by
the component that configures a Redis server.
"""

from __future__ import annotations

from collections.abc import Callable

from distpat.core.stage import Flight, Join, Outcome
from distpat.net.engine import Carriers, EngineState
from distpat.net.flights import Flights, FlightTicket
from distpat.net.mirror import MirrorSender
from distpat.net.subrequest import SubRequests

__all__ = ["EffectCarriers"]


class EffectCarriers:
    """Mirror sender, sub-request client and flight table of one server, wired into its state."""

    __slots__ = ("mirrors", "subrequests", "flights")

    def __init__(
        self,
        state: EngineState,
        *,
        mirror_max_in_flight: int = 64,
        count_mirror: Callable[[str, str], None] | None = None,
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

    def _join(self, effect: Join, wake: Callable[[Flight], None]) -> FlightTicket:
        ticket = self.flights.join(effect.key, effect.timeout, effect.max_waiters, wake)
        if ticket.flight is not None:  # leading, or refused (full): known at once
            wake(ticket.flight)
        return ticket

    def _land(self, key: bytes, outcome: Outcome) -> None:
        self.flights.land(key, outcome)

    async def close(self) -> None:
        await self.mirrors.close()
        await self.subrequests.close()
