"""distpat.core.twemhash without a network: vectors, C semantics, properties.

The vectors below were read off the real nutcracker 0.5.0 (x86-64 Debian
package), not computed with this module: tests/test_twemhash_nutcracker.py
routes each key through modula pools of 3, 7, 11, 13, 239, 241 and 251
servers and recovers nutcracker's full 32-bit hash with the Chinese remainder
theorem.
"""

from __future__ import annotations

import ast
import hashlib
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core import twemhash
from distpat.core.twemhash import (
    TWEMPROXY_HASHES,
    crc16,
    crc32,
    crc32a,
    fnv1_32,
    fnv1_64,
    fnv1a_32,
    fnv1a_64,
    hash_tag_key,
    hsieh,
    jenkins,
    md5,
    murmur,
    one_at_a_time,
    twemproxy_hash,
)
from distpat.errors import ConfigError, RingError, UnknownHashError

# twemproxy's own order (HASH_CODEC in src/hashkit/nc_hashkit.h).
NAMES = (
    "one_at_a_time",
    "md5",
    "crc16",
    "crc32",
    "crc32a",
    "fnv1_64",
    "fnv1a_64",
    "fnv1_32",
    "fnv1a_32",
    "hsieh",
    "murmur",
    "jenkins",
)

# key -> hash values in NAMES order, as nutcracker 0.5.0 computed them.
NUTCRACKER_VECTORS: dict[bytes, tuple[int, ...]] = {
    b"a": (
        0xCA2E9442, 0xB975C10C, 0x00007C87, 0x000068B7, 0xE8B7BE43, 0x8601B7BE,
        0x8601EC8C, 0x050C5D7E, 0xE40C292C, 0x93642E87, 0x4B41757C, 0xE0A38690,
    ),
    b"foo": (
        0x238678DD, 0xDB18BDAC, 0x0C3CAF96, 0x00000C73, 0x8C736521, 0x6BA13533,
        0xFED9D577, 0x408F5E13, 0xA9F37ED7, 0x76D4D427, 0xC4E0338F, 0x99F84F99,
    ),
    b"hello world": (
        0x3E4A5A57, 0xBB3BB65E, 0xF2063BE4, 0x00000D4A, 0x0D4A1185, 0xB1910E6F,
        0x023CD2E7, 0x548DA96F, 0xD58B3FA7, 0x4F799873, 0x5E19153B, 0x153343FB,
    ),
    b"key:7": (
        0x4742DB9B, 0x47BE18C8, 0x7012FAC7, 0x0000620C, 0xE20C9ED9, 0xFDC93303,
        0x962F5E2F, 0x8964F7A3, 0x5A1412CF, 0x25E55917, 0x5B916F6D, 0x9FCC1614,
    ),
    "naïve café".encode(): (
        0x511AC286, 0xB0D1EE8F, 0xDE1C6B7E, 0x000069EB, 0x69EB83D5, 0x285C50E1,
        0x9095B355, 0x491633E1, 0x2E939A15, 0x1F5F8ABD, 0x8534F295, 0x6ADA2072,
    ),
    "ключ".encode(): (
        0xFBCA080A, 0x667B65C3, 0x3C55683F, 0x00000CAF, 0x0CAF961A, 0x64997A19,
        0xA9AD7881, 0x31B3EFF9, 0xAFD617E1, 0xFA8A713C, 0x9AC6D2AF, 0x4B2C236F,
    ),
    "🎉".encode(): (
        0x6E06ED26, 0xE542405B, 0x619BF373, 0x00006009, 0x6009B837, 0x5977FDF1,
        0x74A30F29, 0x66A71291, 0x1CCAA509, 0x9D0D3DA0, 0x9107E524, 0x4A6CA940,
    ),
    b"\xff": (
        0xAE65A494, 0xD44F5900, 0x00001EF0, 0x00007F00, 0xFF000000, 0x79FE4820,
        0x79FE466E, 0xFAF3A2E0, 0xF9F3A14E, 0x02A6DBA8, 0xDB530A9C, 0xE1964DA8,
    ),
    b"ab\xff": (
        0x0603D118, 0x82ABBD74, 0x7C74DFE3, 0x00004C9D, 0xCC9D9EAD, 0x94505257,
        0xFABE022F, 0xBC63D0D7, 0xC3B7E16F, 0x75DC9FD6, 0xEC9082B2, 0xE9AF676B,
    ),
    b"abc\x80": (
        0x567072B2, 0x2004667A, 0x749D159C, 0x00004AE5, 0x4AE5EB70, 0x047BB071,
        0x11F8D0F1, 0x46218C91, 0x2BCB7CD1, 0x3D5188AA, 0x12C8AB72, 0x0727B897,
    ),
    b"\x80" * 13: (
        0x89D16941, 0xB8B1250C, 0x1EB401D7, 0x00001644, 0x96444D16, 0x4A35DCAF,
        0xD1A66FAF, 0x3F75556F, 0x333A086F, 0xA912C093, 0xB4B23E48, 0x72798514,
    ),
    b"\x98\xa9\xba\xcb\xdc\xed\xfe\x0f 1BSd": (
        0x05B1ABCD, 0x4C57B3B9, 0xD583C3C9, 0x000017CE, 0x97CE788E, 0xFE497057,
        0x418E91F7, 0xC1BF9557, 0x6B999FB7, 0x1DE6C608, 0x6A5E1A68, 0x20A7DE63,
    ),
}  # fmt: skip

