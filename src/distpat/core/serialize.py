"""Writing a message head back onto the wire (RFC 9112 sections 3, 4 and 5) and chunks (section 7.1).

Also the whole responses distpat answers itself (:func:`error_response`). Pure; re-exported by
:mod:`distpat.core.http`.
"""

from __future__ import annotations

from typing import Final

from distpat.core.framing import _Fields
from distpat.errors import LocalProtocolError

__all__ = [
    "LAST_CHUNK",
    "chunk",
    "error_body",
    "error_response",
    "local_response",
    "request_head",
    "response_head",
]


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
    body = error_body(status, message)
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


def error_body(status: int, message: str) -> bytes:
    """The ``text/plain`` body of an error distpat answers itself: ``"<status> <reason>: <message>\\n"``."""
    reason = _REASONS.get(status)
    text = message.encode("utf-8", "backslashreplace")
    return b"%d %b: %b\n" % (status, reason, text) if reason else b"%d: %b\n" % (status, text)


def local_response(
    status: int,
    headers: _Fields,
    body: bytes,
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    head_request: bool = False,
    close: bool = False,
    http10: bool = False,
) -> tuple[bytes, int]:
    """A whole response a stage answered (``Answer``): its bytes, and how many of them are body.

    Framed as RFC 9110 says: a 204 or 304 has no body and no Content-Length (sections 15.3.5,
    15.4.5, 8.6), nor Content-Type; a response to HEAD has the Content-Length the GET would
    have and no body (section 9.3.2); Content-Type is sent only with content. ``close`` adds
    ``Connection: close``; an HTTP/1.0 client that keeps the connection gets ``keep-alive``.
    """
    out = list(headers)
    bodiless = status == 204 or status == 304 or status < 200
    if bodiless:
        body = b""
    else:
        if body and content_type:  # empty: the answer has none (a stored response without one)
            out.append((b"Content-Type", content_type))
        out.append((b"Content-Length", b"%d" % len(body)))
        if head_request:
            body = b""
    if close:
        out.append((b"Connection", b"close"))
    elif http10:
        out.append((b"Connection", b"keep-alive"))
    return response_head(status, out) + body, len(body)


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
