"""A client connection's timeouts: one timer per connection, not one per request.

State changes on a :class:`ClientConnection` only note the time (``head_started``,
``idle_since``, the exchange's ``last_io``); a tick that fires at least every ``tick_every``
seconds (the shortest timeout) compares them with the clock, acts on the deadlines passed --
408 for a head not received in time, a timed-out exchange, an idle keep-alive connection closed
-- and re-arms itself for the next deadline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distpat.net.refusal import protocol_error

if TYPE_CHECKING:
    from distpat.net.server import ClientConnection

__all__ = ["ensure_tick", "stop_ticking", "tick"]


def ensure_tick(conn: ClientConnection, when: float) -> None:
    """Have ``conn``'s tick fire at ``when`` at the latest."""
    if conn.timer is None or when < conn.tick_at:
        stop_ticking(conn)
        conn.tick_at = when
        conn.timer = conn.loop.call_at(when, tick, conn)


def stop_ticking(conn: ClientConnection) -> None:
    """Cancel ``conn``'s timer, if armed."""
    if conn.timer is not None:
        conn.timer.cancel()
        conn.timer = None


def tick(conn: ClientConnection) -> None:
    """Act on every deadline of ``conn`` that has passed, and re-arm for the next one."""
    conn.timer = None
    if conn.closing:
        return
    settings = conn.state.settings
    now = conn.loop.time()
    due = now + conn.tick_every
    if conn.in_head or conn.in_head_or_new:
        deadline = conn.head_started + settings.header_timeout
        if now >= deadline:
            protocol_error(conn, 408, "request headers not received in time")
            if conn.closing:
                return
        else:
            due = min(due, deadline)
    if conn.queue:
        ex = conn.queue[0]
        if ex.conn is not None or ex.upstream_started:
            deadline = ex.last_io + settings.response_timeout
            if now >= deadline:
                ex.timed_out()
                if conn.closing:
                    return
            else:
                due = min(due, deadline)
    elif not conn.in_head and conn.parsing is None:
        deadline = conn.idle_since + settings.keepalive_timeout
        if now >= deadline:
            conn.close()
            return
        due = min(due, deadline)
    ensure_tick(conn, due)
