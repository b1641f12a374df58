"""distpat.config.twemproxy: nutcracker YAML files.

Most tests are pure. The last section checks the loader against the real
nutcracker 0.5.0: ``nutcracker -t`` must accept and reject the same files, and
the server names in nutcracker's stats must equal our ``ring_name`` values in
our ``dispatch_order``. Those fail (never skip) when nutcracker is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from distpat.config.twemproxy import (
    TWEMPROXY_POOL_KEYS,
    TwemproxyListen,
    TwemproxyPool,
    TwemproxyServer,
    load_twemproxy,
    parse_twemproxy,
)
from distpat.core.twemhash import fnv1a_64, murmur
from distpat.errors import ConfigError, DistpatError
from tests.nutcracker import free_ports, nutcracker_accepts, read_stats, running_nutcracker_config


def _yaml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _pool(body: str, *, name: str = "alpha", listen: str = "127.0.0.1:22121") -> str:
    """A one-pool file; ``body`` is the pool's keys, indented by two spaces."""
    return f"{name}:\n  listen: {listen}\n" + textwrap.indent(_yaml(body), "  ")


ONE_SERVER = "servers:\n  - 127.0.0.1:6379:1\n"


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_twemproxy(text, source="nutcracker.yml")
    return str(info.value)


# ------------------------------------------------------------ pools and defaults


def test_minimal_pool_gets_twemproxys_defaults() -> None:
    pools = parse_twemproxy(_pool(ONE_SERVER))
    assert list(pools) == ["alpha"]
    pool = pools["alpha"]
    assert pool == TwemproxyPool(
        name="alpha",
        listen=TwemproxyListen("127.0.0.1:22121", "127.0.0.1", 22121),
        servers=(TwemproxyServer.parse("127.0.0.1:6379:1"),),
    )
    assert pool.hash == "fnv1a_64"
    assert pool.key_hash is fnv1a_64
    assert pool.distribution == "ketama"
    assert pool.hash_tag == b""
    assert pool.timeout is None
    assert pool.backlog == 512
    assert pool.client_connections == 0
    assert pool.redis is False
    assert pool.tcpkeepalive is False
    assert pool.redis_auth is None
    assert pool.redis_db == 0
    assert pool.preconnect is False
    assert pool.auto_eject_hosts is False
    assert pool.server_connections == 1
    assert pool.server_retry_timeout == 30_000
    assert pool.server_failure_limit == 2


def test_every_key_is_read() -> None:
    text = _pool(
        """
        hash: murmur
        hash_tag: "{}"
        distribution: modula
        timeout: 400
        backlog: 1024
        client_connections: 100
        redis: true
        tcpkeepalive: true
        redis_auth: s3cret
        redis_db: 3
        preconnect: true
        auto_eject_hosts: true
        server_connections: 4
        server_retry_timeout: 2000
        server_failure_limit: 3
        servers:
          - 127.0.0.1:6379:1 one
          - 127.0.0.1:6380:2 two
        """
    )
    pool = parse_twemproxy(text)["alpha"]
    assert pool.hash == "murmur"
    assert pool.key_hash is murmur
    assert pool.hash_tag == b"{}"
    assert pool.distribution == "modula"
    assert pool.timeout == 400
    assert pool.backlog == 1024
    assert pool.client_connections == 100
    assert pool.redis is True
    assert pool.tcpkeepalive is True
    assert pool.redis_auth == "s3cret"
    assert pool.redis_db == 3
    assert pool.preconnect is True
    assert pool.auto_eject_hosts is True
    assert pool.server_connections == 4
    assert pool.server_retry_timeout == 2000
    assert pool.server_failure_limit == 3
    assert [s.label for s in pool.servers] == ["one", "two"]
    assert pool.total_weight == 3


def test_pool_keys_are_twemproxys() -> None:
    assert TWEMPROXY_POOL_KEYS == (
        "listen",
        "hash",
        "hash_tag",
        "distribution",
        "timeout",
        "backlog",
        "client_connections",
        "redis",
        "tcpkeepalive",
        "redis_auth",
        "redis_db",
        "preconnect",
        "auto_eject_hosts",
        "server_connections",
        "server_retry_timeout",
        "server_failure_limit",
        "servers",
    )


