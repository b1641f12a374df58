"""Keyed flights on a real event loop: leading, waiting, landing, timing out, cancelling, and no
waiter ever left waiting, whatever the sequence (distpat.net.flights)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from distpat.core.stage import Flight, FlightRole, Outcome, OutcomeKind
from distpat.net.flights import Flights, FlightTicket

ANSWERED = Outcome(OutcomeKind.ANSWERED, status=200, body=b"shared body")


class Wakes:
    """``wake`` callbacks that record what each ticket was told."""

    def __init__(self) -> None:
        self.got: dict[str, list[Flight]] = {}

    def for_(self, name: str) -> Callable[[Flight], None]:
        self.got[name] = []
        return lambda flight: self.got[name].append(flight)

    def roles(self) -> dict[str, list[FlightRole]]:
        return {name: [f.role for f in flights] for name, flights in self.got.items()}


async def test_the_first_leads_the_others_share_its_outcome() -> None:
    flights = Flights()
    wakes = Wakes()
    leader = flights.join(b"k", 5.0, 10, wakes.for_("leader"))
    assert leader.flight == Flight(FlightRole.LEADER)
    assert leader.leading
    waiters = [flights.join(b"k", 5.0, 10, wakes.for_(f"w{i}")) for i in range(3)]
    assert all(w.flight is None and w.waiting for w in waiters)
    assert flights.waiters(b"k") == 3
    assert b"k" in flights
    assert flights.land(b"k", ANSWERED) == 3
    assert wakes.roles() == {"leader": [], "w0": [], "w1": [], "w2": []}  # not from inside land()
    assert b"k" not in flights
    await asyncio.sleep(0)
    assert wakes.got == {"leader": [], **{f"w{i}": [Flight(FlightRole.SHARED, ANSWERED)] for i in range(3)}}
    assert all(w.flight == Flight(FlightRole.SHARED, ANSWERED) for w in waiters)
    again = flights.join(b"k", 5.0, 10, wakes.for_("next"))
    assert again.flight == Flight(FlightRole.LEADER)  # a landed flight is over: nothing is cached
    assert again.land(ANSWERED) == 0
    assert len(flights) == 0


async def test_keys_fly_apart() -> None:
    flights = Flights()
    wakes = Wakes()
    a = flights.join(b"a", 5.0, 10, wakes.for_("a"))
    b = flights.join(b"b", 5.0, 10, wakes.for_("b"))
    assert a.flight == b.flight == Flight(FlightRole.LEADER)
    wa = flights.join(b"a", 5.0, 10, wakes.for_("wa"))
    assert flights.land(b"b", ANSWERED) == 0
    await asyncio.sleep(0)
    assert wa.waiting
    a.land(ANSWERED)
    await asyncio.sleep(0)
    assert wakes.roles()["wa"] == [FlightRole.SHARED]


async def test_a_full_flight_refuses_at_once() -> None:
    flights = Flights()
    wakes = Wakes()
    flights.join(b"k", 5.0, 2, wakes.for_("leader"))
    first, second = (flights.join(b"k", 5.0, 2, wakes.for_(f"w{i}")) for i in range(2))
    full = flights.join(b"k", 5.0, 2, wakes.for_("full"))
    assert full.flight == Flight(FlightRole.FULL)
    assert flights.waiters(b"k") == 2
    first.cancel()
    assert flights.join(b"k", 5.0, 2, wakes.for_("room")).waiting
    assert flights.join(b"k2", 5.0, 0, wakes.for_("l2")).flight == Flight(FlightRole.LEADER)
    assert flights.join(b"k2", 5.0, 0, wakes.for_("none")).flight == Flight(FlightRole.FULL)
    flights.land(b"k", ANSWERED)
    flights.land(b"k2", ANSWERED)
    await asyncio.sleep(0)
    assert wakes.roles() == {
        "leader": [],
        "w0": [],
        "w1": [FlightRole.SHARED],
        "full": [],
        "room": [FlightRole.SHARED],
        "l2": [],
        "none": [],
    }
    assert second.flight is not None


async def test_a_waiter_times_out_and_the_flight_goes_on() -> None:
    flights = Flights()
    wakes = Wakes()
    leader = flights.join(b"k", 5.0, 10, wakes.for_("leader"))
    quick = flights.join(b"k", 0.01, 10, wakes.for_("quick"))
    patient = flights.join(b"k", 5.0, 10, wakes.for_("patient"))
    await asyncio.sleep(0.05)
    assert wakes.roles() == {"leader": [], "quick": [FlightRole.TIMED_OUT], "patient": []}
    assert quick.flight == Flight(FlightRole.TIMED_OUT)
    assert flights.waiters(b"k") == 1
    assert leader.land(ANSWERED) == 1
    await asyncio.sleep(0)
    assert wakes.roles() == {"leader": [], "quick": [FlightRole.TIMED_OUT], "patient": [FlightRole.SHARED]}
    quick.cancel()  # already woken: nothing happens
    assert patient.flight == Flight(FlightRole.SHARED, ANSWERED)


async def test_a_cancelled_waiter_is_never_woken() -> None:
    flights = Flights()
    wakes = Wakes()
    flights.join(b"k", 5.0, 10, wakes.for_("leader"))
    gone = flights.join(b"k", 0.01, 10, wakes.for_("gone"))
    late = flights.join(b"k", 5.0, 10, wakes.for_("late"))
    flights.join(b"k", 5.0, 10, wakes.for_("kept"))
    gone.cancel()
    assert gone.cancelled
    assert flights.waiters(b"k") == 2
    await asyncio.sleep(0.05)  # past its timeout: its timer was cancelled too
    assert flights.land(b"k", ANSWERED) == 2
    late.cancel()  # landed, its wake scheduled, not yet called: never called
    await asyncio.sleep(0)
    assert wakes.roles() == {"leader": [], "gone": [], "late": [], "kept": [FlightRole.SHARED]}
    assert late.cancelled


async def test_a_leader_gone_without_landing_lands_client_gone() -> None:
    flights = Flights()
    wakes = Wakes()
    leader = flights.join(b"k", 5.0, 10, wakes.for_("leader"))
    waiter = flights.join(b"k", 5.0, 10, wakes.for_("waiter"))
    leader.cancel()
    assert b"k" not in flights
    await asyncio.sleep(0)
    assert waiter.flight == Flight(FlightRole.SHARED, Outcome(OutcomeKind.CLIENT_GONE))
    leader.cancel()  # twice: nothing more
    new_leader = flights.join(b"k", 5.0, 10, wakes.for_("new"))
    assert new_leader.flight == Flight(FlightRole.LEADER)
    assert leader.land(ANSWERED) == 0  # a stale leader never lands a later flight of its key
    assert new_leader.leading
    assert wakes.roles()["waiter"] == [FlightRole.SHARED]


async def test_a_wake_that_raises_does_not_stop_the_others() -> None:
    caught: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: caught.append(context))
    try:
        flights = Flights()
        woken: list[Flight] = []

        def broken(flight: Flight) -> None:
            raise RuntimeError("waiter broke")

        flights.join(b"k", 5.0, 10, woken.append)
        flights.join(b"k", 5.0, 10, broken)
        flights.join(b"k", 5.0, 10, woken.append)
        flights.land(b"k", ANSWERED)
        await asyncio.sleep(0)
        assert woken == [Flight(FlightRole.SHARED, ANSWERED)]
        assert isinstance(caught[0]["exception"], RuntimeError)
    finally:
        loop.set_exception_handler(None)


# -- any sequence: every waiter ends exactly once ------------------------------------------

KEYS = (b"a", b"b", b"c")
MAX_TIMEOUT = 0.03

ops = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.sampled_from(KEYS), st.integers(0, 30), st.integers(0, 3)),
        st.tuples(st.just("land"), st.sampled_from(KEYS), st.booleans()),
        st.tuples(st.just("cancel"), st.integers(0, 200)),
        st.tuples(st.just("stale_land"), st.integers(0, 200)),
        st.tuples(st.just("sleep"), st.integers(0, 5)),
    ),
    max_size=40,
)


@dataclass(eq=False)
class Joined:
    """One join as the model sees it."""

    ticket: FlightTicket
    flight: int  # the model's number for the flight it joined
    role: str  # leader, full, waiter
    woken: list[Flight] = field(default_factory=list)
    cancelled: bool = False
    landed: bool = False  # its flight landed (its wake is scheduled)
    errors: list[str] = field(default_factory=list)

    def wake(self, flight: Flight) -> None:
        if self.cancelled:
            self.errors.append("woken after cancel")
        if self.role != "waiter":
            self.errors.append(f"a {self.role} was woken")
        self.woken.append(flight)

    @property
    def live(self) -> bool:
        return self.role == "waiter" and not self.cancelled and not self.landed and not self.woken


async def play(steps: list[tuple[object, ...]]) -> None:
    flights = Flights()
    joined: list[Joined] = []
    current: dict[bytes, tuple[int, Joined]] = {}  # key -> (flight number, its leader)
    outcomes: dict[int, Outcome] = {}
    numbers = iter(range(1, 10_000))

    def landing(key: bytes, outcome: Outcome) -> int:
        number, _ = current.pop(key)
        outcomes[number] = outcome
        members = [j for j in joined if j.flight == number and j.live]
        for j in members:
            j.landed = True
        return len(members)

    def live_waiters(key: bytes) -> int:
        if key not in current:
            return 0
        return sum(1 for j in joined if j.flight == current[key][0] and j.live)

    for step in steps:
        kind = step[0]
        if kind == "join":
            _, key, ms, cap = step
            assert isinstance(key, bytes)
            assert isinstance(ms, int)
            assert isinstance(cap, int)
            before = flights.waiters(key)
            assert before == live_waiters(key)
            number = current[key][0] if key in current else next(numbers)
            holder: list[Joined] = []
            ticket = flights.join(key, ms / 1000, cap, lambda f, h=holder: h[0].wake(f))
            if key not in current:
                role = "leader"
                assert ticket.flight == Flight(FlightRole.LEADER)
            elif before >= cap:
                role = "full"
                assert ticket.flight == Flight(FlightRole.FULL)
            else:
                role = "waiter"
                assert ticket.waiting
            j = Joined(ticket, number, role)
            holder.append(j)
            joined.append(j)
            if role == "leader":
                current[key] = (number, j)
        elif kind == "land":
            _, key, by_ticket = step
            assert isinstance(key, bytes)
            if key not in current:
                assert flights.land(key, ANSWERED) == 0
                continue
            number, leader = current[key]
            outcome = Outcome(OutcomeKind.ANSWERED, status=200 + number % 300)
            expected = landing(key, outcome)
            got = leader.ticket.land(outcome) if by_ticket else flights.land(key, outcome)
            assert got == expected
        elif kind == "cancel" and joined:
            assert isinstance(step[1], int)
            j = joined[step[1] % len(joined)]
            key = j.ticket.key
            if j.role == "leader" and key in current and current[key][1] is j:
                landing(key, Outcome(OutcomeKind.CLIENT_GONE))
            elif j.role == "waiter" and not j.woken:
                j.cancelled = True
            j.ticket.cancel()
        elif kind == "stale_land" and joined:
            assert isinstance(step[1], int)
            j = joined[step[1] % len(joined)]
            key = j.ticket.key
            outcome = Outcome(OutcomeKind.UPSTREAM_FAILED, status=502)
            if key in current and current[key][1] is j:
                expected = landing(key, outcome)
                assert j.ticket.land(outcome) == expected
            else:
                assert j.ticket.land(outcome) == 0  # never lands someone else's flight
        elif kind == "sleep":
            assert isinstance(step[1], int)
            await asyncio.sleep(step[1] / 1000)

    # the leaders still up end one way or the other; then every timeout has passed
    for key, (_, leader) in list(current.items()):
        landing(key, Outcome(OutcomeKind.CLIENT_GONE))
        leader.ticket.cancel()
    await asyncio.sleep(MAX_TIMEOUT + 0.02)

    assert len(flights) == 0
    for j in joined:
        assert j.errors == []
        assert len(j.woken) <= 1
        if j.role != "waiter":
            assert j.woken == []
        elif j.cancelled:
            assert j.woken == []
            assert j.ticket.cancelled
        else:  # no waiter is left waiting
            assert len(j.woken) == 1, j
            [flight] = j.woken
            assert j.ticket.flight == flight
            if flight.role is FlightRole.SHARED:
                assert j.landed
                assert flight.outcome == outcomes[j.flight]
            else:
                assert flight == Flight(FlightRole.TIMED_OUT)
                assert not j.landed


@given(ops)
def test_no_waiter_is_ever_left_waiting(steps: list[tuple[object, ...]]) -> None:
    asyncio.run(play(steps))
