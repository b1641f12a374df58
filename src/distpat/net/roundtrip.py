"""One request written whole to one upstream, and its response read: the carrier under mirror
copies and sub-requests.

A :class:`RoundTrip` takes an idle keep-alive connection of its :class:`~distpat.net.upstream.Upstream`
or opens one (one task per new connection, while it connects, as the exchange does), writes the
request bytes it was given, and reads the response as the connection's
:class:`~distpat.net.upstream.UpstreamHandler`: status, fields, and the body up to a limit (or
none of it, for a mirror). When the response is complete and both sides keep the connection
alive it goes back to the pool; in every other case it is closed, so no connection is ever left
reading a response nobody waits for.

It ends exactly once, through ``on_end`` (never from inside :meth:`RoundTrip.start`), with
:attr:`RoundTrip.error` None for a response, or:

==============  ===========================================================================
``connect``     no connection could be made (``OSError``, or ``connect_timeout`` passed)
``broken``      the connection closed or was reset before the response was complete
``protocol``    the response is not HTTP/1.1 the connection could read (httptools refused it,
                a head over the upstream's limit, ``101``, untrustworthy framing)
``too_large``   the body passed ``max_body``
==============  ===========================================================================

:meth:`RoundTrip.abort` stops it without ``on_end``: the connect is cancelled, the connection
closed. A pooled connection that turns out closed before a byte of the response came is
replaced by a fresh one once, for an idempotent method (RFC 9110 section 9.2.2), as the
exchange does. Passive health is kept as the exchange keeps it: a connect failure counts
towards the upstream's ejection, a connect success clears it; the upstream's ``outstanding``
count covers the time a connection is attached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from distpat.core.http import UNTIL_CLOSE_BODY, response_framing
from distpat.errors import RemoteProtocolError
from distpat.net.batch import WriteBatch
from distpat.net.engine import IDEMPOTENT
from distpat.net.upstream import Upstream, UpstreamConnection

__all__ = ["RoundTrip"]


class RoundTrip:
    """One request's round trip to ``upstream`` (see the module docstring).

    ``max_body``: the response body bytes kept (more fails it with ``too_large``); None reads
    the body and keeps none of it. ``tasks`` holds the connect task while it runs (the owner
    awaits or cancels what is left at shutdown). ``batch``: writes are gathered over the loop
    turn (:mod:`distpat.net.batch`); None writes at once.
    """

    __slots__ = (
        "upstream",
        "data",
        "method",
        "on_end",
        "max_body",
        "connect_timeout",
        "tasks",
        "batch",
        "conn",
        "task",
        "reused",
        "retried",
        "status",
        "headers",
        "body",
        "size",
        "keep_alive",
        "until_close",
        "error",
        "detail",
        "ended",
    )

    def __init__(
        self,
        upstream: Upstream,
        data: bytes,
        *,
        method: bytes,
        on_end: Callable[[RoundTrip], None],
        connect_timeout: float,
        max_body: int | None,
        tasks: set[asyncio.Task[None]],
        batch: WriteBatch | None = None,
    ) -> None:
        self.upstream = upstream
        self.data = data
        self.method = method
        self.on_end = on_end
        self.max_body = max_body
        self.connect_timeout = connect_timeout
        self.tasks = tasks
        self.batch = batch
        self.conn: UpstreamConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.reused = False
        self.retried = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.keep_alive = False
        self.until_close = False
        self.error: str | None = None
        self.detail = ""
        """What went wrong, in words (for a log line); empty after a response."""
        self.ended = False
        """Ended or aborted: nothing more happens."""

    def __repr__(self) -> str:
        state = "ended" if self.ended else "connecting" if self.task is not None else "attached"
        method = self.method.decode("latin-1")
        return f"<RoundTrip {method} to {self.upstream.name} {state} error={self.error}>"

    # -- the connection --------------------------------------------------------------

    def start(self, *, fresh: bool = False) -> None:
        """Take an idle connection and write, or start connecting (always, when ``fresh``);
        returns at once."""
        conn = None if fresh else self.upstream.take_idle()
        if conn is not None:
            self.reused = True
            self._attach(conn)
            return
        self.reused = False
        task = asyncio.ensure_future(self._connect())
        self.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self) -> None:
        upstream = self.upstream
        try:
            conn = await upstream.connect(self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            upstream.record_connect_failure(asyncio.get_running_loop().time())
            self.task = None
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            self._end("connect", f"connect to {upstream.name} failed: {reason}")
            return
        upstream.record_success()
        self.task = None
        if self.ended:  # aborted while the connection was being made: keep it for later
            conn.release(reuse=True)
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.handler = self
        conn.head_request = self.method == b"HEAD"
        self.upstream.outstanding += 1
        transport = conn.transport
        assert transport is not None
        if self.batch is not None:
            self.batch.write(transport, self.data)
        else:
            transport.write(self.data)

    def _detach(self, *, reuse: bool) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.upstream.outstanding -= 1
            conn.release(reuse=reuse)

    def _end(self, error: str | None, detail: str = "") -> None:
        if self.ended:
            return
        self.ended = True
        self.error = error
        self.detail = detail
        self.on_end(self)

    def abort(self) -> None:
        """Stop without ``on_end``: the connection is closed (never pooled mid-response)."""
        if self.ended:
            return
        self.ended = True
        self._detach(reuse=False)
        task, self.task = self.task, None
        if task is not None:
            task.cancel()

    def _fail(self, error: str, detail: str) -> None:
        self._detach(reuse=False)
        self._end(error, detail)

    # -- the response (UpstreamHandler) ----------------------------------------------

    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        if status < 200:
            if status == 101:
                self._fail("protocol", f"{self.upstream.name} switched protocols")
            return  # an interim response: the final one follows
        try:
            framing = response_framing(self.method, status, headers)
        except RemoteProtocolError as exc:
            self._fail("protocol", f"{self.upstream.name}: {exc}")
            return
        self.status = status
        self.headers = headers
        self.keep_alive = keep_alive
        self.until_close = framing.kind is UNTIL_CLOSE_BODY

    def on_response_body(self, data: bytes) -> None:
        self.size += len(data)
        limit = self.max_body
        if limit is None:
            return
        if self.size > limit:
            self._fail("too_large", f"{self.upstream.name}: response body over {limit} bytes")
            return
        self.body.append(data)

    def on_response_complete(self) -> None:
        if not self.status:  # an interim (1xx) response ended
            return
        conn = self.conn
        # Pooled only when nothing of the request is still queued: an upstream that answered
        # before reading it all would read the rest as the next request.
        reuse = (
            self.keep_alive
            and not self.until_close
            and conn is not None
            and conn.transport is not None
            and conn.transport.get_write_buffer_size() == 0
        )
        self._detach(reuse=reuse)
        self._end(None)

    def on_upstream_lost(self, exc: Exception | None) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.upstream.outstanding -= 1
        if self.ended:
            return
        if self.status and self.until_close and exc is None:
            self._end(None)  # a body delimited by the close (RFC 9112 section 6.3 item 8)
            return
        reached = conn is not None and conn.got_data
        if not reached and self.reused and not self.retried and self.method in IDEMPOTENT:
            # A pooled connection the upstream had closed: the request never reached it.
            self.retried = True
            self.reused = False
            self.status = 0
            self.start(fresh=True)
            return
        if type(exc) is ConnectionError:  # UpstreamConnection refused what it read
            self._end("protocol", f"{self.upstream.name}: {exc}")
        else:
            self._end("broken", f"{self.upstream.name} closed the connection: {exc or 'end of stream'}")

    def on_upstream_pause_writing(self) -> None:
        """The request is handed over whole; the owner's timeout bounds a peer that reads none of it."""

    def on_upstream_resume_writing(self) -> None:
        pass

    def flush(self) -> None:
        """Nothing is relayed anywhere while the response arrives."""
