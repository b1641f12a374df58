"""Refusing a client's request: the errors a :class:`ClientConnection` answers itself, in order.

A request the proxy refuses -- a malformed or oversized head, an unsupported version, a body
over the limit, a header timeout -- is answered with an error response once the requests queued
before it are answered, then the connection closes (lingering, since the client may still be
sending). Each refusal is counted and logged like any other answer. Only refusals run this code:
an accepted request never does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httptools

from distpat.core.http import NO_BODY, error_response
from distpat.net.exchange import Exchange
from distpat.net.exchange_log import body_size, record

if TYPE_CHECKING:
    from distpat.net.server import ClientConnection

__all__ = ["Reject", "answer_error", "protocol_error", "record_refusal", "record_refused", "refused_line"]


class Reject(Exception):
    """Raised from a parser callback to refuse the request with ``status``; the message is the answer's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def protocol_error(conn: ClientConnection, status: int, message: str) -> None:
    """Refuse the request being parsed on ``conn`` with ``status``: now, or after those queued before it."""
    refused: Exchange | bytes = refused_line(conn)
    conn.in_head = conn.in_head_or_new = False  # nothing more is parsed on this connection
    ex = conn.parsing
    if ex is not None and conn.queue and conn.queue[-1] is ex:
        if ex.response_started:  # its answer is under way: an error cannot follow it in order
            conn.abort(message)
            return
        conn.queue.pop().abandon()
        conn.parsing = None
        refused = ex
    if conn.queue:  # answer what came before in order, then this error, then close
        conn.pending_error = (status, message, refused)
        conn.queue[-1].close_after = True
        conn.pause_reading("error")
        return
    conn.closing = True
    conn.cancel_tick()
    answer_error(conn, status, message, refused)
    conn.close(linger=True)  # the client may still be sending what we refused


def answer_error(conn: ClientConnection, status: int, message: str, refused: Exchange | bytes) -> None:
    """Write an error the proxy answers itself, and count and log it like any other answer."""
    response = error_response(status, message, close=True)
    conn.write(response)
    if isinstance(refused, Exchange):
        record_refused(refused, status, response)
    else:
        record_refusal(conn, status, response, refused, conn.loop.time() - conn.head_started)


def refused_line(conn: ClientConnection) -> bytes:
    """What is known of the request being refused, for the access log: ``-`` when nothing is.

    The target is read only while a head is being parsed (or was just completed and refused):
    otherwise ``url`` is still the previous request's.
    """
    if not conn.url or not (conn.in_head or conn.reject is not None):
        return b"-"
    try:
        method = conn.parser.get_method()
    except httptools.HttpParserError:
        return b"- " + conn.url
    version = conn.parser.get_http_version()
    if version == "0.0":  # the request line is not complete yet
        return b"%s %s" % (method, conn.url)
    return b"%s %s HTTP/%s" % (method, conn.url, version.encode("ascii"))


def record_refused(ex: Exchange, status: int, response: bytes) -> None:
    """The proxy answered ``ex``'s request with ``response`` (an error) before it was forwarded."""
    ex.status = status
    ex.sent_bytes = body_size(response)
    record(ex)


def record_refusal(
    client: ClientConnection, status: int, response: bytes, request_line: bytes, waited: float = 0.0
) -> None:
    """Count and log an answer to a request that never became an exchange (it could not be
    parsed, or the connection was refused): ``request_line`` is what is known of it, or ``-``;
    ``waited`` the seconds since its head began (the access log's request_time)."""
    ex = Exchange(client, b"-", b"", False, False, b"", NO_BODY, [])
    ex.started -= waited
    ex.request_line = request_line
    ex.finished = True
    record_refused(ex, status, response)
