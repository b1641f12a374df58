"""An exchange's response beyond the one pass: the general rules, the response hooks, local answers.

The engine forwards most response heads with :class:`~distpat.core.forward.ResponseForwarder`'s
one pass (in :meth:`Exchange.on_response_head`). This is the path for the rest: when hooks are
configured (they see and may change the response's fields), for the rare head the one pass leaves
to core/http's general functions, and for the answer a request hook gave itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distpat.core.forward import other_codings
from distpat.core.hooks import LocalResponse
from distpat.core.http import (
    CHUNKED_BODY,
    UNTIL_CLOSE_BODY,
    Framing,
    forward_response_headers,
    response_head,
)

if TYPE_CHECKING:
    from distpat.net.exchange import Exchange

__all__ = ["answer_locally", "forward_general_response", "run_response_hooks"]


def forward_general_response(
    ex: Exchange,
    status: int,
    headers: list[tuple[bytes, bytes]],
    framing: Framing,
    keep_alive: bool,
    keep: bool,
) -> None:
    """Queue for the client the head of ``ex``'s response, whose body is framed as ``framing``.

    ``keep_alive`` is whether the upstream connection persists, ``keep`` whether the client's does.
    """
    client = ex.client
    out = forward_response_headers(headers, via=client.via)
    drop = client.state.response_drop
    if drop:
        out = [(n, v) for n, v in out if n.lower() not in drop]
        out.extend(client.state.settings.response_fields)
    if ex.view is not None:
        run_response_hooks(ex, status, out)
    kind = framing.kind
    if kind is CHUNKED_BODY or kind is UNTIL_CLOSE_BODY:
        # The body is re-framed: any Content-Length no longer describes it, and
        # codings other than chunked (gzip, ...) must still be declared.
        out = [(n, v) for n, v in out if n.lower() != b"content-length"]
        codings = other_codings(headers)
        if ex.http10:
            ex.close_after = True
            if codings:
                out.append((b"Content-Encoding", codings))  # HTTP/1.0 has no transfer codings
        else:
            ex.rechunk = True
            out.append((b"Transfer-Encoding", codings + b", chunked" if codings else b"chunked"))
    if not keep:
        out.append((b"Connection", b"close"))
        ex.close_after = True
    elif ex.http10:
        out.append((b"Connection", b"keep-alive"))
    ex.until_close = kind is UNTIL_CLOSE_BODY
    ex.upstream_reusable = keep_alive and not ex.until_close
    ex.response_started = True
    ex.to_client.append(response_head(status, out))
    ex.last_io = client.loop.time()


def answer_locally(ex: Exchange, local: LocalResponse) -> None:
    """Answer ``ex`` with the response a request hook gave, after the response hooks saw it."""
    ex.status = local.status
    headers = [*local.headers, (b"Content-Type", local.content_type)]
    run_response_hooks(ex, local.status, headers)
    body = b"" if ex.method == b"HEAD" else local.body
    headers.append((b"Content-Length", b"%d" % len(local.body)))
    ex.close_after = ex.close_after or not ex.keep_alive or not ex.body_done
    if ex.close_after:
        headers.append((b"Connection", b"close"))
    elif ex.http10:
        headers.append((b"Connection", b"keep-alive"))
    ex.sent_bytes = len(body)
    ex.response_started = True
    ex.client.write(response_head(local.status, headers) + body)
    ex.finish()


def run_response_hooks(ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    """Show the response hooks ``ex``'s response head; they may change ``headers`` in place."""
    view = ex.view
    if view is not None:
        now = ex.client.loop.time()
        for hook in ex.client.state.hooks:
            hook.on_response(view, status, headers, now)
