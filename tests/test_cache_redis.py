"""The shared cache store's commands (distpat.core.cache_redis) on a real redis-server.

The commands are distpat's own; redis-py sends them with its per-command conversions turned off,
so every reply is the RESP2 value the engine's Call hands a stage (bytes, int, None, lists), and
the module's readers read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from distpat.aiohttp.redis_calls import error_text
from distpat.core.cache_codec import encode_entry
from distpat.core.cache_control import Directives
from distpat.core.cache_policy import Stored
from distpat.core.cache_redis import (
    KEEP,
    KEY_PREFIX,
    SCAN_COUNT,
    TAG_PREFIX,
    ban_prefix_command,
    ban_tag_command,
    glob_escape,
    hash_key,
    lookup_command,
    needs_load,
    purge_command,
    read_count,
    read_lookup,
    read_store,
    store_command,
    tag_key,
    ttl_ms,
    variant_field,
)
from distpat.errors import CacheStoreError
from tests.nutcracker import free_ports
from tests.rediskit import HOST, RedisServer

Command = tuple[bytes, ...]
SIXTY = Directives(max_age=60, present=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    """One redis-server for the module, and a redis-py client answering raw RESP2 values."""
    (port,) = free_ports(1)
    running = RedisServer(port, tmp_path_factory.mktemp("redis"))
    asyncio.run(running.start())
    client = redis.Redis(host=HOST, port=port, socket_timeout=10, protocol=2)
    client.response_callbacks.clear()
    try:
        yield client
    finally:
        client.close()
        running.stop_now()


@pytest.fixture
def db(server: redis.Redis) -> redis.Redis:
    server.flushdb()
    return server


def run(db: redis.Redis, command: Command) -> object:
    return db.execute_command(*command)  # type: ignore[no-untyped-call]


def script(db: redis.Redis, build: Callable[[bool], Command]) -> object:
    """A script call as a stage makes it: EVALSHA, and EVAL once on NOSCRIPT."""
    try:
        return run(db, build(False))
    except redis.exceptions.ResponseError as exc:
        if not needs_load(error_text(exc)):
            raise
    return run(db, build(True))


def entry(
    vary_key: tuple[bytes | None, ...] = (),
    *,
    tags: frozenset[bytes] = frozenset(),
    lifetime: float = 60.0,
    etag: bytes | None = None,
    directives: Directives = SIXTY,
) -> Stored:
    names = tuple(b"x-v%d" % i for i in range(len(vary_key)))
    headers = ((b"Content-Type", b"text/plain"), (b"X-Variant", repr(vary_key).encode()))
    return Stored(200, headers, 1000.0, 1001.0, names, vary_key, directives, 1.0, lifetime, etag, None, tags)


def store(db: redis.Redis, key: bytes, stored: Stored, body: bytes, ttl: int = 60_000) -> int:
    return read_store(script(db, lambda load: store_command(key, stored, body, ttl, load=load)))


def lookup(db: redis.Redis, key: bytes) -> tuple[list[tuple[Stored, bytes]], int]:
    return read_lookup(run(db, lookup_command(key)))


def test_two_variants_of_one_url_are_stored_and_read_back_equal(db: redis.Redis) -> None:
    gzip, plain = entry((b"gzip",)), entry((None,))
    assert store(db, b"example.com/a", gzip, b"zipped") > 0
    store(db, b"example.com/a", plain, b"plain")
    entries, corrupt = lookup(db, b"example.com/a")
    assert corrupt == 0
    assert sorted(entries, key=lambda e: e[1]) == [(plain, b"plain"), (gzip, b"zipped")]
    assert run(db, (b"TYPE", b"distpat:cache:example.com/a")) == b"hash"
    assert run(db, (b"HLEN", hash_key(b"example.com/a"))) == 2
    assert lookup(db, b"example.com/b") == ([], 0)


def test_storing_a_variant_again_replaces_it(db: redis.Redis) -> None:
    store(db, b"h/a", entry((b"1",), lifetime=10.0), b"old")
    newer = entry((b"1",), lifetime=20.0)
    store(db, b"h/a", newer, b"new")
    assert lookup(db, b"h/a") == ([(newer, b"new")], 0)


def test_a_hash_lives_as_long_as_its_longest_lived_entry(db: redis.Redis) -> None:
    key, tagged = b"h/ttl", frozenset({b"t"})
    assert store(db, key, entry((b"1",), tags=tagged), b"a", ttl=5_000) <= 5_000
    assert store(db, key, entry((b"2",), tags=tagged), b"b", ttl=600_000) > 500_000
    assert store(db, key, entry((b"3",), tags=tagged), b"c", ttl=2_000) > 500_000  # never shortened
    pttl = run(db, (b"PTTL", hash_key(key)))
    assert isinstance(pttl, int)
    assert 500_000 < pttl <= 600_000
    tag_ttl = run(db, (b"PTTL", tag_key(b"t")))
    assert isinstance(tag_ttl, int)
    assert 500_000 < tag_ttl <= 600_000


def test_a_key_found_without_a_ttl_is_given_one(db: redis.Redis) -> None:
    run(db, (b"HSET", hash_key(b"h/p"), b"junk", b"junk"))
    assert run(db, (b"PTTL", hash_key(b"h/p"))) == -1
    assert 0 < store(db, b"h/p", entry(), b"x", ttl=60_000) <= 60_000


def test_the_ttl_rule() -> None:
    now = 1031.0  # the entry's age is 1 + (1031 - 1001) = 31 s, its lifetime 60 s: 29 s left
    assert ttl_ms(entry(), now) == 29_000
    swr = Directives(max_age=60, stale_while_revalidate=100, stale_if_error=40, present=True)
    assert ttl_ms(entry(directives=swr), now) == 129_000
    sie = Directives(max_age=60, stale_while_revalidate=10, stale_if_error=400, present=True)
    assert ttl_ms(entry(directives=sie), now) == 429_000
    assert ttl_ms(entry(etag=b'"v"'), now) == 29_000 + KEEP * 1000
    assert ttl_ms(entry(etag=b'"v"', directives=sie), now) == 29_000 + KEEP * 1000
    assert ttl_ms(entry(), now + 3600) == 1000  # long stale, no window: a second still
    assert ttl_ms(entry(lifetime=0.0), now) == 1000
    assert ttl_ms(entry(lifetime=0.0005), 1001.0 - 1.0) == 1000
    assert ttl_ms(entry(lifetime=2.0**31), now) == (2**31 - 31) * 1000


def test_purge_answers_the_number_of_variants(db: redis.Redis) -> None:
    store(db, b"h/a", entry((b"1",)), b"a")
    store(db, b"h/a", entry((b"2",)), b"b")
    store(db, b"h/b", entry(), b"c")
    assert read_count(script(db, lambda load: purge_command(b"h/a", load=load))) == 2
    assert lookup(db, b"h/a") == ([], 0)
    assert read_count(script(db, lambda load: purge_command(b"h/a", load=load))) == 0
    assert len(lookup(db, b"h/b")[0]) == 1


def test_a_tag_ban_removes_every_url_tagged_across_urls(db: redis.Redis) -> None:
    store(db, b"h/a", entry((b"1",), tags=frozenset({b"shelf", b"p1"})), b"a")
    store(db, b"h/a", entry((b"2",)), b"a2")  # untagged, but its URL is: it goes too
    store(db, b"h/b", entry(tags=frozenset({b"shelf"})), b"b")
    store(db, b"h/c", entry(tags=frozenset({b"other"})), b"c")
    assert run(db, (b"SMEMBERS", TAG_PREFIX + b"shelf")) in (
        [hash_key(b"h/a"), hash_key(b"h/b")],
        [hash_key(b"h/b"), hash_key(b"h/a")],
    )
    assert read_count(script(db, lambda load: ban_tag_command(b"shelf", load=load))) == 3
    assert lookup(db, b"h/a") == ([], 0)
    assert lookup(db, b"h/b") == ([], 0)
    assert len(lookup(db, b"h/c")[0]) == 1
    assert run(db, (b"EXISTS", tag_key(b"shelf"))) == 0
    assert read_count(script(db, lambda load: ban_tag_command(b"shelf", load=load))) == 0
    assert read_count(script(db, lambda load: ban_tag_command(b"p1", load=load))) == 0  # URL gone


def test_a_tag_ban_leaves_keys_outside_the_cache_alone(db: redis.Redis) -> None:
    run(db, (b"SET", b"someone-else", b"x"))
    run(db, (b"SADD", tag_key(b"t"), b"someone-else", hash_key(b"h/not-a-hash")))
    run(db, (b"SET", hash_key(b"h/not-a-hash"), b"x"))
    assert read_count(script(db, lambda load: ban_tag_command(b"t", load=load))) == 0
    assert run(db, (b"GET", b"someone-else")) == b"x"
    assert run(db, (b"GET", hash_key(b"h/not-a-hash"))) == b"x"


def test_a_prefix_ban_treats_glob_characters_as_themselves(db: redis.Redis) -> None:
    keys = [b"h/a*", b"h/a*b", b"h/ab", b"h/a?x", b"h/aQx", b"h/a[1]", b"h/a1", b"h/a\\z", b"h/az"]
    for key in keys:
        store(db, key, entry(), key)
    store(db, b"h/a*", entry((b"2",)), b"second variant")

    def ban(prefix: bytes) -> int:
        return read_count(script(db, lambda load: ban_prefix_command(prefix, load=load)))

    assert ban(b"h/a*") == 3  # h/a* (two variants) and h/a*b, not h/ab
    assert ban(b"h/a?") == 1
    assert ban(b"h/a[") == 1
    assert ban(b"h/a\\") == 1
    remaining = sorted(run(db, (b"KEYS", b"*")))  # type: ignore[type-var]
    assert remaining == sorted(hash_key(k) for k in (b"h/ab", b"h/aQx", b"h/a1", b"h/az"))
    assert ban(b"h/") == 4
    assert run(db, (b"DBSIZE",)) == 0


def test_a_prefix_ban_scans_past_one_page(db: redis.Redis) -> None:
    count = SCAN_COUNT * 2 + 500
    pipe = db.pipeline(transaction=False)
    for i in range(count):
        pipe.execute_command(b"HSET", hash_key(b"h/many/%d" % i), b"f", b"v")  # type: ignore[no-untyped-call]
    pipe.execute_command(b"HSET", hash_key(b"h/other"), b"f", b"v")  # type: ignore[no-untyped-call]
    pipe.execute()
    assert read_count(script(db, lambda load: ban_prefix_command(b"h/many/", load=load))) == count
    assert run(db, (b"DBSIZE",)) == 1


alphabet = st.sampled_from([b"a", b"b", b"*", b"?", b"[", b"]", b"\\", b"^", b"-"])
texts = st.lists(alphabet, max_size=5).map(b"".join)


@settings(max_examples=25)
@given(st.lists(texts, min_size=1, max_size=8, unique=True), texts)
def test_a_prefix_ban_removes_exactly_the_keys_with_that_prefix(
    server: redis.Redis, keys: list[bytes], prefix: bytes
) -> None:
    server.flushdb()
    for key in keys:
        run(server, (b"HSET", hash_key(key), b"f", b"v"))
    banned = read_count(script(server, lambda load: ban_prefix_command(prefix, load=load)))
    assert banned == sum(k.startswith(prefix) for k in keys)
    left = run(server, (b"KEYS", b"*"))
    assert isinstance(left, list)
    assert sorted(left) == sorted(hash_key(k) for k in keys if not k.startswith(prefix))


def test_glob_escape() -> None:
    assert glob_escape(b"/a*b?c[d]e\\f^g") == b"/a\\*b\\?c\\[d\\]e\\\\f^g"
    assert ban_prefix_command(b"/x*")[-2] == glob_escape(KEY_PREFIX) + b"/x\\**"


def test_noscript_then_eval_loads_the_script(db: redis.Redis) -> None:
    run(db, (b"SCRIPT", b"FLUSH"))
    command = store_command(b"h/a", entry(), b"body", 60_000)
    assert command[0] == b"EVALSHA"
    with pytest.raises(redis.exceptions.NoScriptError) as caught:
        run(db, command)
    assert needs_load(error_text(caught.value))
    loaded = store_command(b"h/a", entry(), b"body", 60_000, load=True)
    assert loaded[0] == b"EVAL"
    assert loaded[2:] == command[2:]
    assert read_store(run(db, loaded)) > 0
    assert read_count(run(db, purge_command(b"h/a", load=True))) == 1
    store(db, b"h/a", entry(), b"body")
    assert read_count(run(db, purge_command(b"h/a"))) == 1  # EVALSHA works once loaded
    assert not needs_load(None)
    assert not needs_load("ERR something else")


def test_a_corrupt_field_is_skipped_and_counted(db: redis.Redis) -> None:
    good = entry((b"1",))
    store(db, b"h/a", good, b"good")
    key = hash_key(b"h/a")
    run(db, (b"HSET", key, variant_field((b"2",)), b"\xdc\x01 not an entry"))
    run(db, (b"HSET", key, b"\x01\x03xyz", encode_entry(entry((b"3",)), b"under the wrong field")))
    truncated = encode_entry(entry((b"4",)), b"cut")[:-1]
    run(db, (b"HSET", key, variant_field((b"4",)), truncated))
    assert lookup(db, b"h/a") == ([(good, b"good")], 3)


def test_variant_fields_differ_for_different_keys() -> None:
    keys: list[tuple[bytes | None, ...]] = [
        (),
        (None,),
        (b"",),
        (b"a",),
        (b"a", None),
        (None, b"a"),
        (b"a", b""),
    ]
    assert len({variant_field(k) for k in keys}) == len(keys)


@pytest.mark.parametrize(
    ("reader", "reply", "message"),
    [
        (read_lookup, None, "not a list"),
        (read_lookup, [b"field"], "not a list"),
        (read_lookup, [1, b"x"], "not two strings"),
        (read_lookup, [b"f", [b"x"]], "not two strings"),
        (read_count, b"1", "not a count"),
        (read_count, -1, "not a count"),
        (read_count, True, "not a count"),
        (read_store, None, "not a TTL"),
        (read_store, -1, "not a TTL"),
    ],
)
def test_readers_refuse_replies_of_the_wrong_shape(
    reader: Callable[[object], object], reply: object, message: str
) -> None:
    with pytest.raises(CacheStoreError, match=message):
        reader(reply)


def test_store_command_refuses_a_ttl_under_a_millisecond() -> None:
    with pytest.raises(CacheStoreError, match="at least 1 ms"):
        store_command(b"h/a", entry(), b"", 0)
