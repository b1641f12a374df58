"""The rate limiter's shared mode with no sockets: the stage's Call to Redis, made-up replies.

Every reply is written here as the script (src/distpat/core/limiter_shared.py) answers it: the
first enforced limit that refuses (1-based, 0 for none), the server's clock, and each key's state
before the request (``"excess last"``, ``b""`` for a key Redis does not hold). The stage must turn a
reply into exactly what the local mode decides for the same states at the same time; when Redis
fails (unavailable, an error reply, a reply of the wrong shape) it does what ``on_redis_error``
says, and tells of the switch down and back up once each.
"""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distpat.core.keys import KeySource
from distpat.core.limiter import EPSILON, DecisionKind, Limit, State
from distpat.core.limiter_shared import SCRIPT, SCRIPT_SHA
from distpat.core.ratelimit_stage import COST_NOTE, REDIS_TIMEOUT, LimitRule, RateLimitStage
from distpat.core.stage import (
    Answer,
    Call,
    CallResult,
    Effect,
    Forward,
    Hold,
    Outcome,
    OutcomeKind,
    Request,
    Tick,
)

IP = KeySource.parse("ip")
X_KEY = KeySource.parse("header:X-Key")
CLIENT = "192.0.2.1"
URL = "redis://127.0.0.1:6390"
NOSCRIPT = "NOSCRIPT No matching script. Please use EVAL."
UNAVAILABLE = "unavailable: connect to 127.0.0.1:6390 failed: [Errno 111] Connection refused"


def tick(t: float = 0.0) -> Tick:
    return Tick(t, 1_800_000_000.0 + t, 7)


def request(x_key: bytes | None = b"k", cost: float | None = None) -> Request:
    fields = {} if x_key is None else {b"x-key": x_key}
    made = Request(b"GET", b"/", CLIENT, fields=fields)
    if cost is not None:
        made.notes[COST_NOTE] = cost
    return made


def shared(*rules: LimitRule, mode: str = "local") -> tuple[RateLimitStage, list[str]]:
    """A shared-mode stage and the list its notices go to."""
    stage = RateLimitStage(rules, name="rl", redis_url=URL, on_redis_error=mode)
    told: list[str] = []
    stage.notify = told.append
    return stage, told


def call_of(effect: Effect | None) -> Call:
    assert isinstance(effect, Call), effect
    assert effect.then is not None
    return effect


def answered(call: Call, result: CallResult) -> Effect | None:
    assert call.then is not None
    return call.then(result)


def text(state: State | None) -> bytes:
    """A state as the script stores it (``'%.17g %.17g'``), ``b""`` for none."""
    return b"" if state is None else b"%.17g %.17g" % state


def reply(refused: int, now: float, *states: State | None) -> CallResult:
    return CallResult([refused, b"%.17g" % now, *(text(s) for s in states)])


def field(effect: Answer | Forward, name: bytes) -> bytes | None:
    pairs = effect.headers if isinstance(effect, Answer) else effect.respond
    return next((v for n, v in pairs if n == name), None)


def settle(effect: Effect | None) -> Effect | None:
    """A Hold's effect once it has waited (the delay itself is compared by the caller)."""
    if isinstance(effect, Hold):
        assert effect.then is not None
        return effect.then(None)
    return effect


# -- the command ----------------------------------------------------------------------------------


def test_the_command_names_every_limit_key_and_argument() -> None:
    per_ip = LimitRule(Limit.nodelay("per-ip", 2.0, burst=3), IP)
    per_key = LimitRule(Limit("per-key", 0.5, burst=4, delay=1), X_KEY, dry_run=True)
    stage, _ = shared(per_ip, per_key)
    call = call_of(stage.on_request(request(b"abc"), tick()))
    assert call.command == (
        *(b"EVALSHA", SCRIPT_SHA, b"2", b"distpat:rl:per-ip:192.0.2.1", b"distpat:rl:per-key:abc"),
        *(b"1.0", repr(EPSILON).encode()),
        *(b"2.0", b"3", b"1"),  # rate, burst, enforced
        *(b"0.5", b"4", b"0"),  # a dry run
    )
    assert call.timeout == REDIS_TIMEOUT
    # a request without the header is judged by per-ip alone; a cost an earlier stage noted is sent
    alone = call_of(stage.on_request(request(None, cost=3), tick()))
    assert alone.command == (
        *(b"EVALSHA", SCRIPT_SHA, b"1", b"distpat:rl:per-ip:192.0.2.1"),
        *(b"3.0", repr(EPSILON).encode(), b"2.0", b"3", b"1"),
    )
    only_key, _ = shared(LimitRule(Limit("k", 1.0), X_KEY))
    assert only_key.on_request(request(None), tick()) is None  # no limit applies: no call at all
    assert hashlib.sha1(SCRIPT).hexdigest().encode() == SCRIPT_SHA


