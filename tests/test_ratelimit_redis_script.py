"""The shared limiter's Lua script on a real redis-server, checked against the Python arithmetic.

For every call the state the script stores must be exactly what
:meth:`Limit.decide <distpat.core.limiter.Limit.decide>` makes of the state before it at the
server's clock (the script answers both: each key's state before the call, and ``now``), a refused
request stores nothing, and the key's TTL is the time its bucket takes to drain plus one second.
The commands are distpat's own (:func:`~distpat.core.limiter_shared.script_call`); they are sent by
redis-py, read back with :func:`~distpat.core.limiter_shared.read_reply`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Sequence

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from distpat.core.keys import KeySource
from distpat.core.limiter import DecisionKind, Limit, State
from distpat.core.limiter_shared import KEY_PREFIX, SCRIPT_SHA, SharedVerdict, read_reply, script_call
from distpat.core.ratelimit_stage import LimitRule, RateLimitStage
from distpat.core.stage import Call, CallResult, Request, Tick
from tests.nutcracker import free_ports
from tests.rediskit import HOST, RedisServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    """One redis-server for the module, and a redis-py client of it."""
    (port,) = free_ports(1)
    running = RedisServer(port, tmp_path_factory.mktemp("redis"))
    asyncio.run(running.start())
    client = redis.Redis(host=HOST, port=port, socket_timeout=10)
    try:
        yield client
    finally:
        client.close()
        running.stop_now()


def run(db: redis.Redis, command: tuple[bytes, ...]) -> object:
    """One command as distpat builds it, sent by redis-py (replies as RESP decodes them)."""
    return db.execute_command(*command)  # type: ignore[no-untyped-call]


@pytest.fixture
def db(server: redis.Redis) -> redis.Redis:
    server.flushdb()
    return server


def judge(
    db: redis.Redis,
    limits: Sequence[Limit],
    keys: Sequence[bytes],
    cost: float = 1,
    enforced: Sequence[bool] | None = None,
) -> SharedVerdict:
    on = list(enforced) if enforced is not None else [True] * len(limits)
    try:
        reply = run(db, script_call(limits, on, keys, cost))
    except redis.exceptions.NoScriptError:
        reply = run(db, script_call(limits, on, keys, cost, load=True))
    return read_reply(reply, len(limits))


def name(limit: Limit, key: bytes) -> bytes:
    return KEY_PREFIX + limit.name.encode() + b":" + key


def stored(db: redis.Redis, limit: Limit, key: bytes) -> State | None:
    raw = db.get(name(limit, key))
    if not isinstance(raw, bytes):
        return None
    excess, last = raw.split(b" ")
    return float(excess), float(last)


def drain_ttl_ms(state: State, limit: Limit) -> int:
    """What the script sets: the time to drain ``excess + 1`` at the rate, in ms, plus a second."""
    return math.ceil((state[0] + 1.0) / limit.rate * 1000) + 1000


def test_the_first_evalsha_is_noscript_and_eval_loads_the_script(db: redis.Redis) -> None:
    db.script_flush()
    limit = Limit("first", 1.0)
    with pytest.raises(redis.exceptions.NoScriptError):
        run(db, script_call([limit], [True], [b"k"], 1))
    loaded = run(db, script_call([limit], [True], [b"k"], 1, load=True))
    assert read_reply(loaded, 1).refused is None
    assert db.script_exists(SCRIPT_SHA.decode()) == [True]
    again = read_reply(run(db, script_call([limit], [True], [b"k"], 1)), 1)
    assert again.refused == 0  # burst 0: the second at once is refused


calls = st.lists(
    st.tuples(
        st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),  # which limits judge the call
        st.sampled_from([b"a", b"b", b"\xff k"]),
        st.sampled_from([1, 1, 1, 2, 2.5]),
    ),
    min_size=1,
    max_size=12,
)
limit_sets = st.lists(
    st.tuples(st.sampled_from([0.016, 1.0, 40.0, 1000.0, 5000.0]), st.integers(0, 4)), min_size=3, max_size=3
)


@settings(max_examples=25)
@given(limit_sets, calls)
def test_each_calls_stored_state_is_what_limit_decide_makes_of_the_state_before(
    server: redis.Redis, shapes: list[tuple[float, int]], sequence: list[tuple[list[int], bytes, float]]
) -> None:
    server.flushdb()
    every = [Limit.nodelay(f"p{i}", rate, burst) for i, (rate, burst) in enumerate(shapes)]
    for which, key, cost in sequence:
        limits = [every[i] for i in which]
        keys = [key] * len(limits)
        before = tuple(stored(server, limit, key) for limit in limits)
        verdict = judge(server, limits, keys, cost)
        assert verdict.states == before
        pairs = zip(limits, before, strict=True)
        decisions = [limit.decide(state, verdict.now, cost) for limit, state in pairs]
        refusing = [i for i, d in enumerate(decisions) if d.kind is DecisionKind.REJECT]
        after = tuple(stored(server, limit, key) for limit in limits)
        if refusing:
            assert verdict.refused == refusing[0]
            assert after == before  # refused by one: nothing stored for any
            continue
        assert verdict.refused is None
        assert after == tuple(d.state for d in decisions)  # exactly: the same doubles, the same order
        for limit, state in zip(limits, after, strict=True):
            assert state is not None
            ttl = server.pttl(name(limit, key))
            expected = drain_ttl_ms(state, limit)
            assert expected - 1000 < ttl <= expected  # a little time passed since the SET


def test_a_refused_request_stores_nothing_and_keeps_the_ttl(db: redis.Redis) -> None:
    limit = Limit.nodelay("slow", 0.016, burst=2)
    for _ in range(3):
        assert judge(db, [limit], [b"k"]).refused is None
    full = stored(db, limit, b"k")
    assert full is not None
    assert math.isclose(full[0], 2.0, abs_tol=0.01)  # three at once, less what drained meanwhile
    ttl = db.pttl(name(limit, b"k"))
    refused = judge(db, [limit], [b"k"])
    assert refused.refused == 0
    assert refused.states == (full,)
    assert stored(db, limit, b"k") == full
    assert db.pttl(name(limit, b"k")) <= ttl  # not set again
    assert ttl <= drain_ttl_ms(full, limit)
    assert abs(drain_ttl_ms(full, limit) - 188_500) <= 1  # 3 at 16/1000 r/s: 187.5 s to drain, plus 1


def test_a_cost_above_the_capacity_is_refused_without_a_trace(db: redis.Redis) -> None:
    limit = Limit.nodelay("cap", 1.0, burst=3)
    verdict = judge(db, [limit], [b"k"], cost=5)
    assert (verdict.refused, verdict.states) == (0, (None,))
    assert db.exists(name(limit, b"k")) == 0
    assert limit.decide(None, verdict.now, 5).retry_after is None


def test_an_expired_key_decides_as_a_new_one(db: redis.Redis) -> None:
    limit = Limit.nodelay("gone", 0.016)
    assert judge(db, [limit], [b"k"]).refused is None
    assert judge(db, [limit], [b"k"]).refused == 0
    db.pexpire(name(limit, b"k"), 1)
    deadline = time.monotonic() + 5
    while db.exists(name(limit, b"k")) and time.monotonic() < deadline:
        time.sleep(0.005)
    verdict = judge(db, [limit], [b"k"])
    assert (verdict.refused, verdict.states) == (None, (None,))
    assert stored(db, limit, b"k") == limit.decide(None, verdict.now).state


def test_several_limits_one_refusing_store_none_of_them(db: redis.Redis) -> None:
    wide = Limit.nodelay("wide", 1.0, burst=5)
    narrow = Limit.nodelay("narrow", 0.016, burst=0)
    wide_key, narrow_key = b"client", b"api-key"
    assert judge(db, [wide, narrow], [wide_key, narrow_key]).refused is None
    charged = stored(db, wide, wide_key), stored(db, narrow, narrow_key)
    assert charged[0] is not None
    assert charged[1] is not None
    for _ in range(4):
        verdict = judge(db, [wide, narrow], [wide_key, narrow_key])
        assert verdict.refused == 1  # the second limit (0-based 1)
        assert (stored(db, wide, wide_key), stored(db, narrow, narrow_key)) == charged
    # the first refusing enforced limit is named, even when a later one refuses too
    assert judge(db, [narrow, narrow], [narrow_key, narrow_key]).refused == 0
    # a dry-run limit that would refuse does not stop the others being charged, nor is it charged
    verdict = judge(db, [wide, narrow], [wide_key, narrow_key], enforced=[True, False])
    assert verdict.refused is None
    wide_after = stored(db, wide, wide_key)
    assert wide_after == wide.decide(charged[0], verdict.now).state
    assert stored(db, narrow, narrow_key) == charged[1]


def test_a_foreign_value_under_the_key_is_an_error_reply(db: redis.Redis) -> None:
    limit = Limit("foreign", 1.0)
    db.set(name(limit, b"k"), b"hello")
    with pytest.raises(redis.exceptions.ResponseError):
        judge(db, [limit], [b"k"])
    db.delete(name(limit, b"k"))
    db.rpush(name(limit, b"k"), b"x")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        judge(db, [limit], [b"k"])


def test_an_infinite_state_from_the_server_falls_back_instead_of_raising(db: redis.Redis) -> None:
    limit = Limit.nodelay("per-ip", 1.0, burst=1)
    db.set(name(limit, b"192.0.2.1"), b"inf 1")
    stage = RateLimitStage(
        [LimitRule(limit, KeySource.parse("ip"))], redis_url="redis://x", on_redis_error="closed"
    )
    call = stage.on_request(Request(b"GET", b"/", "192.0.2.1"), Tick(0.0, 0.0, 0))
    assert isinstance(call, Call)
    assert call.then is not None
    reply = run(db, script_call([limit], [True], [b"192.0.2.1"], 1, load=True))
    assert isinstance(reply, list)
    assert reply[2] == b"inf 1"  # the script refused and answered the state as it found it
    call.then(CallResult(reply))
    assert stage.redis_events.get("closed") == 1