def test_pool_order_is_file_order() -> None:
    names = ["zulu", "alpha", "mike", "bravo"]
    text = "".join(_pool(ONE_SERVER, name=n, listen=f"127.0.0.1:{22000 + i}") for i, n in enumerate(names))
    assert list(parse_twemproxy(text)) == names


def test_values_are_literal_scalar_text() -> None:
    # libyaml hands nutcracker the scalar text: quoting does not matter, and
    # YAML 1.1 conversions (octal, underscores, yes/on) do not happen.
    pool = parse_twemproxy(_pool('redis: "true"\ntimeout: "010"\nbacklog: 0777\n' + ONE_SERVER))["alpha"]
    assert pool.redis is True
    assert pool.timeout == 10
    assert pool.backlog == 777


def test_a_key_may_be_a_one_item_list() -> None:
    # nutcracker applies each list item to the key, so this is "hash: md5";
    # the pool's one list is then "hash", and a scalar "servers" adds one server.
    text = _pool("hash:\n  - md5\nservers: 127.0.0.1:6379:1\n")
    pool = parse_twemproxy(text)["alpha"]
    assert pool.hash == "md5"
    assert [s.address for s in pool.servers] == ["127.0.0.1:6379"]


def test_unix_socket_listen() -> None:
    pool = parse_twemproxy(_pool(ONE_SERVER, listen="/tmp/nc.sock 0660"))["alpha"]
    assert pool.listen == TwemproxyListen("/tmp/nc.sock 0660", "/tmp/nc.sock", None, 0o660)
    assert pool.listen.is_unix
    pool = parse_twemproxy(_pool(ONE_SERVER, listen="/tmp/nc.sock"))["alpha"]
    assert pool.listen.perm is None
    # strtol(…, 8) stops at the first non-octal digit: "0999" is mode 0.
    assert parse_twemproxy(_pool(ONE_SERVER, listen="/tmp/nc.sock 0999"))["alpha"].listen.perm == 0


def test_ipv6_listen_splits_at_the_last_colon() -> None:
    listen = parse_twemproxy(_pool(ONE_SERVER, listen="::1:22121"))["alpha"].listen
    assert (listen.host, listen.port) == ("::1", 22121)


# ------------------------------------------------------------ server names

SERVER_CASES = [
    # entry, address, host, port, weight, name, ring_name, label
    ("127.0.0.1:6379:1", "127.0.0.1:6379", "127.0.0.1", 6379, 1, None, "127.0.0.1:6379", "127.0.0.1:6379"),
    ("127.0.0.1:6379:3 cache-a", "127.0.0.1:6379", "127.0.0.1", 6379, 3, "cache-a", "cache-a", "cache-a"),
    ("10.0.0.1:11211:1", "10.0.0.1:11211", "10.0.0.1", 11211, 1, None, "10.0.0.1", "10.0.0.1:11211"),
    ("10.0.0.1:11211:1 mc", "10.0.0.1:11211", "10.0.0.1", 11211, 1, "mc", "mc", "mc"),
    ("10.0.0.1:011211:1", "10.0.0.1:011211", "10.0.0.1", 11211, 1, None, "10.0.0.1", "10.0.0.1:011211"),
    (
        "127.0.0.1:06379:1",
        "127.0.0.1:06379",
        "127.0.0.1",
        6379,
        1,
        None,
        "127.0.0.1:06379",
        "127.0.0.1:06379",
    ),
    (
        "redis.local:6379:10",
        "redis.local:6379",
        "redis.local",
        6379,
        10,
        None,
        "redis.local:6379",
        "redis.local:6379",
    ),
    (
        "/tmp/redis.sock:1",
        "/tmp/redis.sock",
        "/tmp/redis.sock",
        None,
        1,
        None,
        "/tmp/redis.sock:",
        "/tmp/redis.sock",
    ),
    ("/tmp/redis.sock:2 local", "/tmp/redis.sock", "/tmp/redis.sock", None, 2, "local", "local", "local"),
    ("::1:6379:1", "::1:6379", "::1", 6379, 1, None, "::1:6379", "::1:6379"),
    (
        "localhost:6379:1:2",
        "localhost:6379:1",
        "localhost:6379",
        1,
        2,
        None,
        "localhost:6379:1",
        "localhost:6379:1",
    ),
    (":6379:1", ":6379", "", 6379, 1, None, ":6379", ":6379"),
    ("127.0.0.1:6379:1 ", "127.0.0.1:6379", "127.0.0.1", 6379, 1, "", "", "127.0.0.1:6379"),
    ("127.0.0.1:6379:1 a:b", "127.0.0.1:6379", "127.0.0.1", 6379, 1, "a:b", "a:b", "a:b"),
]