M32 = 0xFFFFFFFF


def _signed(b: int) -> int:
    """A byte as a signed C char."""
    return b - 256 if b >= 0x80 else b


# ---------------------------------------------------------------- registry


def test_registry_has_twemproxys_names_in_order() -> None:
    assert tuple(TWEMPROXY_HASHES) == NAMES
    for name in NAMES:
        assert twemproxy_hash(name) is TWEMPROXY_HASHES[name]
        assert TWEMPROXY_HASHES[name] is getattr(twemhash, name)


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        TWEMPROXY_HASHES["mine"] = md5  # type: ignore[index]


@pytest.mark.parametrize("name", ["FNV1A_64", "fnv1a", "sha1", "", " md5", "ketama"])
def test_unknown_hash_names_are_refused_with_the_valid_names(name: str) -> None:
    with pytest.raises(UnknownHashError) as info:
        twemproxy_hash(name)
    assert isinstance(info.value, RingError)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert repr(name) in message
    for valid in NAMES:
        assert valid in message


def test_unhashable_name_is_an_unknown_hash() -> None:
    with pytest.raises(UnknownHashError):
        twemproxy_hash(["md5"])  # type: ignore[arg-type]


# ------------------------------------------------------------------ vectors


@pytest.mark.parametrize("key", list(NUTCRACKER_VECTORS), ids=repr)
@pytest.mark.parametrize("name", NAMES)
def test_nutcracker_vectors(name: str, key: bytes) -> None:
    expected = NUTCRACKER_VECTORS[key][NAMES.index(name)]
    assert TWEMPROXY_HASHES[name](key) == expected


def test_published_check_values() -> None:
    check = b"123456789"
    assert crc32a(check) == 0xCBF43926  # CRC-32
    assert crc32(check) == (0xCBF43926 >> 16) & 0x7FFF
    assert crc16(check) & 0xFFFF == 0x31C3  # CRC-16/XMODEM
    assert fnv1_32(b"a") == 0x050C5D7E
    assert fnv1a_32(b"a") == 0xE40C292C
    assert one_at_a_time(b"a") == 0xCA2E9442
    assert md5(b"") == 0xD98C1DD4  # d41d8cd9... read little-endian


