"""Percentage splits that send each key where nginx's ``split_clients`` would.

A split divides traffic between variants by share ("10% to the new build, the
rest to the old one"), keyed so that one user, cookie or address always lands
in the same variant. distpat reproduces nginx's ``split_clients`` block
(``src/http/modules/ngx_http_split_clients_module.c``), so a split moved
between nginx and distpat keeps every key where it was.

How nginx does it, in short:

* **Percentages.** Each line is ``<percent>% <value>`` or ``* <value>``. The
  number goes through ``ngx_atofp(text, len, 2)`` (``src/core/ngx_string.c``):
  ASCII digits with at most one dot and at most two digits after it, read as a
  whole number of hundredths of a percent (``"10.5"`` is 1050, ``"0.01"`` is
  1, ``"5."`` is 500). Zero, signs, exponents and a third decimal are refused.
* **Boundaries.** At configuration time the lines are walked in order with a
  running total in hundredths. ``*`` sets the total to 10000; a total over
  10000 is an error. A line whose total reaches exactly 10000 (``*``, or a
  last explicit share) catches every hash that is left. Any other line gets an
  exclusive upper boundary: the previous line's boundary plus
  ``percent * 0xFFFFFFFF // 10000``, computed in 64 bits. Each line's share is
  rounded down on its own and the rounded shares are added, so a boundary is
  the sum of floors, not the floor of the running percentage.
* **Lookup.** Per request nginx hashes the evaluated key (the raw bytes of
  the string, for ``$arg_k`` still percent-encoded) with MurmurHash2
  (``src/core/ngx_murmurhash.c``, seed 0) and takes the first line with
  ``hash < boundary``, or the catch-all line. When the lines total less than
  100% and there is no ``*``, the hashes above the last boundary get an empty
  value.

Two deliberate differences, both refusals at configuration time: a router
must send every request somewhere, so shares under 100% without ``*`` are an
error here; and ``*`` given twice, ``*`` before another line, or ``*`` after
lines that already reach 100% (accepted by nginx as an unreachable line) are
refused too. One version note: nginx before 1.31.2 (commit "Split clients:
improved calculation of range boundaries") did not make an explicit last share
that reaches 100% catch the rest; it kept its rounded boundary, so the top
hash values (0xFFFFFFFF at least, one more per line from rounding) got the
empty value. distpat routes them to that last line, as ``*`` does and as
current nginx does.

A variant name may appear on several lines: each line is its own bucket (as in
nginx), and a lookup returns the line's name. :attr:`SplitTable.names` lists
the distinct names in first-appearance order.

:func:`mirrored` picks keys for shadow traffic with the same 0.01% resolution,
from a second mixing of the key's hash (see there), so the mirrored keys are
spread evenly over the variants.

Everything here is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from distpat.errors import ConfigError

__all__ = [
    "HUNDREDTHS",
    "CachedSplit",
    "SplitTable",
    "format_hundredths",
    "mirrored",
    "mirrored_for_hash",
    "murmur2",
    "parse_percent",
]

#: A whole split in nginx's unit, hundredths of a percent (100% = 10000).
HUNDREDTHS: Final = 10000
#: One past the largest 32-bit hash: the exclusive boundary of the catch-all bucket.
_HASH_SPACE: Final = 1 << 32
_MASK: Final = 0xFFFFFFFF
_M: Final = 0x5BD1E995

# unpack_from of the first 4*n bytes as n little-endian words, for n = 1..64 (keys up to 256 bytes);
# longer keys are read with struct.iter_unpack.
_WORD_READERS: Final[tuple[Callable[[bytes], tuple[int, ...]], ...]] = tuple(
    struct.Struct(f"<{n}I").unpack_from for n in range(65)
)


def _long_words(data: bytes, end: int) -> Iterator[int]:
    for (k,) in struct.iter_unpack("<I", memoryview(data)[:end]):
        yield k


def murmur2(data: bytes) -> int:
    """nginx's ``ngx_murmur_hash2``: 32-bit MurmurHash2 with seed 0, as on little-endian x86-64.

    The state starts as the length; each 4-byte block is read little-endian, and
    the 1-3 tail bytes are unsigned (``u_char``, never sign-extended).
    """
    n = len(data)
    h = n & _MASK
    end = n & ~3
    if end:
        words = _WORD_READERS[end >> 2](data) if end <= 256 else _long_words(data, end)
        for k in words:
            k = (k * _M) & _MASK
            # the low 32 bits of an xor depend only on the low 32 bits of its operands,
            # so one mask after it does for both products.
            h = ((h * _M) ^ ((k ^ (k >> 24)) * _M)) & _MASK
    rem = n & 3
    if rem:
        if rem == 3:
            h ^= data[end + 2] << 16
        if rem >= 2:
            h ^= data[end + 1] << 8
        h = ((h ^ data[end]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def format_hundredths(value: int) -> str:
    """``1050`` -> ``"10.5"``, ``1`` -> ``"0.01"``, ``10000`` -> ``"100"`` (no ``%`` sign)."""
    whole, frac = divmod(value, 100)
    return f"{whole}.{frac:02d}".rstrip("0").rstrip(".") if frac else str(whole)


def parse_percent(text: str) -> int:
    """A share as nginx's ``ngx_atofp(text, len, 2)`` reads it, in hundredths of a percent (1..10000).

    ``text`` is digits with at most one dot and two decimals, with or without a
    trailing ``%``: ``"10"``, ``"10.5%"``, ``"0.01"``, ``".5"``, ``"5."``.
    ConfigError for anything else, for zero and for more than 100%.
    """
    body = text[:-1] if text.endswith("%") else text
    whole, _, frac = body.partition(".")
    digits = whole + frac
    if not digits or not digits.isascii() or not digits.isdigit():
        raise ConfigError(
            f"percentage {text!r} is not a number with up to two decimals (such as 10, 10.5 or 0.01) or '*'"
        )
    if len(frac) > 2:
        raise ConfigError(
            f"percentage {text!r} has more than two decimals: splits are counted in steps of 0.01%, "
            "as nginx's split_clients counts them"
        )
    value = int(whole or "0") * 100 + int(frac.ljust(2, "0"))
    if value == 0:
        raise ConfigError(f"percentage {text!r} is zero: a share must be above 0%")
    if value > HUNDREDTHS:
        raise ConfigError(f"percentage {text!r} is over 100%")
    return value


@dataclass(frozen=True, slots=True)
class SplitTable:
    """A split as nginx's ``split_clients`` evaluates it: one bucket per line, in order.

    ``shares`` is ``(name, hundredths)`` per line, every share above zero and
    the shares totalling exactly 10000; the last line catches whatever hash
    values the rounded boundaries leave. Build one from configuration text with
    :meth:`from_variants`.
    """

    shares: tuple[tuple[str, int], ...]
    #: ``(name, boundary)`` per line: a key whose hash is below ``boundary`` (and not below the previous
    #: line's) goes to ``name``. The last line's boundary is 2**32 (nginx stores 0, "the rest").
    buckets: tuple[tuple[str, int], ...] = field(init=False, compare=False)
    #: The distinct variant names in first-appearance order.
    names: tuple[str, ...] = field(init=False, compare=False)
    _bounds: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _values: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shares = tuple(self.shares)
        if not shares:
            raise ConfigError("split: no variants given; a split needs at least one line")
        total = 0
        for name, hundredths in shares:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"split: variant name {name!r} must be a non-empty string")
            if type(hundredths) is not int or not 0 < hundredths <= HUNDREDTHS:
                raise ConfigError(
                    f"split variant {name!r}: share {hundredths!r} must be a whole number of hundredths "
                    "of a percent, from 1 (0.01%) to 10000 (100%)"
                )
            total += hundredths
        if total != HUNDREDTHS:
            raise ConfigError(
                f"split: the shares total {format_hundredths(total)}%; they must total exactly 100%"
            )
        bounds: list[int] = []
        last = 0
        for _, hundredths in shares[:-1]:
            last += hundredths * 0xFFFFFFFF // HUNDREDTHS
            bounds.append(last)
        values = tuple(name for name, _ in shares)
        object.__setattr__(self, "shares", shares)
        object.__setattr__(self, "_bounds", tuple(bounds))
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "buckets", tuple(zip(values, [*bounds, _HASH_SPACE], strict=True)))
        object.__setattr__(self, "names", tuple(dict.fromkeys(values)))

    @classmethod
    def from_variants(cls, pairs: Iterable[tuple[str, str]]) -> SplitTable:
        """A table from ``(name, percent_text)`` lines, in order, as a ``split_clients`` block.

        ``percent_text`` is read by :func:`parse_percent`, or is ``"*"`` for
        the rest (only on the last line). ConfigError, naming the line, for a
        bad percentage, a total over 100%, a misplaced or repeated ``*``, and a
        total under 100% without ``*``.
        """
        lines = list(pairs)
        if not lines:
            raise ConfigError("split: no variants given; a split needs at least one line")
        stars = [name for name, text in lines if text == "*"]
        if len(stars) > 1:
            raise ConfigError(
                f"split: '*' (the rest) is given twice, for variants {stars[0]!r} and {stars[1]!r}; "
                "only the last line may take the rest"
            )
        shares: list[tuple[str, int]] = []
        total = 0
        for i, (name, text) in enumerate(lines):
            if text == "*":
                after = len(lines) - 1 - i
                if after:
                    raise ConfigError(
                        f"split variant {name!r}: '*' (the rest) must be the last line, "
                        f"but {after} more line{'s' if after > 1 else ''} follow{'' if after > 1 else 's'} it"
                    )
                if total == HUNDREDTHS:
                    raise ConfigError(
                        f"split variant {name!r}: '*' would get no traffic, "
                        "the lines before it already total 100%"
                    )
                shares.append((name, HUNDREDTHS - total))
                total = HUNDREDTHS
                continue
            try:
                hundredths = parse_percent(text)
            except ConfigError as e:
                raise ConfigError(f"split variant {name!r}: {e}") from None
            total += hundredths
            if total > HUNDREDTHS:
                raise ConfigError(
                    f"split: the percentages total {format_hundredths(total)}% by variant {name!r}, over 100%"
                )
            shares.append((name, hundredths))
        if total < HUNDREDTHS:
            missing = format_hundredths(HUNDREDTHS - total)
            raise ConfigError(
                f"split: the percentages total {format_hundredths(total)}%, under 100%, and no line is '*'. "
                f"nginx's split_clients would leave the other {missing}% of requests with an empty value, "
                "but a router must send every request to a variant: add a last line '* <variant>' "
                "or make the percentages total 100%"
            )
        return cls(tuple(shares))

    def variant(self, key: bytes) -> str:
        """The variant of ``key``: the first bucket whose boundary is above ``murmur2(key)``."""
        return self._values[bisect_right(self._bounds, murmur2(key))]

    def variant_for_hash(self, key_hash: int) -> str:
        """The variant of a key whose :func:`murmur2` is ``key_hash`` (0 <= key_hash < 2**32)."""
        return self._values[bisect_right(self._bounds, key_hash)]


# murmur3's 32-bit finalizer, and the constant xored in before it (2**32 / golden ratio).
_MIRROR_SALT: Final = 0x9E3779B9


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    return h ^ (h >> 16)


def mirrored_for_hash(key_hash: int, percent_hundredths: int) -> bool:
    """:func:`mirrored` for a key whose :func:`murmur2` is already known (``key_hash``)."""
    if not 0 <= percent_hundredths <= HUNDREDTHS:
        raise ConfigError(
            f"mirror share {percent_hundredths!r} must be from 0 to 10000 hundredths of a percent"
        )
    return _fmix32(key_hash ^ _MIRROR_SALT) * HUNDREDTHS < percent_hundredths << 32


def mirrored(key: bytes, percent_hundredths: int) -> bool:
    """Whether ``key`` is among the ``percent_hundredths`` / 100 percent of keys chosen for shadow traffic.

    Deterministic per key, in steps of 0.01% (0: never, 10000: always). The
    choice is a second mixing of the split's own hash, not a new hash of the
    key: ``murmur2(key)`` xored with ``0x9E3779B9`` goes through murmur3's
    32-bit finalizer (``fmix32``: xor-shifts and two odd multiplications, a
    bijection in which every input bit reaches every output bit), and the key is
    mirrored when that value is below ``percent_hundredths / 10000`` of 2**32.
    A split sorts keys by the hash's magnitude; after the finalizer that
    magnitude says nothing about the mirror's, so within every variant about
    the same share of keys is mirrored. (Keys whose murmur2 collide share both
    choices.) A caller that already has the hash uses :func:`mirrored_for_hash`.
    """
    return mirrored_for_hash(murmur2(key), percent_hundredths)


class CachedSplit:
    """A :class:`SplitTable` with a bounded memo of recent keys, for the per-request hot path.

    A repeated key costs one dict lookup. The memo holds at most
    ``max_entries`` keys and is emptied when full (bounded memory, no
    bookkeeping per hit); keys longer than ``max_key_bytes`` are never stored.
    """

    __slots__ = ("table", "max_entries", "max_key_bytes", "_memo")

    def __init__(self, table: SplitTable, *, max_entries: int = 4096, max_key_bytes: int = 256) -> None:
        if max_entries < 1:
            raise ConfigError(f"split memo: max_entries must be at least 1, not {max_entries!r}")
        if max_key_bytes < 0:
            raise ConfigError(f"split memo: max_key_bytes must be at least 0, not {max_key_bytes!r}")
        self.table = table
        self.max_entries = max_entries
        self.max_key_bytes = max_key_bytes
        self._memo: dict[bytes, str] = {}

    def __repr__(self) -> str:
        return (
            f"<CachedSplit {len(self._memo)}/{self.max_entries} keys cached, names={list(self.table.names)}>"
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The table's distinct variant names in first-appearance order."""
        return self.table.names

    @property
    def cached(self) -> int:
        """How many keys the memo holds now."""
        return len(self._memo)

    def variant(self, key: bytes) -> str:
        """``table.variant(key)``, from the memo when ``key`` was seen since the memo was last emptied."""
        if len(key) > self.max_key_bytes:
            return self.table.variant(key)
        memo = self._memo
        name = memo.get(key)
        if name is None:
            name = self.table.variant(key)
            if len(memo) >= self.max_entries:
                memo.clear()
            memo[key] = name
        return name

    def clear(self) -> None:
        """Empty the memo."""
        self._memo.clear()
