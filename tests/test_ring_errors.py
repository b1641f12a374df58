"""Bad input to a ring is a RingError (a ValueError) that says what was wrong."""

from __future__ import annotations

import math

import pytest

from distpat.errors import DistpatError, EmptyRingError, RingError, UnknownHashError
from distpat.ring import (
    ALGORITHMS,
    BoundedLoads,
    HashRing,
    JumpRing,
    KetamaRing,
    MaglevRing,
    RandomRing,
    jump_hash,
    make_ring,
)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_empty_ring(algorithm: str) -> None:
    with pytest.raises(EmptyRingError, match="at least one node"):
        make_ring(algorithm, [])


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("weight", [0, -1, math.nan, math.inf, "2", None, True])
def test_bad_weights(algorithm: str, weight: object) -> None:
    with pytest.raises(RingError, match="'a': weight must be"):
        make_ring(algorithm, {"a": weight})


def test_duplicate_and_bad_names() -> None:
    with pytest.raises(RingError, match="duplicate node name 'a'"):
        HashRing(["a", "b", "a"])
    with pytest.raises(RingError, match="must not be empty"):
        HashRing(["a", ""])
    with pytest.raises(RingError, match="must be str"):
        HashRing([1, 2])  # type: ignore[list-item]
    with pytest.raises(RingError, match="not a single string"):
        HashRing("abc")
    ring = HashRing(["a", "b"])
    with pytest.raises(RingError, match="already in the ring"):
        ring.add("a")
    with pytest.raises(RingError, match="'zz' is not in the ring"):
        ring.remove("zz")
    with pytest.raises(RingError, match="not in the ring"):
        ring.reweight("zz", 2)
    with pytest.raises(RingError, match="weight must be positive"):
        ring.reweight("a", 0)
    with pytest.raises(EmptyRingError, match="leave the ring empty"):
        HashRing(["a"]).remove("a")


def test_unknown_names_of_hashes_and_algorithms() -> None:
    with pytest.raises(UnknownHashError, match=r"unknown twemproxy hash 'sha1'.*fnv1a_64"):
        KetamaRing({"a": 1}, hash="sha1")
    with pytest.raises(UnknownHashError, match="unknown ring algorithm 'chord'"):
        make_ring("chord", ["a"])


def test_ring_errors_are_value_errors_and_distpat_errors() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the builtin is the point
        HashRing([])
    with pytest.raises(DistpatError):
        HashRing([])


def test_options() -> None:
    with pytest.raises(RingError, match="vnodes must be"):
        HashRing(["a"], vnodes=0)
    with pytest.raises(RingError, match="whole number"):
        KetamaRing({"a": 1.5})  # type: ignore[dict-item]
    with pytest.raises(RingError, match="hash_tag must be two bytes"):
        KetamaRing({"a": 1}, hash_tag="{")
    with pytest.raises(RingError, match="prime"):
        MaglevRing(["a"], table_size=1000)
    with pytest.raises(RingError, match="smaller than the number of nodes"):
        MaglevRing([f"n{i}" for i in range(10)], table_size=7)
    with pytest.raises(RingError, match="does not support weights"):
        JumpRing({"a": 2})
    with pytest.raises(RingError, match="draw"):
        RandomRing({"a": 1}, draw=None)  # type: ignore[arg-type]
    with pytest.raises(RingError, match="balance_factor must be from 1"):
        BoundedLoads(HashRing(["a"]), balance_factor=0.9)
    with pytest.raises(RingError, match="load must be a whole number of at least 0"):
        BoundedLoads(HashRing(["a"])).get_node("k", {"a": -1})


@pytest.mark.parametrize("n", [0, 3, -1, 1.5, True])
def test_get_nodes_bounds(n: object) -> None:
    with pytest.raises(RingError, match="n must be a whole number from 1 to 2"):
        HashRing(["a", "b"]).get_nodes("k", n)  # type: ignore[arg-type]


def test_non_key_types_raise_type_error() -> None:
    with pytest.raises(TypeError):
        HashRing(["a"]).get_node(12)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be str or bytes"):
        KetamaRing({"a": 1}).get_node(12)  # type: ignore[arg-type]


def test_ketama_refuses_names_twemproxy_would_overflow_on() -> None:
    with pytest.raises(RingError, match="too long for ketama"):
        KetamaRing({"x" * 90: 1})
    KetamaRing({"x" * 80: 1})  # 80 + len("-39") fits in twemproxy's 86-byte buffer


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: HashRing({"a": 1e308}), "above the largest allowed"),
        (lambda: HashRing({"a": 10**400}), "above the largest allowed"),
        (lambda: HashRing({"a": 5000}), "points"),  # 1024 x 5000 points for one node
        (lambda: HashRing(["a"], vnodes=10**10), "vnodes must be"),
        (lambda: MaglevRing(["a"], table_size=2**61 - 1), "table_size must be"),
        (lambda: BoundedLoads(HashRing(["a"]), balance_factor=10**400), "balance_factor"),
        (lambda: BoundedLoads(HashRing(["a", "b"])).get_node("k", {"a": 0.5}), "load must be a whole number"),
        (lambda: jump_hash(-1, 3), "unsigned 64-bit"),
        (lambda: jump_hash(5, 0), "at least 1"),
        (lambda: HashRing(["\ud800"]), "not valid Unicode"),
        (lambda: HashRing(["a"]).get_node("\ud800"), "not valid Unicode"),
        (lambda: KetamaRing({"a": 1}).get_node("\udcff"), "not valid Unicode"),
    ],
)
def test_out_of_range_input_is_refused_quickly(make: object, message: str) -> None:
    with pytest.raises(RingError, match=message):
        make()  # type: ignore[operator]


def test_maglev_with_extreme_weights_still_fills_its_table() -> None:
    ring = MaglevRing({"big": 1_000_000, "small": 0.000001}, table_size=1009)
    assert sum(ring.entries().values()) == 1009
    assert ring.entries()["small"] >= 1


def test_group_refuses_a_single_key() -> None:
    with pytest.raises(TypeError, match="single key"):
        HashRing(["a"]).group("abc")  # type: ignore[arg-type]