def test_values_for_the_empty_key() -> None:
    # twemproxy never hashes an empty key (it uses hash 0), but the functions
    # themselves are defined for it.
    assert fnv1a_64(b"") == 0x84222325
    assert fnv1_64(b"") == 0x84222325
    assert fnv1_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"") == 0x811C9DC5
    assert hsieh(b"") == 0
    assert crc16(b"") == 0
    assert crc32(b"") == 0
    assert crc32a(b"") == 0
    assert jenkins(b"") == (0xDEADBEEF + 13) & M32
    assert one_at_a_time(b"") == 0


# --------------------------------------------- C semantics, by independent code


def _fnv1_64_full(data: bytes) -> int:
    """64-bit FNV-1 with sign-extended bytes, as twemproxy's C code runs it."""
    h = 0xCBF29CE484222325
    for b in data:
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        h ^= _signed(b) & 0xFFFFFFFFFFFFFFFF
    return h & M32


def _fnv1a_64_c(data: bytes) -> int:
    h = 0xCBF29CE484222325 & M32
    for b in data:
        h = ((h ^ (_signed(b) & M32)) * (0x100000001B3 & M32)) & M32
    return h


def _one_at_a_time_c(data: bytes) -> int:
    h = 0
    for b in data:
        h = (h + (_signed(b) & M32)) & M32
        h = (h + (h << 10)) & M32
        h ^= h >> 6
    h = (h + (h << 3)) & M32
    h ^= h >> 11
    return (h + (h << 15)) & M32


def _crc16_c(data: bytes) -> int:
    """The 0.5.0 loop, bit by bit instead of by table."""
    crc = 0
    for b in data:
        top = ((crc >> 8) ^ b) & 0xFF
        term = top << 8
        for _ in range(8):
            term = ((term << 1) ^ 0x1021) if term & 0x8000 else term << 1
        crc = ((crc << 8) ^ (term & 0xFFFF)) & M32
    return crc


byte_strings = st.binary(max_size=200)


@given(byte_strings)
def test_fnv1_64_is_the_low_half_of_64_bit_fnv1(data: bytes) -> None:
    assert fnv1_64(data) == _fnv1_64_full(data)


@given(st.binary(max_size=300))
def test_fnv1a_64_matches_the_c_loop_on_both_sides_of_the_lazy_mask(data: bytes) -> None:
    assert fnv1a_64(data) == _fnv1a_64_c(data)


@pytest.mark.parametrize("size", [63, 64, 65, 1000])
@pytest.mark.parametrize("fill", [b"a", b"\xe9", b"\xff\x00"])
def test_fnv1a_64_lengths_around_the_lazy_mask(size: int, fill: bytes) -> None:
    data = (fill * size)[:size]
    assert fnv1a_64(data) == _fnv1a_64_c(data)


@given(byte_strings)
def test_one_at_a_time_sign_extends(data: bytes) -> None:
    assert one_at_a_time(data) == _one_at_a_time_c(data)


@given(byte_strings)
def test_crc16_matches_a_bitwise_version(data: bytes) -> None:
    assert crc16(data) == _crc16_c(data)


@given(byte_strings)
def test_crc32_variants_are_zlib_crc32(data: bytes) -> None:
    assert crc32a(data) == zlib.crc32(data)
    assert crc32(data) == (zlib.crc32(data) >> 16) & 0x7FFF


@given(byte_strings)
def test_md5_is_the_first_digest_word_little_endian(data: bytes) -> None:
    assert md5(data) == int.from_bytes(hashlib.md5(data).digest()[:4], "little")


def test_sign_extension_changes_high_byte_keys_only() -> None:
    ascii_key = bytes(range(0x20, 0x7F))
    unsigned = 0x84222325
    for b in ascii_key:
        unsigned = ((unsigned ^ b) * 0x1B3) & M32
    assert fnv1a_64(ascii_key) == unsigned
    unsigned = 0x84222325
    for b in b"\xe9":
        unsigned = ((unsigned ^ b) * 0x1B3) & M32
    assert fnv1a_64(b"\xe9") != unsigned


