"""The shared store's entry format (distpat.core.cache_codec): every Stored value round-trips, and
anything else decodes to CacheStoreError, never to another exception."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.cache_codec import MAGIC, VERSION, decode_entry, encode_entry, encode_uint
from distpat.core.cache_control import DELTA_MAX, Directives
from distpat.core.cache_policy import CachePolicy, Stored, make_stored, response_directives
from distpat.core.stage import Request
from distpat.errors import CacheStoreError, DistpatError

blobs = st.binary(max_size=40)
deltas = st.none() | st.integers(0, DELTA_MAX)
times = st.floats(allow_nan=False, allow_infinity=False, width=64)
names = st.frozensets(st.binary(max_size=12), max_size=4)

directives = st.builds(
    Directives,
    max_age=deltas,
    s_maxage=deltas,
    max_stale=deltas,
    min_fresh=deltas,
    stale_while_revalidate=deltas,
    stale_if_error=deltas,
    no_store=st.booleans(),
    no_cache=st.booleans(),
    no_cache_fields=names,
    private=st.booleans(),
    private_fields=names,
    public=st.booleans(),
    must_revalidate=st.booleans(),
    proxy_revalidate=st.booleans(),
    must_understand=st.booleans(),
    no_transform=st.booleans(),
    only_if_cached=st.booleans(),
    immutable=st.booleans(),
    present=st.booleans(),
)


@st.composite
def stored_values(draw: st.DrawFn) -> Stored:
    vary = draw(st.lists(st.tuples(blobs, st.none() | blobs), max_size=4))
    return Stored(
        status=draw(st.integers(0, 0xFFFF)),
        headers=tuple(draw(st.lists(st.tuples(blobs, st.binary(max_size=200)), max_size=8))),
        request_time=draw(times),
        response_time=draw(times),
        vary=tuple(n for n, _ in vary),
        vary_key=tuple(v for _, v in vary),
        directives=draw(directives),
        initial_age=draw(times),
        lifetime=draw(times),
        etag=draw(st.none() | blobs),
        last_modified=draw(st.none() | blobs),
        tags=draw(names),
    )


@given(stored_values(), st.binary(max_size=3000))
def test_every_stored_value_round_trips(stored: Stored, body: bytes) -> None:
    data = encode_entry(stored, body)
    assert data[:2] == bytes((MAGIC, VERSION))
    assert decode_entry(data) == (stored, body)


@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_cache_store_error(data: bytes) -> None:
    try:
        stored, body = decode_entry(data)
    except CacheStoreError:
        return
    assert decode_entry(encode_entry(stored, body)) == (stored, body)


@given(st.binary(max_size=300))
def test_random_bytes_after_a_valid_header_decode_or_raise(tail: bytes) -> None:
    """Past the magic and version, so the variable part is what gets exercised."""
    head = struct.pack(">BBHddddH", MAGIC, VERSION, 200, 1.0, 2.0, 0.0, 60.0, 0)
    with contextlib.suppress(CacheStoreError):
        decode_entry(head + tail)


@given(stored_values(), st.binary(max_size=50), st.data())
def test_a_corrupted_byte_decodes_or_raises(stored: Stored, body: bytes, data: st.DataObject) -> None:
    encoded = bytearray(encode_entry(stored, body))
    where = data.draw(st.integers(0, len(encoded) - 1))
    encoded[where] = data.draw(st.integers(0, 255))
    with contextlib.suppress(CacheStoreError):
        decode_entry(bytes(encoded))


@given(stored_values(), st.binary(max_size=50))
def test_every_truncation_and_any_trailing_byte_is_an_error(stored: Stored, body: bytes) -> None:
    encoded = encode_entry(stored, body)
    for cut in range(len(encoded)):
        with pytest.raises(CacheStoreError):
            decode_entry(encoded[:cut])
    with pytest.raises(CacheStoreError, match="after its body"):
        decode_entry(encoded + b"\x00")


def sample() -> tuple[Stored, bytes]:
    request = Request(b"GET", b"/a", "127.0.0.1", fields={b"accept-encoding": b"gzip"})
    headers = (
        (b"Cache-Control", b"no-cache"),
        (b"CDN-Cache-Control", b"max-age=600, stale-if-error=30"),
        (b"ETag", b'"v1"'),
        (b"Vary", b"Accept-Encoding, Accept-Language"),
        (b"Cache-Tag", b"product-1 shelf"),
        (b"Date", b"Sun, 06 Nov 1994 08:49:37 GMT"),
    )
    policy = CachePolicy()
    stored = make_stored(
        request, 200, headers, response_directives(headers, policy), 784111770.0, 784111777.0, policy
    )
    return stored, b"hello"


def test_directives_from_cdn_cache_control_are_kept_not_re_derived() -> None:
    stored, body = sample()
    assert stored.directives.max_age == 600
    assert not stored.directives.no_cache
    back, back_body = decode_entry(encode_entry(stored, body))
    assert back == stored
    assert back_body == body
    assert back.directives.max_age == 600
    assert back.directives.stale_if_error == 30
    assert not back.directives.no_cache  # Cache-Control's no-cache, which the CDN field overrides
    assert back.vary_key == (b"gzip", None)
    assert back.tags == {b"product-1", b"shelf"}


def test_the_error_class_is_a_distpat_error_and_a_value_error() -> None:
    assert issubclass(CacheStoreError, DistpatError)
    assert issubclass(CacheStoreError, ValueError)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: bytes((0x00,)) + d[1:], "not distpat's"),
        (lambda d: d[:1] + bytes((VERSION + 1,)) + d[2:], "format version 2"),
        (lambda d: d[:4] + struct.pack(">d", float("nan")) + d[12:], "time nan"),
        (lambda d: d[:36] + b"\xff\xff" + d[38:], "unknown directive flags"),
        (lambda d: d[:38] + b"\xff\xff\xff\xff\x0f" + d[43:], "items at byte"),
        (lambda d: d[:38] + b"\x80\x00" + d[39:], "shortest form"),
        (lambda d: d[:38] + b"\xff" * 10, "longer than 63 bits"),
        (lambda d: d[:-6] + b"\x7f" + d[-5:], "past its end"),
        (lambda d: b"", "shorter than its fixed part"),
    ],
)
def test_malformed_entries_say_what_is_wrong(change: object, message: str) -> None:
    stored, body = sample()
    data = encode_entry(stored, body)
    with pytest.raises(CacheStoreError, match=message):
        decode_entry(change(data))  # type: ignore[operator]


def test_a_directive_past_delta_max_and_a_repeated_tag_are_errors() -> None:
    stored = Stored(200, (), 0.0, 0.0, (), (), Directives(), 0.0, 0.0, None, None, frozenset())
    data = encode_entry(stored, b"")
    # fixed part, 0 headers, 0 vary, etag None, lm None, 0 tags, then max-age
    at = 38 + 5
    big = data[:at] + encode_uint(DELTA_MAX + 2) + data[at + 1 :]
    with pytest.raises(CacheStoreError, match="max-age of"):
        decode_entry(big)
    twice = data[:42] + b"\x02\x01t\x01t" + data[43:]
    with pytest.raises(CacheStoreError, match="twice"):
        decode_entry(twice)


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        (Stored(70000, (), 0.0, 0.0, (), (), Directives(), 0.0, 0.0, None, None), "status 70000"),
        (Stored(200, (), float("inf"), 0.0, (), (), Directives(), 0.0, 0.0, None, None), "request_time"),
        (Stored(200, (), 0.0, 0.0, (b"a",), (), Directives(), 0.0, 0.0, None, None), "Vary names"),
        (Stored(200, (), 0.0, 0.0, (), (), Directives(max_age=-1), 0.0, 0.0, None, None), "max-age of -1"),
    ],
)
def test_what_the_format_cannot_hold_is_refused_on_encoding(stored: Stored, message: str) -> None:
    with pytest.raises(CacheStoreError, match=message):
        encode_entry(stored, b"")
