"""HTTP/1.1 header rules for a reverse proxy: framing, hop-by-hop fields, forwarding, serialization.

These are the decisions a proxy makes about every message it relays, kept apart from the I/O that
relays it (``distpat.net``): how long a message body is (RFC 9112 section 6), whether the
connection persists (RFC 9112 section 9.3), which fields belong to one hop and must not be
forwarded (RFC 9110 section 7.6.1), which fields record that a proxy was on the path (RFC 9110
section 7.6.3, RFC 7239, the de facto ``X-Forwarded-*``), and how a message head is written
back onto the wire (RFC 9112 sections 3, 4 and 5).

Headers are ``list[tuple[bytes, bytes]]`` in the order received, names in whatever case the peer
used; every function compares names after one ``bytes.lower()``. Field values are used as the
parser delivered them, except that optional whitespace (SP and HTAB only, RFC 9110 section 5.6.3)
is trimmed where a value is interpreted. Nothing here normalises what it does not interpret.

The framing functions are the proxy's defence against request smuggling (RFC 9112 section 11.2):
they accept only framing that every conforming parser reads the same way, and raise
:class:`~distpat.errors.RemoteProtocolError` with the status to answer for the rest -- 400 for a
client's request, 502 for an upstream's response.

Everything here is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from distpat.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CHUNKED_BODY",
    "HOP_BY_HOP",
    "LAST_CHUNK",
    "LENGTH_BODY",
    "NO_BODY",
    "NO_HOST",
    "UNTIL_CLOSE_BODY",
    "BAD_HOST",
    "BodyKind",
    "Framing",
    "Headers",
    "HttpVersion",
    "canonical_length",
    "chunk",
    "connection_tokens",
    "error_response",
    "forward_request_headers",
    "forward_response_headers",
    "has_host",
    "origin_form",
    "replace_host",
    "valid_host",
    "request_framing",
    "request_head",
    "response_framing",
    "response_head",
    "strip_hop_by_hop",
    "wants_close",
]

NO_HOST: Final = "an HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)"
BAD_HOST: Final = "Host is not a valid uri-host[:port] (RFC 9110 section 7.2)"

Headers: TypeAlias = list[tuple[bytes, bytes]]
"""A message's header fields in received order: ``(name, value)``, names in any case."""

_Fields: TypeAlias = Sequence[tuple[bytes, bytes]]  # what the functions accept: a list, a tuple, ...

HttpVersion: TypeAlias = tuple[int, int] | bytes | str
"""``(1, 1)``, ``b"1.1"``, ``"1.1"`` (what httptools' ``get_http_version()`` returns) or ``b"HTTP/1.1"``."""

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


def _add_tokens(tokens: set[bytes], value: bytes) -> None:
    for token in value.lower().split(b","):
        token = token.strip(_OWS)
        if token:
            tokens.add(token)


# uri-host [ ":" port ] (RFC 3986 section 3.2.2, RFC 9110 section 7.2): an IP-literal in brackets
# (IPv6 or IPvFuture), or a reg-name/IPv4address of unreserved, pct-encoded and sub-delims bytes
# except ",", which would make one Host read as a list. The port, when a colon is written, is
# 1 to 5 digits: an empty port after a colon is refused as nginx does.
_HOST_RE: Final = re.compile(
    rb"(?:\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+;=:]+)\]"
    rb"|(?:[A-Za-z0-9\-._~!$&'()*+;=]|%[0-9A-Fa-f]{2})+)"
    rb"(?::[0-9]{1,5})?"
)
_valid_host_match: Final = _HOST_RE.fullmatch


def valid_host(value: bytes) -> bool:
    """Whether ``value`` (OWS trimmed) is empty or a ``uri-host[:port]`` (RFC 9110 section 7.2).

    Refused: userinfo (``@``), commas, spaces, slashes, backslashes, a colon outside brackets
    beyond the one before the port, an unclosed or stray bracket, a port that is empty or not
    1-5 digits, a ``%`` not followed by two hex digits. An empty value is valid: RFC 9110 section
    7.2 lets a request whose target has no authority send an empty Host.
    """
    return not value or _valid_host_match(value) is not None


def origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """``(target to forward, authority)`` for a request target (RFC 9112 section 3.2).

    An origin-form (``/p?q``) or asterisk-form (``*``) target is returned as is, with no
    authority. An absolute-form target (``http://host:port/p?q``, scheme ``http`` or ``https`` in
    any case) becomes its origin form (``/p?q``, ``/`` for an empty path) and its authority,
    which replaces Host (RFC 9112 section 3.2.2).

    Raises:
        RemoteProtocolError: status 400 for another scheme, userinfo in the authority (RFC 9110
            section 4.2.4), or an authority that is not a valid ``uri-host[:port]``.
    """
    if target[:1] == b"/" or target == b"*":
        return target, None
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise RemoteProtocolError(f"unsupported request target {target[:64]!r}", status=400)
    end = len(rest)
    for delimiter in b"/?#":
        at = rest.find(delimiter)
        if 0 <= at < end:
            end = at
    authority, path = rest[:end], rest[end:]
    if not authority or not valid_host(authority):  # "@" (userinfo) is refused here too
        raise RemoteProtocolError(f"invalid authority in request target {authority[:64]!r}", status=400)
    if path[:1] != b"/":
        path = b"/" + path
    return path, authority


