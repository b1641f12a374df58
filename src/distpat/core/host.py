"""The request target and Host rules (RFC 9112 section 3.2, RFC 9110 section 7.2).

Which Host values are a ``uri-host[:port]``, how an absolute-form target becomes origin-form
with its authority, and how that authority replaces Host. Pure; re-exported by
:mod:`distpat.core.http`.
"""

from __future__ import annotations

import re
from typing import Final

from distpat.core.framing import _OWS, Headers, _Fields
from distpat.errors import RemoteProtocolError

__all__ = [
    "BAD_HOST",
    "NO_HOST",
    "has_host",
    "origin_form",
    "replace_host",
    "valid_host",
]

NO_HOST: Final = "an HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)"
BAD_HOST: Final = "Host is not a valid uri-host[:port] (RFC 9110 section 7.2)"


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
