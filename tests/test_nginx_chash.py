"""NginxChashRing's own properties, and its placement against a reference written from nginx's C.

The reference below follows ``ngx_http_upstream_update_chash`` step by step
(the host/port split loop, CRC-32 by table with nginx's init / update / final
steps) and uses its own table-driven CRC-32, built from the polynomial, so
that it also checks that :func:`zlib.crc32` is nginx's ``ngx_crc32_long``.
The interop test (``test_nginx_chash_interop.py``) checks both against nginx.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.ring import BoundedLoads, NginxChashRing
from distpat.core.ring.nginx_chash import MAX_POINTS, MEMO_ENTRIES, MEMO_KEY_MAX, server_points, split_server
from distpat.errors import RingError
from distpat.ring import ALGORITHMS, make_ring


def _crc_table() -> list[int]:
    out = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        out.append(c)
    return out


TABLE = _crc_table()


def crc_update(crc: int, data: bytes) -> int:
    """nginx's ``ngx_crc32_update``: no inversion (``ngx_crc32_init`` and ``_final`` do that)."""
    for b in data:
        crc = TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def crc32(data: bytes) -> int:
    return crc_update(0xFFFFFFFF, data) ^ 0xFFFFFFFF


def reference_continuum(servers: dict[str, int]) -> list[tuple[int, str]]:
    points: list[tuple[int, str]] = []
    for name, weight in servers.items():
        s = name.encode("utf-8")
        host, port = s, b""
        if len(s) >= 5 and s[:5].lower() == b"unix:":
            host = s[5:]
        else:
            for j in range(len(s)):
                c = s[len(s) - j - 1]
                if c == ord(":"):
                    host, port = s[: len(s) - j - 1], s[len(s) - j :]
                    break
                if not ord("0") <= c <= ord("9"):
                    break
        base = crc_update(crc_update(crc_update(0xFFFFFFFF, host), b"\0"), port)
        prev = 0
        for _ in range(160 * weight):
            prev = crc_update(base, prev.to_bytes(4, "little")) ^ 0xFFFFFFFF
            points.append((prev, name))
    points.sort(key=lambda p: p[0])  # stable, as glibc's qsort: equal points keep server order
    out: list[tuple[int, str]] = []
    for p in points:
        if not out or out[-1][0] != p[0]:
            out.append(p)
    return out


def reference_node(continuum: list[tuple[int, str]], key: bytes) -> str:
    h = crc32(key)
    for point, name in continuum:
        if point >= h:
            return name
    return continuum[0][1]


# Server names as nginx configurations write them, and arbitrary text.
hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5}){0,2}", fullmatch=True),
)
addresses = st.one_of(
    st.builds(lambda h, p: f"{h}:{p}", hosts, st.integers(1, 65535)),
    hosts,
    st.builds(lambda p: f"unix:/run/{p}.sock", st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)),
    st.text(min_size=1, max_size=12),
)
memberships = st.lists(addresses, min_size=1, max_size=8, unique=True)
weighted = st.dictionaries(addresses, st.integers(1, 4), min_size=1, max_size=6)
keys_st = st.lists(st.one_of(st.text(max_size=40), st.binary(max_size=40)), min_size=1, max_size=40)
SAMPLE = [f"/item/{i}?page={i % 7}" for i in range(2000)]


def as_bytes(key: str | bytes) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else key


# -- agreement with nginx's algorithm ---------------------------------------------


def test_zlib_crc32_is_nginx_crc32() -> None:
    assert crc32(b"123456789") == zlib.crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value
    for data in (b"", b"\0", b"/", b"127.0.0.1\x008081", bytes(range(256)) * 3):
        assert zlib.crc32(data) == crc32(data)
        # Continuing a CRC over more data is nginx's update step between init and final.
        assert (
            zlib.crc32(b"tail", zlib.crc32(data))
            == crc_update(crc_update(0xFFFFFFFF, data), b"tail") ^ 0xFFFFFFFF
        )


@pytest.mark.parametrize(
    ("name", "host", "port"),
    [
        ("127.0.0.1:8081", b"127.0.0.1", b"8081"),
        ("backend.example:80", b"backend.example", b"80"),
        ("backend.example", b"backend.example", b""),
        ("[::1]:8080", b"[::1]", b"8080"),
        ("[::1]", b"[::1]", b""),
        ("host:", b"host", b""),  # nothing after the colon: an empty port
        ("a:b:80", b"a:b", b"80"),  # the last colon only
        ("host:8x", b"host:8x", b""),  # a non-digit before any colon: no port
        ("8080", b"8080", b""),
        (":80", b"", b"80"),
        ("unix:/run/app.sock", b"/run/app.sock", b""),
        ("UNIX:/run/app.sock:80", b"/run/app.sock:80", b""),  # the prefix in any case; the rest is a path
        ("unix:", b"", b""),
        ("unix", b"unix", b""),
        ("ünï:1", "ünï".encode(), b"1"),
    ],
)
def test_split_server_as_nginx(name: str, host: bytes, port: bytes) -> None:
    assert split_server(name) == (host, port)


