"""Parsing what a cache reads in a message: ``Cache-Control`` (RFC 9111 section 5.2), HTTP dates
(RFC 9110 section 5.6.7), delta-seconds (RFC 9111 section 1.2.2) and ``Age`` (section 5.1).

Pure and strict where the RFCs are, forgiving where they ask recipients to be:

* a directive is ``token [ "=" ( token / quoted-string ) ]``, names case-insensitive, the list
  split on commas outside quoted strings (a ``max-age=3600`` inside an extension's quoted value
  is no directive); both argument forms are accepted, as section 5.2 asks (``max-age="3600"``),
  but a single-quoted or otherwise malformed argument makes the directive **invalid**, and an
  invalid freshness directive counts as 0 (the most restrictive reading, section 4.2.1);
* a directive given twice (on one line or several) keeps the most restrictive value: the smaller
  ``max-age``, say (section 4.2.1: "either the first occurrence should be used or the response
  should be considered stale");
* delta-seconds larger than 2**31 are 2**31 (section 1.2.2);
* ``Age`` is valid only as one line of digits; anything else (``abc``, ``-7200``, ``7200.0``,
  ``0, 0``, two lines, parameters) makes the response stale, as the conformance suite expects;
* dates: IMF-fixdate, and the obsolete RFC 850 and asctime forms recipients must accept; any
  other text is invalid (an invalid ``Expires`` means already expired, RFC 9111 section 5.3).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DELTA_MAX",
    "Directives",
    "format_http_date",
    "parse_age",
    "parse_delta",
    "parse_directives",
    "parse_http_date",
]

DELTA_MAX = 2**31
"""The largest delta-seconds a cache needs to represent (RFC 9111 section 1.2.2)."""

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_INVALID = -1  # a directive present with an argument that is not delta-seconds


@dataclass(frozen=True, slots=True)
class Directives:
    """The Cache-Control directives of a request or a response (RFC 9111 section 5.2).

    A delta-seconds directive is None when absent, ``0`` when present but invalid. ``max_stale``
    without a value is :data:`DELTA_MAX` (any staleness). ``no_cache_fields`` and
    ``private_fields`` are the qualified forms' field names (lowercase); ``private`` is True for
    either form, ``no_cache`` for the unqualified one only (a qualified ``no-cache="f"`` lets the
    response be reused without ``f``, section 5.2.2.4).
    """

    max_age: int | None = None
    s_maxage: int | None = None
    max_stale: int | None = None
    min_fresh: int | None = None
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    no_store: bool = False
    no_cache: bool = False
    no_cache_fields: frozenset[bytes] = frozenset()
    private: bool = False
    private_fields: frozenset[bytes] = frozenset()
    public: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    no_transform: bool = False
    only_if_cached: bool = False
    immutable: bool = False
    present: bool = False
    """Some Cache-Control line was there (a request's Pragma counts only without one, section 5.4)."""


EMPTY = Directives()


def parse_delta(text: bytes) -> int | None:
    """delta-seconds: 1*DIGIT, capped at 2**31; None when ``text`` is not that."""
    if not text or not text.isdigit():
        return None
    value = int(text)
    return value if value < DELTA_MAX else DELTA_MAX


def _split(value: bytes) -> list[tuple[bytes, bytes | None, bool]]:
    """The elements of a comma-separated list of ``name[=arg]``: (lowercase name, argument or
    None, valid). A quoted argument is unquoted (``\\x`` is ``x``); commas inside it split nothing."""
    out: list[tuple[bytes, bytes | None, bool]] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in b" \t,":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and value[i] in _TCHAR:
            i += 1
        name = value[start:i].lower()
        arg: bytes | None = None
        valid = bool(name)
        if i < n and value[i] == 0x3D:  # "="
            i += 1
            if i < n and value[i] == 0x22:  # a quoted-string
                i += 1
                chars = bytearray()
                closed = False
                while i < n:
                    c = value[i]
                    if c == 0x5C and i + 1 < n:
                        chars.append(value[i + 1])
                        i += 2
                        continue
                    if c == 0x22:
                        closed = True
                        i += 1
                        break
                    chars.append(c)
                    i += 1
                arg = bytes(chars)
                valid = valid and closed
            else:
                start = i
                while i < n and value[i] in _TCHAR:
                    i += 1
                arg = value[start:i]
                valid = valid and bool(arg)
        # anything else before the next comma (spaces around "=", stray characters) spoils it
        j = i
        while j < n and value[j] in b" \t":
            j += 1
        if j < n and value[j] != 0x2C:
            valid = False
            while j < n and value[j] != 0x2C:
                if value[j] == 0x22:  # skip a quoted part so its commas split nothing
                    j += 1
                    while j < n and value[j] != 0x22:
                        j += 2 if value[j] == 0x5C else 1
                j += 1
        i = j
        if name:
            out.append((name, arg, valid))
    return out


def _fields(arg: bytes | None) -> frozenset[bytes]:
    if not arg:
        return frozenset()
    return frozenset(part.strip().lower() for part in arg.split(b",") if part.strip())


_DELTAS = {
    b"max-age": "max_age",
    b"s-maxage": "s_maxage",
    b"max-stale": "max_stale",
    b"min-fresh": "min_fresh",
    b"stale-while-revalidate": "stale_while_revalidate",
    b"stale-if-error": "stale_if_error",
}
_FLAGS = {
    b"no-store": "no_store",
    b"public": "public",
    b"must-revalidate": "must_revalidate",
    b"proxy-revalidate": "proxy_revalidate",
    b"must-understand": "must_understand",
    b"no-transform": "no_transform",
    b"only-if-cached": "only_if_cached",
    b"immutable": "immutable",
}
# For min-fresh the larger value is the more restrictive; for the others the smaller.
_LARGER_IS_STRICTER = frozenset({"min_fresh"})


def parse_directives(lines: Iterable[bytes]) -> Directives:
    """The directives of every ``Cache-Control`` line given (in order), as one list."""
    values: dict[str, object] = {}
    present = False
    for line in lines:
        present = True
        for name, arg, valid in _split(line):
            attr = _DELTAS.get(name)
            if attr is not None:
                if attr == "max_stale" and arg is None and valid:
                    number: int = DELTA_MAX
                else:
                    parsed = parse_delta(arg) if valid and arg is not None else None
                    number = parsed if parsed is not None else 0  # invalid: the strictest
                old = values.get(attr)
                if isinstance(old, int):
                    number = max(old, number) if attr in _LARGER_IS_STRICTER else min(old, number)
                values[attr] = number
                continue
            attr = _FLAGS.get(name)
            if attr is not None:
                values[attr] = True
            elif name == b"no-cache":
                if not arg:
                    values["no_cache"] = True
                else:
                    values["no_cache_fields"] = _fields(arg) | values.get("no_cache_fields", frozenset())  # type: ignore[operator]
            elif name == b"private":
                values["private"] = True
                if arg:
                    values["private_fields"] = _fields(arg) | values.get("private_fields", frozenset())  # type: ignore[operator]
    if not present:
        return EMPTY
    return Directives(present=True, **values)  # type: ignore[arg-type]


def parse_age(lines: list[bytes]) -> int | None:
    """``Age``: one line of delta-seconds, else None (the response is then treated as stale).

    A line of comma-separated digits without spaces (``0,7200``, two values a careless proxy
    joined) counts as its first value, as the conformance suite expects; any other list (``0, 0``),
    two lines, a sign, a fraction or a parameter is invalid."""
    if len(lines) != 1:
        return None
    parts = lines[0].strip(b" \t").split(b",")
    if not all(part.isdigit() for part in parts):
        return None
    return parse_delta(parts[0])


_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_LONG_DAYS = (b"Monday", b"Tuesday", b"Wednesday", b"Thursday", b"Friday", b"Saturday", b"Sunday")
_MONTHS = {
    m: i
    for i, m in enumerate(
        (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"), 1
    )
}


def _clock(text: bytes) -> tuple[int, int, int] | None:
    if len(text) != 8 or text[2] != 0x3A or text[5] != 0x3A:
        return None
    h, m, s = text[0:2], text[3:5], text[6:8]
    if not (h.isdigit() and m.isdigit() and s.isdigit()):
        return None
    hour, minute, second = int(h), int(m), int(s)
    if hour > 23 or minute > 59 or second > 60:
        return None
    return hour, minute, second


def _epoch(year: int, month: int, day: int, clock: tuple[int, int, int]) -> float | None:
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    return float(calendar.timegm((year, month, day, *clock, 0, 0, 0)))


def parse_http_date(value: bytes) -> float | None:
    """An HTTP-date (RFC 9110 section 5.6.7) as Unix seconds, or None when it is not one."""
    text = value.strip(b" \t")
    parts = text.split(b" ")
    try:
        if len(parts) == 6 and parts[0][:-1] in _DAYS and parts[0].endswith(b",") and parts[5] == b"GMT":
            # IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
            day, month, year = parts[1], parts[2], parts[3]
            if len(day) != 2 or not day.isdigit() or len(year) != 4 or not year.isdigit():
                return None
            clock = _clock(parts[4])
            if clock is None or month not in _MONTHS:
                return None
            return _epoch(int(year), _MONTHS[month], int(day), clock)
        if len(parts) == 4 and parts[0].endswith(b",") and parts[0][:-1] in _LONG_DAYS and parts[3] == b"GMT":
            # RFC 850: Sunday, 06-Nov-94 08:49:37 GMT (a two-digit year 50 years ahead or more is the past)
            pieces = parts[1].split(b"-")
            if len(pieces) != 3 or len(pieces[0]) != 2 or len(pieces[2]) != 2:
                return None
            if not pieces[0].isdigit() or not pieces[2].isdigit() or pieces[1] not in _MONTHS:
                return None
            clock = _clock(parts[2])
            if clock is None:
                return None
            short = 1900 + int(pieces[2])
            short = short + 100 if short < 1970 else short
            return _epoch(short, _MONTHS[pieces[1]], int(pieces[0]), clock)
        parts = text.split(b" ")
        if len(parts) in (5, 6) and parts[0] in _DAYS:
            # asctime: Sun Nov  6 08:49:37 1994 (the day padded with a space)
            if len(parts) == 6:
                if parts[2] != b"":
                    return None
                parts = [parts[0], parts[1], parts[3], parts[4], parts[5]]
                if len(parts[2]) != 1:
                    return None
            elif len(parts[2]) != 2:
                return None
            month, day, clock_text, year = parts[1], parts[2], parts[3], parts[4]
            if month not in _MONTHS or not day.isdigit() or len(year) != 4 or not year.isdigit():
                return None
            clock = _clock(clock_text)
            if clock is None:
                return None
            return _epoch(int(year), _MONTHS[month], int(day), clock)
    except (ValueError, OverflowError):
        return None
    return None


def _civil(days: int) -> tuple[int, int, int]:
    """Days since 1970-01-01 -> (year, month, day), proleptic Gregorian (H. Hinnant's algorithm)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


_MONTH_NAMES = tuple(_MONTHS)


def format_http_date(seconds: float) -> bytes:
    """Unix seconds as an IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``)."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    year, month, day = _civil(days)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[(days + 3) % 7],  # 1970-01-01 was a Thursday
        day,
        _MONTH_NAMES[month - 1],
        year,
        rest // 3600,
        rest // 60 % 60,
        rest % 60,
    )
