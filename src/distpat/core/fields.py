"""Field rules for relaying a message: hop-by-hop fields and the fields a proxy adds.

Which fields describe one hop and are never forwarded (RFC 9110 section 7.6.1), whether the
connection persists (RFC 9112 section 9.3), and the fields that record that a proxy was on the
path (``Via``, RFC 9110 section 7.6.3; ``Forwarded``, RFC 7239; the de facto ``X-Forwarded-*``).
Pure; re-exported by :mod:`distpat.core.http`.
"""

from __future__ import annotations

from typing import Final

from distpat.core.framing import (
    _OWS,
    Headers,
    HttpVersion,
    _content_length,
    _Fields,
    _version_at_least_1_1,
    canonical_length,
)
from distpat.core.host import BAD_HOST, valid_host
from distpat.errors import RemoteProtocolError

__all__ = [
    "HOP_BY_HOP",
    "connection_tokens",
    "forward_request_headers",
    "forward_response_headers",
    "strip_hop_by_hop",
    "wants_close",
]

HOP_BY_HOP: Final[frozenset[bytes]] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
"""Lowercase names of the fields that describe one hop and are never forwarded.

RFC 9110 section 7.6.1 names Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and
Upgrade; Trailer only announces trailer fields of the chunked coding this hop used (RFC 9110
section 6.6.2); Proxy-Authenticate and Proxy-Authorization are consumed by the proxy they address
(RFC 9110 sections 11.7.1 and 11.7.2).
"""

# A Connection option may not remove these: a sender is forbidden to name a field meant for all
# recipients (RFC 9110 section 7.6.1), and obeying "Connection: content-length" would forward a
# body without the field that frames it -- the next hop would read that body as a new request.
_NEVER_CONNECTION_OPTIONS: Final = frozenset({b"content-length", b"host"})


def _add_tokens(tokens: set[bytes], value: bytes) -> None:
    for token in value.lower().split(b","):
        token = token.strip(_OWS)
        if token:
            tokens.add(token)