def test_hsieh_third_tail_byte_is_signed() -> None:
    # Only the rem == 3 tail reads a byte through a signed char: keys that
    # differ there by the sign bit alone still hash apart, and the value
    # matches nutcracker (see the vector for b"ab\xff").
    assert hsieh(b"ab\x7f") != hsieh(b"ab\xff")
    assert hsieh(b"ab\xff") == NUTCRACKER_VECTORS[b"ab\xff"][NAMES.index("hsieh")]


def test_murmur_word_readers_stay_bounded() -> None:
    for n in range(4, 4 * 400, 4):
        assert 0 <= murmur(b"\xa5" * n) <= M32
    assert len(twemhash._WORD_READERS) <= 256


@pytest.mark.parametrize("n", [*range(40), 100, 255, 256, 1000])
def test_word_based_hashes_accept_every_length(n: int) -> None:
    data = bytes((7 * i + 3) & 0xFF for i in range(n))
    for fn in (murmur, jenkins, hsieh):
        assert 0 <= fn(data) <= M32


# --------------------------------------------------------------- properties


@pytest.mark.parametrize("name", NAMES)
@given(data=st.binary(max_size=300))
def test_every_hash_is_a_deterministic_u32(name: str, data: bytes) -> None:
    fn = TWEMPROXY_HASHES[name]
    value = fn(data)
    assert isinstance(value, int)
    assert 0 <= value < 2**32
    assert fn(bytes(data)) == value


@given(byte_strings)
def test_crc32_is_15_bits(data: bytes) -> None:
    assert crc32(data) < 2**15


# ------------------------------------------------------------------ hash tag

TAG_CASES = [
    (b"user{42}:name", b"{}", b"42"),
    (b"{42}", b"{}", b"42"),
    (b"{}abc", b"{}", b"{}abc"),  # empty tag: whole key
    (b"abc{def", b"{}", b"abc{def"),  # unclosed: whole key
    (b"a}b{c}", b"{}", b"c"),  # a close before the open is ignored
    (b"{a}{b}", b"{}", b"a"),
    (b"x{{y}}", b"{}", b"{y"),
    (b"a{}b{c}", b"{}", b"a{}b{c}"),  # only the first '{' is tried
    (b"{", b"{}", b"{"),
    (b"no tag", b"{}", b"no tag"),
    (b"$x$", b"$$", b"x"),
    (b"$$x$", b"$$", b"$$x$"),
    (b"a$b$c$", b"$$", b"b"),
    (b"{\xff\x80}", b"{}", b"\xff\x80"),
    (b"k", b"", b"k"),
]


@pytest.mark.parametrize(("key", "tag", "hashed"), TAG_CASES)
def test_hash_tag_key(key: bytes, tag: bytes, hashed: bytes) -> None:
    assert hash_tag_key(key, tag) == hashed


@pytest.mark.parametrize("tag", [b"{", b"{}}", b"abc"])
def test_hash_tag_must_be_two_bytes(tag: bytes) -> None:
    with pytest.raises(ConfigError, match="two bytes"):
        hash_tag_key(b"k{1}", tag)


@given(st.binary(max_size=40), st.binary(min_size=2, max_size=2))
def test_hash_tag_result_is_inside_the_key(key: bytes, tag: bytes) -> None:
    hashed = hash_tag_key(key, tag)
    if hashed != key:
        start = key.index(tag[0])
        assert key[start + 1 : start + 1 + len(hashed)] == hashed
        assert key[start + 1 + len(hashed)] == tag[1]
        assert len(hashed) >= 1


# ---------------------------------------------------------------- purity


def test_module_is_pure() -> None:
    tree = ast.parse(Path(twemhash.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    allowed = {
        "__future__",
        "collections",
        "types",
        "typing",
        "hashlib",
        "importlib",
        "struct",
        "zlib",
        "distpat",
    }
    assert imported <= allowed