def test_noscript_is_answered_by_eval_with_the_script_then_the_reply_decides() -> None:
    stage, told = shared(LimitRule(Limit.nodelay("per-ip", 1.0, burst=1), IP))
    first = call_of(stage.on_request(request(), tick()))
    again = call_of(answered(first, CallResult(error=NOSCRIPT)))
    assert again.command[:2] == (b"EVAL", SCRIPT)
    assert again.command[2:] == first.command[2:]
    assert again.timeout == first.timeout
    done = answered(again, reply(0, 100.0, None))
    assert isinstance(done, Forward)
    assert field(done, b"RateLimit") == b'"per-ip";r=1;t=1'
    assert (stage.redis_events, told) == ({}, [])  # NOSCRIPT is no failure
    # a NOSCRIPT to the EVAL itself is one: no third call
    second = call_of(stage.on_request(request(), tick()))
    third = call_of(answered(second, CallResult(error=NOSCRIPT)))
    assert isinstance(answered(third, CallResult(error=NOSCRIPT)), Forward)  # local: a fresh table
    assert stage.redis_events == {"error": 1, "down": 1, "local": 1}


# -- a reply decides as the local mode does -------------------------------------------------------

limits = st.builds(
    lambda rate, burst, delay_part: Limit("p", rate, burst, round(burst * delay_part)),
    st.sampled_from([0.016, 0.5, 1.0, 2.0, 10.0, 1000.0]),
    st.integers(0, 8),
    st.floats(0.0, 1.0),
)


@settings(max_examples=200)
@given(
    limits,
    st.one_of(st.none(), st.tuples(st.floats(0.0, 9.0), st.floats(0.0, 100.0))),
    st.floats(0.0, 120.0),
    st.sampled_from([1, 1, 1, 2, 3.5, 12]),
)
def test_a_reply_decides_exactly_as_the_local_mode_on_the_same_state_and_time(
    limit: Limit, state: State | None, now: float, cost: float
) -> None:
    state = None if state is None else (min(state[0], float(limit.burst)), state[1])
    decision = limit.decide(state, now, cost)
    local = RateLimitStage([LimitRule(limit, IP)])
    if state is not None:
        assert local.tables[0].put(CLIENT.encode(), state, now)
    expected = local.on_request(request(cost=cost), tick(now))

    stage, _ = shared(LimitRule(limit, IP))
    refused = 1 if decision.kind is DecisionKind.REJECT else 0  # as the script answers it
    got = answered(call_of(stage.on_request(request(cost=cost), tick(now))), reply(refused, now, state))

    assert type(got) is type(expected)
    if isinstance(got, Hold):
        assert isinstance(expected, Hold)
        assert decision.kind is DecisionKind.DELAY
        assert got.delay == expected.delay == decision.delay
    assert settle(got) == settle(expected)
    final = settle(got)
    assert isinstance(final, (Answer, Forward))
    assert field(final, b"RateLimit") == b'"p";r=%d;t=%d' % (decision.remaining, decision.reset)
    if decision.kind is DecisionKind.REJECT:
        assert isinstance(final, Answer)
        assert final.status == limit.status
        retry = field(final, b"Retry-After")
        assert retry == (None if decision.retry_after is None else b"%d" % decision.retry_after)
    assert stage.counts == local.counts
    assert stage.redis_events == {}


