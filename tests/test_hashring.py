"""HashRing specifics: incremental changes equal a rebuild, and placement is a fixed contract."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from bisect import bisect_left
from collections.abc import Callable

import mmh3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.ring.hashring import GRID_BITS
from distpat.ring import HashRing, JumpRing, KetamaRing, MaglevRing, ModulaRing, RendezvousRing, Ring

ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "reweight"]),
        st.integers(0, 10_000),
        st.sampled_from([0.5, 1, 2, 3.25]),
    ),
    min_size=1,
    max_size=6,
)


def layout(ring: HashRing) -> tuple[object, ...]:
    """Points, slot owners and split-slot resolvers: everything a lookup reads."""
    c = ring._continuum
    return list(c.points()), [c.slot_names[i] for i in c.table], c.splits


@given(
    start=st.lists(st.integers(0, 10_000), min_size=1, max_size=40, unique=True),
    vnodes=st.sampled_from([1, 3, 64, 1024, 5000]),
    steps=ops,
)
def test_incremental_changes_equal_a_rebuild(
    start: list[int], vnodes: int, steps: list[tuple[str, int, float]]
) -> None:
    members: dict[str, float] = {f"n{i}": 1 for i in start}
    ring = HashRing(members, vnodes=vnodes)
    for op, i, w in steps:
        name = f"n{i}"
        if op == "add" and name not in members:
            ring, members[name] = ring.add(name, w), w
        elif op == "remove" and name in members and len(members) > 1:
            ring = ring.remove(name)
            del members[name]
        elif op == "reweight" and name in members:
            ring, members[name] = ring.reweight(name, w), w
        rebuilt = HashRing(members, vnodes=vnodes)
        assert layout(ring) == layout(rebuilt)
        assert dict(ring.weights) == members


def test_snapshots_are_immutable() -> None:
    ring = HashRing(["a", "b", "c"])
    keys = [f"k{i}" for i in range(2000)]
    before = [ring.get_node(k) for k in keys]
    ring.add("d")
    ring.remove("a")
    ring.reweight("b", 5)
    assert [ring.get_node(k) for k in keys] == before
    assert ring.nodes == ("a", "b", "c")


@pytest.mark.parametrize(("count", "vnodes"), [(1, 1), (3, 5), (10, 1024), (200, 1024)])
def test_the_table_places_like_a_search_of_the_points(count: int, vnodes: int) -> None:
    """Every key goes to the first point at or after its hash with the low 14 bits set."""
    ring = HashRing([f"node{i}" for i in range(count)], vnodes=vnodes)
    points = sorted(ring._continuum.points())
    values = [p for p, _ in points]
    low = (1 << (32 - GRID_BITS)) - 1
    keys = [f"user:{i}" for i in range(3000)] + [b"\xff\xfe", "", "日本"]
    for key in keys:
        position = (mmh3.hash(key.encode() if isinstance(key, str) else key) & 0xFFFFFFFF) | low
        i = bisect_left(values, position)
        assert ring.get_node(key) == points[i % len(points)][1] == ring.get_nodes(key, 1)[0]
        assert ring.key_hash(key) == position
    grown = ring.add("extra")
    rebuilt = HashRing([*ring.nodes, "extra"], vnodes=vnodes)
    assert [grown.get_node(f"k{i}") for i in range(500)] == [rebuilt.get_node(f"k{i}") for i in range(500)]


# The compatibility contract: a digest of where 2,000 keys land for each
# algorithm. If one of these changes, every deployment's keys move: bump the
# major version and say so in docs/ring.md.
def fingerprint(ring: Ring) -> str:
    keys = [f"user:{i}" for i in range(2000)] + ["", "é", "日本", "\x00"]
    joined = "\n".join(ring.get_node(k) for k in keys)
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


NODES = [f"10.0.0.{i}:6379" for i in range(1, 8)]
RINGS: dict[str, Callable[[], Ring]] = {
    "hashring": lambda: HashRing(NODES),
    "hashring-weighted": lambda: HashRing({**dict.fromkeys(NODES, 1), NODES[0]: 2.5}),
    "ketama-fnv1a_64": lambda: KetamaRing(dict.fromkeys(NODES, 1)),
    "ketama-md5-weighted": lambda: KetamaRing({n: i + 1 for i, n in enumerate(NODES)}, hash="md5"),
    "modula": lambda: ModulaRing(dict.fromkeys(NODES, 1), hash="murmur"),
    "maglev": lambda: MaglevRing(NODES),
    "rendezvous": lambda: RendezvousRing(NODES),
    "jump": lambda: JumpRing(NODES),
}
GOLDEN = {
    "hashring": "bfeb78bff447ea7b",
    "hashring-weighted": "190971e26de068fe",
    "ketama-fnv1a_64": "a0d54391e43620dd",
    "ketama-md5-weighted": "3e90f7fa7d97b3c3",
    "modula": "763a674914346be2",
    "maglev": "8107da9e4b88646a",
    "rendezvous": "e35b5e1f5237108c",
    "jump": "2cfac97133c1778c",
}


def test_placement_contract_is_unchanged() -> None:
    assert {name: fingerprint(make()) for name, make in RINGS.items()} == GOLDEN


def test_placement_does_not_depend_on_the_process() -> None:
    """Python salts str hashes per process; placement must not notice."""
    code = (
        "import sys; sys.path[:0] = sys.argv[1:2]\n"
        "from tests.test_hashring import RINGS, fingerprint\n"
        "print({n: fingerprint(m()) for n, m in RINGS.items()})"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code, "."],
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": "src"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "random")
    }
    assert len(outs) == 1
    assert outs.pop().strip() == repr(GOLDEN)