def replace_host(headers: _Fields, authority: bytes) -> Headers:
    """``headers`` with every Host field's value set to ``authority`` (RFC 9112 section 3.2.2).

    Each Host line keeps its place and name, so a request with two Host fields is still refused
    by :func:`forward_request_headers`; a request without one gets no Host here.

    Raises:
        RemoteProtocolError: status 400 if a Host value is not valid: RFC 9112 section 3.2 refuses
            such a request whatever its target says.
    """
    out: Headers = []
    for name, value in headers:
        if name.lower() == b"host":
            if not valid_host(value.strip(_OWS)):
                raise RemoteProtocolError(f"{BAD_HOST}: {value!r}", status=400)
            value = authority
        out.append((name, value))
    return out


def has_host(headers: _Fields) -> bool:
    """Whether the fields include Host."""
    return any(name.lower() == b"host" for name, _ in headers)


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


def canonical_length(values: list[bytes]) -> bytes | None:
    """The one length Content-Length ``values`` agree on, in canonical decimal; None for none."""
    try:
        return b"%d" % _content_length(values, 502)
    except RemoteProtocolError:
        return None


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


def _finish_head(parts: list[bytes], headers: _Fields) -> bytes:
    """Append the field lines and the blank line; refuse a head whose lines a CR or LF would split.

    Counting CR and LF over the whole head (two C-speed scans) catches a CR or LF inside any
    name, value, target or reason phrase -- header injection -- without a check per field.
    """
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    head = b"".join(parts)
    lines = len(headers) + 2
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise LocalProtocolError("CR or LF inside a message head field", status=500)
    return head


def request_head(method: bytes, target: bytes, headers: _Fields) -> bytes:
    """``METHOD target HTTP/1.1``, the field lines and the blank line (RFC 9112 sections 3 and 5).

    Names and values are written as given; they must already be valid (as the parser delivers
    them). A CR or LF anywhere, or a space in the method or target, raises LocalProtocolError.
    """
    if not method or not target or b" " in method or b" " in target:
        raise LocalProtocolError(f"invalid request line {method!r} {target!r}", status=500)
    return _finish_head([method, b" ", target, b" HTTP/1.1\r\n"], headers)


# Reason phrases of RFC 9110 section 15 (and RFC 6585 for 428, 429, 431, 511).
_REASONS: Final[dict[int, bytes]] = {
    100: b"Continue",
    101: b"Switching Protocols",
    103: b"Early Hints",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    203: b"Non-Authoritative Information",
    204: b"No Content",
    205: b"Reset Content",
    206: b"Partial Content",
    300: b"Multiple Choices",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    406: b"Not Acceptable",
    407: b"Proxy Authentication Required",
    408: b"Request Timeout",
    409: b"Conflict",
    410: b"Gone",
    411: b"Length Required",
    412: b"Precondition Failed",
    413: b"Content Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    416: b"Range Not Satisfiable",
    417: b"Expectation Failed",
    421: b"Misdirected Request",
    422: b"Unprocessable Content",
    426: b"Upgrade Required",
    428: b"Precondition Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
    511: b"Network Authentication Required",
}


def response_head(
    status: int,
    headers: _Fields,
    *,
    reason: bytes | None = None,
    version: bytes = b"1.1",
) -> bytes:
    """``HTTP/1.1 200 OK``, the field lines and the blank line (RFC 9112 sections 4 and 5).

    ``reason`` defaults to the RFC 9110 phrase for ``status``, or nothing for a code without one;
    the space before the reason is written either way, as the status-line grammar requires.
    A status outside 100-999, or a CR or LF anywhere, raises LocalProtocolError.
    """
    if not 100 <= status <= 999:
        raise LocalProtocolError(f"status code {status} is not three digits", status=500)
    if reason is None:
        reason = _REASONS.get(status, b"")
    return _finish_head([b"HTTP/%b %d %b\r\n" % (version, status, reason)], headers)


def error_response(
    status: int,
    message: str,
    *,
    close: bool = True,
    extra: _Fields = (),
) -> bytes:
    """A whole response for an error distpat answers itself: head and ``text/plain`` body.

    The body is ``"<status> <reason>: <message>\\n"`` in UTF-8. ``message`` is distpat's own
    text; anything the peer sent belongs in it only through ``repr()``. The head carries
    Content-Length, ``Cache-Control: no-store``, ``X-Content-Type-Options: nosniff`` (so no
    browser renders the text as HTML), ``Connection: close`` when ``close``, then ``extra``.
    ``status`` must be 4xx or 5xx.
    """
    if not 400 <= status <= 599:
        raise LocalProtocolError(f"error_response needs a 4xx or 5xx status, not {status}", status=500)
    reason = _REASONS.get(status)
    text = message.encode("utf-8", "backslashreplace")
    body = b"%d %b: %b\n" % (status, reason, text) if reason else b"%d: %b\n" % (status, text)
    headers = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % len(body)),
        (b"Cache-Control", b"no-store"),
        (b"X-Content-Type-Options", b"nosniff"),
    ]
    if close:
        headers.append((b"Connection", b"close"))
    headers += extra
    return response_head(status, headers) + body


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of the chunked coding (RFC 9112 section 7.1); empty data is no chunk.

    An empty chunk would be the last-chunk and end the body, so ``b""`` encodes to ``b""``;
    end a body with :data:`LAST_CHUNK`.
    """
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"
"""The last-chunk and the empty trailer section that end a chunked body (RFC 9112 section 7.1)."""
