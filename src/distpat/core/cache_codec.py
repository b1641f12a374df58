"""One stored response as bytes, for a cache store shared by several processes (a Redis hash field,
:mod:`distpat.core.cache_redis`): :func:`encode_entry` and :func:`decode_entry`.

Pure and strict. The format is distpat's own, compact and versioned; every field of
:class:`~distpat.core.cache_policy.Stored` is kept, the directives too: they are **not**
re-derived from the stored header fields on the way back, since they may have come from a
``CDN-Cache-Control`` or ``Surrogate-Control`` field (RFC 9213 section 2.1) that
:func:`~distpat.core.cache_policy.make_stored` does not keep, or from a 304 that freshened the
entry (RFC 9111 section 3.2). Layout (``uint`` is an unsigned LEB128 varint, ``bytes`` a
``uint`` length and that many bytes, ``opt`` a ``uint`` of length + 1 with 0 for None):

=====================  ==================================================================
``0xDC 0x01``          magic byte, format version (:data:`VERSION`)
``>H``                 status
``>d`` x 4             request_time, response_time, initial_age, lifetime (finite floats)
``>H``                 the directives' flags, one bit each (:data:`_FLAGS`, in that order)
``uint`` + pairs       header fields: count, then ``bytes`` name, ``bytes`` value each
``uint`` + pairs       Vary: count, then ``bytes`` name, ``opt`` request value each
``opt`` ``opt``        etag, last_modified
``uint`` + ``bytes``   tags (sorted)
``opt-uint`` x 6       max-age, s-maxage, max-stale, min-fresh, stale-while-revalidate,
                       stale-if-error: 0 for absent, else the value + 1 (at most ``DELTA_MAX``)
``uint`` + ``bytes``   no-cache field names, then private field names (each sorted)
``bytes``              the body
=====================  ==================================================================

Anything else decodes to :class:`~distpat.errors.CacheStoreError` and to nothing else: another
magic or version, data cut short, a length past the end, a varint longer than 63 bits or not in
its shortest form, a non-finite float, an unknown flag, a directive past ``DELTA_MAX``, a set
listing one member twice, bytes after the body. Another program's value under distpat's key, or
a store written by a later distpat, is then a miss, not a crash.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

from distpat.core.cache_control import DELTA_MAX, Directives
from distpat.core.cache_policy import Stored
from distpat.errors import CacheStoreError

__all__ = ["MAGIC", "VERSION", "decode_entry", "encode_entry", "encode_optional_bytes", "encode_uint"]

MAGIC = 0xDC
VERSION = 1
"""The format written; a decoder reads only its own version (a new one gets a new number)."""

_FIXED = struct.Struct(">BBHddddH")
_FLAGS = (
    "no_store",
    "no_cache",
    "private",
    "public",
    "must_revalidate",
    "proxy_revalidate",
    "must_understand",
    "no_transform",
    "only_if_cached",
    "immutable",
    "present",
)
_ALL_FLAGS = (1 << len(_FLAGS)) - 1
_DELTAS = ("max_age", "s_maxage", "max_stale", "min_fresh", "stale_while_revalidate", "stale_if_error")
_UINT_BITS = 63


def encode_uint(value: int) -> bytes:
    """``value`` (0 <= value < 2**63) as an unsigned LEB128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_optional_bytes(value: bytes | None) -> bytes:
    """``opt``: 0 for None, else the length + 1 and the bytes."""
    return b"\x00" if value is None else encode_uint(len(value) + 1) + value


def _bytes(value: bytes) -> bytes:
    return encode_uint(len(value)) + value


def _set(values: Iterable[bytes]) -> bytes:
    items = sorted(values)
    return encode_uint(len(items)) + b"".join(_bytes(v) for v in items)


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise CacheStoreError(f"cannot store an entry whose {name} is {value!r}")
    return value


def encode_entry(stored: Stored, body: bytes) -> bytes:
    """``stored`` and its ``body`` in the format above; :class:`~distpat.errors.CacheStoreError`
    for what it cannot hold (a status past 65535, a non-finite time, a negative directive or one
    past ``DELTA_MAX``, Vary names and values of different counts)."""
    if not 0 <= stored.status <= 0xFFFF:
        raise CacheStoreError(f"cannot store an entry with status {stored.status}")
    if len(stored.vary) != len(stored.vary_key):
        raise CacheStoreError(f"{len(stored.vary)} Vary names but {len(stored.vary_key)} values")
    d = stored.directives
    flags = 0
    for bit, attr in enumerate(_FLAGS):
        if getattr(d, attr):
            flags |= 1 << bit
    parts = [
        _FIXED.pack(
            MAGIC,
            VERSION,
            stored.status,
            _finite("request_time", stored.request_time),
            _finite("response_time", stored.response_time),
            _finite("initial_age", stored.initial_age),
            _finite("lifetime", stored.lifetime),
            flags,
        ),
        encode_uint(len(stored.headers)),
    ]
    for name, value in stored.headers:
        parts += (encode_uint(len(name)), name, encode_uint(len(value)), value)
    parts.append(encode_uint(len(stored.vary)))
    for name, selected in zip(stored.vary, stored.vary_key, strict=True):
        parts += (_bytes(name), encode_optional_bytes(selected))
    parts += (
        encode_optional_bytes(stored.etag),
        encode_optional_bytes(stored.last_modified),
        _set(stored.tags),
    )
    for attr in _DELTAS:
        number: int | None = getattr(d, attr)
        if number is None:
            parts.append(b"\x00")
        elif 0 <= number <= DELTA_MAX:
            parts.append(encode_uint(number + 1))
        else:
            raise CacheStoreError(f"cannot store a {attr.replace('_', '-')} of {number}")
    parts += (_set(d.no_cache_fields), _set(d.private_fields), encode_uint(len(body)), body)
    return b"".join(parts)


