"""HTTP/1.1 message framing: how long a body is (RFC 9112 section 6) and the types every rule shares.

The framing functions are the proxy's defence against request smuggling (RFC 9112 section 11.2):
they accept only framing that every conforming parser reads the same way, and raise
:class:`~distpat.errors.RemoteProtocolError` with the status to answer for the rest -- 400 for a
client's request, 502 for an upstream's response.

Headers are ``list[tuple[bytes, bytes]]`` in the order received, names in whatever case the peer
used; names are compared after one ``bytes.lower()``, and optional whitespace (SP and HTAB only,
RFC 9110 section 5.6.3) is trimmed where a value is interpreted.

Pure: no I/O, no clock, no randomness. :mod:`distpat.core.http` re-exports the public names.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from distpat.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "expects_continue",
    "other_codings",
    "reframe_for_client",
    "CHUNKED_BODY",
    "LENGTH_BODY",
    "NO_BODY",
    "UNTIL_CLOSE_BODY",
    "BodyKind",
    "Framing",
    "Headers",
    "HttpVersion",
    "canonical_length",
    "request_framing",
    "response_framing",
]

Headers: TypeAlias = list[tuple[bytes, bytes]]
"""A message's header fields in received order: ``(name, value)``, names in any case."""

_Fields: TypeAlias = Sequence[tuple[bytes, bytes]]  # what the functions accept: a list, a tuple, ...

HttpVersion: TypeAlias = tuple[int, int] | bytes | str
"""``(1, 1)``, ``b"1.1"``, ``"1.1"`` (what httptools' ``get_http_version()`` returns) or ``b"HTTP/1.1"``."""

_OWS: Final = b" \t"  # RFC 9110 section 5.6.3: OWS is SP / HTAB, nothing else (not VT, FF or CR)
_MAX_DIGITS: Final = 18  # 10**18 bytes is an exabyte; stays well inside int64


class BodyKind(enum.Enum):
    """How the end of a message body is found (RFC 9112 section 6.3)."""

    NONE = "none"
    """No body: the message ends with its head."""
    LENGTH = "length"
    """Exactly ``Framing.length`` bytes follow the head."""
    CHUNKED = "chunked"
    """The chunked transfer coding (RFC 9112 section 7.1) delimits the body."""
    UNTIL_CLOSE = "until-close"
    """The body runs until the sender closes the connection (responses only)."""


# An enum member is looked up through its class on every access (~60 ns in CPython 3.11, a fair
# share of a proxied request's Python time when done ten times): hot paths use these names.
NO_BODY = BodyKind.NONE
LENGTH_BODY = BodyKind.LENGTH
CHUNKED_BODY = BodyKind.CHUNKED
UNTIL_CLOSE_BODY = BodyKind.UNTIL_CLOSE


@dataclass(frozen=True, slots=True)
class Framing:
    """The body framing of one message; ``length`` is set exactly when ``kind`` is ``LENGTH``."""

    kind: BodyKind
    length: int | None = None

    def __post_init__(self) -> None:
        if self.kind is BodyKind.LENGTH:
            if self.length is None or self.length < 0:
                raise LocalProtocolError(
                    f"LENGTH framing needs a length >= 0, not {self.length!r}", status=500
                )
        elif self.length is not None:
            raise LocalProtocolError(f"{self.kind.name} framing takes no length", status=500)


_NO_BODY: Final = Framing(BodyKind.NONE)
_CHUNKED: Final = Framing(BodyKind.CHUNKED)
_UNTIL_CLOSE: Final = Framing(BodyKind.UNTIL_CLOSE)


def _body_fields(headers: _Fields) -> tuple[list[bytes] | None, list[bytes] | None]:
    """The values of every Transfer-Encoding and of every Content-Length field, or None for absent."""
    te: list[bytes] | None = None
    cl: list[bytes] | None = None
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-length":
            if cl is None:
                cl = [value]
            else:
                cl.append(value)
        elif lname == b"transfer-encoding":
            if te is None:
                te = [value]
            else:
                te.append(value)
    return te, cl


