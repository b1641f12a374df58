"""twemproxy's key hash functions, reproduced bit for bit.

twemproxy (nutcracker) names twelve hash functions in its YAML ``hash:`` key.
Each one here takes the key bytes and returns the same unsigned 32-bit value
as the C function of the same name in twemproxy 0.5.0 built for x86-64 Linux.
The C details that decide the value, and that a "textbook" version of the
same algorithm gets wrong, are:

* ``char`` is signed on x86-64. Where twemproxy widens a ``const char`` key
  byte to ``uint32_t``/``uint64_t`` (one_at_a_time, the four FNV variants and
  the third tail byte of hsieh) a byte ``>= 0x80`` is sign-extended, so
  ``0x80`` is mixed in as ``0xFFFFFF80``. Keys that are plain ASCII are
  unaffected; UTF-8 and binary keys are.
* ``fnv1_64`` and ``fnv1a_64`` are not 64-bit FNV: ``fnv1_64`` keeps a 64-bit
  state but returns its low 32 bits, and ``fnv1a_64`` runs entirely in
  32 bits with the 64-bit offset basis and prime truncated to 32 bits. Both
  therefore equal a 32-bit loop with basis ``0x84222325`` and prime ``0x1B3``.
* ``crc32`` is the libmemcached variant: bits 16..30 of the standard CRC-32,
  a 15-bit value. ``crc32a`` is the standard CRC-32.
* ``crc16`` is not a 16-bit value: twemproxy 0.5.0 runs CRC-16/XMODEM
  (polynomial ``0x1021``) in a ``uint32_t`` it never truncates, so the bits
  shifted out of the CRC stay in the high half. (twemproxy's master branch
  later replaced it with a CRC-16/ARC table and a 16-bit state; that is not
  what 0.5.0 computes.)
* ``md5`` is the first four digest bytes read little-endian.
* ``murmur`` is MurmurHash2 seeded with ``0xDEADBEEF * len``, reading
  little-endian words; ``jenkins`` is Bob Jenkins' lookup3 ``hashlittle``
  with ``initval`` 13.
* An empty key hashes to each function's value for zero bytes (for example
  ``0x84222325`` for fnv1a_64, ``0`` for hsieh). twemproxy itself never hashes
  an empty key: its dispatcher uses hash 0 for an empty key and for a pool of
  one server, before any of these functions is called.

What twemproxy hashes is the key, or with ``hash_tag:`` configured, the part
of it that :func:`hash_tag_key` returns.

Everything here is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import hashlib
import importlib
import struct
import zlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final, Protocol, TypeAlias

from distpat.errors import ConfigError, UnknownHashError

__all__ = [
    "TWEMPROXY_HASHES",
    "HashFunction",
    "crc16",
    "crc32",
    "crc32a",
    "fnv1_32",
    "fnv1_64",
    "fnv1a_32",
    "fnv1a_64",
    "hash_tag_key",
    "hsieh",
    "jenkins",
    "md5",
    "murmur",
    "one_at_a_time",
    "twemproxy_hash",
]

HashFunction: TypeAlias = Callable[[bytes], int]
"""A key hash: key bytes in, unsigned 32-bit integer out."""

# Byte value -> that byte as a signed C char widened to uint32_t.
_SIGNED: Final[tuple[int, ...]] = tuple(b | 0xFFFFFF00 if b & 0x80 else b for b in range(256))


def _crc16_xmodem_table() -> tuple[int, ...]:
    """Table for the MSB-first CRC-16 with polynomial 0x1021 (CRC-16/XMODEM)."""
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = (crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16_TABLE: Final = _crc16_xmodem_table()

# Keys up to this many bytes are hashed by fnv1a_64 with one final mask.
_LAZY_MASK_MAX: Final = 64


class _Digester(Protocol):
    def digest(self) -> bytes: ...


def _md5_constructor() -> Callable[[bytes], _Digester]:
    """CPython's built-in MD5 constructor, else ``hashlib.md5``.

    Both give the same digest; the built-in one skips OpenSSL's dispatch and
    costs about half as much per call on short keys.
    """
    try:
        module = importlib.import_module("_md5")
    except ImportError:  # pragma: no cover - CPython built without it
        return hashlib.md5
    new: Callable[[bytes], _Digester] = module.md5
    return new


_md5: Final = _md5_constructor()
_crc32 = zlib.crc32
_u32_le_at: Final[Callable[[bytes], tuple[int]]] = struct.Struct("<I").unpack_from


def one_at_a_time(data: bytes) -> int:
    """Jenkins' one-at-a-time hash over sign-extended key bytes."""
    sx = _SIGNED
    h = 0
    for b in data:
        h = (h + sx[b]) & 0xFFFFFFFF
        h = (h + (h << 10)) & 0xFFFFFFFF
        h ^= h >> 6
    h = (h + (h << 3)) & 0xFFFFFFFF
    h ^= h >> 11
    return (h + (h << 15)) & 0xFFFFFFFF