@pytest.mark.parametrize(
    ("entry", "address", "host", "port", "weight", "name", "ring_name", "label"), SERVER_CASES
)
def test_server_entry(
    entry: str,
    address: str,
    host: str,
    port: int | None,
    weight: int,
    name: str | None,
    ring_name: str,
    label: str,
) -> None:
    server = TwemproxyServer.parse(entry)
    assert server == TwemproxyServer(address, host, port, weight, name, ring_name, label)
    assert server.is_unix is (port is None)


def test_dispatch_order_sorts_by_name_length_then_bytes() -> None:
    text = _pool(
        """
        servers:
          - 127.0.0.1:6390:1
          - 127.0.0.1:11211:1
          - /tmp/x.sock:1
          - 127.0.0.1:06391:1
          - 127.0.0.1:6392:1 zed
          - 127.0.0.1:6393:1 a
          - 127.0.0.1:6394:1 b
        """
    )
    pool = parse_twemproxy(text)["alpha"]
    assert [s.ring_name for s in pool.servers] == [
        "127.0.0.1:6390",
        "127.0.0.1",
        "/tmp/x.sock:",
        "127.0.0.1:06391",
        "zed",
        "a",
        "b",
    ]
    assert [s.ring_name for s in pool.dispatch_order] == [
        "a",
        "b",
        "zed",
        "127.0.0.1",
        "/tmp/x.sock:",
        "127.0.0.1:6390",
        "127.0.0.1:06391",
    ]


def test_same_address_under_two_names_is_allowed() -> None:
    text = _pool("servers:\n  - 127.0.0.1:6379:1 a\n  - 127.0.0.1:6379:1 b\n  - 127.0.0.1:06379:1\n")
    assert len(parse_twemproxy(text)["alpha"].servers) == 3


