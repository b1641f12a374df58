"""The cache's parsers with no sockets and no clock, grouped by the section each follows:
Cache-Control directives (RFC 9111 section 5.2), delta-seconds (1.2.2), Age (5.1) and HTTP dates
(RFC 9110 section 5.6.7), the last checked against the standard library's formatter."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.core.cache_control import (
    DELTA_MAX,
    Directives,
    format_http_date,
    parse_age,
    parse_delta,
    parse_directives,
    parse_http_date,
)


def cc(*lines: bytes) -> Directives:
    return parse_directives(list(lines))


# -- RFC 9111 section 5.2: Cache-Control directives ----------------------------------------------


class TestDirectiveSyntax:
    """Section 5.2: ``token [ "=" ( token / quoted-string ) ]``, comma-separated."""

    @pytest.mark.parametrize(
        ("line", "max_age"),
        [
            (b"max-age=60", 60),
            (b'max-age="60"', 60),  # section 5.2: both argument forms are accepted
            (b"max-age=60 , public", 60),
            (b"  max-age=60,,", 60),
            (b"public,max-age=0", 0),
        ],
    )
    def test_token_and_quoted_arguments(self, line: bytes, max_age: int) -> None:
        """Section 5.2: a delta-seconds argument as a token or a quoted-string."""
        assert cc(line).max_age == max_age

    def test_commas_in_a_quoted_string_split_nothing(self) -> None:
        """Section 5.2: a ``max-age=1`` inside an extension's quoted value is no directive."""
        d = cc(b'community="a, max-age=1, no-store", s-maxage=30')
        assert d.max_age is None
        assert not d.no_store
        assert d.s_maxage == 30

    def test_escapes_in_a_quoted_string(self) -> None:
        """Section 5.2 (RFC 9110 5.6.4): a quoted-pair inside a quoted argument is its character."""
        d = cc(b'private="x-a\\"b, x-c", max-age=5')
        assert d.private_fields == frozenset({b'x-a"b', b"x-c"})
        assert d.max_age == 5

    @pytest.mark.parametrize(
        "line",
        [
            b"max-age=abc",
            b"max-age='60'",  # single quotes are no quoted-string
            b"max-age=-1",
            b"max-age=6.0",
            b"max-age = 60",
            b"max-age=",
            b'max-age="60',  # unterminated
            b"max-age=60x",
            b'max-age="6 0"',
        ],
    )
    def test_an_invalid_argument_counts_as_zero(self, line: bytes) -> None:
        """Section 4.2.1 and 5.2: an invalid freshness directive is the most restrictive, 0."""
        assert cc(line).max_age == 0

    def test_names_are_case_insensitive(self) -> None:
        """Section 5.2: directive names are case-insensitive."""
        d = cc(b"Max-Age=10, NO-STORE, Must-Revalidate, PUBLIC, S-MaxAge=3")
        assert (d.max_age, d.s_maxage) == (10, 3)
        assert d.no_store
        assert d.must_revalidate
        assert d.public

    def test_every_flag(self) -> None:
        """Section 5.2.2: the response directives without arguments."""
        d = cc(b"no-store, public, must-revalidate, proxy-revalidate, must-understand")
        e = cc(b"no-transform, only-if-cached, immutable")
        flags = ("no_store", "public", "must_revalidate", "proxy_revalidate", "must_understand")
        assert all(getattr(d, f) for f in flags)
        assert all(getattr(e, f) for f in ("no_transform", "only_if_cached", "immutable"))

    def test_every_delta(self) -> None:
        """Sections 5.2.1, 5.2.2 and RFC 5861: the directives with delta-seconds."""
        d = cc(b"max-age=1, s-maxage=2, max-stale=3, min-fresh=4, stale-while-revalidate=5, stale-if-error=6")
        assert (d.max_age, d.s_maxage, d.max_stale, d.min_fresh) == (1, 2, 3, 4)
        assert (d.stale_while_revalidate, d.stale_if_error) == (5, 6)

    def test_unknown_extensions_are_ignored(self) -> None:
        """Section 5.2.3: a cache ignores the extensions it does not understand."""
        d = cc(b'foo, bar=baz, qux="a,b"')
        assert d == Directives(present=True)

    def test_absent_and_present_but_empty(self) -> None:
        """Section 5.4: whether any Cache-Control line was there (Pragma counts only without one)."""
        assert not cc().present
        assert cc(b"").present
        assert cc(b"").max_age is None


