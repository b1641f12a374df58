"""distpat.core.twemhash against the real nutcracker (twemproxy 0.5.0).

One nutcracker runs many redis pools over the same stand-in backends, all with
``distribution: modula`` and weight-1 servers named ``s000``, ``s001``, ...
(equal-length names, so twemproxy's name-sorted server order is the index
order). For modula, nutcracker sends ``GET key`` to server ``hash(key) % N``,
so the backend that records a key reveals ``hash(key) mod N``:

* pools of 3, 7, 11 and 13 servers check every hash over a few hundred keys;
* pools of 239, 241 and 251 servers as well: the product of all seven sizes
  exceeds 2**32, so the Chinese remainder theorem recovers nutcracker's full
  32-bit hash of every key, which is compared exactly;
* pools with ``hash_tag: "{}"`` and ``"$$"`` check what part of a key is
  hashed; a one-server pool and the empty key check the dispatcher's
  shortcuts (hash 0, no hashing).

Everything is collected once per module by the ``oracle`` fixture; nutcracker
and the stand-ins are stopped before the first test runs its assertions.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from distpat.core.twemhash import TWEMPROXY_HASHES, hash_tag_key
from tests.nutcracker import (
    PoolSpec,
    ServerEntry,
    StandInRedis,
    TwemproxyServerSpec,
    free_ports,
    nutcracker_binary,
    nutcracker_placement,
    running_nutcracker,
    send_gets,
    stand_in_servers,
)

HASHES = tuple(TWEMPROXY_HASHES)
SMALL_SIZES = (3, 7, 11, 13)
LARGE_SIZES = (239, 241, 251)
TAGS = ("{}", "$$")
TAG_POOL_SIZE = 13


def _oracle_keys() -> list[bytes]:
    keys: list[bytes] = [b"", b"a", b"b", b"k", b"foo", b"bar", b"hello world"]
    keys += [f"key:{i}".encode() for i in range(100)]
    keys += [f"user:{i * 7919}:{'x' * (i % 23)}".encode() for i in range(30)]
    # Every length 1..48, bytes sweeping 0x00..0xff: all word/tail paths.
    keys += [bytes((31 * n + 17 * j + 5) & 0xFF for j in range(n)) for n in range(1, 49)]
    keys += [bytes([b]) for b in (0x00, 0x7F, 0x80, 0x81, 0xC3, 0xFE, 0xFF)]
    keys += [b"\xff" * n for n in range(2, 14)] + [b"\x80" * n for n in range(2, 14)]
    keys += [b"ab\xff", b"abc\x80", b"abcdefg\xfe", b"\x00\x00\x00"]
    texts = [
        "é",
        "naïve café",
        "ключ",
        "日本語のキー",
        "🎉",
        "emoji:🎉:1",
        "Ünïcödé-ключ-キー-🎉",
        "Ελληνικά:42",
    ]
    keys += [t.encode() for t in texts]
    keys += [b"a\r\nb", b"with space", b"tab\tkey", b"*2\r\n$3\r\n"]
    keys += [b"L" * 100, bytes(range(256)) * 4, b"x" * 4096]
    # nutcracker's longest redis key with the default 16 KiB mbuf.
    keys += [(b"\xe2\x82\xac" * 5500)[:16335]]
    return list(dict.fromkeys(keys))


def _tag_keys() -> list[bytes]:
    keys = [
        b"user{42}:name",
        b"user{42}:mail",
        b"{42}",
        b"{}abc",
        b"abc{}",
        b"abc{def",
        b"abc}def{",
        b"a}b{c}",
        b"{a}{b}",
        b"x{{y}}",
        b"a{}b{c}",
        b"{",
        b"}",
        b"{}",
        b"{x}",
        b"no tag here",
        b"$x$",
        b"$$",
        b"$$x$",
        b"a$b$c",
        b"a$$b$c$",
        b"$",
        b"{caf\xc3\xa9}:1",
        b"{\xff\x80}",
        b"pre{\xe3\x82\xad\xe3\x83\xbc}post",
        b"{$a$}",
        b"$a{b}$",
    ]
    keys += [b"order:{%d}:item:%d" % (i % 5, i) for i in range(25)]
    keys += [b"$%d$:%d" % (i % 4, i) for i in range(20)]
    return list(dict.fromkeys(keys))


ORACLE_KEYS = _oracle_keys()
TAG_KEYS = _tag_keys()


@dataclass(frozen=True)
class Observed:
    """Which server index nutcracker chose, per pool and key."""

    index: dict[str, dict[bytes, int]]


def _pool_name(hash_name: str, size: int, tag: str = "") -> str:
    suffix = f"_tag{TAGS.index(tag)}" if tag else ""
    return f"{hash_name}_n{size}{suffix}"


def _entries(backends: Sequence[StandInRedis], size: int) -> tuple[ServerEntry, ...]:
    return tuple(ServerEntry(b.address, 1, f"s{i:03d}") for i, b in enumerate(backends[:size]))


async def _route(port: int, keys: Sequence[bytes], backends: Sequence[StandInRedis]) -> dict[bytes, int]:
    for b in backends:
        b.received.clear()
    replies = await send_gets(port, keys)
    errors = [(k[:40], r) for k, r in zip(keys, replies, strict=True) if r != b"$-1"]
    assert not errors, f"nutcracker answered errors: {errors[:5]}"
    seen: dict[bytes, int] = {}
    for i, b in enumerate(backends):
        for key in b.received:
            seen[key] = i
    missing = [k[:40] for k in keys if k not in seen]
    assert not missing, f"keys that reached no backend: {missing[:5]}"
    return seen


async def _collect(workdir: Path) -> Observed:
    size_max = max(LARGE_SIZES)
    pools: list[tuple[PoolSpec, list[bytes]]] = []
    async with stand_in_servers(size_max) as backends:
        layouts = [(h, n, "") for h in HASHES for n in SMALL_SIZES + LARGE_SIZES]
        layouts += [(h, TAG_POOL_SIZE, t) for h in HASHES for t in TAGS]
        layouts.append(("md5", 1, ""))
        ports = free_ports(len(layouts))
        for (hash_name, size, tag), port in zip(layouts, ports, strict=True):
            spec = PoolSpec(
                name=_pool_name(hash_name, size, tag),
                listen_port=port,
                servers=_entries(backends, size),
                hash=hash_name,
                distribution="modula",
                hash_tag=tag,
            )
            pools.append((spec, TAG_KEYS if tag else ORACLE_KEYS))
        async with running_nutcracker([p for p, _ in pools], workdir):
            index = {}
            for spec, keys in pools:
                n = len(spec.servers)
                index[spec.name] = await _route(spec.listen_port, keys, backends[:n])
    return Observed(index=index)


@pytest.fixture(scope="module")
def oracle() -> Observed:
    nutcracker_binary()
    with tempfile.TemporaryDirectory(prefix="distpat-nutcracker-") as tmp:
        return asyncio.run(_collect(Path(tmp)))


def _dispatch_hash(hash_name: str, key: bytes, tag: str = "") -> int:
    """The hash nutcracker's dispatcher uses for ``key`` (0 for empty input)."""
    hashed = hash_tag_key(key, tag.encode()) if tag else key
    return TWEMPROXY_HASHES[hash_name](hashed) if hashed else 0


