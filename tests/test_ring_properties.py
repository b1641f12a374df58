"""Properties every ring must keep, checked with hypothesis over random memberships.

Placement is checked over sample keys; balance and proportionality use each
ring's exact share of the hash space where it can report one, so the bounds
below are statements about the algorithm, not about sampling noise.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from distpat.ring import (
    BoundedLoads,
    HashRing,
    JumpRing,
    KetamaRing,
    MaglevRing,
    ModulaRing,
    RendezvousRing,
    Ring,
)

names = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12)
memberships = st.lists(names, min_size=1, max_size=12, unique=True)
keys_st = st.lists(st.one_of(st.text(max_size=20), st.binary(max_size=20)), min_size=1, max_size=60)
SAMPLE = [f"user:{i}" for i in range(3000)]

# Factories over names with weight 1; each builds a ring whose placement the tests compare.
FACTORIES: dict[str, Callable[[list[str]], Ring]] = {
    "hashring": lambda ns: HashRing(ns, vnodes=64),
    "ketama": lambda ns: KetamaRing(dict.fromkeys(ns, 1), hash="murmur"),
    "ketama-md5": lambda ns: KetamaRing(dict.fromkeys(ns, 1), hash="md5"),
    "modula": lambda ns: ModulaRing(dict.fromkeys(ns, 1), hash="crc32a"),
    "maglev": lambda ns: MaglevRing(ns, table_size=1009),
    "rendezvous": RendezvousRing,
    "jump": JumpRing,
}
ALL = pytest.mark.parametrize("kind", list(FACTORIES))
# Rings whose placement does not depend on the order the nodes were listed in.
ORDER_FREE = ["hashring", "maglev", "rendezvous"]


def placements(ring: Ring, keys: list[str] | None = None) -> list[str]:
    return [ring.get_node(k) for k in keys or SAMPLE]


@ALL
@given(nodes=memberships, keys=keys_st)
def test_lookup_is_deterministic_and_returns_a_member(
    kind: str, nodes: list[str], keys: list[str | bytes]
) -> None:
    a, b = FACTORIES[kind](nodes), FACTORIES[kind](nodes)
    got = [a.get_node(k) for k in keys]
    assert got == [b.get_node(k) for k in keys]
    assert set(got) <= set(nodes)


@pytest.mark.parametrize("kind", ORDER_FREE)
@given(nodes=memberships, data=st.data())
def test_membership_order_does_not_matter(kind: str, nodes: list[str], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(nodes))
    assert placements(FACTORIES[kind](nodes)) == placements(FACTORIES[kind](list(shuffled)))


@ALL
@given(nodes=memberships, key=st.text(max_size=30))
def test_str_and_its_utf8_bytes_place_alike(kind: str, nodes: list[str], key: str) -> None:
    ring = FACTORIES[kind](nodes)
    assert ring.get_node(key) == ring.get_node(key.encode("utf-8"))
    assert ring.get_nodes(key, len(nodes)) == ring.get_nodes(key.encode("utf-8"), len(nodes))


@ALL
@given(nodes=memberships, key=st.text(max_size=30), data=st.data())
def test_get_nodes_distinct_stable_and_led_by_get_node(
    kind: str, nodes: list[str], key: str, data: st.DataObject
) -> None:
    ring = FACTORIES[kind](nodes)
    n = data.draw(st.integers(1, len(nodes)))
    got = ring.get_nodes(key, n)
    assert len(got) == n == len(set(got))
    assert got[0] == ring.get_node(key)
    assert set(got) <= set(nodes)
    assert ring.get_nodes(key, len(nodes))[:n] == got  # a prefix of the full preference order
    assert list(ring.iter_nodes(key))[:n] == got


@ALL
@given(nodes=memberships, keys=keys_st)
def test_group_partitions_keys_by_owner(kind: str, nodes: list[str], keys: list[str | bytes]) -> None:
    ring = FACTORIES[kind](nodes)
    groups = ring.group(keys)
    assert sorted(map(repr, (k for ks in groups.values() for k in ks))) == sorted(map(repr, keys))
    for node, ks in groups.items():
        assert all(ring.get_node(k) == node for k in ks)
        assert ks == [k for k in keys if ring.get_node(k) == node]  # input order kept


# -- minimal disruption --------------------------------------------------------------

EXACT_ADD = ["hashring", "ketama", "ketama-md5", "rendezvous", "jump"]


@pytest.mark.parametrize("kind", EXACT_ADD)
@given(nodes=memberships, new=names)
def test_adding_a_node_moves_keys_only_to_it(kind: str, nodes: list[str], new: str) -> None:
    assume(new not in nodes)
    before = FACTORIES[kind](nodes)
    after = before.add(new)
    assert placements(after) == placements(FACTORIES[kind]([*nodes, new]))  # incremental == rebuilt
    for a, b in zip(placements(before), placements(after), strict=False):
        assert a == b or b == new


@pytest.mark.parametrize("kind", ["hashring", "ketama", "ketama-md5", "rendezvous"])
@given(nodes=st.lists(names, min_size=2, max_size=12, unique=True), data=st.data())
def test_removing_a_node_moves_only_its_keys(kind: str, nodes: list[str], data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(nodes))
    before = FACTORIES[kind](nodes)
    after = before.remove(gone)
    assert placements(after) == placements(FACTORIES[kind]([n for n in nodes if n != gone]))
    for a, b in zip(placements(before), placements(after), strict=False):
        assert a in (b, gone)


@given(nodes=st.lists(names, min_size=2, max_size=12, unique=True))
def test_jump_removes_only_the_last_shard(nodes: list[str]) -> None:
    ring = JumpRing(nodes)
    after = ring.remove(nodes[-1])
    for a, b in zip(placements(ring), placements(after), strict=False):
        assert a == b or a == nodes[-1]
    with pytest.raises(ValueError, match="removed from the end"):
        ring.remove(nodes[0])


@given(nodes=st.lists(names, min_size=2, max_size=10, unique=True), new=names)
def test_maglev_moves_little_more_than_the_minimum(nodes: list[str], new: str) -> None:
    assume(new not in nodes)
    before = MaglevRing(nodes, table_size=65537)
    after = before.add(new)
    moved = [a != b for a, b in zip(placements(before), placements(after), strict=False)]
    to_new = [b == new for b in placements(after)]
    # Keys that moved somewhere other than the new node are Maglev's price; the
    # paper measures a few percent of the table, bound it at 2% + sampling noise.
    assert sum(m and not t for m, t in zip(moved, to_new, strict=False)) / len(SAMPLE) <= 0.05


@pytest.mark.parametrize("kind", ["hashring", "rendezvous"])
@given(
    nodes=st.lists(names, min_size=2, max_size=10, unique=True),
    data=st.data(),
    weight=st.sampled_from([0.25, 0.5, 2, 3.5]),
)
def test_reweighting_moves_keys_only_to_or_from_that_node(
    kind: str, nodes: list[str], data: st.DataObject, weight: float
) -> None:
    node = data.draw(st.sampled_from(nodes))
    before = HashRing(nodes, vnodes=64) if kind == "hashring" else RendezvousRing(nodes)
    after = before.reweight(node, weight)
    rebuilt = type(before)(
        {**dict.fromkeys(nodes, 1), node: weight}, **({"vnodes": 64} if kind == "hashring" else {})
    )
    assert placements(after) == placements(rebuilt)
    for a, b in zip(placements(before), placements(after), strict=False):
        if a != b:
            assert (b == node) if weight > 1 else (a == node)


# -- balance and weights --------------------------------------------------------------


@given(nodes=st.lists(names, min_size=2, max_size=20, unique=True))
def test_default_hashring_share_is_within_25_percent_of_the_mean(nodes: list[str]) -> None:
    # 1024 points a node: each share has a relative standard deviation of
    # about 1/sqrt(1024) = 3%, so 25% over the mean is eight deviations out.
    shares = HashRing(nodes).shares()
    assert math.isclose(sum(shares.values()), 1.0)
    assert max(shares.values()) * len(nodes) <= 1.25
    assert min(shares.values()) * len(nodes) >= 0.75


@given(
    weights=st.dictionaries(names, st.sampled_from([1, 2, 3, 5, 0.5]), min_size=2, max_size=8),
)
def test_hashring_shares_follow_weights(weights: dict[str, float]) -> None:
    shares = HashRing(weights).shares()
    total = sum(weights.values())
    for name, w in weights.items():
        # at least 512 points each: 5 standard deviations is about 22%
        assert shares[name] == pytest.approx(w / total, rel=0.25)


@given(weights=st.dictionaries(names, st.sampled_from([1, 2, 3, 5]), min_size=2, max_size=8))
def test_rendezvous_and_maglev_follow_weights(weights: dict[str, int]) -> None:
    total = sum(weights.values())
    keys = [f"k{i}" for i in range(20000)]
    for ring in (RendezvousRing(weights), MaglevRing(weights, table_size=10007)):
        counts = Counter(map(ring.get_node, keys))
        for name, w in weights.items():
            expected = len(keys) * w / total
            # binomial sampling noise: 5 standard deviations, plus 1% of the keys
            assert abs(counts[name] - expected) <= 5 * math.sqrt(expected) + 0.01 * len(keys)


@given(weights=st.dictionaries(names, st.integers(1, 10), min_size=2, max_size=10))
def test_ketama_points_follow_twemproxy_weights(weights: dict[str, int]) -> None:
    ring = KetamaRing(weights, hash="md5")
    points = ring.points()
    total = sum(weights.values())
    for name, w in weights.items():
        exact = 160 * len(weights) * w / total
        assert points[name] % 4 == 0
        assert exact - 4 - 1e-6 <= points[name] <= exact + 1e-6  # floored to a multiple of four


@given(count=st.integers(1, 40))
def test_jump_spreads_keys_evenly(count: int) -> None:
    nodes = [f"shard-{i}" for i in range(count)]
    counts = Counter(map(JumpRing(nodes).get_node, SAMPLE))
    expected = len(SAMPLE) / count
    assert all(abs(counts[n] - expected) <= 5 * math.sqrt(expected) + 1 for n in nodes)


# -- bounded loads ----------------------------------------------------------------------


@given(
    nodes=st.lists(names, min_size=1, max_size=10, unique=True),
    factor=st.sampled_from([1.0, 1.1, 1.1234567, 1.25, 1.5, 2.0]),
    keys=st.lists(st.sampled_from(["hot", "warm", "a", "b", "c"]), min_size=1, max_size=200),
    data=st.data(),
)
def test_bounded_loads_never_exceed_the_cap(
    nodes: list[str], factor: float, keys: list[str], data: st.DataObject
) -> None:
    ring = BoundedLoads(HashRing(nodes, vnodes=16), balance_factor=factor)
    loads = {n: data.draw(st.integers(0, 5)) for n in nodes}
    for key in keys:
        cap = math.ceil(Fraction(factor) * (sum(loads.values()) + 1) / len(nodes))  # exact, as documented
        node = ring.get_node(key, loads)
        loads[node] += 1
        assert loads[node] <= cap
        if data.draw(st.booleans()):  # requests also finish
            done = data.draw(st.sampled_from(nodes))
            loads[done] = max(0, loads[done] - 1)


@given(nodes=st.lists(names, min_size=2, max_size=10, unique=True))
def test_bounded_loads_follow_the_ring_while_under_the_cap(nodes: list[str]) -> None:
    ring = HashRing(nodes, vnodes=16)
    bounded = BoundedLoads(ring, balance_factor=1.25)
    for key in SAMPLE[:50]:
        assert bounded.get_node(key, {}) == ring.get_node(key)


@given(servers=st.dictionaries(names, st.integers(1, 5), min_size=1, max_size=8), data=st.data())
def test_twemproxy_rings_do_not_depend_on_the_order_servers_are_given(
    servers: dict[str, int], data: st.DataObject
) -> None:
    shuffled = dict(data.draw(st.permutations(list(servers.items()))))
    for cls in (KetamaRing, ModulaRing):
        a, b = cls(servers, hash="md5"), cls(shuffled, hash="md5")
        assert a.nodes == b.nodes  # nutcracker's order: by name length, then bytes
        assert placements(a) == placements(b)
    grown = ModulaRing(servers, hash="md5").add("zz-new", 2)
    assert placements(grown) == placements(ModulaRing({**servers, "zz-new": 2}, hash="md5"))
