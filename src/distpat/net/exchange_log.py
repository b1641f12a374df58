"""An exchange counted and logged once it is over: the metrics' tally and the access log's line."""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distpat.net.exchange import Exchange

__all__ = ["body_size", "record"]


def body_size(response: bytes) -> int:
    """The body length of a whole response the proxy wrote itself (head and body in one)."""
    end = response.find(b"\r\n\r\n")
    return 0 if end < 0 else len(response) - end - 4


def record(ex: Exchange) -> None:
    """Count ``ex``'s answer in the metrics and hand it to the access log."""
    end = perf_counter()
    ex.request_time = end - ex.started
    state = ex.client.state
    count = state.count_request
    if count is not None:
        upstream = ex.upstream
        received = ex.body_sent + ex.pending_bytes
        if upstream is not None and ex.upstream_started:
            count(ex.status, upstream.name, end - ex.upstream_t0, received, ex.sent_bytes)
        else:
            count(ex.status, None, None, received, ex.sent_bytes)
    callback = state.on_request_done
    if callback is not None:
        callback(ex)