def md5(data: bytes) -> int:
    """The first four bytes of the MD5 digest, as a little-endian integer."""
    return _u32_le_at(_md5(data).digest())[0]


def crc16(data: bytes) -> int:
    """twemproxy 0.5.0's crc16: CRC-16/XMODEM in a never-truncated 32-bit state.

    The low 16 bits are the CRC-16/XMODEM of the key; the high 16 bits hold
    CRC bits shifted out of them, because the state is a ``uint32_t`` that is
    shifted left by 8 for every byte and is never masked to 16 bits.
    """
    table = _CRC16_TABLE
    crc = 0
    for b in data:
        crc = ((crc << 8) ^ table[((crc >> 8) ^ b) & 0xFF]) & 0xFFFFFFFF
    return crc


def crc32(data: bytes) -> int:
    """libmemcached's crc32: bits 16..30 of the standard CRC-32 (15 bits)."""
    return (_crc32(data) >> 16) & 0x7FFF


def crc32a(data: bytes) -> int:
    """The standard CRC-32 (as zlib and Ethernet compute it)."""
    return _crc32(data)


def fnv1_64(data: bytes) -> int:
    """twemproxy's fnv1_64: the low 32 bits of 64-bit FNV-1 over signed bytes.

    Only the low 32 bits are returned, and the low 32 bits of a product or
    xor depend only on the low 32 bits of the operands, so the 64-bit state
    is never needed.
    """
    sx = _SIGNED
    h = 0x84222325  # low half of the 64-bit offset basis 0xcbf29ce484222325
    for b in data:
        h = ((h * 0x1B3) & 0xFFFFFFFF) ^ sx[b]
    return h


def fnv1a_64(data: bytes) -> int:
    """twemproxy's fnv1a_64: 32-bit FNV-1a with truncated 64-bit constants."""
    h = 0x84222325  # low half of the 64-bit offset basis 0xcbf29ce484222325
    if len(data) <= _LAZY_MASK_MAX:
        # The low 32 bits of xor and product depend only on the operands'
        # low 32 bits, so masking once at the end gives the same result; the
        # state grows about 9 bits a byte, which stays cheap for short keys.
        if data.isascii():
            for b in data:
                h = (h ^ b) * 0x1B3
        else:
            sx = _SIGNED
            for b in data:
                h = (h ^ sx[b]) * 0x1B3
        return h & 0xFFFFFFFF
    sx = _SIGNED
    for b in data:
        h = ((h ^ sx[b]) * 0x1B3) & 0xFFFFFFFF
    return h


def fnv1_32(data: bytes) -> int:
    """32-bit FNV-1 (multiply, then xor) over sign-extended bytes."""
    sx = _SIGNED
    h = 0x811C9DC5
    for b in data:
        h = ((h * 0x01000193) & 0xFFFFFFFF) ^ sx[b]
    return h


def fnv1a_32(data: bytes) -> int:
    """32-bit FNV-1a (xor, then multiply) over sign-extended bytes."""
    sx = _SIGNED
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ sx[b]) * 0x01000193) & 0xFFFFFFFF
    return h