def test_server_value_checks_its_invariants() -> None:
    with pytest.raises(ConfigError, match="weight"):
        TwemproxyServer("h:1", "h", 1, 0, None, "h:1", "h:1")
    with pytest.raises(ConfigError, match="port"):
        TwemproxyServer("h:0", "h", 0, 1, None, "h:0", "h:0")


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("127.0.0.1:6379", "is not of the form"),
        ("127.0.0.1", "is not of the form"),
        ("/tmp/a:b:1", "is not of the form"),
        ("/tmp/redis.sock", "is not of the form"),
        ("127.0.0.1:6379:x", "invalid weight"),
        ("127.0.0.1:6379:-1", "invalid weight"),
        ("127.0.0.1:6379:1  two-spaces", "invalid weight"),
        ("127.0.0.1:6379:0", "zero weight"),
        ("127.0.0.1:0:1", "invalid port"),
        ("127.0.0.1:65536:1", "invalid port"),
        ("127.0.0.1::1", "invalid port"),
        ("127.0.0.1:6379:4294967297", "out of range"),
    ],
)
def test_bad_server_entries(entry: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        TwemproxyServer.parse(entry)
    assert repr(entry) in str(info.value)


# ---------------------------------------------------------------- errors


def test_error_message_names_file_pool_and_key() -> None:
    message = _error(_pool("servers:\n  - 127.0.0.1:6379:0 s1\n"))
    assert message.startswith(
        "nutcracker.yml: pool 'alpha': key 'servers': entry '127.0.0.1:6379:0 s1' has a zero weight"
    )
    assert "line 4" in message


ERROR_CASES = [
    # (pool body, key or None, fragment)
    ("hash: FNV1A_64\n" + ONE_SERVER, "hash", "unknown hash 'FNV1A_64'; valid hashes: one_at_a_time, md5"),
    ("distribution: Ketama\n" + ONE_SERVER, "distribution", "unknown distribution 'Ketama'; valid"),
    ("hash_tag: '{'\n" + ONE_SERVER, "hash_tag", "two-byte hash tag"),
    ("hash_tag: abc\n" + ONE_SERVER, "hash_tag", "two-byte hash tag"),
    ("hash_tag:\n" + ONE_SERVER, "hash_tag", "is empty"),
    ("redis: True\n" + ONE_SERVER, "redis", "is not 'true' or 'false'"),
    ("preconnect: yes\n" + ONE_SERVER, "preconnect", "is not 'true' or 'false'"),
    ("timeout: -1\n" + ONE_SERVER, "timeout", "is not a non-negative integer"),
    ("timeout: 0x10\n" + ONE_SERVER, "timeout", "is not a non-negative integer"),
    ("backlog: 1_000\n" + ONE_SERVER, "backlog", "is not a non-negative integer"),
    ("timeout: 99999999999\n" + ONE_SERVER, "timeout", "out of range"),
    ("server_connections: 0\n" + ONE_SERVER, "server_connections", "cannot be 0"),
    ("redis_auth: pw\n" + ONE_SERVER, "redis_auth", "only valid for a redis pool"),
    ("redis: true\nredis_auth: ''\n" + ONE_SERVER, "redis_auth", "is empty"),
    ("foo: 1\n" + ONE_SERVER, "foo", "unknown key; valid keys: listen, hash"),
    ("hash: md5\nhash: crc16\n" + ONE_SERVER, "hash", "more than once"),
    ("listen: 127.0.0.1:1\n" + ONE_SERVER, "listen", "more than once"),
    ("hash: md5\n", "servers", "expected a list of servers"),
    ("servers: 127.0.0.1:6379:1\n", "servers", "expected a list of servers"),
    ("hash:\n  - md5\n" + ONE_SERVER, "servers", "only one key of a pool may have a list value"),
    ("hash:\n  - md5\n  - crc16\nservers: 127.0.0.1:6379:1\n", "hash", "more than once"),
    ("hash:\n  - md5\n", None, "has no servers"),
    ("servers:\n  -\n", "servers", "is empty"),
    ("servers:\n  - a: b\n", "servers", "not a mapping"),
    ("servers:\n  - - 127.0.0.1:6379:1\n", "servers", "not a list"),
    ("x:\n  y: 1\n" + ONE_SERVER, "x", "unknown key"),
    ("hash:\n  md5: 1\n" + ONE_SERVER, "hash", "nested too deeply"),
    (
        "servers:\n  - 127.0.0.1:6379:1\n  - 127.0.0.1:6379:2\n",
        "servers",
        "entries '127.0.0.1:6379:1' and '127.0.0.1:6379:2' have the same name '127.0.0.1:6379'",
    ),
    ("servers:\n  - 127.0.0.1:11211:1\n  - 127.0.0.1:6379:1 127.0.0.1\n", "servers", "same name '127.0.0.1'"),
]


@pytest.mark.parametrize(("body", "key", "fragment"), ERROR_CASES)
def test_pool_errors(body: str, key: str | None, fragment: str) -> None:
    message = _error(_pool(body))
    prefix = "nutcracker.yml: pool 'alpha': " + (f"key {key!r}: " if key else "")
    assert message.startswith(prefix), message
    assert fragment in message


@pytest.mark.parametrize(
    ("listen", "fragment"),
    [
        ("localhost", "is not of the form 'host:port'"),
        ("127.0.0.1:0", "invalid port"),
        ("127.0.0.1:70000", "invalid port"),
        ("127.0.0.1:x", "invalid port"),
        (":22121", "empty host"),
        ("/tmp/nc.sock 1000", "invalid file permission"),
        ("/tmp/nc.sock -1", "invalid file permission"),
    ],
)
def test_listen_errors(listen: str, fragment: str) -> None:
    message = _error(_pool(ONE_SERVER, listen=listen))
    assert message.startswith("nutcracker.yml: pool 'alpha': key 'listen': ")
    assert fragment in message


def test_missing_listen() -> None:
    message = _error("alpha:\n  servers:\n    - 127.0.0.1:6379:1\n")
    assert message.startswith("nutcracker.yml: pool 'alpha': key 'listen': is missing")


FILE_ERRORS = [
    ("", "no pools"),
    ("# only a comment\n", "no pools"),
    ("- a\n- b\n", "the top level must map pool names to pools"),
    ("just text\n", "the top level must map pool names to pools"),
    ("alpha: beta\n", "pool 'alpha': expected a mapping"),
    ("alpha:\n  - 127.0.0.1:6379:1\n", "pool 'alpha': expected a mapping"),
    ("'':\n  listen: 127.0.0.1:1\n  " + ONE_SERVER, "a pool name is empty"),
    ("? [a, b]\n: c\n", "flow sequence"),
    ("alpha: {listen: 127.0.0.1:1}\n", "flow mapping"),
    ("alpha:\n  listen: &l 127.0.0.1:1\n", "an anchor '&'"),
    ("alpha:\n  listen: !!str 127.0.0.1:1\n", "a tag '!'"),
    ("%YAML 1.1\n---\nalpha: 1\n", "directive"),
    ("---\nalpha:\n  listen: 127.0.0.1:1\n", "document start marker"),
    ("alpha:\n  listen: 127.0.0.1:1\n...\n", "document end marker"),
    ("alpha:\n  listen: a: b\n", "invalid YAML at line 2"),
    ("alpha:\n\tlisten: 127.0.0.1:1\n", "invalid YAML at line 2"),
    ("alpha:\n  listen: 'unterminated\n", "invalid YAML"),
    ("a:\n  b: c\n d: e\n", "invalid YAML"),
]


@pytest.mark.parametrize(("text", "fragment"), FILE_ERRORS)
def test_file_errors(text: str, fragment: str) -> None:
    message = _error(text)
    assert message.startswith("nutcracker.yml: ")
    assert fragment in message


def test_duplicate_pool_names() -> None:
    text = _pool(ONE_SERVER) + _pool(ONE_SERVER, listen="127.0.0.1:22122")
    assert _error(text).startswith("nutcracker.yml: pool 'alpha': is defined more than once")


def test_duplicate_listen_addresses() -> None:
    text = _pool(ONE_SERVER) + _pool(ONE_SERVER, name="beta")
    message = _error(text)
    assert message.startswith("nutcracker.yml: pool 'beta': key 'listen': has the same listen address")
    assert "'alpha'" in message


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="zero weight"):
        parse_twemproxy(_pool("servers:\n  - h:1:0\n"))
    assert issubclass(ConfigError, DistpatError)