def _mismatches(expected: dict[bytes, int], observed: dict[bytes, int]) -> list[str]:
    return [
        f"{k[:32]!r}: expected {expected[k]}, nutcracker {observed[k]}"
        for k in expected
        if expected[k] != observed[k]
    ]


def test_nutcracker_version() -> None:
    out = subprocess.run(
        [nutcracker_binary(), "--version"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert "nutcracker-0.5.0" in out.stdout + out.stderr


@pytest.mark.parametrize("size", SMALL_SIZES + LARGE_SIZES)
@pytest.mark.parametrize("hash_name", HASHES)
def test_modula_server_matches(oracle: Observed, hash_name: str, size: int) -> None:
    observed = oracle.index[_pool_name(hash_name, size)]
    expected = {k: _dispatch_hash(hash_name, k) % size for k in ORACLE_KEYS}
    bad = _mismatches(expected, observed)
    assert not bad, f"{len(bad)}/{len(expected)} keys differ: {bad[:5]}"


@pytest.mark.parametrize("hash_name", HASHES)
def test_full_32_bit_hash_matches(oracle: Observed, hash_name: str) -> None:
    sizes = SMALL_SIZES + LARGE_SIZES
    modulus = math.prod(sizes)
    assert modulus > 2**32
    recovered: dict[bytes, int] = {}
    for key in ORACLE_KEYS:
        value = 0
        for size in sizes:
            residue = oracle.index[_pool_name(hash_name, size)][key]
            rest = modulus // size
            value += residue * rest * pow(rest, -1, size)
        recovered[key] = value % modulus
    assert all(v < 2**32 for v in recovered.values())
    expected = {k: _dispatch_hash(hash_name, k) for k in ORACLE_KEYS}
    bad = [
        f"{k[:32]!r}: ours {expected[k]:#010x}, nutcracker {recovered[k]:#010x}"
        for k in ORACLE_KEYS
        if expected[k] != recovered[k]
    ]
    assert not bad, f"{len(bad)}/{len(expected)} keys differ: {bad[:5]}"


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("hash_name", HASHES)
def test_hash_tag_matches(oracle: Observed, hash_name: str, tag: str) -> None:
    observed = oracle.index[_pool_name(hash_name, TAG_POOL_SIZE, tag)]
    expected = {k: _dispatch_hash(hash_name, k, tag) % TAG_POOL_SIZE for k in TAG_KEYS}
    bad = _mismatches(expected, observed)
    assert not bad, f"{len(bad)}/{len(expected)} keys differ: {bad[:5]}"


def test_hash_tag_pools_really_group_keys(oracle: Observed) -> None:
    # Keys sharing a tag land together in every tagged pool, which a
    # whole-key hash would almost never do for 5 keys in 13 servers.
    group = [b"order:{3}:item:%d" % i for i in (3, 8, 13, 18, 23)]
    for hash_name in HASHES:
        observed = oracle.index[_pool_name(hash_name, TAG_POOL_SIZE, "{}")]
        assert len({observed[k] for k in group}) == 1, hash_name


def test_empty_key_goes_to_the_first_server(oracle: Observed) -> None:
    # server_pool_hash() returns 0 for keylen 0 instead of hashing, so the
    # empty key always takes slot 0, whatever hash the pool names.
    for hash_name in HASHES:
        for size in SMALL_SIZES + LARGE_SIZES:
            assert oracle.index[_pool_name(hash_name, size)][b""] == 0
    # ... which differs from hashing zero bytes for most functions.
    moved = [h for h in HASHES if TWEMPROXY_HASHES[h](b"") % 13 != 0]
    assert len(moved) >= 6


def test_single_server_pool_takes_every_key(oracle: Observed) -> None:
    observed = oracle.index[_pool_name("md5", 1)]
    assert set(observed) == set(ORACLE_KEYS)
    assert set(observed.values()) == {0}


def test_placement_helper_follows_name_order_and_weights() -> None:
    """nutcracker_placement, and modula over weighted, named servers.

    twemproxy sorts a pool's servers by (name length, name) before building
    the continuum, so modula slots follow that order, not the file order;
    each server takes ``weight`` consecutive slots.
    """
    specs = [
        TwemproxyServerSpec(weight=2, name="zeta"),
        TwemproxyServerSpec(weight=1, name="alpha"),
        TwemproxyServerSpec(weight=3, name="mid"),
    ]
    keys = [f"placement:{i}".encode() for i in range(120)]
    placement = asyncio.run(nutcracker_placement(specs, hash="murmur", distribution="modula", keys=keys))
    order = sorted(specs, key=lambda s: (len(s.name or ""), s.name or ""))
    assert [s.name for s in order] == ["mid", "zeta", "alpha"]
    slots = [s.name for s in order for _ in range(s.weight)]
    fn = TWEMPROXY_HASHES["murmur"]
    expected = {k: slots[fn(k) % len(slots)] for k in keys}
    assert placement == expected
