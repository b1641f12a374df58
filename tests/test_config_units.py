"""Sizes and durations as nginx writes them (distpat.config.units): property tests of the pure parsers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpat.config.units import DURATION_UNITS, SIZE_UNITS, parse_duration, parse_size

counts = st.integers(min_value=0, max_value=10**12)


@given(counts, st.sampled_from(sorted(SIZE_UNITS)), st.booleans())
def test_a_size_is_its_number_times_its_unit(n: int, unit: str, upper: bool) -> None:
    text = f"{n}{unit.upper() if upper else unit}"
    assert parse_size(text) == n * SIZE_UNITS[unit]


@given(counts, counts)
def test_sizes_are_monotonic_in_number_and_unit(a: int, b: int) -> None:
    low, high = sorted((a, b))
    for unit in SIZE_UNITS:
        assert parse_size(f"{low}{unit}") <= parse_size(f"{high}{unit}")
    assert parse_size(f"{high}k") <= parse_size(f"{high}m") <= parse_size(f"{high}g")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("65536", 65536),
        ("64k", 65536),
        ("64K", 65536),
        ("1m", 1 << 20),
        ("1g", 1 << 30),
        ("64MB", 64 << 20),
        ("64MiB", 64 << 20),
        ("1kb", 1 << 10),
        ("1KiB", 1 << 10),
    ],
)
def test_nginx_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    "text", ["", "1.9", "-1", "+1", "1 k", "1b", "1 MB", "1kbb", "1t", "k", "1e3", "0x10", " 1", "\u0661"]
)
def test_what_is_not_a_size_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(sorted(DURATION_UNITS)))
def test_a_duration_is_its_number_times_its_unit(n: int, unit: str) -> None:
    assert parse_duration(f"{n}{unit}") == pytest.approx(n * DURATION_UNITS[unit])


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["s", "ms"]))
def test_a_bare_number_is_in_the_default_unit(n: int, unit: str) -> None:
    assert parse_duration(str(n), unit) == pytest.approx(n * DURATION_UNITS[unit])


@given(st.lists(st.integers(min_value=0, max_value=999), min_size=1, max_size=5), st.booleans())
def test_parts_in_decreasing_units_add_up(numbers: list[int], spaced: bool) -> None:
    units = ["d", "h", "m", "s", "ms"][-len(numbers) :]
    text = (" " if spaced else "").join(f"{n}{u}" for n, u in zip(numbers, units, strict=True))
    expected = sum(n * DURATION_UNITS[u] for n, u in zip(numbers, units, strict=True))
    assert math.isclose(parse_duration(text), expected, rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10", 10),
        ("0.5", 0.5),
        ("500ms", 0.5),
        ("10s", 10),
        ("1m", 60),
        ("1h", 3600),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("1m30", 90),
        ("1.5s", 1.5),
        ("2d", 172800),
    ],
)
def test_nginx_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", " ", "-1", "1x", "s", "1s1h", "1s 1s", "30 1m", "1 s", "1e3", "nan", "inf", "1..5", "1y"]
)
def test_what_is_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.text(max_size=12))
def test_any_text_is_a_duration_or_a_value_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError:
        return
    assert math.isfinite(value)
    assert value >= 0