# Random text and random YAML documents produce pools or ConfigError only.


@given(st.text(max_size=200))
def test_arbitrary_text_gives_pools_or_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_twemproxy(text)


scalars = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["127.0.0.1:6379:1", "true", "md5", "modula", "{}", "1", "0", "-1"]),
    st.integers(-3, 70000),
    st.booleans(),
    st.none(),
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from([*TWEMPROXY_POOL_KEYS, "alpha", "x", ""]), inner, max_size=5)
    ),
    max_leaves=20,
)


@given(documents)
def test_arbitrary_yaml_gives_pools_or_config_error(document: object) -> None:
    text = yaml.safe_dump(document, default_flow_style=False, allow_unicode=True)
    with contextlib.suppress(ConfigError):
        parse_twemproxy(text)


# ------------------------------------------------------------------ files


def test_load_twemproxy(tmp_path: Path) -> None:
    path = tmp_path / "nutcracker.yml"
    path.write_text(_pool(ONE_SERVER), encoding="utf-8")
    assert list(load_twemproxy(path)) == ["alpha"]
    assert list(load_twemproxy(str(path))) == ["alpha"]
    path.write_bytes(b"\xef\xbb\xbf" + _pool(ONE_SERVER).encode())
    assert list(load_twemproxy(path)) == ["alpha"]


