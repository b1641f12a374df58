"""A client's request forwarded through core/http's general functions.

The engine forwards most requests with :class:`~distpat.core.forward.RequestForwarder`'s one
pass. This is the path for the rest: the rare request the one pass leaves to the general rules
(an absolute-form target, a Connection field naming other fields), and every request when a
stage reads all of a request's fields. Both produce the same head for the same request
(tests/test_core_forward.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from distpat.core.framing import expects_continue
from distpat.core.http import (
    CHUNKED_BODY,
    NO_HOST,
    Framing,
    forward_request_headers,
    has_host,
    origin_form,
    replace_host,
    request_framing,
    request_head,
)
from distpat.errors import RemoteProtocolError

if TYPE_CHECKING:
    from distpat.net.server import ClientConnection

__all__ = ["forward_general"]

log = logging.getLogger("distpat.proxy")


def forward_general(
    conn: ClientConnection, method: bytes, http10: bool, headers: list[tuple[bytes, bytes]]
) -> tuple[Framing, bytes, bool, bytes]:
    """``conn``'s request through core/http's general functions.

    Returns its framing, the head to send upstream, whether it expects 100-continue, and its
    target in origin form.

    An absolute-form target is forwarded in origin form, its authority replacing Host (RFC 9112
    section 3.2.2); an HTTP/1.0 request without Host then gets one.
    """
    if not http10 and not has_host(headers):
        raise RemoteProtocolError(NO_HOST, status=400)
    settings = conn.state.settings
    framing = request_framing(headers, version=(1, 0) if http10 else (1, 1))
    target, authority = origin_form(conn.url)
    if authority is not None:
        headers = replace_host(headers, authority)
        if http10 and not has_host(headers):  # HTTP/1.0 without Host: the target names it
            headers.insert(0, (b"Host", authority))
    expect_continue = False
    kept: list[tuple[bytes, bytes]] = []
    drop = conn.state.request_drop
    underscores = settings.underscores_in_headers
    for name, value in headers:
        if drop and name.lower() in drop:
            continue
        if not underscores and b"_" in name:
            log.debug("request field %r dropped: its name has '_' (underscores_in_headers off)", name)
            continue
        if name.lower() == b"expect":
            expect_continue = expects_continue(value)  # answered by the engine, as nginx does
            continue
        kept.append((name, value))
    out = forward_request_headers(
        kept, client_addr=conn.peer, scheme=settings.scheme, via=conn.via, forwarded=settings.forwarded
    )
    out.extend(conn.extra_request)
    if framing.kind is CHUNKED_BODY:
        out.append((b"Transfer-Encoding", b"chunked"))
    return framing, request_head(method, target, out), expect_continue, target
