"""Keyed flights: the engine's carrier for a :class:`~distpat.core.stage.Join` (request coalescing,
as Go's ``singleflight`` and nginx's ``proxy_cache_lock``).

The first request to :meth:`Flights.join` a key leads the flight: it goes on to its upstream.
Requests that join the same key while the flight is up wait, and when the leader's request
ends, its owner :meth:`lands <Flights.land>` the flight with the request's
:class:`~distpat.core.stage.Outcome` (whatever it was: answered, failed, timed out, client
gone), which every waiter gets at once. The flight is then over: the next join of the key
leads a new one (nothing is cached here).

How each joiner learns its :class:`~distpat.core.stage.Flight`:

==============  ===========================================================================
``LEADER``      returned at once, in :attr:`FlightTicket.flight`; ``wake`` is never called
``FULL``        returned at once, when the flight already has ``max_waiters`` waiters
``SHARED``      through ``wake``, when the flight lands: one ``loop.call_soon`` per waiter, in
                the order they joined, so no waiter runs inside :meth:`~Flights.land` (the
                leader's own completion) and one waiter raising reaches the loop's exception
                handler, not the others
``TIMED_OUT``   through ``wake``, from the waiter's own ``loop.call_later(timeout)`` timer
                (one per waiter, cancelled when it is woken); the flight goes on without it
==============  ===========================================================================

``wake`` is called at most once per ticket, never from inside ``join``, ``land`` or ``cancel``.
:meth:`FlightTicket.cancel` takes a waiter whose client went away out of the flight: it is
never woken (not even by a ``wake`` already scheduled). Cancelling the *leader's* ticket
before the flight landed lands it with ``Outcome(OutcomeKind.CLIENT_GONE)``: the waiters get
that failed outcome at once (as ``Join`` promises) rather than their timeouts, and the next
request for the key leads afresh. Every waiter thus ends exactly once, by the landing, its
timeout or its cancel: none is left waiting, whatever the leader does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from distpat.core.stage import Flight, FlightRole, Outcome, OutcomeKind

__all__ = ["FlightTicket", "Flights"]

_LEADER = Flight(FlightRole.LEADER)
_FULL = Flight(FlightRole.FULL)
_TIMED_OUT = Flight(FlightRole.TIMED_OUT)
_LEADER_GONE = Outcome(OutcomeKind.CLIENT_GONE)


class _Flight:
    """One key's flight: its leader's ticket and its waiters, in the order they joined."""

    __slots__ = ("key", "leader", "waiters")

    def __init__(self, key: bytes, leader: FlightTicket) -> None:
        self.key = key
        self.leader = leader
        self.waiters: dict[FlightTicket, None] = {}  # ordered, removal in O(1)


class FlightTicket:
    """One joiner's place in a flight."""

    __slots__ = ("key", "flight", "_flights", "_of", "_wake", "_timer", "_call")

    def __init__(
        self,
        flights: Flights,
        key: bytes,
        flight: Flight | None,
        wake: Callable[[Flight], None] | None,
    ) -> None:
        self.key = key
        self.flight = flight
        """LEADER or FULL at once; None while waiting; the Flight ``wake`` got once woken."""
        self._flights = flights
        self._of: _Flight | None = None
        self._wake = wake
        self._timer: asyncio.TimerHandle | None = None
        self._call: asyncio.Handle | None = None

    def __repr__(self) -> str:
        role = self.flight.role.value if self.flight is not None else "waiting"
        return f"<FlightTicket {self.key[:40]!r} {role}{' (cancelled)' if self.cancelled else ''}>"

    @property
    def waiting(self) -> bool:
        """A waiter not woken (nor about to be) and not cancelled."""
        return self._wake is not None and self.flight is None

    @property
    def cancelled(self) -> bool:
        return self._wake is None and self.flight is None

    @property
    def leading(self) -> bool:
        """The leader of a flight that has not landed."""
        of = self._of
        return of is not None and of.leader is self and self._flights._by_key.get(self.key) is of

    def land(self, outcome: Outcome) -> int:
        """As the leader: land this ticket's own flight (a no-op for any other ticket, or once
        landed, so a late or doubled call never lands a later flight of the key)."""
        if not self.leading:
            return 0
        return self._flights.land(self.key, outcome)

    def cancel(self) -> None:
        """This joiner's client went away: a waiter leaves the flight and is never woken; the
        leader lands its flight with a CLIENT_GONE outcome; once woken, nothing happens."""
        if self.leading:
            self._flights.land(self.key, _LEADER_GONE)
            return
        if self.flight is not None and self._call is None:
            return  # woken (or LEADER/FULL, landed): nothing to take back
        self._wake = None
        self.flight = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._call is not None:  # woken by a landing, not yet called: not called at all
            self._call.cancel()
            self._call = None
        of, self._of = self._of, None
        if of is not None:
            of.waiters.pop(self, None)

    # -- waking ----------------------------------------------------------------------

    def _time_out(self) -> None:
        self._timer = None
        of, self._of = self._of, None
        if of is not None:
            of.waiters.pop(self, None)
        self._deliver(_TIMED_OUT)

    def _deliver(self, flight: Flight) -> None:
        self._call = None
        wake, self._wake = self._wake, None
        self.flight = flight
        if wake is not None:
            wake(flight)


class Flights:
    """The flights in the air, by key (see the module docstring)."""

    __slots__ = ("_by_key", "_loop")

    def __init__(self) -> None:
        self._by_key: dict[bytes, _Flight] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<Flights {len(self._by_key)} in the air, {sum(map(self.waiters, self._by_key))} waiting>"

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def waiters(self, key: bytes) -> int:
        """How many wait on ``key``'s flight (0 when none is up)."""
        flight = self._by_key.get(key)
        return 0 if flight is None else len(flight.waiters)

    def join(
        self, key: bytes, timeout: float, max_waiters: int, wake: Callable[[Flight], None]
    ) -> FlightTicket:
        """Join ``key``'s flight: lead it (``ticket.flight`` is LEADER), be refused (FULL), or
        wait (``ticket.flight`` None) for ``wake`` with SHARED, or TIMED_OUT after ``timeout``."""
        flight = self._by_key.get(key)
        if flight is None:
            ticket = FlightTicket(self, key, _LEADER, None)
            ticket._of = self._by_key[key] = _Flight(key, ticket)
            return ticket
        if len(flight.waiters) >= max_waiters:
            return FlightTicket(self, key, _FULL, None)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        ticket = FlightTicket(self, key, None, wake)
        ticket._of = flight
        ticket._timer = loop.call_later(max(timeout, 0.0), ticket._time_out)
        flight.waiters[ticket] = None
        return ticket

    def land(self, key: bytes, outcome: Outcome) -> int:
        """The leader's request ended with ``outcome``: every waiter is woken with it
        (SHARED, one ``call_soon`` each) and the flight is over. Returns the waiters woken;
        0 when no flight of ``key`` is up."""
        flight = self._by_key.pop(key, None)
        if flight is None:
            return 0
        flight.leader._of = None
        waiters = flight.waiters
        flight.waiters = {}
        if not waiters:
            return 0
        loop = self._loop
        assert loop is not None  # set by the first waiter's join
        shared = Flight(FlightRole.SHARED, outcome)
        for ticket in waiters:
            ticket._of = None
            if ticket._timer is not None:
                ticket._timer.cancel()
                ticket._timer = None
            ticket.flight = shared
            ticket._call = loop.call_soon(ticket._deliver, shared)
        return len(waiters)