class _Reader:
    """A cursor over the encoded bytes; every read checks the end."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data)

    def uint(self) -> int:
        data, pos = self.data, self.pos
        if pos >= self.end:
            raise CacheStoreError(f"a stored entry ends at byte {pos}, in the middle of a length")
        byte = data[pos]
        if byte < 0x80:
            self.pos = pos + 1
            return byte
        value, shift = byte & 0x7F, 7
        while True:
            pos += 1
            if pos >= self.end:
                raise CacheStoreError(f"a stored entry ends at byte {pos}, in the middle of a length")
            byte = data[pos]
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
            if shift >= _UINT_BITS:
                raise CacheStoreError(f"a stored entry has a length longer than 63 bits at byte {pos}")
        if byte == 0 or value >> _UINT_BITS:
            raise CacheStoreError(f"a stored entry has a length not in its shortest form at byte {pos}")
        self.pos = pos + 1
        return value

    def take(self, size: int) -> bytes:
        start = self.pos
        stop = start + size
        if stop > self.end:
            raise CacheStoreError(f"a stored entry says {size} bytes at byte {start}, past its end")
        self.pos = stop
        return self.data[start:stop]

    def blob(self) -> bytes:
        return self.take(self.uint())

    def optional(self) -> bytes | None:
        size = self.uint()
        return None if size == 0 else self.take(size - 1)

    def count(self) -> int:
        number = self.uint()
        if number > self.end - self.pos:  # every item takes a byte at least: no huge loops
            raise CacheStoreError(f"a stored entry says {number} items at byte {self.pos}, past its end")
        return number

    def names(self) -> frozenset[bytes]:
        items = [self.blob() for _ in range(self.count())]
        found = frozenset(items)
        if len(found) != len(items):
            raise CacheStoreError("a stored entry lists a tag or a field name twice")
        return found


def decode_entry(data: bytes) -> tuple[Stored, bytes]:
    """The :class:`~distpat.core.cache_policy.Stored` and the body :func:`encode_entry` made
    ``data`` of; :class:`~distpat.errors.CacheStoreError` for anything else."""
    if len(data) < _FIXED.size:
        raise CacheStoreError(f"a stored entry of {len(data)} bytes is shorter than its fixed part")
    fixed = _FIXED.unpack_from(data)
    magic, version, status, request_time, response_time, initial_age, lifetime, flags = fixed
    if magic != MAGIC:
        raise CacheStoreError(f"a stored entry starts with {magic:#04x}, not distpat's {MAGIC:#04x}")
    if version != VERSION:
        raise CacheStoreError(f"a stored entry of format version {version}; this distpat reads {VERSION}")
    for number in (request_time, response_time, initial_age, lifetime):
        if not math.isfinite(number):
            raise CacheStoreError(f"a stored entry holds the time {number!r}")
    if flags & ~_ALL_FLAGS:
        raise CacheStoreError(f"a stored entry has unknown directive flags {flags:#06x}")
    r = _Reader(data, _FIXED.size)
    headers = tuple((r.blob(), r.blob()) for _ in range(r.count()))
    pairs = [(r.blob(), r.optional()) for _ in range(r.count())]
    etag = r.optional()
    last_modified = r.optional()
    tags = r.names()
    values: dict[str, object] = {}
    for name in _DELTAS:
        number = r.uint()
        if number > DELTA_MAX + 1:
            raise CacheStoreError(f"a stored entry has a {name.replace('_', '-')} of {number - 1}")
        if number:
            values[name] = number - 1
    for bit, name in enumerate(_FLAGS):
        if flags >> bit & 1:
            values[name] = True
    no_cache_fields = r.names()
    private_fields = r.names()
    body = r.blob()
    if r.pos != len(data):
        raise CacheStoreError(f"a stored entry has {len(data) - r.pos} bytes after its body")
    directives = Directives(
        no_cache_fields=no_cache_fields,
        private_fields=private_fields,
        **values,  # type: ignore[arg-type]
    )
    stored = Stored(
        status,
        headers,
        request_time,
        response_time,
        tuple(name for name, _ in pairs),
        tuple(value for _, value in pairs),
        directives,
        initial_age,
        lifetime,
        etag,
        last_modified,
        tags,
    )
    return stored, body
