"""The limiter's pure core: nginx's limit_req arithmetic, RateLimit fields, the bounded key table.

Time is passed in everywhere; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.limiter import (
    EPSILON,
    Decision,
    DecisionKind,
    Limit,
    State,
    parse_rate,
    policy_field,
    ratelimit_field,
)
from distpat.core.limiter_table import Concurrency, KeyTable
from distpat.errors import ConfigError

ADMIT, DELAY, REJECT = DecisionKind.ADMIT, DecisionKind.DELAY, DecisionKind.REJECT


@st.composite
def limits(draw: st.DrawFn) -> Limit:
    rate = draw(st.sampled_from([0.016, 0.5, 1.0, 3.0, 10.0, 16.666, 250.0]))
    burst = draw(st.integers(0, 12))
    delay = draw(st.integers(0, burst))
    return Limit("per-ip", rate, burst, delay)


@st.composite
def arrivals(draw: st.DrawFn, limit: Limit, max_cost: int = 3) -> list[tuple[float, int]]:
    """(time, cost) pairs, times non-decreasing, gaps from 0 to a few request intervals."""
    gaps = draw(
        st.lists(
            st.one_of(st.just(0.0), st.floats(0.0, 3.0 / limit.rate, allow_nan=False)),
            min_size=1,
            max_size=40,
        )
    )
    costs = draw(st.lists(st.integers(1, max_cost), min_size=len(gaps), max_size=len(gaps)))
    now, out = 1000.0, []
    for gap, cost in zip(gaps, costs, strict=True):
        now += gap
        out.append((now, cost))
    return out


def run(limit: Limit, seq: list[tuple[float, int]]) -> list[Decision]:
    state: State | None = None
    decisions = []
    for now, cost in seq:
        decision = limit.decide(state, now, cost)
        if decision.admitted:
            state = decision.state
        decisions.append(decision)
    return decisions


def check_window_bound(limit: Limit, seq: list[tuple[float, int]], admitted: list[bool]) -> None:
    """Over every window [t_i, t_j] of arrivals, admitted cost <= burst + 1 + rate * (t_j - t_i)."""
    for i in range(len(seq)):
        total = 0.0
        for j in range(i, len(seq)):
            if admitted[j]:
                total += seq[j][1]
            bound = limit.burst + 1 + limit.rate * (seq[j][0] - seq[i][0])
            assert total <= bound + EPSILON * (j - i + 1), (i, j, total, bound)


# --- the bucket ------------------------------------------------------------------------------------


@given(st.data())
def test_admitted_cost_within_burst_plus_rate_times_elapsed(data: st.DataObject) -> None:
    limit = data.draw(limits())
    seq = data.draw(arrivals(limit))
    decisions = run(limit, seq)
    check_window_bound(limit, seq, [d.admitted for d in decisions])
    for decision in decisions:
        assert 0.0 <= decision.delay <= limit.max_delay
        assert (decision.kind is DELAY) == (decision.delay > 0)
        if decision.admitted:
            assert decision.state is not None
            assert 0.0 <= decision.state[0] <= limit.burst + EPSILON


@given(st.data())
def test_a_client_at_or_under_the_rate_is_never_rejected(data: st.DataObject) -> None:
    limit = data.draw(limits())
    costs = data.draw(st.lists(st.integers(1, limit.burst + 1), min_size=1, max_size=40))
    extras = data.draw(st.lists(st.floats(0.0, 2.0 / limit.rate), min_size=len(costs), max_size=len(costs)))
    state: State | None = None
    now = 5.0
    for cost, extra in zip(costs, extras, strict=True):
        decision = limit.decide(state, now, cost)
        assert decision.kind is not REJECT
        if cost == 1:
            assert decision.kind is ADMIT
        state = decision.state
        now += cost / limit.rate + extra


@given(st.data())
def test_a_rejection_leaves_the_state_and_retry_after_is_enough(data: st.DataObject) -> None:
    limit = data.draw(limits())
    seq = data.draw(arrivals(limit))
    state: State | None = None
    for now, cost in seq:
        decision = limit.decide(state, now, cost)
        if decision.kind is REJECT:
            assert decision.state == state
            if cost > limit.quota:
                assert decision.retry_after is None
                continue
            assert decision.retry_after is not None
            assert decision.retry_after >= 1
            assert limit.decide(state, now + decision.retry_after, cost).admitted
        else:
            assert decision.retry_after is None
            state = decision.state


def test_a_cost_above_the_quota_is_never_admitted() -> None:
    limit = Limit("per-ip", 1.0, 2)
    decision = limit.decide(None, 0.0, cost=4)
    assert decision.kind is REJECT
    assert decision.retry_after is None
    assert limit.decide(None, 0.0, cost=3).kind is DELAY
    with pytest.raises(ConfigError, match="cost"):
        limit.decide(None, 0.0, cost=0.5)


def test_a_clock_going_back_counts_as_no_time() -> None:
    limit = Limit.nodelay("per-ip", 1.0, 1)
    first = limit.decide(None, 10.0)
    second = limit.decide(first.state, 9.0)
    assert second.kind is ADMIT
    assert second.state == (1.0, 10.0)
    assert limit.decide(second.state, 8.0).kind is REJECT


# --- nginx compatibility ---------------------------------------------------------------------------


def nginx_model(rate_rps: int, burst: int, delay: int, times_ms: list[int]) -> list[tuple[str, int]]:
    """ngx_http_limit_req_module's arithmetic in its own fixed point (x1000, integer ms), one key."""
    rate, burst_fp, delay_fp = rate_rps * 1000, burst * 1000, delay * 1000
    node: tuple[int, int] | None = None
    out = []
    for now in times_ms:
        if node is None:
            excess = 0
        else:
            ms = max(0, now - node[1])
            excess = max(0, node[0] - rate * ms // 1000 + 1000)
        if excess > burst_fp:
            out.append(("reject", 0))
            continue
        last = now if node is None or now > node[1] else node[1]
        node = (excess, last)
        if excess <= delay_fp:
            out.append(("admit", 0))
        else:
            out.append(("delay", (excess - delay_fp) * 1000 // rate))
    return out


@given(
    st.integers(1, 50),
    st.integers(0, 10),
    st.data(),
    st.lists(st.integers(0, 1500), min_size=1, max_size=40),
)
def test_decisions_match_nginx_fixed_point(
    rate: int, burst: int, data: st.DataObject, gaps: list[int]
) -> None:
    delay = data.draw(st.integers(0, burst))
    times, now = [], 0
    for gap in gaps:
        now += gap
        times.append(now)
    limit = Limit("z", parse_rate(f"{rate}r/s"), burst, delay)
    ours = run(limit, [(t / 1000, 1) for t in times])
    for decision, (kind, delay_ms) in zip(ours, nginx_model(rate, burst, delay, times), strict=True):
        assert decision.kind.value == kind
        assert math.floor(decision.delay * 1000 + 1e-6) == delay_ms


def test_nginx_docs_rate_1rs_burst_5() -> None:
    """rate=1r/s burst=5: six back-to-back requests pass (1 at once, 5 delayed 1..5 s), the 7th is refused."""
    decisions = run(Limit("one", 1.0, 5), [(0.0, 1)] * 7)
    assert [d.kind for d in decisions] == [ADMIT] + [DELAY] * 5 + [REJECT]
    assert [d.delay for d in decisions[:6]] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert decisions[6].retry_after == 1
    nodelay = run(Limit.nodelay("one", 1.0, 5), [(0.0, 1)] * 7)
    assert [d.kind for d in nodelay] == [ADMIT] * 6 + [REJECT]
    # one second later one more request fits (a request drained), the next does not
    state = nodelay[5].state
    assert Limit.nodelay("one", 1.0, 5).decide(state, 1.0).kind is ADMIT


def test_nginx_two_stage_delay() -> None:
    """rate=5r/s burst=12 delay=8 (nginx's two-stage example), 20 back-to-back requests: by nginx's
    arithmetic 9 pass at once (the free first one and 8 of the burst), 4 are delayed, 7 rejected."""
    kinds = [d.kind for d in run(Limit("ip", 5.0, 12, 8), [(0.0, 1)] * 20)]
    assert kinds == [ADMIT] * 9 + [DELAY] * 4 + [REJECT] * 7


@pytest.mark.parametrize(
    ("text", "rate"),
    [("10r/s", 10.0), ("600r/m", 10.0), ("1r/m", 0.016), ("30r/m", 0.5), ("10", 10.0), ("007r/s", 7.0)],
)
def test_parse_rate_accepts_as_nginx(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "text",
    ["", "r/s", "0r/s", "0", "-1r/s", "+1r/s", "1.5r/s", "1r/h", " 1r/s", "1 r/s", "1R/S", "1r/sr/s",
     "\u0661r/s", "99999999999999999999r/s"],
)  # fmt: skip
def test_parse_rate_refuses_as_nginx(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid rate"):
        parse_rate(text)


@given(st.text(alphabet="0123456789r/ms.-+ h", max_size=12))
def test_parse_rate_accepts_exactly_digits_with_an_optional_unit(text: str) -> None:
    match = re.fullmatch(r"([0-9]+)(r/s|r/m)?", text)
    if match and 0 < int(match[1]) <= (2**63 - 1) // 1000:
        scale = 60 if match[2] == "r/m" else 1
        assert parse_rate(text) == (int(match[1]) * 1000 // scale) / 1000
    else:
        with pytest.raises(ConfigError):
            parse_rate(text)


# --- RateLimit fields ------------------------------------------------------------------------------


@given(st.data())
def test_header_values_match_the_state(data: st.DataObject) -> None:
    limit = data.draw(limits())
    seq = data.draw(arrivals(limit, max_cost=1))
    state: State | None = None
    for now, _ in seq:
        decision = limit.decide(state, now)
        if decision.admitted:
            state = decision.state
            assert state is not None
            assert decision.remaining == max(0, math.floor(limit.burst - state[0] + EPSILON))
            assert decision.reset == math.ceil((state[0] + 1) / limit.rate - EPSILON)
        else:
            assert decision.remaining == 0
        assert 0 <= decision.remaining < limit.quota
        # r more requests pass right now, the one after does not
        probe = state
        for _ in range(decision.remaining):
            step = limit.decide(probe, now)
            assert step.admitted
            probe = step.state
        assert limit.decide(probe, now).kind is REJECT
        # after t seconds the whole quota is back
        assert limit.level(state, now + decision.reset) == 0.0


def test_fields_format() -> None:
    per_ip = Limit("per-ip", 1.0, 5)
    daily = Limit("daily key", 0.016, 99, 99)
    assert (per_ip.quota, per_ip.window, daily.quota, daily.window) == (6, 6, 100, 6250)
    assert policy_field([per_ip]) == b'"per-ip";q=6;w=6'
    assert policy_field([per_ip, daily]) == b'"per-ip";q=6;w=6, "daily key";q=100;w=6250'
    first = per_ip.decide(None, 0.0)
    second = per_ip.decide(first.state, 0.0)
    assert ratelimit_field([first]) == b'"per-ip";r=5;t=1'
    assert ratelimit_field([second, daily.decide(None, 0.0)]) == b'"per-ip";r=4;t=2, "daily key";r=99;t=63'
    assert policy_field([]) == b""


@pytest.mark.parametrize("name", ["", 'a"b', "a\\b", "tab\there", "caf\u00e9", "del\x7f"])
def test_limit_names_must_be_plain_sf_strings(name: str) -> None:
    with pytest.raises(ConfigError, match="limit name"):
        Limit(name, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0}, "positive"),
        ({"rate": float("inf")}, "positive"),
        ({"rate": "1r/s"}, "number"),
        ({"rate": 1.0, "burst": -1}, "burst"),
        ({"rate": 1.0, "burst": 2, "delay": 3}, "nodelay"),
        ({"rate": 1.0, "status": 200}, "status"),
    ],
)
def test_limit_refuses_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Limit("x", **kwargs)  # type: ignore[arg-type]


# --- the key table ---------------------------------------------------------------------------------


@st.composite
def keyed_arrivals(draw: st.DrawFn, limit: Limit) -> list[tuple[float, Hashable]]:
    """Requests of a few regular keys mixed with floods of never-seen keys."""
    out: list[tuple[float, Hashable]] = []
    now, fresh = 0.0, 0
    for _ in range(draw(st.integers(1, 30))):
        now += draw(st.floats(0.0, 2.0 / limit.rate))
        if draw(st.booleans()):
            out.append((now, draw(st.sampled_from(["abuser", "b", "c"]))))
        else:
            for _ in range(draw(st.integers(1, 8))):
                fresh += 1
                out.append((now, fresh))
    return out


@given(st.data(), st.integers(1, 6))
def test_eviction_never_changes_a_decision(data: st.DataObject, max_keys: int) -> None:
    """Every decision the table makes equals the unbounded one, except refusals of keys it has no room for."""
    limit = data.draw(limits())
    table = KeyTable(max_keys, limit)
    unbounded: dict[Hashable, State] = {}
    for now, key in data.draw(keyed_arrivals(limit)):
        decision = table.decide(key, now)
        assert len(table) <= max_keys
        if decision.table_full:
            assert decision.kind is REJECT
            assert decision.retry_after is not None
            assert key not in table
            assert len(table) == max_keys
            # only a key the table holds no information about is refused
            assert key not in unbounded or limit.idle(unbounded[key], now)
            oldest = next(iter(table))
            state = table.peek(oldest)
            assert state is not None
            assert not limit.idle(state, now)
            continue
        assert decision == limit.decide(unbounded.get(key), now)
        if decision.admitted:
            assert decision.state is not None
            unbounded[key] = decision.state


@given(st.data(), st.integers(1, 4))
def test_floods_of_new_keys_never_reset_an_abuser(data: st.DataObject, max_keys: int) -> None:
    limit = data.draw(limits())
    table = KeyTable(max_keys, limit)
    abuser: list[tuple[float, int]] = []
    admitted: list[bool] = []
    now, fresh = 0.0, 0
    for _ in range(data.draw(st.integers(1, 25))):
        now += data.draw(st.floats(0.0, 0.5 / limit.rate))
        for _ in range(data.draw(st.integers(0, 3))):
            abuser.append((now, 1))
            admitted.append(table.decide("abuser", now).admitted)
        for _ in range(data.draw(st.integers(0, 3 * max_keys))):
            fresh += 1
            table.decide(fresh, now)
    check_window_bound(limit, abuser, admitted)


def test_a_full_table_refuses_new_keys_and_keeps_the_abuser() -> None:
    limit = Limit.nodelay("per-ip", 1.0, 2)
    table = KeyTable(3, limit)
    assert [table.decide("abuser", 0.0).kind for _ in range(4)] == [ADMIT, ADMIT, ADMIT, REJECT]
    flood = [table.decide(f"new{i}", 0.5) for i in range(10)]
    assert [d.table_full for d in flood] == [False, False] + [True] * 8
    assert flood[2].retry_after == 3
    assert flood[2].reset == limit.window
    assert table.decide("abuser", 0.5).kind is REJECT
    assert list(table) == ["new0", "new1", "abuser"]
    # once drained, the oldest entries make room again (at most two probed per new key)
    assert table.decide("late", 2.0).kind is ADMIT
    assert "new0" not in table
    assert "new1" not in table
    assert "abuser" in table
    assert table.get("missing") is None
    assert table.put("abuser", (0.0, 2.0), 2.0)
    assert repr(table) == "KeyTable('per-ip', 2/3 keys)"


def test_key_table_refuses_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="max_keys"):
        KeyTable(0, Limit("x", 1.0))


# --- concurrency -----------------------------------------------------------------------------------


@given(
    st.integers(1, 3),
    st.one_of(st.none(), st.integers(1, 3)),
    st.lists(st.tuples(st.booleans(), st.sampled_from("abcd")), max_size=60),
)
def test_concurrency_counts_like_a_model(
    limit: int, max_keys: int | None, ops: list[tuple[bool, str]]
) -> None:
    gate = Concurrency(limit, max_keys)
    model: dict[str, int] = {}
    for acquire, key in ops:
        if acquire:
            room = model.get(key, 0) < limit and (key in model or max_keys is None or len(model) < max_keys)
            assert gate.acquire(key) is room
            if room:
                model[key] = model.get(key, 0) + 1
        else:
            assert gate.release(key) is (key in model)
            if key in model:
                model[key] -= 1
                if not model[key]:
                    del model[key]
        assert len(gate) == len(model)
        assert all(gate.in_flight(k) == model.get(k, 0) for k in "abcd")
        assert len(gate) <= sum(model.values())


def test_concurrency_release_of_an_unknown_key() -> None:
    gate = Concurrency(1)
    assert gate.release("x") is False
    assert gate.acquire("x")
    assert not gate.acquire("x")
    assert gate.release("x")
    assert not gate.release("x")
    assert len(gate) == 0
    with pytest.raises(ConfigError, match="concurrency limit"):
        Concurrency(0)
