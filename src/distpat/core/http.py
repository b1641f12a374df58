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

The rules live in one module each, and this module re-exports their public names:

* :mod:`distpat.core.framing` -- body framing (BodyKind, Framing, request/response framing,
  Content-Length, transfer codings) and the shared types;
* :mod:`distpat.core.host` -- the request target and Host rules;
* :mod:`distpat.core.fields` -- hop-by-hop fields, persistence and the forwarding fields;
* :mod:`distpat.core.serialize` -- request and response heads, error responses and chunks.

Everything here is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

from distpat.core.fields import (
    HOP_BY_HOP,
    connection_tokens,
    forward_request_headers,
    forward_response_headers,
    strip_hop_by_hop,
    wants_close,
)
from distpat.core.framing import (
    CHUNKED_BODY,
    LENGTH_BODY,
    NO_BODY,
    UNTIL_CLOSE_BODY,
    BodyKind,
    Framing,
    Headers,
    HttpVersion,
    canonical_length,
    request_framing,
    response_framing,
)
from distpat.core.host import BAD_HOST, NO_HOST, has_host, origin_form, replace_host, valid_host
from distpat.core.serialize import (
    LAST_CHUNK,
    chunk,
    error_response,
    local_response,
    request_head,
    response_head,
)

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
    "local_response",
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