class TestAnyInput:
    """Section 5.2 and RFC 9110 5.6.7: whatever a peer sends, parsing answers without raising."""

    @given(st.lists(st.binary(max_size=60), max_size=3))
    def test_directives_of_any_bytes(self, lines: list[bytes]) -> None:
        """Section 5.2: a delta is None or within 0..2**31 (1.2.2) for any input."""
        d = parse_directives(lines)
        for value in (d.max_age, d.s_maxage, d.max_stale, d.min_fresh, d.stale_if_error):
            assert value is None or 0 <= value <= DELTA_MAX

    @given(st.binary(max_size=40))
    def test_dates_and_ages_of_any_bytes(self, text: bytes) -> None:
        """RFC 9110 section 5.6.7 and RFC 9111 5.1: None or a value, never an exception."""
        parse_http_date(text)
        age = parse_age([text])
        assert age is None or 0 <= age <= DELTA_MAX

    @given(
        junk=st.text(alphabet=' ,=";\\abc-', max_size=20),
        max_age=st.integers(min_value=0, max_value=10**6),
    )
    def test_a_quoted_extension_hides_nothing_after_it(self, junk: str, max_age: int) -> None:
        """Section 5.2: a quoted-string ends at its closing quote; what follows is parsed."""
        quoted = junk.replace("\\", "\\\\").replace('"', '\\"')
        assert cc(f'ext="{quoted}", max-age={max_age}'.encode()).max_age == max_age


class TestDuplicates:
    """Section 4.2.1: a directive given twice keeps its most restrictive value."""

    @pytest.mark.parametrize(
        ("lines", "max_age"),
        [
            ((b"max-age=60, max-age=10",), 10),
            ((b"max-age=10", b"max-age=60"), 10),  # across lines
            ((b"max-age=abc, max-age=60",), 0),
        ],
    )
    def test_the_smaller_max_age(self, lines: tuple[bytes, ...], max_age: int) -> None:
        """Section 4.2.1: duplicates make the response the most restrictive reading."""
        assert cc(*lines).max_age == max_age

    def test_the_larger_min_fresh(self) -> None:
        """Section 5.2.1.3: for min-fresh the larger value is the stricter."""
        assert cc(b"min-fresh=5, min-fresh=50").min_fresh == 50

    def test_max_stale_with_and_without_a_value(self) -> None:
        """Section 5.2.1.2: max-stale alone accepts any staleness; with a value, that much."""
        assert cc(b"max-stale").max_stale == DELTA_MAX
        assert cc(b"max-stale, max-stale=10").max_stale == 10
        assert cc(b"max-stale=abc").max_stale == 0


class TestQualifiedForms:
    """Sections 5.2.2.4 and 5.2.2.7: ``no-cache="f"`` and ``private="f"`` name fields."""

    def test_qualified_no_cache_names_fields_only(self) -> None:
        """Section 5.2.2.4: a qualified no-cache lets the response be reused without the fields."""
        d = cc(b'no-cache="Set-Cookie, X-Foo"')
        assert not d.no_cache
        assert d.no_cache_fields == frozenset({b"set-cookie", b"x-foo"})

    def test_unqualified_no_cache(self) -> None:
        """Section 5.2.2.4: the unqualified form asks for validation."""
        d = cc(b"no-cache")
        assert d.no_cache
        assert not d.no_cache_fields

    def test_qualified_private(self) -> None:
        """Section 5.2.2.7: private is set by either form; the qualified one names fields."""
        assert cc(b"private").private
        d = cc(b'private="X-User", private=x-other')
        assert d.private
        assert d.private_fields == frozenset({b"x-user", b"x-other"})


# -- RFC 9111 section 1.2.2: delta-seconds ------------------------------------------------------


class TestDeltaSeconds:
    """Section 1.2.2: 1*DIGIT, a value above 2**31 is 2**31."""

    @pytest.mark.parametrize(
        ("text", "value"),
        [
            (b"0", 0),
            (b"0042", 42),
            (b"2147483647", 2**31 - 1),
            (b"2147483648", DELTA_MAX),
            (b"99999999999999999999999", DELTA_MAX),
            (b"", None),
            (b"-1", None),
            (b"+1", None),
            (b"1.5", None),
            (b" 1", None),
            (b"\xd9\xa1", None),  # a non-ASCII digit
        ],
    )
    def test_table(self, text: bytes, value: int | None) -> None:
        """Section 1.2.2: delta-seconds, capped at 2**31."""
        assert parse_delta(text) == value

    def test_the_cap_applies_to_directives(self) -> None:
        """Section 1.2.2: a cache may represent any larger delta as 2**31."""
        assert cc(b"max-age=10000000000000").max_age == DELTA_MAX

    @given(st.integers(min_value=0, max_value=10**40))
    def test_any_digits(self, n: int) -> None:
        """Section 1.2.2: min(n, 2**31) for any non-negative integer."""
        assert parse_delta(str(n).encode()) == min(n, DELTA_MAX)


# -- RFC 9111 section 5.1: Age ------------------------------------------------------------------


class TestAge:
    """Section 5.1: ``Age = delta-seconds``; anything else makes the response stale (None)."""

    @pytest.mark.parametrize(
        ("lines", "value"),
        [
            ([b"0"], 0),
            ([b"7200"], 7200),
            ([b" 30 "], 30),
            ([b"99999999999"], DELTA_MAX),
            ([b"0,7200"], 0),  # two values joined without a space: the first
            ([b"abc"], None),
            ([b"-7200"], None),
            ([b"7200.0"], None),
            ([b"0, 0"], None),
            ([b"1", b"2"], None),  # two lines
            ([b"1;q=2"], None),
            ([b""], None),
            ([], None),
        ],
    )
    def test_table(self, lines: list[bytes], value: int | None) -> None:
        """Section 5.1: one line of digits, else invalid."""
        assert parse_age(lines) == value


