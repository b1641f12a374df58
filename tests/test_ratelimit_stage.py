"""The rate limiter's stage with no sockets: several limits, refusals with their fields, holds,
dry runs, concurrency released exactly once, the client behind trusted proxies."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from distpat.core.keys import KeySource
from distpat.core.limiter import Limit
from distpat.core.pipeline import Pipeline
from distpat.core.ratelimit_stage import COST_NOTE, LimitRule, RateLimitStage
from distpat.core.real_ip import TrustedProxies
from distpat.core.stage import Answer, Forward, Hold, Outcome, OutcomeKind, Request, Tick

IP = KeySource.parse("ip")
API_KEY = KeySource.parse("header:X-Api-Key")


def tick(t: float) -> Tick:
    return Tick(t, 1_800_000_000.0 + t, 7)


def request(client: str = "192.0.2.1", api_key: bytes | None = None, xff: bytes | None = None) -> Request:
    fields = {}
    if api_key is not None:
        fields[b"x-api-key"] = api_key
    if xff is not None:
        fields[b"x-forwarded-for"] = xff
    return Request(b"GET", b"/", client, fields=fields)


def field(answer: Answer | Forward, name: bytes) -> bytes | None:
    pairs = answer.headers if isinstance(answer, Answer) else answer.respond
    return next((v for n, v in pairs if n == name), None)


def test_the_burst_passes_then_refusals_carry_retry_after_and_the_draft_fields() -> None:
    stage = RateLimitStage([LimitRule(Limit.nodelay("per-ip", 1.0, burst=2), IP)], name="rl")
    admitted = [stage.on_request(request(), tick(0.0)) for _ in range(3)]
    assert all(isinstance(e, Forward) for e in admitted)
    first = admitted[0]
    assert isinstance(first, Forward)
    assert field(first, b"RateLimit-Policy") == b'"per-ip";q=3;w=3'
    assert field(first, b"RateLimit") == b'"per-ip";r=2;t=1'
    refused = stage.on_request(request(), tick(0.0))
    assert isinstance(refused, Answer)
    assert refused.status == 429
    assert field(refused, b"Retry-After") == b"1"
    assert field(refused, b"RateLimit") == b'"per-ip";r=0;t=3'
    assert stage.on_request(request("192.0.2.2"), tick(0.0)).__class__ is Forward  # another client
    assert isinstance(stage.on_request(request(), tick(1.0)), Forward)  # a second later, one more
    assert stage.counts[("per-ip", "reject")] == 1


def test_a_request_refused_by_one_limit_costs_the_others_nothing() -> None:
    per_ip = LimitRule(Limit.nodelay("per-ip", 1.0, burst=10), IP)
    per_key = LimitRule(Limit.nodelay("per-key", 1.0, burst=0), API_KEY)
    stage = RateLimitStage([per_ip, per_key])
    assert isinstance(stage.on_request(request(api_key=b"k"), tick(0.0)), Forward)
    for _ in range(5):  # refused by per-key: per-ip's bucket is not charged for them
        assert isinstance(stage.on_request(request(api_key=b"k"), tick(0.0)), Answer)
    for _ in range(10):  # per-ip still has ten of its eleven
        assert isinstance(stage.on_request(request(), tick(0.0)), Forward)
    assert isinstance(stage.on_request(request(), tick(0.0)), Answer)


def test_excess_past_the_delay_threshold_is_held_then_goes_on() -> None:
    stage = RateLimitStage([LimitRule(Limit("slow", 2.0, burst=4, delay=1), IP)])
    assert isinstance(stage.on_request(request(), tick(0.0)), Forward)
    assert isinstance(stage.on_request(request(), tick(0.0)), Forward)  # within delay=1
    held = stage.on_request(request(), tick(0.0))
    assert isinstance(held, Hold)
    assert held.delay > 0
    assert held.then is not None
    after = held.then(None)
    assert isinstance(after, Forward)
    assert field(after, b"RateLimit-Policy") == b'"slow";q=5;w=3'


def test_dry_run_counts_what_it_would_refuse_and_refuses_nothing() -> None:
    stage = RateLimitStage([LimitRule(Limit.nodelay("trial", 1.0), IP, dry_run=True)], name="rl")
    effects = [stage.on_request(request(), tick(0.0)) for _ in range(5)]
    assert not any(isinstance(e, Answer) for e in effects)
    assert stage.counts[("trial", "dry_run_reject")] == 4


def test_concurrency_is_released_exactly_once_whatever_the_outcome() -> None:
    rule = LimitRule(Limit.nodelay("c", 1000.0, burst=1000), IP, concurrency=2)
    stage = RateLimitStage([rule], name="rl")
    pipeline = Pipeline([stage])
    runs = [pipeline.run(request()) for _ in range(3)]
    effects = [run.start(tick(0.0)) for run in runs]
    assert [type(e) for e in effects] == [Forward, Forward, Answer]
    assert isinstance(effects[2], Answer)
    assert effects[2].status == 503
    for kind in (OutcomeKind.CLIENT_GONE, OutcomeKind.UPSTREAM_FAILED):
        run = runs.pop(0)
        run.done(Outcome(kind), tick(0.1))
        run.done(Outcome(kind), tick(0.1))  # a second report changes nothing
    assert stage.inflight[0] is not None
    assert stage.inflight[0].in_flight(b"192.0.2.1") == 0
    assert isinstance(pipeline.run(request()).start(tick(0.2)), Forward)


def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    trusted = TrustedProxies.parse(["10.0.0.0/8"])
    stage = RateLimitStage([LimitRule(Limit.nodelay("per-ip", 1.0), IP)], trusted=trusted)
    assert b"x-forwarded-for" in stage.reads
    # behind the trusted proxy, each real client has its own bucket
    assert isinstance(stage.on_request(request("10.0.0.5", xff=b"198.51.100.1"), tick(0.0)), Forward)
    assert isinstance(stage.on_request(request("10.0.0.5", xff=b"198.51.100.2"), tick(0.0)), Forward)
    # an untrusted peer claiming to be someone else is still itself
    assert isinstance(stage.on_request(request("203.0.113.9", xff=b"198.51.100.3"), tick(0.0)), Forward)
    assert isinstance(stage.on_request(request("203.0.113.9", xff=b"198.51.100.4"), tick(0.0)), Answer)


def test_an_earlier_stage_may_say_a_request_costs_more() -> None:
    stage = RateLimitStage([LimitRule(Limit.nodelay("cost", 1.0, burst=4), IP)])
    heavy = request()
    heavy.notes[COST_NOTE] = 5
    assert isinstance(stage.on_request(heavy, tick(0.0)), Forward)
    assert isinstance(stage.on_request(request(), tick(0.0)), Answer)  # the five used it all


@given(st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=60), st.integers(0, 5))
def test_over_any_arrivals_admitted_stays_within_burst_plus_rate_times_time(
    gaps: list[float], burst: int
) -> None:
    rate = 2.0
    stage = RateLimitStage([LimitRule(Limit.nodelay("p", rate, burst=burst), IP)])
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        if not isinstance(stage.on_request(request(), tick(now)), Answer):
            admitted += 1
    assert admitted <= burst + 1 + rate * now + 1e-6 * len(gaps)


def _effect_view(effect: object) -> object:
    if isinstance(effect, Hold):
        assert effect.then is not None
        return ("hold", round(effect.delay, 9), _effect_view(effect.then(None)))
    if isinstance(effect, Forward):
        return ("forward", effect.respond)
    if isinstance(effect, Answer):
        return ("answer", effect.status, effect.headers, effect.body)
    return effect


@given(
    st.integers(1, 20),
    st.integers(0, 6),
    st.booleans(),
    st.integers(1, 3),
    st.lists(
        st.tuples(
            st.floats(0, 2, allow_nan=False), st.sampled_from(["192.0.2.1", "192.0.2.2"]), st.integers(1, 3)
        ),
        max_size=40,
    ),
)
def test_the_one_limit_fast_path_decides_as_the_general_one(
    rate: int, burst: int, nodelay: bool, max_keys: int, arrivals: list[tuple[float, str, int]]
) -> None:
    """A stage of one limit takes a shorter path (RateLimitStage._judge_one); forced onto the
    general one, an equal stage gives equal effects, counts and tables for any arrivals."""
    limit = Limit("per-ip", float(rate), burst, burst if nodelay else 0)
    fast = RateLimitStage([LimitRule(limit, IP)], max_keys=max_keys, name="rl")
    general = RateLimitStage([LimitRule(limit, IP)], max_keys=max_keys, name="rl")
    general._one = False
    assert fast._one
    now = 0.0
    for gap, client, cost in arrivals:
        now += gap
        seen = []
        for stage in (fast, general):
            r = request(client)
            r.notes[COST_NOTE] = cost
            seen.append((_effect_view(stage.on_request(r, tick(now))), r.notes))
        assert seen[0] == seen[1]
    assert fast.counts == general.counts
    assert [list(t._entries.items()) for t in fast.tables] == [
        list(t._entries.items()) for t in general.tables
    ]
