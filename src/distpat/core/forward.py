"""The proxy engine's one-pass forms of the rules in :mod:`distpat.core.http`.

Forwarding a request or a response means: check its framing, drop hop-by-hop
fields, add the proxy's own (X-Forwarded-*, Via), decide how the body is
re-framed and serialise the head. Done with the general functions of
:mod:`distpat.core.http` that is five passes over the fields and a list of
pairs built and joined twice, about two thirds of the engine's Python time
per request. The functions here do it in one pass straight into the head's
bytes, for the overwhelmingly common case; they return None for the rare one
they leave to the general functions (a Connection field naming fields other
than the standard hop-by-hop ones), and the tests check that the two always
agree.

Fields come from httptools, which refuses CR, LF and NUL in them, so the
heads are not scanned again for header injection (the general functions,
used when hooks change fields, are).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Final

from distpat.core.http import (
    _OWS,
    _REASONS,
    HOP_BY_HOP,
    BodyKind,
    Headers,
    _forwarded_element,
    request_framing,
    response_framing,
)
from distpat.errors import RemoteProtocolError

__all__ = ["ForwardedRequest", "ForwardedResponse", "forward_request", "forward_response", "other_codings"]

# What each field name means to the request pass; absent names are copied as they are.
_HOP, _CONNECTION, _FRAMING, _HOST, _XFF, _VIA, _XF_SET, _FORWARDED, _EXPECT = range(9)
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
    b"content-length": _FRAMING,
    b"via": _VIA,
}
# Connection options that name nothing beyond the fields already dropped.
_PLAIN_OPTIONS: Final = HOP_BY_HOP | {b"close", b"keep-alive", b""}
_COMMON_OPTIONS: Final = frozenset({b"keep-alive", b"close"})
_STATUS_LINES: Final[dict[int, bytes]] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()
}


_NO_FIELDS: Final[frozenset[bytes]] = frozenset()


@lru_cache(maxsize=16)
def _request_kinds(drop: frozenset[bytes]) -> dict[bytes, int]:
    return {**_REQUEST_FIELDS, **dict.fromkeys(drop, _HOP)}


@lru_cache(maxsize=16)
def _response_kinds(drop: frozenset[bytes]) -> dict[bytes, int]:
    return {**_RESPONSE_FIELDS, **dict.fromkeys(drop, _HOP)}


def _append(joined: bytes | None, value: bytes) -> bytes | None:
    """A received list field joined to the ones before it; empty field lines add nothing."""
    value = value.strip(_OWS)
    if not value:
        return joined
    return value if joined is None else joined + b", " + value


def _options_are_plain(values: list[bytes]) -> bool:
    if len(values) == 1 and values[0].lower() in _COMMON_OPTIONS:
        return True
    for value in values:
        for token in value.lower().split(b","):
            if token.strip(_OWS) not in _PLAIN_OPTIONS:
                return False
    return True


ForwardedRequest = tuple[BodyKind, int, bytes, bool]
"""``(body kind, body length or -1, head bytes, expect 100-continue)``: a plain tuple, because building
even a frozen dataclass costs half a microsecond, a fair share of a proxied request's Python time."""

ForwardedResponse = tuple[BodyKind, bytes, bool, bool]
"""``(body kind, head bytes, rechunk, close)``: ``rechunk`` when the body is re-sent chunked (upstream
chunked or close-delimited, client HTTP/1.1); ``close`` when the client connection closes after it."""


