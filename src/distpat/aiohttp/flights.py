"""Carrying out a :class:`~distpat.core.stage.Join`: keyed flights in one process (request
coalescing, as Go's ``singleflight``).

The first request to join a key leads: it goes on, and the :class:`~distpat.core.stage.Outcome`
its request ends with (its captured body included) is handed to every request that joined
the key meanwhile. A waiter waits at most the Join's ``timeout`` (then ``TIMED_OUT``, and the
flight goes on without it); a flight that already has ``max_waiters`` turns newcomers away
(``FULL``). The leader lands its flight however its request ends -- answered, failed, cut or
cancelled -- so no waiter is left behind; waiters whose own clients leave do not disturb the
others (the shared future is shielded).
"""

from __future__ import annotations

import asyncio

from distpat.core.stage import Flight, FlightRole, Join, Outcome

__all__ = ["Flights", "Lead"]


class Lead:
    """A flight being led: the key, the future its waiters wait on, how many wait."""

    __slots__ = ("key", "future", "waiters")

    def __init__(self, key: bytes, future: asyncio.Future[Outcome]) -> None:
        self.key = key
        self.future = future
        self.waiters = 0

    def __repr__(self) -> str:
        return f"<Lead {self.key[:40]!r} waiters={self.waiters} landed={self.future.done()}>"


class Flights:
    """The flights of one driver (one middleware), by key."""

    __slots__ = ("_flights",)

    def __init__(self) -> None:
        self._flights: dict[bytes, Lead] = {}

    async def join(self, join: Join) -> tuple[Flight, Lead | None]:
        """Join ``join.key``: the flight's role for this request, and the :class:`Lead` to land
        when this request leads (None otherwise)."""
        lead = self._flights.get(join.key)
        if lead is None:
            lead = Lead(join.key, asyncio.get_running_loop().create_future())
            self._flights[join.key] = lead
            return Flight(FlightRole.LEADER), lead
        if lead.waiters >= join.max_waiters:
            return Flight(FlightRole.FULL), None
        lead.waiters += 1
        try:
            outcome = await asyncio.wait_for(asyncio.shield(lead.future), join.timeout)
        except TimeoutError:
            return Flight(FlightRole.TIMED_OUT), None
        finally:
            lead.waiters -= 1
        return Flight(FlightRole.SHARED, outcome), None

    def land(self, lead: Lead, outcome: Outcome) -> None:
        """The leader's request is over: every waiter gets ``outcome``; the key is free again."""
        if self._flights.get(lead.key) is lead:
            del self._flights[lead.key]
        if not lead.future.done():
            lead.future.set_result(outcome)

    def waiting(self, key: bytes) -> int:
        """Requests waiting on the flight ``key`` now (0 when there is none)."""
        lead = self._flights.get(key)
        return 0 if lead is None else lead.waiters

    def __len__(self) -> int:
        return len(self._flights)

    def __repr__(self) -> str:
        return f"<Flights {len(self._flights)} in the air>"
