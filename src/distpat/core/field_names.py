"""What field names mean to the one-pass forwarders (:mod:`distpat.core.forward`), remembered.

Each pass sorts a field by one small integer: copied as is (``_COPY``), dropped (``_HOP``), or
one of the fields the pass rewrites. A :class:`_NameTable` holds the meaning of the known
lowercase names and a memo of the names as they were seen, shared by the forwarders with the
same dropped fields, so that a name met before costs one dictionary lookup and no lowercasing.
The memo is bounded (names of at most :data:`MEMO_NAME_BYTES` bytes, :data:`MEMO_NAMES` names),
so a client sending endless new names costs time, not memory.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Final

from distpat.core.fields import HOP_BY_HOP

__all__ = ["MEMO_NAMES", "MEMO_NAME_BYTES"]

MEMO_NAMES: Final = 1024
"""Field names a forwarder remembers the meaning of (beyond the ones it knows from the start)."""
MEMO_NAME_BYTES: Final = 64
"""Longer field names are looked up lowercased every time, never remembered."""

# What each field name means to a pass; names absent from a table are copied as they are (_COPY).
_COPY, _HOP, _CONNECTION, _FRAMING, _HOST, _XFF, _VIA, _XF_SET, _FORWARDED, _EXPECT, _LENGTH, _CAPTURE = (
    range(12)
)
# _CAPTURE: copied as _COPY is, and its value kept for the pipeline's stages (Stage.reads)
_REQUEST_FIELDS: Final[dict[bytes, int]] = {
    **dict.fromkeys(HOP_BY_HOP, _HOP),
    b"connection": _CONNECTION,
    b"transfer-encoding": _FRAMING,
    b"content-length": _FRAMING,
    b"host": _HOST,
    b"x-forwarded-for": _XFF,
    b"via": _VIA,
    b"x-forwarded-proto": _XF_SET,
    b"x-forwarded-host": _XF_SET,
    b"forwarded": _FORWARDED,
    b"expect": _EXPECT,
}
_RESPONSE_FIELDS: Final[dict[bytes, int]] = {
    **dict.fromkeys(HOP_BY_HOP, _HOP),
    b"connection": _CONNECTION,
    b"transfer-encoding": _FRAMING,
    b"content-length": _LENGTH,
    b"via": _VIA,
}


log = logging.getLogger("distpat.proxy")


class _NameTable:
    """What field names mean: the known lowercase names, and a memo of names as seen (shared, bounded).

    Without ``underscores``, a name with ``_`` in it is dropped (nginx's ``underscores_in_headers
    off``): CGI and WSGI map ``-`` and ``_`` alike to ``_``, so ``X_Client_Cert`` would reach such a
    service as the ``X-Client-Cert`` the proxy controls. The decision is memoised with the name.
    """

    __slots__ = ("default", "lower", "seen", "underscores")

    def __init__(
        self,
        fields: dict[bytes, int],
        drop: frozenset[bytes],
        underscores: bool = True,
        capture: frozenset[bytes] = frozenset(),
    ) -> None:
        # a captured name keeps its meaning when it has one (Host, X-Forwarded-For...): those the
        # forwarder reads anyway and hands over itself
        kept = {name: _CAPTURE for name in capture if name not in fields and name != b"*"}
        self.lower = {**kept, **fields, **dict.fromkeys(drop, _HOP)}
        self.default = _CAPTURE if b"*" in capture else _COPY
        """What a name with no meaning of its own is: copied, or (capturing every field, for a
        stage that reads them all) copied and captured."""
        self.seen = dict(self.lower)
        self.underscores = underscores

    def kind(self, name: bytes) -> int:
        """The meaning of a name not in ``seen`` (the forwarders look there first, inline)."""
        kind = self.lower.get(name.lower(), self.default)
        if not self.underscores and b"_" in name:
            log.debug("request field %r dropped: its name has '_' (underscores_in_headers off)", name)
            kind = _HOP
        seen = self.seen
        if len(name) <= MEMO_NAME_BYTES and len(seen) < len(self.lower) + MEMO_NAMES:
            seen[name] = kind
        return kind


@lru_cache(maxsize=16)
def _name_table(
    response: bool, drop: frozenset[bytes], underscores: bool = True, capture: frozenset[bytes] = frozenset()
) -> _NameTable:
    return _NameTable(_RESPONSE_FIELDS if response else _REQUEST_FIELDS, drop, underscores, capture)
