"""Sizes and durations as nginx writes them: ``64k``, ``1m``, ``1g``; ``500ms``, ``10s``, ``1m``, ``1h``.

Pure functions of text, used alike for flags, ``DISTPAT_*`` variables and
TOML strings. A size is a whole number of bytes, optionally followed by
``k``, ``m`` or ``g`` (binary multiples, either case: nginx's
``client_max_body_size 1m`` is 1,048,576 bytes), which may be followed by
``B`` or ``iB`` (``64MB``: 64 MiB, as Varnish means it); see
:mod:`distpat.core.units`. A duration is one or more
``NUMBER[UNIT]`` parts in decreasing units (``1h30m``, ``1m 30s``), with
units ``ms``, ``s``, ``m``, ``h``, ``d``; a number without a unit is in the
option's default unit (seconds for the proxy's timeouts, milliseconds for
twemproxy's ``timeout``). Unlike nginx a part may have a decimal fraction
(``0.5`` or ``1.5s``), as the options always accepted.
"""

from __future__ import annotations

import math
import re

from distpat.core.units import SIZE_UNITS, parse_size

__all__ = ["DURATION_UNITS", "SIZE_UNITS", "parse_duration", "parse_size"]

DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
"""Seconds in each duration unit."""

_PART = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)?")


def parse_duration(text: str, default_unit: str = "s") -> float:
    """Seconds in ``text`` (``10``, ``0.5``, ``500ms``, ``1m30s``, ``1h 30m``).

    A number without a unit is in ``default_unit``; a unit may appear once, larger ones first.

    Raises:
        ValueError: an empty text, a negative or non-finite number, an unknown or repeated unit.
    """
    pos, total, last = 0, 0.0, math.inf
    stripped = text.strip()
    if not stripped:
        raise ValueError("an empty duration")
    while pos < len(stripped):
        match = _PART.match(stripped, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"not a duration (such as 10s, 500ms, 1m, 1h): {text!r}")
        unit = match[2] or default_unit
        scale = DURATION_UNITS[unit]
        if scale >= last:
            raise ValueError(f"not a duration: units must be given once, larger first: {text!r}")
        if match[2] is None and match.end() != len(stripped):
            raise ValueError(f"not a duration: only the last part may leave out its unit: {text!r}")
        last = scale
        total += float(match[1]) * scale
        pos = match.end()
    if not math.isfinite(total):
        raise ValueError(f"not a finite duration: {text!r}")
    return total