def test_points_are_a_crc_chain() -> None:
    pts = server_points("127.0.0.1:8081", 2)
    assert len(pts) == 320
    base = b"127.0.0.1\x008081"
    assert pts[0] == zlib.crc32(base + bytes(4))
    assert pts[1] == zlib.crc32(base + pts[0].to_bytes(4, "little"))
    assert pts[:160] == server_points("127.0.0.1:8081", 1)  # more weight only appends points


@given(servers=weighted, keys=keys_st)
def test_placement_matches_the_reference(servers: dict[str, int], keys: list[str | bytes]) -> None:
    ring = NginxChashRing(servers)
    continuum = reference_continuum(servers)
    assert ring.continuum() == continuum
    for key in keys:
        assert ring.get_node(key) == reference_node(continuum, as_bytes(key))
        assert ring.key_hash(key) == crc32(as_bytes(key))


def test_names_nginx_hashes_alike_share_every_point() -> None:
    """``unix:/s`` and ``/s`` hash alike: the one listed second owns nothing, as in nginx."""
    ring = NginxChashRing(["unix:/s", "/s", "10.0.0.1:80"])
    assert ring.points() == {"unix:/s": 160, "/s": 0, "10.0.0.1:80": 160}
    assert ring.shares()["/s"] == 0
    assert "/s" not in set(ring.group(SAMPLE))
    assert list(ring.iter_nodes("/x"))[-1] == "/s"  # listed last, so failover still reaches it
    assert NginxChashRing(["/s", "unix:/s"]).points() == {"/s": 160, "unix:/s": 0}


# -- ring properties ----------------------------------------------------------------


@given(nodes=memberships, keys=keys_st)
def test_deterministic_and_a_member(nodes: list[str], keys: list[str | bytes]) -> None:
    a, b = NginxChashRing(nodes), NginxChashRing(nodes)
    first = [a.get_node(k) for k in keys]
    assert first == [b.get_node(k) for k in keys]
    assert first == [a.get_node(k) for k in keys]  # the second time from the memo
    assert set(first) <= set(nodes)


def test_memo_changes_no_answer() -> None:
    """Past the memo's size, long keys and every key type: answers agree with the reference."""
    servers = {"127.0.0.1:8081": 1, "127.0.0.1:8082": 2, "127.0.0.1:8083": 1}
    ring = NginxChashRing(servers)
    continuum = reference_continuum(servers)
    keys = [f"/k/{i}" for i in range(MEMO_ENTRIES + 500)] + ["/" + "x" * MEMO_KEY_MAX, "/" + "y" * 5000]
    expected = [reference_node(continuum, k.encode()) for k in keys]
    for _ in range(2):
        assert [ring.get_node(k) for k in keys] == expected
        assert [ring.get_node(k.encode()) for k in keys] == expected
    for k, e in zip(keys[:50], expected[:50], strict=True):
        assert ring.get_node(bytearray(k.encode())) == e
        assert ring.get_node(memoryview(k.encode())) == e
        assert ring.get_nodes(k, 1) == [e]