def test_admit_delay_and_reject_with_their_fields() -> None:
    stage, _ = shared(LimitRule(Limit("slow", 2.0, burst=4, delay=1), IP))
    admitted = answered(call_of(stage.on_request(request(), tick())), reply(0, 50.0, None))
    assert isinstance(admitted, Forward)
    assert dict(admitted.respond) == {b"RateLimit-Policy": b'"slow";q=5;w=3', b"RateLimit": b'"slow";r=4;t=1'}
    held = answered(call_of(stage.on_request(request(), tick())), reply(0, 50.0, (2.0, 50.0)))
    assert isinstance(held, Hold)
    assert math.isclose(held.delay, 1.0)  # excess 3 is 2 past delay=1, at 2 r/s
    assert isinstance(settle(held), Forward)
    refused = answered(call_of(stage.on_request(request(), tick())), reply(1, 50.0, (4.0, 50.0)))
    assert isinstance(refused, Answer)
    assert (refused.status, field(refused, b"Retry-After")) == (429, b"1")
    assert field(refused, b"RateLimit") == b'"slow";r=0;t=3'
    assert stage.counts == {("slow", "admit"): 1, ("slow", "delay"): 1, ("slow", "reject"): 1}


def test_the_servers_refusal_stands_when_the_stage_would_admit() -> None:
    """A rounding tie: the script refused, the same state decided in Python admits."""
    limit = Limit.nodelay("tie", 1.0, burst=2)
    stage, _ = shared(LimitRule(limit, IP))
    refused = answered(call_of(stage.on_request(request(), tick())), reply(1, 10.0, (1.0, 10.0)))
    assert isinstance(refused, Answer)
    assert refused.status == 429
    assert field(refused, b"Retry-After") == b"1"
    assert stage.counts == {("tie", "reject"): 1}


def test_the_servers_refusal_names_its_limit_once() -> None:
    limit = Limit.nodelay("tie", 1.0, burst=2)
    stage, _ = shared(LimitRule(limit, IP))
    refused = answered(call_of(stage.on_request(request(), tick())), reply(1, 10.0, (1.0, 10.0)))
    assert isinstance(refused, Answer)
    assert field(refused, b"RateLimit") == b'"tie";r=0;t=%d' % limit.window


def test_a_dry_run_limit_refuses_nothing_and_counts_what_it_would_refuse() -> None:
    trial = LimitRule(Limit.nodelay("trial", 1.0), X_KEY, dry_run=True)
    per_ip = LimitRule(Limit.nodelay("per-ip", 1.0, burst=5), IP)
    stage, _ = shared(per_ip, trial)
    call = call_of(stage.on_request(made := request(), tick()))
    assert call.command[-1] == b"0"
    # trial's bucket is full: the script refuses nothing for a dry run (refused = 0)
    effect = answered(call, reply(0, 5.0, (0.0, 5.0), (0.0, 5.0)))
    assert isinstance(effect, Forward)
    assert field(effect, b"RateLimit") == b'"per-ip";r=4;t=2'
    assert stage.counts == {("trial", "dry_run_reject"): 1, ("per-ip", "admit"): 1}
    assert made.notes["rl:dry_run"] == "trial"


def test_with_several_limits_one_refusing_refuses_with_that_limit() -> None:
    per_ip = LimitRule(Limit.nodelay("per-ip", 1.0, burst=10), IP)
    per_key = LimitRule(Limit.nodelay("per-key", 1.0, burst=0, status=503), X_KEY)
    stage, _ = shared(per_ip, per_key)
    effect = answered(call_of(stage.on_request(made := request(), tick())), reply(2, 3.0, None, (0.0, 3.0)))
    assert isinstance(effect, Answer)
    assert effect.status == 503
    assert field(effect, b"Retry-After") == b"1"
    assert stage.counts == {("per-key", "reject"): 1}  # per-ip admitted nothing: not counted
    assert made.notes["rl"] == "reject:per-key"


def test_with_several_limits_the_refusal_is_the_local_modes() -> None:
    first = LimitRule(Limit.nodelay("first", 1.0, burst=0), X_KEY)
    second = LimitRule(Limit.nodelay("second", 1.0, burst=10), IP)
    local = RateLimitStage([first, second], name="rl")
    assert local.tables[0].put(b"k", (0.0, 3.0), 3.0)
    expected = local.on_request(request(), tick(3.0))
    assert isinstance(expected, Answer)
    assert field(expected, b"RateLimit") == b'"first";r=0;t=1'
    stage, _ = shared(first, second)
    got = answered(call_of(stage.on_request(request(), tick())), reply(1, 3.0, (0.0, 3.0), None))
    assert got == expected