def hsieh(data: bytes) -> int:
    """Paul Hsieh's SuperFastHash, with twemproxy's signed third tail byte."""
    n = len(data)
    if n == 0:
        return 0
    h = 0
    rem = n & 3
    end = n - rem
    for i in range(0, end, 4):
        h = (h + (data[i] | (data[i + 1] << 8))) & 0xFFFFFFFF
        tmp = (((data[i + 2] | (data[i + 3] << 8)) << 11) ^ h) & 0xFFFFFFFF
        h = ((h << 16) & 0xFFFFFFFF) ^ tmp
        h = (h + (h >> 11)) & 0xFFFFFFFF
    if rem == 3:
        h = (h + (data[end] | (data[end + 1] << 8))) & 0xFFFFFFFF
        h ^= (h << 16) & 0xFFFFFFFF
        # twemproxy reads this byte through a signed char.
        h ^= (_SIGNED[data[end + 2]] << 18) & 0xFFFFFFFF
        h = (h + (h >> 11)) & 0xFFFFFFFF
    elif rem == 2:
        h = (h + (data[end] | (data[end + 1] << 8))) & 0xFFFFFFFF
        h ^= (h << 11) & 0xFFFFFFFF
        h = (h + (h >> 17)) & 0xFFFFFFFF
    elif rem == 1:
        h = (h + data[end]) & 0xFFFFFFFF
        h ^= (h << 10) & 0xFFFFFFFF
        h = (h + (h >> 1)) & 0xFFFFFFFF
    h ^= (h << 3) & 0xFFFFFFFF
    h = (h + (h >> 5)) & 0xFFFFFFFF
    h ^= (h << 4) & 0xFFFFFFFF
    h = (h + (h >> 17)) & 0xFFFFFFFF
    h ^= (h << 25) & 0xFFFFFFFF
    return (h + (h >> 6)) & 0xFFFFFFFF


def _word_reader(nbytes: int) -> Callable[[bytes], tuple[int, ...]]:
    """Reader of the first ``nbytes`` (a multiple of 4) as little-endian words."""
    reader = _WORD_READERS.get(nbytes)
    if reader is None:
        reader = struct.Struct(f"<{nbytes >> 2}I").unpack_from
        if len(_WORD_READERS) < 256:  # bounded: long keys build theirs each call
            _WORD_READERS[nbytes] = reader
    return reader


_WORD_READERS: dict[int, Callable[[bytes], tuple[int, ...]]] = {}