def _transfer_codings(values: list[bytes]) -> list[bytes]:
    """The transfer codings of all Transfer-Encoding fields, in order, lowercase, OWS trimmed.

    Several field lines are one comma-separated list (RFC 9110 section 5.3). Empty elements are
    kept, as empty bytes: llhttp does not read ``chunked,`` as chunked, so neither does distpat.
    """
    joined = values[0] if len(values) == 1 else b",".join(values)
    return [coding.strip(_OWS) for coding in joined.lower().split(b",")]


def _content_length(values: list[bytes], status: int) -> int:
    """The one length all Content-Length values agree on (RFC 9112 section 6.3, RFC 9110 section 8.6).

    ``Content-Length = 1*DIGIT``: no sign, no hex, no inner space, not empty, at most 18 digits
    after any leading zeros.
    A repeated value -- ``5, 5`` or two fields of ``5`` -- is the same length said twice and is
    accepted, as RFC 9110 section 8.6 allows; differing values are an error.
    """
    length = -1  # no value read yet; every real length is >= 0
    for value in values:
        for item in value.split(b",") if b"," in value else (value,):
            digits = item.strip(_OWS)
            # bytes.isdigit() is ASCII 0-9 only, so int() never sees a sign, "_" or space.
            if not digits.isdigit():
                raise RemoteProtocolError(f"invalid Content-Length {value!r}", status=status)
            if len(digits) > _MAX_DIGITS and len(digits.lstrip(b"0")) > _MAX_DIGITS:  # zeros aside
                raise RemoteProtocolError(f"Content-Length {value!r} is too large", status=status)
            number = int(digits)
            if length < 0:
                length = number
            elif number != length:
                raise RemoteProtocolError(f"conflicting Content-Length values {values!r}", status=status)
    return length


def _version_at_least_1_1(version: HttpVersion) -> bool:
    """Whether ``version`` is HTTP/1.1 or later (RFC 9112 section 2.3); a malformed one counts as older."""
    if isinstance(version, tuple):
        return version >= (1, 1)
    if isinstance(version, str):
        version = version.encode("ascii", "replace")
    if version == b"1.1":
        return True
    if version.startswith(b"HTTP/"):
        version = version[5:]
    major, dot, minor = version.partition(b".")
    if not (dot and major.isdigit() and minor.isdigit()):
        return False
    return (int(major), int(minor)) >= (1, 1)


def request_framing(headers: _Fields, *, version: HttpVersion = (1, 1)) -> Framing:
    """How the body of a request received from a client is framed (RFC 9112 sections 6.1-6.3).

    * Transfer-Encoding present: the codings must be exactly ``chunked`` (any case, OWS around
      it). Any other coding or list -- ``gzip, chunked``, ``chunked, chunked``, ``chunked;x=1``,
      an empty value -- is answered 400: distpat implements no other coding, and a request whose
      final coding is not chunked has no determinable length (RFC 9112 section 6.3, item 4).
    * Transfer-Encoding together with Content-Length: 400. RFC 9112 section 6.3 item 3 lets a
      server reject it, and it is the classic smuggling vector.
    * Transfer-Encoding in an HTTP/1.0 request: 400. RFC 9112 section 6.1 says to treat its
      framing as faulty, since an HTTP/1.0 hop on the path cannot have understood it. Pass the
      request's ``version`` for this check; it defaults to 1.1.
    * Content-Length alone: its value (see :func:`_content_length`), else 400.
    * Neither: no body (RFC 9112 section 6.3, item 6).

    Raises:
        RemoteProtocolError: with ``status`` 400, for each rejection above.
    """
    te, cl = _body_fields(headers)
    if te is not None:
        if cl is not None:
            raise RemoteProtocolError("request has both Transfer-Encoding and Content-Length", status=400)
        if not _version_at_least_1_1(version):
            raise RemoteProtocolError("Transfer-Encoding in an HTTP/1.0 request", status=400)
        if _transfer_codings(te) != [b"chunked"]:
            raise RemoteProtocolError(f"unsupported transfer coding {b', '.join(te)!r}", status=400)
        return _CHUNKED
    if cl is not None:
        return Framing(BodyKind.LENGTH, _content_length(cl, 400))
    return _NO_BODY