# -- when Redis fails -----------------------------------------------------------------------------

FAILURES = [
    pytest.param(CallResult(error=UNAVAILABLE), id="unavailable"),
    pytest.param(CallResult(error="ERR Error running script: @user_script:1: boom"), id="error"),
    pytest.param(CallResult(error="LOADING Redis is loading the dataset in memory"), id="loading"),
    pytest.param(CallResult(b"OK"), id="not-a-list"),
    pytest.param(CallResult([0, b"1.0"]), id="too-few"),
    pytest.param(CallResult([0, b"1.0", b"", b""]), id="too-many"),
    pytest.param(CallResult([2, b"1.0", b""]), id="refused-out-of-range"),
    pytest.param(CallResult([b"0", b"1.0", b""]), id="refused-not-an-integer"),
    pytest.param(CallResult([0, 1, b""]), id="time-not-a-string"),
    pytest.param(CallResult([0, b"soon", b""]), id="time-not-a-number"),
    pytest.param(CallResult([0, b"1.0", b"12"]), id="state-without-last"),
    pytest.param(CallResult([0, b"1.0", b"x 1"]), id="state-not-numbers"),
    pytest.param(CallResult([0, b"1.0", 12]), id="state-not-a-string"),
    pytest.param(CallResult(None), id="null"),
]


def effects_while_down(stage: RateLimitStage, failure: CallResult, count: int) -> list[Effect | None]:
    return [answered(call_of(stage.on_request(request(), tick())), failure) for _ in range(count)]


@pytest.mark.parametrize("failure", FAILURES)
def test_open_admits_with_the_policy_field_only(failure: CallResult) -> None:
    stage, told = shared(LimitRule(Limit.nodelay("per-ip", 1.0, burst=1), IP), mode="open")
    effects = effects_while_down(stage, failure, 4)
    expected = Forward(respond=((b"RateLimit-Policy", b'"per-ip";q=2;w=2'),))
    assert effects == [expected] * 4
    assert stage.redis_events == {"error": 4, "down": 1, "open": 4}
    assert stage.redis_down is not None
    assert len(told) == 1
    assert "admitting every request until it answers again" in told[0]
    assert stage.counts == {}


@pytest.mark.parametrize("failure", FAILURES)
def test_closed_refuses_with_503(failure: CallResult) -> None:
    stage, told = shared(LimitRule(Limit.nodelay("per-ip", 1.0, burst=1), IP), mode="closed")
    made = request()
    effect = answered(call_of(stage.on_request(made, tick())), failure)
    assert isinstance(effect, Answer)
    assert (effect.status, effect.headers) == (503, ((b"Retry-After", b"1"),))
    assert effect.reason.startswith("rate limiter's Redis failed: ")
    assert made.notes["rl"] == "redis_closed"
    assert effects_while_down(stage, failure, 2) == [effect] * 2
    assert stage.redis_events == {"error": 3, "down": 1, "closed": 3}
    assert len(told) == 1
    assert "refusing every request with 503" in told[0]


@pytest.mark.parametrize("failure", FAILURES)
def test_local_judges_by_the_processs_own_tables(failure: CallResult) -> None:
    stage, told = shared(LimitRule(Limit.nodelay("per-ip", 1.0, burst=1), IP), mode="local")
    effects = effects_while_down(stage, failure, 3)
    assert [type(e) for e in effects] == [Forward, Forward, Answer]
    assert isinstance(effects[2], Answer)
    assert effects[2].status == 429
    assert stage.redis_events == {"error": 3, "down": 1, "local": 3}
    assert stage.counts == {("per-ip", "admit"): 2, ("per-ip", "reject"): 1}
    assert len(stage.tables[0]) == 1
    assert len(told) == 1
    assert "judging by this process's own tables" in told[0]