# -- RFC 9110 section 5.6.7: HTTP dates ----------------------------------------------------------

EPOCH_1994 = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT


class TestHttpDate:
    """RFC 9110 section 5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms."""

    @pytest.mark.parametrize(
        "text",
        [
            b"Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
            b"Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850
            b"Sun Nov  6 08:49:37 1994",  # asctime
            b"  Sun, 06 Nov 1994 08:49:37 GMT\t",  # optional whitespace around the value
        ],
    )
    def test_the_three_forms(self, text: bytes) -> None:
        """RFC 9110 section 5.6.7: a recipient accepts all three forms."""
        assert parse_http_date(text) == EPOCH_1994

    def test_asctime_with_a_two_digit_day(self) -> None:
        """RFC 9110 section 5.6.7: asctime's day is ``2DIGIT / ( SP DIGIT )``."""
        assert parse_http_date(b"Wed Nov 16 08:49:37 1994") == EPOCH_1994 + 10 * 86400

    def test_rfc850_two_digit_years(self) -> None:
        """RFC 9110 section 5.6.7: a two-digit year is read in a 100-year window from 1970."""
        assert parse_http_date(b"Thursday, 01-Jan-70 00:00:00 GMT") == 0.0
        assert parse_http_date(b"Wednesday, 01-Jan-20 00:00:00 GMT") == 1577836800.0

    @pytest.mark.parametrize(
        "text",
        [
            b"",
            b"0",
            b"yesterday",
            b"Sun, 06 Nov 1994 08:49:37 UTC",  # GMT only
            b"Sun, 06 Nov 1994 08:49:37",
            b"Sun, 6 Nov 1994 08:49:37 GMT",  # day is 2DIGIT
            b"Sun, 06 Nov 94 08:49:37 GMT",  # year is 4DIGIT
            b"Sun, 31 Nov 1994 08:49:37 GMT",  # no 31 November
            b"Sun, 29 Feb 1994 08:49:37 GMT",  # not a leap year
            b"Sun, 06 Foo 1994 08:49:37 GMT",
            b"Xyz, 06 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 24:00:00 GMT",
            b"Sun, 06 Nov 1994 08:60:00 GMT",
            b"Sun, 06 Nov 1994 8:49:37 GMT",
            b"Sun 06 Nov 1994 08:49:37 GMT",
            b"Sunday, 06-Nov-1994 08:49:37 GMT",
            b"Sun Nov 6 08:49:37 1994",  # asctime pads a one-digit day with a space
            b"Sun Nov  16 08:49:37 1994",
            b"Sun, 00 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 0000 08:49:37 GMT",
            b"Sun,  06 Nov 1994 08:49:37 GMT",
        ],
    )
    def test_invalid_dates(self, text: bytes) -> None:
        """RFC 9110 section 5.6.7: any other text is not an HTTP-date (None)."""
        assert parse_http_date(text) is None

    def test_the_epoch(self) -> None:
        """RFC 9110 section 5.6.7: IMF-fixdate of 0 is 1 January 1970, a Thursday."""
        assert format_http_date(0) == b"Thu, 01 Jan 1970 00:00:00 GMT"
        assert format_http_date(EPOCH_1994 + 0.9) == b"Sun, 06 Nov 1994 08:49:37 GMT"

    @given(st.integers(min_value=0, max_value=2**33))
    def test_round_trip_for_any_timestamp(self, seconds: int) -> None:
        """RFC 9110 section 5.6.7: format gives the IMF-fixdate (as email.utils.formatdate does)
        and parse reads it back to the same second."""
        text = format_http_date(seconds)
        assert text == email.utils.formatdate(seconds, usegmt=True).encode()
        assert parse_http_date(text) == float(seconds)

    @given(st.integers(min_value=0, max_value=2**33))
    def test_the_obsolete_forms_of_any_timestamp(self, seconds: int) -> None:
        """RFC 9110 section 5.6.7: the asctime form of any timestamp reads as the same second."""
        stamp = email.utils.formatdate(seconds, usegmt=True)  # "Sun, 06 Nov 1994 08:49:37 GMT"
        day_name, day, month, year, clock, _ = stamp.split(" ")
        asctime = f"{day_name[:-1]} {month} {int(day):2d} {clock} {year}".encode()
        assert parse_http_date(asctime) == float(seconds)

    @given(st.integers(min_value=0, max_value=3155759999))  # to the end of 2069
    def test_the_rfc850_form_of_any_timestamp_in_its_window(self, seconds: int) -> None:
        """RFC 9110 section 5.6.7: the RFC 850 form (two-digit year, read from 1970 to 2069) of any
        timestamp in that window reads as the same second."""
        stamp = email.utils.formatdate(seconds, usegmt=True)
        _, day, month, year, clock, _ = stamp.split(" ")
        weekday = LONG_DAYS[(seconds // 86400 + 3) % 7]  # 1970-01-01 was a Thursday
        rfc850 = f"{weekday}, {day}-{month}-{year[2:]} {clock} GMT".encode()
        assert parse_http_date(rfc850) == float(seconds)


LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