def response_framing(request_method: bytes, status: int, headers: _Fields) -> Framing:
    """How the body of a response received from an upstream is framed (RFC 9112 section 6.3).

    In the order RFC 9112 section 6.3 gives them:

    1. A response to HEAD, and every 1xx, 204 and 304 response, has no body whatever its fields
       say. ``request_method`` is compared exactly: methods are case-sensitive (RFC 9110 9.1).
    2. A 2xx response to CONNECT has no body; the connection becomes a tunnel.
    3. Transfer-Encoding present: it overrides any Content-Length, which is then ignored (the
       caller must not forward it, RFC 9112 section 6.3 item 3). If ``chunked`` is the final
       coding the body is chunked; if it is applied more than once (forbidden by RFC 9112
       section 6.1) the response is refused with 502; if it is not final the body runs until
       the upstream closes (item 4).
    4. Content-Length: its value; an invalid or conflicting value is refused with 502 (item 5).
    5. Neither: the body runs until the upstream closes (item 8).

    Raises:
        RemoteProtocolError: with ``status`` 502, for a response whose framing cannot be trusted.
    """
    if status < 200 or status == 204 or status == 304 or request_method == b"HEAD":
        return _NO_BODY
    if request_method == b"CONNECT" and status < 300:
        return _NO_BODY
    te, cl = _body_fields(headers)
    if te is not None:
        codings = _transfer_codings(te)
        if codings[-1] != b"chunked":
            return _UNTIL_CLOSE
        if b"chunked" in codings[:-1]:
            raise RemoteProtocolError(f"chunked applied more than once: {b', '.join(te)!r}", status=502)
        return _CHUNKED
    if cl is not None:
        return Framing(BodyKind.LENGTH, _content_length(cl, 502))
    return _UNTIL_CLOSE


def canonical_length(values: list[bytes]) -> bytes | None:
    """The one length Content-Length ``values`` agree on, in canonical decimal; None for none."""
    try:
        return b"%d" % _content_length(values, 502)
    except RemoteProtocolError:
        return None


def other_codings(body_fields: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The transfer codings other than a final ``chunked``, comma-joined."""
    codings = [
        c.strip(_OWS)
        for name, value in body_fields
        if name.lower() == b"transfer-encoding"
        for c in value.split(b",")
        if c.strip(_OWS)
    ]
    if codings and codings[-1].lower() == b"chunked":
        codings.pop()
    return b", ".join(codings)


def expects_continue(value: bytes) -> bool:
    """An Expect field's value: ``100-continue`` (the engine answers it, as nginx does, so the
    upstream never waits); any other expectation is refused (RFC 9110 section 10.1.1: 417)."""
    if value.strip(_OWS).lower() != b"100-continue":
        raise RemoteProtocolError("only 'Expect: 100-continue' is supported", status=417)
    return True


def reframe_for_client(
    fields: Headers, upstream_fields: Sequence[tuple[bytes, bytes]], kind: BodyKind, *, http10: bool
) -> tuple[Headers, bool, bool]:
    """A response's client fields for a body the upstream framed as ``kind``: ``(fields, rechunk,
    close)``. A chunked or close-delimited body goes to an HTTP/1.1 client chunked (its
    Content-Length dropped, codings other than chunked still declared in Transfer-Encoding), and
    to an HTTP/1.0 one close-delimited (the codings in Content-Encoding: HTTP/1.0 has no transfer
    codings); other bodies keep their framing. The one-pass ResponseForwarder does the same."""
    if kind is not CHUNKED_BODY and kind is not UNTIL_CLOSE_BODY:
        return fields, False, False
    out = [(n, v) for n, v in fields if n.lower() != b"content-length"]
    codings = other_codings(upstream_fields)
    if http10:
        if codings:
            out.append((b"Content-Encoding", codings))
        return out, False, True
    out.append((b"Transfer-Encoding", codings + b", chunked" if codings else b"chunked"))
    return out, True, False
