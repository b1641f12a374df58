"""What stages change in a forwarded message, and the fields they read, captured.

The one-pass forwarders (:mod:`distpat.core.forward`) serialise a head once; a stage's
:class:`~distpat.core.stage.Forward` (fields added or dropped, a new target) and
:class:`~distpat.core.stage.Amend` (response fields) are applied to those bytes here, so a
stage that only routes and adds fields keeps the one-pass form. The values of the fields a
pipeline reads (``Stage.reads``) are collected here too, in the forwarder's pass or, on the
general path, by :func:`capture_fields`.
"""

from __future__ import annotations

from collections.abc import Sequence

from distpat.core.framing import _OWS, Headers

__all__ = ["amend_head", "capture_fields", "capture_known", "keep_field"]

_NO_FIELDS: frozenset[bytes] = frozenset()


def _lines(fields: Sequence[tuple[bytes, bytes]]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in fields)


def keep_field(fields: dict[bytes, bytes], lower: bytes, value: bytes) -> None:
    """One captured field line: repeated fields are joined as one list value (RFC 9110 section
    5.3), Cookie lines with ``; `` (RFC 6265 section 5.4)."""
    value = value.strip(_OWS)
    before = fields.get(lower)
    if before is None:
        fields[lower] = value
    elif value:
        fields[lower] = before + (b"; " if lower == b"cookie" else b", ") + value


def capture_known(
    fields: dict[bytes, bytes],
    capture: frozenset[bytes],
    host: bytes | None,
    xff: bytes | None,
    via: bytes | None,
) -> None:
    """The captured fields the pass reads for itself (they keep their own kind in the table)."""
    for lower, value in ((b"host", host), (b"x-forwarded-for", xff), (b"via", via)):
        if value is not None and lower in capture:
            fields[lower] = value


def capture_fields(headers: Headers, capture: frozenset[bytes]) -> dict[bytes, bytes]:
    """The values of the ``capture`` names in ``headers`` (every field's with ``*`` among them), as
    :meth:`RequestForwarder.forward` captures them (for the general path)."""
    fields: dict[bytes, bytes] = {}
    every = b"*" in capture
    for name, value in headers:
        lower = name.lower()
        if every or lower in capture:
            keep_field(fields, lower, value)
    return fields


def amend_head(
    head: bytes,
    *,
    target: bytes | None = None,
    add: Sequence[tuple[bytes, bytes]] = (),
    drop: frozenset[bytes] = _NO_FIELDS,
) -> bytes:
    """A serialised head with its target replaced (a request's), fields named in ``drop``
    (lowercase) removed and ``add`` appended before the blank line. The values come from
    stages, which checked them (distpat.core.stage); framing fields are never dropped here."""
    if target is not None:
        line_end = head.index(b"\r\n")
        method_end = head.index(b" ")
        version = head.rindex(b" ", 0, line_end)
        head = head[: method_end + 1] + target + head[version:]
    if drop:
        lines = head[:-4].split(b"\r\n")
        kept = [lines[0]]
        for line in lines[1:]:
            lower = line.partition(b":")[0].strip(_OWS).lower()
            if lower not in drop or lower in (b"content-length", b"transfer-encoding"):
                kept.append(line)
        head = b"\r\n".join(kept) + b"\r\n\r\n"
    if add:
        head = head[:-2] + _lines(add) + b"\r\n"
    return head
