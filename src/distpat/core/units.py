"""Sizes as operators write them: ``65536``, ``64k``, ``1m``, ``2g`` (nginx), ``64MB``, ``64MiB``.

Pure, shared by the configuration layer (:mod:`distpat.config.units`) and the aiohttp driver. A
size is a whole number of bytes, optionally followed by ``k``, ``m`` or ``g`` in either case,
which may be followed by ``B`` or ``iB``: binary multiples in every spelling, as nginx's
``client_max_body_size 1m`` and Varnish's ``-s malloc,64M`` mean them (``64MB`` is 64 MiB here,
as it is to Varnish).
"""

from __future__ import annotations

import re

__all__ = ["SIZE_UNITS", "parse_size"]

SIZE_UNITS: dict[str, int] = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
"""Multiplier of each size suffix (lower case; upper case is the same)."""

_SIZE = re.compile(r"([0-9]+)(?:([kKmMgG])(?:[iI]?[bB])?)?")


def parse_size(text: str) -> int:
    """Bytes in ``text`` (``65536``, ``64k``, ``1M``, ``2g``, ``64MB``, ``512KiB``).

    Raises:
        ValueError: anything else (a fraction, a sign, another unit, spaces).
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size (bytes, or a number with k, m or g, such as 64m or 64MB): {text!r}")
    return int(match[1]) * SIZE_UNITS[(match[2] or "").lower()]