def test_load_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(_pool("servers:\n  - 127.0.0.1:6379:0 s1\n"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yml: pool 'alpha': key 'servers': entry"):
        load_twemproxy(path)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_twemproxy(tmp_path / "missing.yml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_twemproxy(tmp_path)
    latin1 = tmp_path / "latin1.yml"
    latin1.write_bytes(_pool("servers:\n  - h:1:1 caf\xe9\n").encode("latin-1"))
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_twemproxy(latin1)


def test_the_debian_example_file_loads() -> None:
    example = Path("/usr/share/doc/nutcracker/examples/nutcracker.yml")
    if not example.exists():
        pytest.fail("nutcracker's example config is missing: apt-get install -y nutcracker")
    pools = load_twemproxy(example)
    assert pools
    for pool in pools.values():
        assert pool.servers


# ------------------------------------------------- against the real nutcracker

# Files on which nutcracker -t and parse_twemproxy must agree. Hosts resolve
# (nutcracker -t resolves listen: hosts) and numbers stay below 2**31, where
# this loader deliberately differs.
PARITY_BODIES = [
    ONE_SERVER,
    "hash: md5\ndistribution: modula\nhash_tag: '$$'\n" + ONE_SERVER,
    "hash:\n  - md5\nservers: 127.0.0.1:6379:1\n",
    "servers:\n  - 127.0.0.1:6379:1 a\n  - 127.0.0.1:6379:1 b\n",
    "servers:\n  - '127.0.0.1:6379:1 '\n",
    "servers:\n  - '127.0.0.1:6379:1 '\n  - '127.0.0.1:6380:1 '\n",
    "servers:\n  - /tmp/r.sock:1\n  - localhost:6379:1:2\n  - :6380:1\n",
    "redis: 'true'\nredis_auth: pw\n" + ONE_SERVER,
    "timeout: 0\nbacklog: 0777\n" + ONE_SERVER,
    "hash_tag: é\n" + ONE_SERVER,
    *(body for body, _, fragment in ERROR_CASES if "out of range" not in fragment),
    *(f"servers:\n  - '{entry}'\n" for entry, *_ in SERVER_CASES),
    *(
        f"servers:\n  - '{entry}'\n"
        for entry in ["127.0.0.1:6379", "/tmp/a:b:1", "127.0.0.1:6379:0", "127.0.0.1:0:1", "h:1:x"]
    ),
]
PARITY_FILES = [
    *FILE_ERRORS,
    *(
        (_pool(ONE_SERVER, listen=listen), "")
        for listen in ["/tmp/nc.sock 0660", "/tmp/nc.sock 1000", "::1:22121"]
    ),
    (_pool(ONE_SERVER) + _pool(ONE_SERVER, listen="127.0.0.1:22122"), ""),
    (_pool(ONE_SERVER) + _pool(ONE_SERVER, name="beta"), ""),
]


def _ours(text: str) -> bool:
    try:
        parse_twemproxy(text)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("body", PARITY_BODIES)
def test_nutcracker_accepts_what_we_accept(body: str, tmp_path: Path) -> None:
    text = _pool(body)
    assert _ours(text) == nutcracker_accepts(text, tmp_path), text


@pytest.mark.parametrize("text", [t for t, _ in PARITY_FILES])
def test_nutcracker_accepts_the_same_files(text: str, tmp_path: Path) -> None:
    assert _ours(text) == nutcracker_accepts(text, tmp_path), text


@pytest.mark.parametrize(
    "body",
    [
        "servers:\n  - 127.0.0.1:6379:4294967297\n",  # nutcracker: weight 1
        "servers:\n  - 127.0.0.1:4294973832:1\n",  # nutcracker: port 6536
        "timeout: 99999999999\n" + ONE_SERVER,  # nutcracker: 1215752191 ms
    ],
)
def test_we_refuse_numbers_nutcracker_wraps(body: str, tmp_path: Path) -> None:
    text = _pool(body)
    assert nutcracker_accepts(text, tmp_path)
    assert "out of range" in _error(text)


def test_unresolvable_listen_host_is_only_refused_by_nutcracker(tmp_path: Path) -> None:
    text = _pool(ONE_SERVER, listen="nonexistent.invalid:22121")
    assert not nutcracker_accepts(text, tmp_path)
    assert _ours(text)


async def test_ring_names_and_order_match_nutcracker_stats(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    text = _pool(
        """
        redis: true
        servers:
          - 127.0.0.1:6390:1
          - 127.0.0.1:11211:1
          - /tmp/distpat-never-used.sock:1
          - 127.0.0.1:06391:1
          - localhost:6392:1:1
          - 127.0.0.1:6393:1 zed
          - 127.0.0.1:6394:1 a
          - '127.0.0.1:6395:1 '
          - 127.0.0.1:6396:1 ключ
        """,
        listen=f"127.0.0.1:{port}",
    )
    pool = parse_twemproxy(text)["alpha"]
    async with running_nutcracker_config(text, {"alpha": port}, tmp_path) as run:
        stats = await asyncio.wait_for(read_stats(run), 10)
    pool_stats = stats["alpha"]
    assert isinstance(pool_stats, dict)
    names = [k for k, v in pool_stats.items() if isinstance(v, dict)]
    assert names == [s.ring_name for s in pool.dispatch_order]
