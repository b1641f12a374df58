"""Passive health (core/health.py): the one ejection policy of the HTTP pools and the Redis ambassador."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.health import EjectionPolicy, PassiveHealth
from distpat.errors import ConfigError

POLICY = EjectionPolicy(max_fails=3, fail_timeout=10.0)


def test_consecutive_failures_eject_for_the_timeout_then_one_success_readmits() -> None:
    h = PassiveHealth()
    assert not h.failure(POLICY, 1.0)
    assert not h.failure(POLICY, 2.0)
    assert h.failure(POLICY, 3.0)  # the third ejects
    assert not h.available(12.9)
    assert h.available(13.0)
    assert h.failure(POLICY, 13.5)  # tried again and failed: out again at once
    assert not h.available(20.0)
    assert h.success()  # readmitted, failures forgotten
    assert h.available(20.0)
    assert h.fails == 0
    assert not h.success()  # nothing to readmit


def test_a_success_between_failures_starts_the_count_again() -> None:
    h = PassiveHealth()
    h.failure(POLICY, 0.0)
    h.failure(POLICY, 0.0)
    h.success()
    h.failure(POLICY, 0.0)
    h.failure(POLICY, 0.0)
    assert h.available(0.0)


def test_expiry_lifts_the_ejection_and_forgets_the_failures() -> None:
    h = PassiveHealth()
    for _ in range(3):
        h.failure(POLICY, 0.0)
    assert not h.expire(5.0)
    assert h.expire(10.0)
    assert h.fails == 0
    assert not h.failure(POLICY, 11.0)  # a fresh count: one failure does not eject


def test_a_failed_active_check_is_not_overruled_by_a_connection_succeeding() -> None:
    h = PassiveHealth()
    assert h.pin_down()
    assert not h.pin_down()
    assert not h.success()
    assert not h.available(1e12)
    assert not h.expire(1e12)
    assert h.pin_up()
    assert h.available(0.0)
    assert not h.pin_up()


def test_disabled_ejection_counts_but_never_ejects() -> None:
    h = PassiveHealth()
    off = EjectionPolicy(max_fails=1, fail_timeout=1.0, enabled=False)
    for t in range(5):
        assert not h.failure(off, float(t))
    assert h.fails == 5
    assert h.available(0.0)


@pytest.mark.parametrize("bad", [{"max_fails": 0}, {"max_fails": True}, {"fail_timeout": -1.0}])
def test_bad_policies_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        EjectionPolicy(**bad)  # type: ignore[arg-type]


_event = st.one_of(
    st.tuples(st.just("fail"), st.floats(0, 30)),
    st.tuples(st.just("ok"), st.just(0.0)),
    st.tuples(st.just("wait"), st.floats(0, 30)),
)


@given(st.lists(_event, max_size=60), st.integers(1, 4), st.floats(0.5, 20))
def test_a_server_is_out_only_after_max_fails_in_a_row(
    events: list[tuple[str, float]], limit: int, timeout: float
) -> None:
    policy = EjectionPolicy(max_fails=limit, fail_timeout=timeout)
    h = PassiveHealth()
    now = 0.0
    streak = 0
    for kind, value in events:
        if kind == "wait":
            now += value
        elif kind == "ok":
            h.success()
            streak = 0
            assert h.available(now)
        else:
            was_available = h.available(now)
            ejected = h.failure(policy, now)
            streak += 1
            assert ejected == (was_available and streak >= limit)
            if ejected:
                assert h.ejected_until == now + timeout
        if streak < limit:
            assert h.available(now)