def forward_request(
    method: bytes,
    target: bytes,
    headers: Headers,
    *,
    http10: bool,
    client_addr: str,
    scheme: str,
    via: bytes,
    forwarded: bool = False,
    drop: frozenset[bytes] = _NO_FIELDS,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> ForwardedRequest | None:
    """The upstream request head, as ``request_framing`` + ``forward_request_headers`` + ``request_head``.

    ``Expect: 100-continue`` is taken out (the engine answers it); any other
    expectation is refused with 417. Fields named in ``drop`` (lowercase) are
    left out and ``extra`` fields added (a TLS sidecar's client identity).
    Returns None when a Connection field names other fields, for the general
    functions to handle.

    Raises:
        RemoteProtocolError: bad framing (400), two Host fields (400), an unknown expectation (417).
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    kinds = _request_kinds(drop) if drop else _REQUEST_FIELDS
    body_fields: Headers | None = None
    connection: list[bytes] | None = None
    host: bytes | None = None
    xff: bytes | None = None
    vias: bytes | None = None
    fwd: bytes | None = None
    expect = False
    for name, value in headers:
        kind = kinds.get(name.lower())
        if kind is None:
            parts += (name, b": ", value, b"\r\n")
        elif kind == _HOST:
            if host is not None:
                raise RemoteProtocolError("request has more than one Host field", status=400)
            host = value.strip(_OWS)
            parts += (name, b": ", value, b"\r\n")
        elif kind == _FRAMING:
            if body_fields is None:
                body_fields = []
            body_fields.append((name, value))
            if name.lower() == b"content-length":
                parts += (name, b": ", value, b"\r\n")
        elif kind == _CONNECTION:
            if connection is None:
                connection = []
            connection.append(value)
        elif kind == _XFF:
            xff = _append(xff, value)
        elif kind == _VIA:
            vias = _append(vias, value)
        elif kind == _FORWARDED:
            if forwarded:
                fwd = _append(fwd, value)
            else:
                parts += (name, b": ", value, b"\r\n")
        elif kind == _EXPECT:
            if value.strip(_OWS).lower() != b"100-continue":
                raise RemoteProtocolError("only 'Expect: 100-continue' is supported", status=417)
            expect = True
        # _HOP and _XF_SET fields are dropped
    if connection is not None and not _options_are_plain(connection):
        return None
    if body_fields:
        framing = request_framing(body_fields, version=(1, 0) if http10 else (1, 1))
        body, length = framing.kind, -1 if framing.length is None else framing.length
    else:
        body, length = BodyKind.NONE, -1
    addr = client_addr.encode("ascii", "backslashreplace") or b"unknown"
    proto = scheme.encode("ascii", "backslashreplace")
    parts += (b"Via: ", via if vias is None else vias + b", " + via, b"\r\n")
    parts += (b"X-Forwarded-For: ", addr if xff is None else xff + b", " + addr, b"\r\n")
    parts += (b"X-Forwarded-Proto: ", proto, b"\r\n")
    if host:
        parts += (b"X-Forwarded-Host: ", host, b"\r\n")
    if forwarded:
        element = _forwarded_element(addr, proto, host)
        parts += (b"Forwarded: ", element if fwd is None else fwd + b", " + element, b"\r\n")
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    if body is BodyKind.CHUNKED:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    parts.append(b"\r\n")
    return body, length, b"".join(parts), expect


def forward_response(
    method: bytes,
    status: int,
    headers: Headers,
    *,
    via: bytes,
    http10: bool,
    keep_alive: bool,
    drop: frozenset[bytes] = _NO_FIELDS,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> ForwardedResponse | None:
    """The client response head, as ``response_framing`` + ``forward_response_headers`` + ``response_head``.

    Chunked and close-delimited bodies are re-sent chunked to an HTTP/1.1
    client (Content-Length dropped, other transfer codings still declared)
    and close-delimited to an HTTP/1.0 one. ``keep_alive`` False (the client
    asked to close, or the server is draining) adds ``Connection: close``;
    an HTTP/1.0 client that keeps the connection gets ``Connection:
    keep-alive``. Fields named in ``drop`` (lowercase) are left out and
    ``extra`` fields added (a sidecar's Strict-Transport-Security). Returns
    None when a Connection field names other fields.

    Raises:
        RemoteProtocolError: status 502 for framing that cannot be trusted.
    """
    line = _STATUS_LINES.get(status)
    parts = [line if line is not None else b"HTTP/1.1 %d \r\n" % status]
    kinds = _response_kinds(drop) if drop else _RESPONSE_FIELDS
    body_fields: Headers | None = None
    connection: list[bytes] | None = None
    vias: bytes | None = None
    lengths: list[int] = []  # where Content-Length lines sit in parts, in case the body is re-framed
    for name, value in headers:
        kind = kinds.get(name.lower())
        if kind is None:
            parts += (name, b": ", value, b"\r\n")
        elif kind == _FRAMING:
            if body_fields is None:
                body_fields = []
            body_fields.append((name, value))
            if name.lower() == b"content-length":
                lengths.append(len(parts))
                parts.append(name + b": " + value + b"\r\n")
        elif kind == _CONNECTION:
            if connection is None:
                connection = []
            connection.append(value)
        elif kind == _VIA:
            vias = _append(vias, value)
    if connection is not None and not _options_are_plain(connection):
        return None
    if (
        body_fields is not None
        and len(body_fields) == 1
        and len(lengths) == 1
        and status >= 200
        and status != 204
        and status != 304
        and method != b"HEAD"
        and method != b"CONNECT"
        and body_fields[0][1].isdigit()
        and len(body_fields[0][1]) <= 18
    ):  # the usual case, one plain Content-Length: the same answer response_framing gives
        body = BodyKind.LENGTH
    else:
        body = response_framing(method, status, body_fields or ()).kind
    parts += (b"Via: ", via if vias is None else vias + b", " + via, b"\r\n")
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    rechunk = False
    close = not keep_alive
    if body is BodyKind.CHUNKED or body is BodyKind.UNTIL_CLOSE:
        for i in reversed(lengths):  # the body is re-framed: no Content-Length describes it
            del parts[i]
        codings = other_codings(body_fields or [])
        if http10:
            close = True
            if codings:
                parts += (b"Content-Encoding: ", codings, b"\r\n")  # HTTP/1.0 has no transfer codings
        else:
            rechunk = True
            parts += (b"Transfer-Encoding: ", codings + b", chunked" if codings else b"chunked", b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    elif http10:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return body, b"".join(parts), rechunk, close


def other_codings(body_fields: Headers) -> bytes:
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
