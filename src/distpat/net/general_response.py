"""An exchange's response beyond the one pass: the general rules, and stages' local answers.

The engine forwards most response heads with :class:`~distpat.core.forward.ResponseForwarder`'s
one pass (in :meth:`Exchange.on_response_head`), stages' amendments included. This is the path for
the rest: the rare head the one pass leaves to core/http's general functions, and the answer a
stage gave itself (framed by RFC 9110, after the response stages saw it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distpat.core.framing import reframe_for_client
from distpat.core.http import (
    UNTIL_CLOSE_BODY,
    Framing,
    forward_response_headers,
    response_head,
)
from distpat.core.stage import Amend, Answer, OutcomeKind
from distpat.net.stage_driver import framed, through_stages

if TYPE_CHECKING:
    from distpat.net.exchange import Exchange

__all__ = ["answer_locally", "forward_general_response"]


def forward_general_response(
    ex: Exchange,
    status: int,
    headers: list[tuple[bytes, bytes]],
    framing: Framing,
    keep_alive: bool,
    keep: bool,
    amend: Amend | None = None,
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
    if amend is not None:
        if amend.drop:
            out = [(n, v) for n, v in out if n.lower() not in amend.drop]
        out.extend(amend.add)
    kind = framing.kind
    out, rechunk, close = reframe_for_client(out, headers, kind, http10=ex.http10)
    ex.rechunk = ex.rechunk or rechunk
    if not keep or close:  # as the one pass does: a close-delimited answer to HTTP/1.0 says so
        out.append((b"Connection", b"close"))
        ex.close_after = True
    elif ex.http10:
        out.append((b"Connection", b"keep-alive"))
    ex.until_close = kind is UNTIL_CLOSE_BODY
    ex.upstream_reusable = keep_alive and not ex.until_close
    ex.response_started = True
    ex.to_client.append(response_head(status, out))
    ex.last_io = client.loop.time()


def answer_locally(ex: Exchange, answer: Answer) -> None:
    """Answer ``ex`` with the response a stage gave, after the response stages saw it."""
    if ex.run is not None:
        answer = through_stages(ex, answer)
    ex.outcome_kind = OutcomeKind.LOCAL
    ex.status = answer.status
    ex.close_after = ex.close_after or not ex.keep_alive or not ex.body_done
    data, ex.sent_bytes = framed(ex, answer)
    ex.response_started = True
    ex.client.write(data)
    ex.finish()
