"""distpat.core.real_ip: nginx's realip rules (set_real_ip_from, real_ip_header X-Forwarded-For,
real_ip_recursive on), by example and against a model over generated chains."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.keys import KeySource
from distpat.core.real_ip import FORWARDED_FOR, TrustedProxies, client_address, real_client, real_key
from distpat.core.stage import Request
from distpat.errors import ConfigError

TRUSTED = TrustedProxies.parse(["10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8"])
PEER = "10.0.0.1"


def addr(peer: str, xff: bytes | None, **kw: bool) -> str:
    return client_address(peer, xff, TRUSTED, **kw)


# --- parsing the trusted list ---------------------------------------------------------------


def test_parse_accepts_networks_and_hosts() -> None:
    assert [str(n) for n in TRUSTED.networks] == ["10.0.0.0/8", "127.0.0.1/32", "::1/128", "fd00::/8"]
    for inside in ("10.200.3.4", "127.0.0.1", "fd12::9", "::1", "::ffff:10.9.9.9"):
        assert TRUSTED.trusts(inside), inside
    for outside in ("11.0.0.1", "127.0.0.2", "fe80::1", "", "localhost"):
        assert not TRUSTED.trusts(outside), outside
    assert str(TRUSTED) == "10.0.0.0/8, 127.0.0.1/32, ::1/128, fd00::/8"
    assert TrustedProxies.parse([" 10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8 "]) == TRUSTED


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["10.0.0.1/8"], "host bits are set; the network is 10.0.0.0/8 (or write the one address 10.0.0.1)"),
        (["fd00::1/8"], "host bits are set; the network is fd00::/8"),
        (["10.0.0.0/33"], "not an IPv4 or IPv6 address or network"),
        (["proxy.local"], "'proxy.local': not an IPv4 or IPv6 address or network"),
        ([""], "not an IPv4 or IPv6"),
        (["fe80::1%eth0"], "zone id"),
        ([10], "is text"),
        ("10.0.0.0/8", "a list"),
    ],
)
def test_parse_refuses(items: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrustedProxies.parse(items)  # type: ignore[arg-type]


def test_reads_and_emptiness() -> None:
    assert TRUSTED.reads == frozenset({FORWARDED_FOR}) == frozenset({b"x-forwarded-for"})
    none = TrustedProxies.parse([])
    assert not none
    assert none.reads == frozenset()
    assert client_address(PEER, b"203.0.113.1", none) == PEER


# --- the walk, by example -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.50", b"198.51.100.1", "203.0.113.50"),  # untrusted peer: the field is ignored
        ("203.0.113.50", b"10.0.0.2", "203.0.113.50"),
        (PEER, None, PEER),
        (PEER, b"", PEER),
        (PEER, b", ,", PEER),
        (PEER, b"198.51.100.1", "198.51.100.1"),
        (PEER, b"198.51.100.1, 10.0.0.2", "198.51.100.1"),
        (PEER, b"192.0.2.9, 198.51.100.1, 10.0.0.2", "198.51.100.1"),  # right-most untrusted
        (PEER, b"10.0.0.3, 127.0.0.1, 10.0.0.2", "10.0.0.3"),  # all trusted: the left-most
        (PEER, b"198.51.100.1,,  ,10.0.0.2, ", "198.51.100.1"),  # separator runs collapse
        (PEER, b"198.51.100.1, unknown, 10.0.0.2", "10.0.0.2"),  # garbage stops: the last read
        (PEER, b"10.0.0.2, unknown", PEER),  # right-most garbage: the peer
        (PEER, b"198.51.100.1,\t10.0.0.2", PEER),  # a tab is not a separator
        (PEER, b",198.51.100.1", PEER),  # the value's first byte is no separator: ",198..." is
        (PEER, b"198.51.100.1, ,10.0.0.5", "198.51.100.1"),  # one entry, unreadable
        (PEER, b",198.51.100.1, 10.0.0.5", "10.0.0.5"),
        (PEER, b"198.51.100.1:4321", "198.51.100.1"),  # ports are dropped (ngx_parse_addr_port)
        (PEER, b"198.51.100.1:0", PEER),
        (PEER, b"198.51.100.1:65536", PEER),
        (PEER, b"198.51.100.1:", PEER),
        (PEER, b"198.51.100.1:+80", PEER),
        (PEER, b"[2001:db8::1]:443", "2001:db8::1"),
        (PEER, b"[2001:db8::1]", "2001:db8::1"),
        (PEER, b"[2001:db8::1]x", PEER),
        (PEER, b"[2001:db8::1", PEER),
        (PEER, b"2001:db8::1:443", "2001:db8::1:443"),  # unbracketed: all address, no port
        (PEER, b"[198.51.100.1]:80", "198.51.100.1"),
        (PEER, b"198.51.100.1, [::1]:8080", "198.51.100.1"),
        (PEER, b"2001:DB8:0:0:1:0:0:A", "2001:db8::1:0:0:a"),  # written as $remote_addr is
        (PEER, b"1:0:0:2:0:0:0:3", "1:0:0:2::3"),
        (PEER, b"0:0:0:0:0:0:c000:0201", "::192.0.2.1"),  # ngx_inet6_ntop's dotted tails
        (PEER, b"::ffff:198.51.100.1", "::ffff:198.51.100.1"),
        (PEER, b"::ffff:c633:6401", "::ffff:198.51.100.1"),
        (PEER, b"198.51.100.1, ::ffff:10.1.2.3", "198.51.100.1"),  # mapped: matched as IPv4
        (PEER, b"fe80::1%eth0", PEER),  # zone ids refused
        (PEER, b"010.000.000.002, 0256.51.100.1", PEER),  # an octet over 255
        (PEER, b"198.51.100.1, 010.000.000.002", "198.51.100.1"),  # ngx_inet_addr: leading zeros
        (PEER, b"198.51..1", "198.51.0.1"),  # ... and an empty octet as 0
        (PEER, b"198.51.100", PEER),
        (PEER, b"198.51.100.1.2", PEER),
        (PEER, b"256.0.0.1", PEER),
        ("::1", b"2001:db8::7, fd00::2", "2001:db8::7"),
        ("::ffff:10.0.0.1", b"198.51.100.1", "198.51.100.1"),  # a dual-stack peer
        ("fe80::1", b"198.51.100.1", "fe80::1"),
        ("", b"198.51.100.1", ""),  # a peer that is no address (aiohttp's None)
    ],
)
def test_walk(peer: str, xff: bytes | None, expected: str) -> None:
    assert addr(peer, xff) == expected


def test_not_recursive_takes_the_right_most() -> None:
    assert addr(PEER, b"198.51.100.1, 10.0.0.2", recursive=False) == "10.0.0.2"
    assert addr(PEER, b"10.0.0.2, garbage", recursive=False) == PEER


# --- the walk against a model over generated chains ------------------------------------------

_octet = st.integers(0, 255)
_trusted_v4 = st.builds(lambda a, b, c: ipaddress.IPv4Address(f"10.{a}.{b}.{c}"), _octet, _octet, _octet)
_trusted_v6 = st.integers(0, (1 << 120) - 1).map(lambda n: ipaddress.IPv6Address((0xFD << 120) | n))
_trusted = st.one_of(_trusted_v4, _trusted_v6, st.just(ipaddress.IPv4Address("127.0.0.1")))
_untrusted_v4 = st.builds(lambda b, c: ipaddress.IPv4Address(f"198.51.{b}.{c}"), _octet, _octet)
_untrusted_v6 = st.integers(0, (1 << 96) - 1).map(lambda n: ipaddress.IPv6Address((0x20010DB8 << 96) | n))
_untrusted = st.one_of(_untrusted_v4, _untrusted_v6)
_garbage = st.sampled_from(
    [
        *(b"unknown", b"_hidden", b"1.2.3", b"1.2.3.4.5", b"::g", b"fe80::1%25eth0"),
        *(b"[::1", b"1.2.3.4:0", b"\t1.2.3.4", b"1.2.3.4:99999"),
    ]
)
_Ip = ipaddress.IPv4Address | ipaddress.IPv6Address


@st.composite
def _spelling(draw: st.DrawFn, ip: _Ip) -> bytes:
    """One of the ways an entry may write ``ip``: plain, with a port, bracketed, upper case."""
    text = ip.exploded if ip.version == 6 and draw(st.booleans()) else str(ip)
    if ip.version == 6 and draw(st.booleans()):
        text = text.upper()
    port = draw(st.integers(1, 65535))
    if ip.version == 4:
        text = draw(st.sampled_from([text, f"{text}:{port}"]))
    else:
        text = draw(st.sampled_from([text, f"[{text}]", f"[{text}]:{port}"]))
    return text.encode()


_entry = st.one_of(
    _trusted.map(lambda ip: ("trusted", ip)),
    _untrusted.map(lambda ip: ("untrusted", ip)),
    _garbage.map(lambda g: ("garbage", g)),
)


def _model(peer_trusted: bool, entries: list[tuple[str, object]]) -> str | None:
    """None: the peer; else the address nginx sets."""
    if not peer_trusted:
        return None
    found = None
    for kind, value in reversed(entries):
        if kind == "garbage":
            break
        found = str(value)
        if kind == "untrusted":
            break
    return found


@st.composite
def _request(draw: st.DrawFn) -> tuple[str, bytes, str | None]:
    peer_trusted = draw(st.booleans())
    peer = str(draw(_trusted if peer_trusted else _untrusted))
    entries = draw(st.lists(_entry, min_size=1, max_size=12))
    words = [v if kind == "garbage" else draw(_spelling(v)) for kind, v in entries]  # type: ignore[arg-type]
    separators = st.sampled_from([b", ", b",", b" ", b" , ", b",,", b", ,  "])
    # several fields, as the engine joins them
    cuts = sorted(draw(st.sets(st.integers(1, len(words) - 1), max_size=3))) if len(words) > 1 else []
    fields, last = [], 0
    for cut in [*cuts, len(words)]:
        field = b""
        for i, word in enumerate(words[last:cut]):
            field += (draw(separators) if i else b"") + word
        fields.append(field + draw(st.sampled_from([b"", b" ", b","])))
        last = cut
    return peer, b", ".join(fields), _model(peer_trusted, entries)


@given(_request())
def test_chains_match_the_model(case: tuple[str, bytes, str | None]) -> None:
    peer, xff, expected = case
    assert addr(peer, xff) == (peer if expected is None else expected)


@given(_untrusted, st.lists(st.one_of(_trusted, _untrusted), max_size=8))
def test_spoofing_from_an_untrusted_peer_is_ignored(peer: _Ip, chain: list[_Ip]) -> None:
    xff = ", ".join(map(str, chain)).encode()
    assert addr(str(peer), xff) == str(peer)


@given(_trusted, st.lists(_trusted, min_size=1, max_size=8), st.lists(_untrusted, max_size=4))
def test_right_most_untrusted_or_left_most(peer: _Ip, proxies: list[_Ip], clients: list[_Ip]) -> None:
    xff = ", ".join(map(str, [*clients, *proxies])).encode()
    expected = clients[-1] if clients else proxies[0]
    assert addr(str(peer), xff) == str(expected)


@given(st.integers(1 << 112, (1 << 128) - 1))
def test_ipv6_text_is_pythons_when_the_first_group_is_set(n: int) -> None:
    ip = ipaddress.IPv6Address(n)
    assert addr(PEER, ip.exploded.encode()) == str(ip)


# --- wiring into requests and keys ----------------------------------------------------------


def _request_from(peer: str, xff: bytes | None, **more: bytes) -> Request:
    fields = dict(more)
    if xff is not None:
        fields["x-forwarded-for"] = xff
    return Request(b"GET", b"/a?x=1", peer, fields={k.encode(): v for k, v in fields.items()})


def test_real_client_reads_the_declared_field() -> None:
    request = _request_from(PEER, b"198.51.100.1, 10.0.0.2")
    assert real_client(request, TRUSTED) == "198.51.100.1"
    assert real_client(request, None) == PEER
    assert real_client(request, TrustedProxies.parse([])) == PEER
    assert real_client(_request_from(PEER, None), TRUSTED) == PEER
    every = Request(b"GET", b"/", PEER, headers=[(b"X-Forwarded-For", b"198.51.100.3")])
    assert real_client(every, TRUSTED) == "198.51.100.3"


def test_real_key_uses_the_real_client_for_ip_only() -> None:
    request = _request_from(PEER, b"198.51.100.1", **{"x-user": b"u1"})
    assert real_key(KeySource.parse("ip"), request, TRUSTED) == b"198.51.100.1"
    assert real_key(KeySource.parse("ip"), request, None) == PEER.encode()
    assert real_key(KeySource.parse("ip+header:X-User"), request, TRUSTED) == b"198.51.100.1\0u1"
    assert real_key(KeySource.parse("header:X-User"), request, TRUSTED) == b"u1"
    assert real_key(KeySource.parse("query:x"), request, TRUSTED) == b"1"
    untrusted = _request_from("203.0.113.50", b"198.51.100.1")
    assert real_key(KeySource.parse("ip"), untrusted, TRUSTED) == b"203.0.113.50"