@pytest.mark.parametrize("mode", ["open", "closed", "local"])
def test_down_and_up_are_told_once_each_however_many_requests(mode: str) -> None:
    stage, told = shared(LimitRule(Limit.nodelay("per-ip", 1.0, burst=100), IP), mode=mode)
    for _ in range(5):
        effects_while_down(stage, CallResult(error=UNAVAILABLE), 1)
    assert stage.redis_down == UNAVAILABLE
    for _ in range(5):  # answered again: shared again, told once
        back = answered(call_of(stage.on_request(request(), tick())), reply(0, 1.0, None))
        assert isinstance(back, Forward)
    assert stage.redis_down is None
    # down again after a NOSCRIPT whose EVAL fails (a Redis that restarted, then went again)
    again = call_of(answered(call_of(stage.on_request(request(), tick())), CallResult(error=NOSCRIPT)))
    answered(again, CallResult(error=UNAVAILABLE))
    assert stage.redis_events == {"error": 6, "down": 2, mode: 6, "up": 1}
    assert len(told) == 3
    assert UNAVAILABLE in told[0]
    assert "Redis answers again; limits are shared again" in told[1]
    assert UNAVAILABLE in told[2]
    stats = {s.labels: s.value for s in stage.stats() if s.name == "distpat_ratelimit_redis_events"}
    assert stats[(("stage", "rl"), ("event", "down"))] == 2
    assert stats[(("stage", "rl"), ("event", "up"))] == 1


def test_a_stage_with_no_notify_still_counts() -> None:
    stage = RateLimitStage([LimitRule(Limit("p", 1.0), IP)], redis_url=URL, on_redis_error="open")
    assert stage.notify is None
    effects_while_down(stage, CallResult(error=UNAVAILABLE), 2)
    assert stage.redis_events == {"error": 2, "down": 1, "open": 2}


@pytest.mark.parametrize("mode", ["open", "closed", "local"])
def test_a_state_that_is_not_finite_is_a_redis_error(mode: str) -> None:
    stage, _ = shared(LimitRule(Limit.nodelay("per-ip", 1.0, burst=1), IP), mode=mode)
    effect = answered(call_of(stage.on_request(request(), tick())), CallResult([1, b"5.0", b"inf 1"]))
    assert effect is not None
    assert stage.redis_events == {"error": 1, "down": 1, mode: 1}


# -- concurrency stays this process's --------------------------------------------------------------


def test_concurrency_is_acquired_and_released_in_shared_mode() -> None:
    stage, _ = shared(LimitRule(Limit.nodelay("c", 1000.0, burst=1000), IP, concurrency=1))
    counter = stage.inflight[0]
    assert counter is not None
    first = request()
    assert isinstance(answered(call_of(stage.on_request(first, tick())), reply(0, 1.0, None)), Forward)
    assert counter.in_flight(CLIENT.encode()) == 1
    second = request()
    refused = answered(call_of(stage.on_request(second, tick())), reply(0, 1.0, (0.0, 1.0)))
    assert isinstance(refused, Answer)
    assert refused.status == 503
    assert second.notes["rl"] == "concurrency:c"
    stage.on_done(second, Outcome(OutcomeKind.ANSWERED, 503), tick(0.1))
    assert counter.in_flight(CLIENT.encode()) == 1  # the refused one held nothing
    stage.on_done(first, Outcome(OutcomeKind.CLIENT_GONE), tick(0.1))
    stage.on_done(first, Outcome(OutcomeKind.CLIENT_GONE), tick(0.1))  # once only
    assert counter.in_flight(CLIENT.encode()) == 0
    assert isinstance(answered(call_of(stage.on_request(request(), tick())), reply(0, 1.0, None)), Forward)
    # in local fallback mode the bound holds as well
    down, _ = shared(LimitRule(Limit.nodelay("c", 1000.0, burst=1000), IP, concurrency=1), mode="local")
    kept = effects_while_down(down, CallResult(error=UNAVAILABLE), 2)
    assert [type(e) for e in kept] == [Forward, Answer]


def test_concurrency_still_bounds_while_redis_is_down_in_open_mode() -> None:
    stage, _ = shared(LimitRule(Limit.nodelay("c", 1000.0, burst=1000), IP, concurrency=1), mode="open")
    effects = effects_while_down(stage, CallResult(error=UNAVAILABLE), 2)
    assert [type(e) for e in effects] == [Forward, Answer]