def test_bad_keys() -> None:
    ring = NginxChashRing(["a:1", "b:2"])
    for _ in range(2):  # a refused key is not remembered
        with pytest.raises(RingError, match="not valid Unicode"):
            ring.get_node("\udcff")
        with pytest.raises(TypeError, match="must be str or bytes"):
            ring.get_node(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ring.iter_nodes(None)  # type: ignore[arg-type]


@given(nodes=memberships.filter(lambda ns: len(ns) >= 2), data=st.data())
def test_removing_a_node_moves_only_its_keys(nodes: list[str], data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(nodes))
    before = NginxChashRing(nodes)
    after = before.remove(gone)
    assert isinstance(after, NginxChashRing)
    assert after.nodes == tuple(n for n in nodes if n != gone)
    for key in SAMPLE[:500]:
        old = before.get_node(key)
        if old != gone:
            assert after.get_node(key) == old


@given(nodes=memberships, new=addresses, position=st.integers(0, 8))
def test_adding_a_node_moves_keys_only_to_it(nodes: list[str], new: str, position: int) -> None:
    if new in nodes:
        return
    before = NginxChashRing(nodes)
    listed = [*nodes[:position], new, *nodes[position:]]  # anywhere in the configuration
    for after in (before.add(new), NginxChashRing(listed)):
        for key in SAMPLE[:500]:
            now = after.get_node(key)
            assert now == new or now == before.get_node(key)


@given(nodes=memberships, keys=keys_st)
def test_iter_nodes_is_every_node_once_led_by_get_node(nodes: list[str], keys: list[str | bytes]) -> None:
    ring = NginxChashRing(nodes)
    for key in keys:
        order = list(ring.iter_nodes(key))
        assert sorted(order) == sorted(nodes)
        assert order[0] == ring.get_node(key)
        assert ring.get_nodes(key, len(nodes)) == order
        assert ring.get_nodes(key, 1) == order[:1]


@given(nodes=memberships, key=st.text(max_size=30))
def test_iter_nodes_follows_the_points_clockwise(nodes: list[str], key: str) -> None:
    ring = NginxChashRing(nodes)
    points = ring.continuum()
    start = ring.point_index(key)
    walked = [name for _, name in points[start:] + points[:start]]
    expected = list(dict.fromkeys(walked))
    assert list(ring.iter_nodes(key)) == expected + [n for n in nodes if n not in expected]


@given(
    nodes=memberships,
    factor=st.sampled_from([1.0, 1.1, 1.25, 2.0]),
    ops=st.lists(st.tuples(st.booleans(), st.text(max_size=8)), min_size=1, max_size=150),
)
def test_bounded_loads_never_exceed_the_cap(
    nodes: list[str], factor: float, ops: list[tuple[bool, str]]
) -> None:
    balancer = BoundedLoads(NginxChashRing(nodes), balance_factor=factor)
    loads: Counter[str] = Counter()
    placed: list[str] = []
    for arrive, key in ops:
        if arrive or not placed:
            total = sum(loads.values())
            node = balancer.get_node(key, loads)
            assert node in nodes
            loads[node] += 1
            assert loads[node] <= math.ceil(factor * (total + 1) / len(nodes))
            placed.append(node)
        else:
            loads[placed.pop(len(key) % len(placed))] -= 1  # a request finishes


@given(servers=weighted)
def test_shares_follow_the_weights(servers: dict[str, int]) -> None:
    ring = NginxChashRing(servers)
    shares = ring.shares()
    assert math.isclose(sum(shares.values()), 1.0)
    total = sum(servers.values())
    distinct = {n for n in servers if ring.points()[n] > 0}
    live_weight = sum(servers[n] for n in distinct)
    for name in distinct:
        # 160 points per unit of weight: a share strays some 10-20% from its weight's, rarely near 2x.
        assert 0.4 < shares[name] / (servers[name] / live_weight) < 2.5, (name, shares, total)


@given(nodes=memberships, data=st.data())
def test_more_weight_only_gains_keys(nodes: list[str], data: st.DataObject) -> None:
    """Raising a weight appends points to that server's chain: it gains keys, and only it does."""
    name = data.draw(st.sampled_from(nodes))
    before = NginxChashRing(nodes)
    after = before.reweight(name, data.draw(st.integers(2, 4)))
    assert after.shares()[name] >= before.shares()[name]
    for other in nodes:
        if other != name:
            assert after.shares()[other] <= before.shares()[other]
    for key in SAMPLE[:500]:
        now = after.get_node(key)
        assert now == name or now == before.get_node(key)


def test_weights_roughly_proportional_on_sample_keys() -> None:
    servers = {"10.0.0.1:80": 1, "10.0.0.2:80": 2, "10.0.0.3:80": 3, "10.0.0.4:80": 4}
    counts = Counter(
        NginxChashRing(servers).get_node(k) for k in SAMPLE * 2 + [f"/z/{i}" for i in range(6000)]
    )
    total = sum(counts.values())
    for name, weight in servers.items():
        assert 0.7 < counts[name] / total / (weight / 10) < 1.4, counts


# -- interface ---------------------------------------------------------------------


def test_interface_and_registry() -> None:
    ring = make_ring("nginx", {"127.0.0.1:8081": 1, "127.0.0.1:8082": 3})
    assert ALGORITHMS["nginx"] is NginxChashRing
    assert isinstance(ring, NginxChashRing)
    assert dict(ring.weights) == {"127.0.0.1:8081": 1, "127.0.0.1:8082": 3}
    assert ring.points() == {"127.0.0.1:8081": 160, "127.0.0.1:8082": 480}
    assert len(ring.continuum()) == 640
    assert "127.0.0.1:8082" in ring
    assert len(ring) == 2
    assert NginxChashRing(["a:1", "b:1"]).weights == {"a:1": 1, "b:1": 1}
    again = ring.with_weights(dict(ring.weights))
    assert [again.get_node(k) for k in SAMPLE] == [ring.get_node(k) for k in SAMPLE]
    assert repr(ring).startswith("<NginxChashRing 2 nodes")


def test_bad_membership() -> None:
    with pytest.raises(RingError, match="whole number"):
        NginxChashRing({"a:1": 1.5})
    with pytest.raises(RingError, match="whole number"):
        NginxChashRing(["a:1"]).reweight("a:1", 2.5)
    with pytest.raises(RingError, match="lower the weights"):
        NginxChashRing({"a:1": MAX_POINTS // 160 + 1})
    with pytest.raises(RingError, match="duplicate"):
        NginxChashRing(["a:1", "a:1"])
