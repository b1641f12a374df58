"""ShardStage without sockets: the effect for each key kind, the order, replicas, bounded loads.

The stage is fed a Request and a Tick and its Forward is checked against the ring it was given;
live in-flight counts come from a fake Pools. Hypothesis drives the orders, the bounded-load cap
over random arrival and completion sequences, and the disruption when a node is removed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.keys import KeySource
from distpat.core.pipeline import Pipeline
from distpat.core.ring import BoundedLoads, HashRing, NginxChashRing, RendezvousRing
from distpat.core.shard_route import MEMO_KEY_MAX, NO_KEY, ShardStage
from distpat.core.stage import Forward, Request, Tick
from distpat.errors import ConfigError

TICK = Tick(mono=1.0, wall=1_700_000_000.0, rand=0)
SERVERS = [f"10.0.0.{i}:8080" for i in range(1, 6)]
RING = NginxChashRing(SERVERS)
keys = st.binary(min_size=1, max_size=40)


class FakePools:
    """In-flight counts and availability kept by the test (the engine's Pools, without an engine)."""

    def __init__(self, names: list[str], down: frozenset[str] = frozenset()) -> None:
        self.loads = dict.fromkeys(names, 0)
        self.down = set(down)
        self.asked: list[str | None] = []

    def members(self, pool: str | None) -> tuple[str, ...]:
        return tuple(self.loads)

    def in_flight(self, pool: str | None) -> Mapping[str, int]:
        self.asked.append(pool)
        return dict(self.loads)

    def available(self, pool: str | None, upstream: str) -> bool:
        return upstream not in self.down


def request(
    target: bytes = b"/",
    fields: dict[bytes, bytes] | None = None,
    pools: FakePools | None = None,
) -> Request:
    return Request(b"GET", target, client="192.0.2.7", fields=fields or {}, pools=pools)


def decide(stage: ShardStage, req: Request) -> Forward:
    effect = stage.on_request(req, TICK)
    assert isinstance(effect, Forward)
    return effect


# -- keys --------------------------------------------------------------------------------


def test_the_default_key_is_the_request_uri_as_sent() -> None:
    stage = ShardStage(RING)
    target = b"/a/b%20c?x=1&y=%2F"
    forward = decide(stage, request(target))
    assert forward.order == (RING.get_node(target),)
    assert forward.pool is None
    assert stage.reads == frozenset()


@pytest.mark.parametrize(
    ("source", "target", "fields", "key"),
    [
        ("uri", b"/p?q=1", {}, b"/p?q=1"),
        ("path", b"/p/q?ignored=1", {}, b"/p/q"),
        ("header:X-User", b"/", {b"x-user": b"alice"}, b"alice"),
        ("query:id", b"/x?a=1&ID=42&b=2", {}, b"42"),
        ("cookie:sid", b"/", {b"cookie": b"a=1; sid=s%3D9; b=2"}, b"s%3D9"),
        ("header:X-Tenant+path", b"/docs?v=2", {b"x-tenant": b"t1"}, b"t1\0/docs"),
    ],
)
def test_each_key_kind_places_the_key_nginx_would_hash(
    source: str, target: bytes, fields: dict[bytes, bytes], key: bytes
) -> None:
    stage = ShardStage(RING, key=source)
    forward = decide(stage, request(target, fields))
    assert forward.order == (RING.get_node(key),)
    assert stage.reads == KeySource.parse(source).reads


@pytest.mark.parametrize(
    ("source", "target", "fields"),
    [
        ("header:X-User", b"/", {}),
        ("header:X-User", b"/", {b"x-user": b""}),
        ("query:id", b"/x?other=1", {}),
        ("query:id", b"/x", {}),
        ("cookie:sid", b"/", {b"cookie": b"a=1"}),
        ("cookie:sid", b"/", {}),
    ],
)
def test_a_request_without_a_key_is_left_to_the_pool_balancer(
    source: str, target: bytes, fields: dict[bytes, bytes]
) -> None:
    stage = ShardStage(RING, key=source, shard_header="X-Shard", pool="shards", name="s")
    req = request(target, fields)
    forward = decide(stage, req)
    assert forward == Forward(pool="shards")  # no order, no header: nginx sends an empty key to round robin
    assert req.notes["s"] == NO_KEY
    assert stage.decision(req) == NO_KEY


def test_key_sources_outside_the_shard_set_are_refused() -> None:
    with pytest.raises(ConfigError, match="use one of uri, path, header:NAME, query:NAME, cookie:NAME"):
        ShardStage(RING, key="ip")
    with pytest.raises(ConfigError, match="needs a name"):
        ShardStage(RING, key="header:")


# -- the effect ------------------------------------------------------------------------------


def test_the_shard_is_noted_and_named_in_the_response_field() -> None:
    stage = ShardStage(RING, shard_header="X-Shard", name="shard")
    req = request(b"/users/17")
    forward = decide(stage, req)
    shard = RING.get_node(b"/users/17")
    assert forward.respond == ((b"X-Shard", shard.encode()),)
    assert (forward.add, forward.mirror, forward.target) == ((), (), None)
    assert req.notes == {"shard": shard}
    assert stage.decision(req) == shard


def test_a_named_pool_is_declared_and_forwarded_to() -> None:
    stage = ShardStage(RING, pool="users")
    assert stage.pools == ("users",)
    assert decide(stage, request(b"/k")).pool == "users"
    assert ShardStage(RING).pools == ()


def test_in_a_pipeline_the_stage_gets_a_name_and_its_forward_is_final() -> None:
    stage = ShardStage(RING, shard_header="X-Shard")
    pipeline = Pipeline([stage])
    assert stage.name == "shard-1"
    assert (pipeline.wants_response, pipeline.wants_body, pipeline.wants_done) == (False, False, False)
    req = request(b"/img/1.png")
    run = pipeline.run(req)
    effect = run.start(TICK)
    assert isinstance(effect, Forward)
    assert effect.order == (RING.get_node(b"/img/1.png"),)
    assert stage.decision(req) == effect.order[0]


def test_ring_names_map_to_the_pools_upstream_names() -> None:
    # nginx hashes the server as written ("[::1]:81", "Backend"); the pool knows it as host:port.
    written = {"[::1]:81": "::1:81", "Backend": "backend:80", "10.0.0.9:80": "10.0.0.9:80"}
    ring = NginxChashRing(list(written))
    stage = ShardStage(ring, upstreams=written, replicas=3)
    for i in range(50):
        target = b"/k%d" % i
        order = decide(stage, request(target)).order
        assert order == tuple(written[n] for n in ring.iter_nodes(target))
    with pytest.raises(ConfigError, match="has no upstream name"):
        ShardStage(ring, upstreams={"[::1]:81": "::1:81"})
    with pytest.raises(ConfigError, match="are the same upstream"):
        ShardStage(ring, upstreams=dict.fromkeys(written, "x:1"))
    with pytest.raises(ConfigError, match="not a shard of the ring"):
        ShardStage(ring, upstreams={**written, "other:1": "other:1"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"replicas": 0}, "replicas must be a whole number from 1 to 5"),
        ({"replicas": 6}, "replicas must be a whole number from 1 to 5"),
        ({"replicas": True}, "replicas must be"),
        ({"balance_factor": 0.5}, "the balance factor must be from 1 to 1000000"),
        ({"balance_factor": float("nan")}, "the balance factor must be from 1"),
        ({"balance_factor": "2"}, "the balance factor must be a number"),
        ({"shard_header": "X Shard"}, "token characters"),
        ({"shard_header": ""}, "token characters"),
        ({"pool": ""}, "a pool's name"),
        ({"memo_entries": 0}, "memo_entries"),
    ],
)
def test_bad_values_are_refused_with_a_message(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ShardStage(RING, **options)  # type: ignore[arg-type]


def test_only_a_ring_will_do() -> None:
    with pytest.raises(ConfigError, match="needs a ring"):
        ShardStage(SERVERS)  # type: ignore[arg-type]


# -- the order and replicas ----------------------------------------------------------------


@given(key=keys, replicas=st.integers(1, 5))
def test_the_order_is_the_rings_first_distinct_nodes(key: bytes, replicas: int) -> None:
    stage = ShardStage(RING, key="header:k", replicas=replicas)
    order = decide(stage, request(fields={b"k": key})).order
    assert len(order) == len(set(order)) == replicas
    assert order == tuple(RING.get_nodes(key, replicas))
    assert order[0] == RING.get_node(key)


def test_a_down_shard_does_not_change_the_order_the_engine_keeps_to() -> None:
    # Without a balance factor the order is the ring's; the engine skips an ejected first node
    # and goes to the second, never elsewhere.
    pools = FakePools(SERVERS, down=frozenset({RING.get_node(b"/x")}))
    forward = decide(ShardStage(RING, replicas=2), request(b"/x", pools=pools))
    assert forward.order == tuple(RING.get_nodes(b"/x", 2))
    assert pools.asked == []  # the plain path reads no loads


def test_a_repeated_key_costs_one_lookup_and_the_memo_stays_bounded() -> None:
    stage = ShardStage(RING, memo_entries=4)
    first = decide(stage, request(b"/same"))
    assert decide(stage, request(b"/same")) is first
    for i in range(10):
        target = b"/k%d" % i
        assert decide(stage, request(target)).order == (RING.get_node(target),)
        assert len(stage._memo) <= 4
    long_key = b"/" + b"x" * MEMO_KEY_MAX
    assert decide(stage, request(long_key)).order == (RING.get_node(long_key),)
    assert long_key not in stage._memo


@pytest.mark.parametrize("ring_class", [NginxChashRing, HashRing, RendezvousRing])
@given(key_list=st.lists(keys, min_size=1, max_size=60, unique=True), gone=st.sampled_from(SERVERS))
def test_removing_a_node_moves_only_its_keys_and_to_their_next_node(
    ring_class: type, key_list: list[bytes], gone: str
) -> None:
    ring = ring_class(SERVERS)
    before = ShardStage(ring, key="header:k", replicas=2)
    after = ShardStage(ring.remove(gone), key="header:k")
    for key in key_list:
        req = request(fields={b"k": key})
        old = decide(before, req).order
        new = decide(after, request(fields={b"k": key})).order
        if old[0] == gone:
            assert new == (old[1],)  # where its second replica was: the ring's next node
        else:
            assert new == (old[0],)


# -- bounded loads --------------------------------------------------------------------------

event = st.one_of(
    st.tuples(st.just("arrive"), keys),
    st.tuples(st.just("finish"), st.integers(0, 10_000)),
)


@given(
    events=st.lists(event, max_size=120),
    factor=st.sampled_from([1, 1.01, 1.25, 1.5, 2, 3.75]),
    replicas=st.integers(1, 5),
    down=st.sets(st.sampled_from(SERVERS), max_size=4),
)
def test_the_bounded_load_cap_is_never_exceeded(
    events: list[tuple[str, object]], factor: float, replicas: int, down: set[str]
) -> None:
    stage = ShardStage(RING, key="header:k", balance_factor=factor, replicas=replicas, pool="p")
    pools = FakePools(SERVERS, down=frozenset(down))
    live = [s for s in SERVERS if s not in down]
    in_flight: list[str] = []
    for kind, value in events:
        if kind == "finish":
            if in_flight:
                done = in_flight.pop(int(value) % len(in_flight))  # type: ignore[call-overload]
                pools.loads[done] -= 1
            continue
        assert isinstance(value, bytes)
        forward = decide(stage, request(fields={b"k": value}, pools=pools))
        order = forward.order
        total = sum(pools.loads[s] for s in live)
        cap = math.ceil(factor * (total + 1) / len(live))
        assert cap == stage.capacity(total, len(live))
        assert cap == BoundedLoads(NginxChashRing(live), balance_factor=factor).capacity(
            {s: pools.loads[s] for s in live}
        )
        assert 1 <= len(order) <= replicas
        assert len(set(order)) == len(order)
        assert all(s in live and pools.loads[s] + 1 <= cap for s in order)  # failover stays under it too
        # the first is the first node of the key's ring order that is live and under the cap
        expected = next(s for s in RING.iter_nodes(value) if s in live and pools.loads[s] < cap)
        assert order[0] == expected
        assert (forward.pool, pools.asked[-1]) == ("p", "p")
        pools.loads[order[0]] += 1
        in_flight.append(order[0])
        # the chosen node stays within the cap (others may hold more from when more were in
        # flight: finished requests lower the cap, never move a request already placed)
        assert pools.loads[order[0]] <= cap


def test_bounded_loads_spill_a_hot_key_over_to_the_next_nodes_in_ring_order() -> None:
    stage = ShardStage(
        RING, key="header:k", balance_factor=1.25, replicas=2, shard_header="X-Shard", name="s"
    )
    pools = FakePools(SERVERS)
    ring_order = RING.get_nodes(b"hot", 5)
    chosen = []
    for _ in range(20):
        req = request(fields={b"k": b"hot"}, pools=pools)
        forward = decide(stage, req)
        chosen.append(forward.order[0])
        assert req.notes[stage.name] == forward.order[0]
        assert forward.respond == ((b"X-Shard", forward.order[0].encode()),)
        pools.loads[forward.order[0]] += 1
    # 20 requests, 5 nodes, c = 1.25: at most ceil(1.25 x 20 / 5) = 5 each, filled in ring order
    assert max(pools.loads.values()) <= 5
    # the second request already finds the cap at ceil(1.25 x 2 / 5) = 1: the next node takes it
    assert chosen[:4] == ring_order[:4]
    assert chosen[4] == ring_order[0]  # total 4: the cap is ceil(1.25 x 5 / 5) = 2
    assert [pools.loads[s] for s in ring_order] == sorted(pools.loads.values(), reverse=True)


def test_bounded_loads_without_live_state_follow_the_ring() -> None:
    stage = ShardStage(RING, balance_factor=2, replicas=3)
    assert decide(stage, request(b"/a")).order == tuple(RING.get_nodes(b"/a", 3))
    everything_down = FakePools(SERVERS, down=frozenset(SERVERS))
    assert decide(stage, request(b"/a", pools=everything_down)).order == tuple(RING.get_nodes(b"/a", 3))


def test_bounded_orders_are_remembered_by_value() -> None:
    stage = ShardStage(RING, balance_factor=1.5)
    pools = FakePools(SERVERS)
    first = decide(stage, request(b"/a", pools=pools))
    assert decide(stage, request(b"/a", pools=pools)) is first  # same loads, same Forward object
    assert stage.walk(b"/a") == tuple(RING.iter_nodes(b"/a"))