def murmur(data: bytes) -> int:
    """MurmurHash2 (32-bit) seeded with ``0xDEADBEEF * len(data)``."""
    n = len(data)
    h = ((0xDEADBEEF * n) ^ n) & 0xFFFFFFFF
    end = n & ~3
    if end:
        for k in (_WORD_READERS.get(end) or _word_reader(end))(data):
            k = (k * 0x5BD1E995) & 0xFFFFFFFF
            # low 32 bits of an xor depend only on the operands' low 32 bits,
            # so one mask after the xor does for both products.
            h = ((h * 0x5BD1E995) ^ ((k ^ (k >> 24)) * 0x5BD1E995)) & 0xFFFFFFFF
    rem = n - end
    if rem:
        if rem == 3:
            h ^= data[end + 2] << 16
        if rem >= 2:
            h ^= data[end + 1] << 8
        h = ((h ^ data[end]) * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0x5BD1E995) & 0xFFFFFFFF
    return h ^ (h >> 15)


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def jenkins(data: bytes) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` with ``initval`` 13."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + 13) & 0xFFFFFFFF
    if n == 0:
        return c
    # lookup3 reads 12-byte blocks as three little-endian words; the last
    # (1..12 byte) block is zero-padded and is the only one not followed by
    # mix(), it goes through final() instead.
    padded = data + bytes(-n % 12)
    words: tuple[int, ...] = struct.unpack(f"<{len(padded) >> 2}I", padded)
    last = len(words) - 3
    for i in range(0, last, 3):
        a = (a + words[i]) & 0xFFFFFFFF
        b = (b + words[i + 1]) & 0xFFFFFFFF
        c = (c + words[i + 2]) & 0xFFFFFFFF
        a = (a - c) & 0xFFFFFFFF
        a ^= _rot(c, 4)
        c = (c + b) & 0xFFFFFFFF
        b = (b - a) & 0xFFFFFFFF
        b ^= _rot(a, 6)
        a = (a + c) & 0xFFFFFFFF
        c = (c - b) & 0xFFFFFFFF
        c ^= _rot(b, 8)
        b = (b + a) & 0xFFFFFFFF
        a = (a - c) & 0xFFFFFFFF
        a ^= _rot(c, 16)
        c = (c + b) & 0xFFFFFFFF
        b = (b - a) & 0xFFFFFFFF
        b ^= _rot(a, 19)
        a = (a + c) & 0xFFFFFFFF
        c = (c - b) & 0xFFFFFFFF
        c ^= _rot(b, 4)
        b = (b + a) & 0xFFFFFFFF
    a = (a + words[last]) & 0xFFFFFFFF
    b = (b + words[last + 1]) & 0xFFFFFFFF
    c = (c + words[last + 2]) & 0xFFFFFFFF
    c ^= b
    c = (c - _rot(b, 14)) & 0xFFFFFFFF
    a ^= c
    a = (a - _rot(c, 11)) & 0xFFFFFFFF
    b ^= a
    b = (b - _rot(a, 25)) & 0xFFFFFFFF
    c ^= b
    c = (c - _rot(b, 16)) & 0xFFFFFFFF
    a ^= c
    a = (a - _rot(c, 4)) & 0xFFFFFFFF
    b ^= a
    b = (b - _rot(a, 14)) & 0xFFFFFFFF
    c ^= b
    return (c - _rot(b, 24)) & 0xFFFFFFFF


TWEMPROXY_HASHES: Final[Mapping[str, HashFunction]] = MappingProxyType(
    {
        "one_at_a_time": one_at_a_time,
        "md5": md5,
        "crc16": crc16,
        "crc32": crc32,
        "crc32a": crc32a,
        "fnv1_64": fnv1_64,
        "fnv1a_64": fnv1a_64,
        "fnv1_32": fnv1_32,
        "fnv1a_32": fnv1a_32,
        "hsieh": hsieh,
        "murmur": murmur,
        "jenkins": jenkins,
    }
)
"""The hash functions by the name twemproxy's ``hash:`` key uses, in its order."""


def twemproxy_hash(name: str) -> HashFunction:
    """Return the hash function twemproxy calls ``name``.

    Names are matched exactly, as twemproxy does (``FNV1A_64`` is unknown).

    Raises:
        UnknownHashError: ``name`` is not one of :data:`TWEMPROXY_HASHES`.
    """
    try:
        return TWEMPROXY_HASHES[name]
    except (KeyError, TypeError):
        valid = ", ".join(TWEMPROXY_HASHES)
        raise UnknownHashError(f"unknown twemproxy hash {name!r}; valid names: {valid}") from None


def hash_tag_key(key: bytes, hash_tag: bytes) -> bytes:
    """The part of ``key`` twemproxy hashes when ``hash_tag:`` is configured.

    ``hash_tag`` is the two-byte tag (for example ``b"{}"``), or empty for
    none. twemproxy looks for the first occurrence of the opening byte, then
    for the first closing byte after it; when both are found with at least
    one byte between them, those bytes are hashed. In every other case
    (no opening byte, no closing byte after it, or an empty tag such as
    ``{}``) the whole key is hashed. Only the first opening byte is tried, so
    ``b"a{}b{c}"`` hashes in full. The opening and closing bytes may be the
    same (``b"$$"``).

    Raises:
        ConfigError: ``hash_tag`` is neither empty nor two bytes long.
    """
    if not hash_tag:
        return key
    if len(hash_tag) != 2:
        raise ConfigError(f"hash_tag must be two bytes or empty, got {bytes(hash_tag)!r}")
    start = key.find(hash_tag[0])
    if start < 0:
        return key
    end = key.find(hash_tag[1], start + 1)
    if end <= start + 1:  # no closing byte (-1), or an empty tag
        return key
    return key[start + 1 : end]
