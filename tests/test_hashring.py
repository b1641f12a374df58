"""HashRing specifics: incremental changes equal a rebuild, and placement is a fixed contract."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable

import mmh3
from hypothesis import given
from hypothesis import strategies as st

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


def test_large_ring_without_a_table_places_like_the_plain_ring() -> None:
    ring = HashRing([f"node{i}" for i in range(200)], vnodes=1024)  # 204,800 points: no slot table
    assert len(ring._continuum.table) == 1  # one slot, always "split": every lookup searches
    c = ring._continuum
    for i in range(2000):
        key = f"user:{i}"
        assert ring.get_node(key) == c.owner(mmh3.hash(key) & 0xFFFFFFFF)
    grown = ring.add("node200")
    rebuilt = HashRing([f"node{i}" for i in range(201)])
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
    "hashring": "84b603f3732656d3",
    "hashring-weighted": "cad0770d3cc12145",
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