def connection_tokens(headers: _Fields) -> frozenset[bytes]:
    """The lowercase connection options of every Connection field (RFC 9110 section 7.6.1)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            _add_tokens(tokens, value)
    return frozenset(tokens)


def wants_close(version: HttpVersion, headers: _Fields) -> bool:
    """Whether the connection closes after this message (RFC 9112 section 9.3).

    A ``close`` option always closes. Otherwise HTTP/1.1 and later persist, and HTTP/1.0 (or a
    version that cannot be read) persists only with a ``keep-alive`` option. RFC 9112 section
    9.3 lets a proxy ignore ``keep-alive`` in an HTTP/1.0 request; distpat honours it, as common
    proxies do, because distpat parses Connection itself rather than forwarding it.
    """
    tokens = connection_tokens(headers)
    if b"close" in tokens:
        return True
    if _version_at_least_1_1(version):
        return False
    return b"keep-alive" not in tokens


def _removed_names(headers: _Fields, lowered: list[bytes]) -> frozenset[bytes]:
    """HOP_BY_HOP plus the fields the Connection options name, except Content-Length and Host."""
    if b"connection" not in lowered:
        return HOP_BY_HOP
    named: set[bytes] = set()
    for (_, value), lname in zip(headers, lowered, strict=True):
        if lname == b"connection":
            _add_tokens(named, value)
    return HOP_BY_HOP.union(named.difference(_NEVER_CONNECTION_OPTIONS))


def strip_hop_by_hop(headers: _Fields) -> Headers:
    """A new list of ``headers`` without hop-by-hop fields, in the same order (RFC 9110 section 7.6.1).

    Removes every field in :data:`HOP_BY_HOP` and every field a Connection option names, except
    Content-Length and Host: naming those is forbidden to the sender (RFC 9110 section 7.6.1),
    and dropping Content-Length would unframe the body the proxy forwards.
    """
    lowered = [name.lower() for name, _ in headers]
    removed = _removed_names(headers, lowered)
    return [header for header, lname in zip(headers, lowered, strict=True) if lname not in removed]


# tchar (RFC 9110 section 5.6.2): a value made only of these is a token and needs no quotes.
_TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Bytes that cannot appear in a quoted-string, even escaped (RFC 9110 section 5.6.4): CTLs but HTAB.
_NOT_QUOTABLE: Final = bytes(range(0x20)).replace(b"\t", b"") + b"\x7f"
_QUOTABLE: Final = bytes(b for b in range(256) if b not in _NOT_QUOTABLE)


def _forwarded_value(value: bytes) -> bytes | None:
    """``value`` as an RFC 7239 value: a token as is, else a quoted-string; None if not expressible."""
    if value and not value.translate(None, _TCHAR):
        return value
    if value.translate(None, _QUOTABLE):
        return None
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _forwarded_element(addr: bytes, proto: bytes, host: bytes | None) -> bytes:
    """One RFC 7239 forwarded-element: ``for=...;proto=...`` and ``;host=...`` when known.

    A bare IPv6 address goes in brackets and therefore in quotes (RFC 7239 section 6).
    """
    if addr.count(b":") > 1 and not addr.startswith(b"["):
        addr = b"[" + addr + b"]"
    element = b"for=" + (_forwarded_value(addr) or b"unknown")
    quoted_proto = _forwarded_value(proto)
    if quoted_proto is not None:
        element += b";proto=" + quoted_proto
    if host:
        quoted_host = _forwarded_value(host)
        if quoted_host is not None:
            element += b";host=" + quoted_host
    return element


def _collect(values: list[bytes], value: bytes) -> None:
    """Keep one received list value to append to; an empty field line adds nothing."""
    value = value.strip(_OWS)
    if value:
        values.append(value)


def _join(values: list[bytes], last: bytes) -> bytes:
    values.append(last)
    return b", ".join(values)


def forward_request_headers(
    headers: _Fields,
    *,
    client_addr: str,
    scheme: str,
    via: bytes = b"1.1 distpat",
    forwarded: bool = False,
) -> Headers:
    """The fields to send upstream for a client's request.

    :func:`strip_hop_by_hop`, then, with every other field kept in order:

    * ``X-Forwarded-For``: ``client_addr`` appended to the values already there (all field lines
      joined), or added. An empty ``client_addr`` (a Unix socket peer) is written ``unknown``.
    * ``X-Forwarded-Proto``: set to ``scheme``, replacing any.
    * ``X-Forwarded-Host``: set to the request's Host value, replacing any; a client's own
      X-Forwarded-Host is dropped when the request has no (or an empty) Host.
    * ``Via``: ``via`` appended to the received Via list, or added (RFC 9110 section 7.6.3).
    * ``Forwarded`` (only when ``forwarded``): a ``for=...;proto=...;host=...`` element appended
      to the received list, or added (RFC 7239 section 4); without ``forwarded`` a received
      Forwarded field passes through untouched.

    * ``Content-Length``: one field, where the first was, holding the length in canonical decimal
      (``007`` and ``7, 7`` are sent as ``7``), so that no next hop can read the framing another
      way (RFC 9112 section 6.3; a backend reading ``010`` as octal frames 8 bytes).

    The replaced and appended fields move to the end of the list; Host itself is kept as is.

    Raises:
        RemoteProtocolError: status 400 if the request has more than one Host field
            (RFC 9112 section 3.2), which would make X-Forwarded-Host ambiguous, if Host is not
            a valid ``uri-host[:port]`` (:func:`valid_host`), or if Content-Length is invalid.
    """
    lowered = [name.lower() for name, _ in headers]
    removed = _removed_names(headers, lowered)
    out: Headers = []
    xff: list[bytes] = []
    vias: list[bytes] = []
    elements: list[bytes] = []
    host: bytes | None = None
    length: bytes | None = None
    for header, lname in zip(headers, lowered, strict=True):
        if lname in removed:
            continue
        if lname == b"content-length":
            if length is None:  # one field, at the first one's place, in canonical decimal
                values = [v for (_, v), n in zip(headers, lowered, strict=True) if n == b"content-length"]
                length = b"%d" % _content_length(values, 400)
                out.append((header[0], length))
            continue
        if lname == b"x-forwarded-for":
            _collect(xff, header[1])
            continue
        if lname == b"via":
            _collect(vias, header[1])
            continue
        if forwarded and lname == b"forwarded":
            _collect(elements, header[1])
            continue
        if lname == b"x-forwarded-proto" or lname == b"x-forwarded-host":
            continue
        if lname == b"host":
            if host is not None:
                raise RemoteProtocolError("request has more than one Host field", status=400)
            host = header[1].strip(_OWS)
            if not valid_host(host):
                raise RemoteProtocolError(f"{BAD_HOST}: {host!r}", status=400)
        out.append(header)
    addr = client_addr.encode("ascii", "backslashreplace") or b"unknown"
    proto = scheme.encode("ascii", "backslashreplace")
    out.append((b"Via", _join(vias, via)))
    out.append((b"X-Forwarded-For", _join(xff, addr)))
    out.append((b"X-Forwarded-Proto", proto))
    if host:
        out.append((b"X-Forwarded-Host", host))
    if forwarded:
        out.append((b"Forwarded", _join(elements, _forwarded_element(addr, proto, host))))
    return out


def forward_response_headers(headers: _Fields, *, via: bytes = b"1.1 distpat") -> Headers:
    """The fields to send a client for an upstream's response: hop-by-hop fields stripped, Via appended.

    Via is appended as in :func:`forward_request_headers` (RFC 9110 section 7.6.3); the other
    fields keep their order. Content-Length fields that agree on a length become one field, where
    the first was, in canonical decimal (as for requests); others are left to the framing rules.
    """
    lowered = [name.lower() for name, _ in headers]
    removed = _removed_names(headers, lowered)
    out: Headers = []
    vias: list[bytes] = []
    length: bytes | None = None
    if b"content-length" in lowered:
        values = [v for (_, v), n in zip(headers, lowered, strict=True) if n == b"content-length"]
        length = canonical_length(values)
    for header, lname in zip(headers, lowered, strict=True):
        if lname in removed:
            continue
        if lname == b"via":
            _collect(vias, header[1])
            continue
        if lname == b"content-length" and length is not None:
            if length:
                out.append((header[0], length))
                length = b""  # written: the other Content-Length fields are dropped
            continue
        out.append(header)
    out.append((b"Via", _join(vias, via)))
    return out
