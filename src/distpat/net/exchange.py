"""One request and its response: the link between a client connection and an upstream connection."""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import TYPE_CHECKING

from distpat.core.amend import amend_head
from distpat.core.http import (
    CHUNKED_BODY,
    LAST_CHUNK,
    NO_BODY,
    UNTIL_CLOSE_BODY,
    BodyKind,
    chunk,
    error_response,
    forward_response_headers,
    response_framing,
    response_head,
)
from distpat.core.pipeline import Run
from distpat.core.stage import Amend, Answer, OutcomeKind
from distpat.errors import RemoteProtocolError
from distpat.net.engine import IDEMPOTENT, Cancellable
from distpat.net.exchange_log import body_size, record
from distpat.net.general_response import answer_locally, forward_general_response
from distpat.net.pool import UpstreamGroup
from distpat.net.stage_driver import (
    body_captured,
    done,
    error_answer,
    mirror_data,
    replace_response,
    respond,
)
from distpat.net.upstream import Upstream, UpstreamConnection

if TYPE_CHECKING:
    from distpat.net.server import ClientConnection

__all__ = ["Exchange"]

log = logging.getLogger("distpat.proxy")

_NOT_TRIED: frozenset[Upstream] = frozenset()


class Exchange:
    """One request and its response, linking a client connection to an upstream connection."""

    __slots__ = (
        "client",
        "method",
        "target",
        "http10",
        "keep_alive",
        "head",
        "body",
        "body_sent",
        "body_done",
        "pending_body",
        "pending_bytes",
        "upstream",
        "conn",
        "reused",
        "tried",
        "status",
        "response_started",
        "informational",
        "rechunk",
        "close_after",
        "upstream_reusable",
        "sent_bytes",
        "started",
        "upstream_started",
        "finished",
        "last_io",
        "to_client",
        "to_upstream",
        "local",
        "run",
        "pool",
        "order",
        "waiting",
        "start_deferred",
        "pending",
        "leads",
        "captured",
        "capture_left",
        "body_complete",
        "mirrors",
        "mirror_buf",
        "mirror_bytes",
        "response_fields",
        "discard",
        "outcome_kind",
        "until_close",
        "expect_continue",
        "request_headers",
        "needs_host",
        "upstream_t0",
        "request_time",
        "request_line",
    )

    def __init__(
        self,
        client: ClientConnection,
        method: bytes,
        target: bytes,
        http10: bool,
        keep_alive: bool,
        head: bytes,
        body: BodyKind,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.client = client
        self.method = method
        self.target = target
        self.http10 = http10
        self.keep_alive = keep_alive
        self.head = head
        self.body = body  # how the request body is framed
        self.body_sent = 0
        self.body_done = body is NO_BODY
        self.pending_body: list[bytes] | None = None  # body bytes that arrived before an upstream connection
        self.pending_bytes = 0
        self.upstream: Upstream | None = None
        self.conn: UpstreamConnection | None = None
        self.reused = False
        self.tried: frozenset[Upstream] = _NOT_TRIED  # upstreams that failed this request (not ``upstream``)
        self.status = 0
        self.response_started = False
        self.informational = False
        self.rechunk = False
        self.close_after = False
        self.upstream_reusable = False
        self.sent_bytes = 0
        # Durations are read from perf_counter, which resolves microseconds (uvloop's loop.time()
        # advances in whole milliseconds); the loop's clock stays for timers (last_io, ...).
        self.started = perf_counter()  # its head is complete (the access log's request_time)
        self.upstream_started = 0.0  # loop time, for the response timeout
        self.upstream_t0 = 0.0  # perf_counter at the same moment, for the upstream's response time
        self.request_time = 0.0  # seconds from head complete to finish, set by finish()
        self.request_line: bytes | None = None  # only for a refusal: what could be parsed, or "-"
        self.finished = False
        self.last_io = 0.0  # the client connection's tick times the exchange out from here
        self.to_client: list[bytes] = []  # coalesced: one write per upstream read
        self.to_upstream: list[bytes] = []  # coalesced: one write per client read
        self.until_close = False  # the response body ends when the upstream closes
        self.expect_continue = False  # the client waits for 100 Continue before its body
        self.local: Answer | None = None  # a stage's answer (or the engine's, for a stage's fault)
        # The pipeline (net/stage_driver.py): the run, what it chose, what it waits for
        self.run: Run | None = None
        self.pool: UpstreamGroup = client.state.upstreams
        self.order: tuple[Upstream, ...] = ()  # a stage's preference order: failover keeps to it
        self.waiting = False  # a Fetch, Call or Join is being carried out
        self.start_deferred = False  # start() came while waiting: it runs when the wait ends
        self.pending: Cancellable | None = None
        self.leads: list[bytes] = []  # flights this request leads (Join)
        self.captured: list[bytes] | None = None  # the response body, for a stage (Forward.capture)
        self.capture_left = 0
        self.body_complete = False
        self.mirrors: tuple[UpstreamGroup, ...] = ()
        self.mirror_buf: list[bytes] | None = None  # what went to the upstream, for the mirrors
        self.mirror_bytes = 0
        self.response_fields: tuple[tuple[bytes, bytes], ...] = ()
        self.discard = False  # a stage replaced the response: the upstream's body is read and dropped
        self.outcome_kind = OutcomeKind.ANSWERED
        self.request_headers = headers  # as received, for the access log
        self.needs_host = False  # an HTTP/1.0 request without Host: the upstream's name is sent

    # -- finding an upstream ------------------------------------------------------

    def start(self) -> None:
        if self.waiting:  # a stage's effect is being carried out: this runs again once it is done
            self.start_deferred = True
            return
        if self.expect_continue:
            self.expect_continue = False
            # never before a local answer (RFC 9110 section 10.1.1: the body is not wanted then)
            if self.local is None and not self.http10 and not self.body_done:
                self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.local is not None:
            answer_locally(self, self.local)
            return
        upstream = self.pool.choose(self.tried, self.order)
        if upstream is None:
            self.fail_local(502, "no upstream available")
            return
        self.upstream = upstream
        conn = upstream.take_idle()
        if conn is not None:
            self.reused = True
            self.attach(conn)
            return
        self.reused = False
        task = asyncio.ensure_future(self._connect(upstream))
        tasks = self.client.state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _connect(self, upstream: Upstream) -> None:
        loop = self.client.loop
        timeout = self.client.state.settings.connect_timeout
        try:
            conn = await upstream.connect(timeout)
        except (OSError, TimeoutError) as exc:
            upstream.record_connect_failure(loop.time())
            if self.finished:
                return
            self.tried = self.tried | {upstream}
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            log.warning("upstream %s: connect failed: %s", upstream.name, reason)
            if self.body_sent == 0 and self.pool.untried(self.tried, self.order):
                # Nothing reached the upstream (no connection was made): any method may go to the
                # next one, as nginx's proxy_next_upstream does for a connect error. A request that
                # reached an upstream and is not idempotent is never sent again (_upstream_broken).
                self.start()
            else:
                self.fail_local(502, f"upstream {upstream.name} unreachable: {reason}")
            return
        upstream.record_success()
        if self.finished:  # the client went away while we connected: keep the connection
            conn.release(reuse=True)
            return
        self.attach(conn)

    def attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.handler = self
        upstream = conn.upstream
        upstream.outstanding += 1
        self.upstream_started = self.last_io = self.client.loop.time()  # the response timeout runs from here
        self.upstream_t0 = perf_counter()
        if self.client.write_paused:
            conn.pause_reading()
        conn.head_request = self.method == b"HEAD"
        if self.needs_host:  # HTTP/1.1 requires Host; as nginx's $proxy_host, the upstream's host:port
            line_end = self.head.index(b"\r\n") + 2
            self.to_upstream.append(self.head[:line_end] + b"Host: " + upstream.host_field + b"\r\n")
            self.to_upstream.append(self.head[line_end:])
        else:
            self.to_upstream.append(self.head)
        if self.pending_body:
            data = b"".join(self.pending_body)
            self.pending_body = None
            self.pending_bytes = 0
            self._send_body(data)
            self.client.resume_reading("buffer")
        if self.body_done and self.body is CHUNKED_BODY:
            self.to_upstream.append(LAST_CHUNK)
        if not self.client.feeding:  # else the client's read handler flushes once at its end
            self.flush_upstream()

    def flush_upstream(self) -> None:
        out, conn = self.to_upstream, self.conn
        if out and conn is not None:
            data = b"".join(out) if len(out) > 1 else out[0]
            out.clear()
            if conn.transport is not None and not conn.closed:
                self.client.state.batch.write(conn.transport, data)
            if self.mirror_buf is not None:
                mirror_data(self, data)

    def flush(self) -> None:
        """Write what the upstream's last read produced for the client, in one write."""
        out = self.to_client
        if out:
            self.client.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()

    # -- the request body ----------------------------------------------------------

    def _send_body(self, data: bytes) -> None:
        assert self.conn is not None
        self.body_sent += len(data)
        self.last_io = self.client.loop.time()
        self.to_upstream.append(chunk(data) if self.body is CHUNKED_BODY else data)

    def feed_body(self, data: bytes) -> None:
        if self.conn is not None:
            self._send_body(data)
            return
        if self.pending_body is None:
            self.pending_body = []
        self.pending_body.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > self.client.state.settings.pipeline_buffer_bytes:
            self.client.pause_reading("buffer")

    def end_body(self) -> None:
        self.body_done = True
        if self.conn is not None and self.body is CHUNKED_BODY:
            self.to_upstream.append(LAST_CHUNK)

    # -- the response (UpstreamHandler) ----------------------------------------------------

    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        client = self.client
        if status < 200:
            if status == 101:
                self._upstream_broken(ConnectionError("upstream switched protocols"))
                return
            self.informational = True
            if not self.http10:
                self.to_client.append(
                    response_head(status, forward_response_headers(headers, via=client.via))
                )
            return
        self.status = status
        # Close after this response: asked to; or the request body is still
        # arriving (an early answer: the rest cannot be read past); or
        # draining and nothing else is queued behind this request.
        keep = (
            self.keep_alive
            and not self.close_after
            and self.body_done
            and not (client.state.draining and len(client.queue) <= 1 and client.parsing is None)
        )
        run = self.run
        amend = replaced = None
        respond_lines = b""
        if run is not None:
            pipeline = client.state.pipeline
            if pipeline is not None and pipeline.wants_response:
                amend, replaced = respond(self, status, headers)
            else:  # only Forward.respond fields, if any: added straight to the head
                if self.captured is not None or (pipeline is not None and pipeline.wants_done):
                    self.response_fields = tuple(headers)  # for on_body and the Outcome
                forward = run.plan
                if forward is not None and forward.respond:
                    respond_lines = forward.respond_lines
        try:
            plan = client.state.responses.forward(self.method, status, headers, self.http10, keep)
        except RemoteProtocolError as exc:
            self._upstream_broken(ConnectionError(str(exc)))
            return
        if plan is not None:  # the one-pass form
            body, head, self.rechunk, self.close_after = plan
            self.until_close = body is UNTIL_CLOSE_BODY
            self.upstream_reusable = keep_alive and not self.until_close
            self.response_started = True
            if amend is not None:
                head = amend_head(head, add=amend.add, drop=amend.drop)
            elif respond_lines:
                head = head[:-2] + respond_lines + b"\r\n"
            self.to_client.append(head)
            self.last_io = client.loop.time()  # the response timeout runs from here
        else:
            try:
                framing = response_framing(self.method, status, headers)
            except RemoteProtocolError as exc:
                self._upstream_broken(ConnectionError(str(exc)))
                return
            if amend is None and respond_lines and run is not None and run.plan is not None:
                amend = Amend(run.plan.respond)
            forward_general_response(self, status, headers, framing, keep_alive, keep, amend)
        if replaced is not None:
            replace_response(self, replaced)

    def on_response_body(self, data: bytes) -> None:
        self.last_io = self.client.loop.time()
        captured = self.captured
        if captured is not None and self.status:
            self.capture_left -= len(data)
            if self.capture_left >= 0:
                captured.append(data)
            else:
                self.captured = None  # larger than the stage wanted: not captured at all
        if self.discard:
            return
        self.sent_bytes += len(data)
        self.to_client.append(chunk(data) if self.rechunk else data)

    def on_response_complete(self) -> None:
        if self.informational and not self.response_started:
            self.informational = False
            return
        if self.rechunk:
            self.to_client.append(LAST_CHUNK)
        self.flush()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.upstream.outstanding -= 1
            conn.release(reuse=self.upstream_reusable and self.body_done)
        if self.captured is not None:
            self.body_complete = True
            body_captured(self)
        self.finish()

    def on_upstream_lost(self, exc: Exception | None) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and self.upstream is not None:
            self.upstream.outstanding -= 1
        if self.finished:
            return
        if self.response_started:
            if exc is None and self.until_close and self.status:
                # a close-delimited response ends with the connection (and only such a one:
                # a Content-Length or chunked body cut short is an upstream failure)
                if self.rechunk:
                    self.to_client.append(LAST_CHUNK)
                self.flush()
                self.finish()
            else:
                self.flush()
                self.outcome_kind = OutcomeKind.UPSTREAM_FAILED
                self.client.abort("upstream closed mid-response")
            return
        reached = conn is not None and conn.got_data
        self._upstream_broken(exc or ConnectionError("upstream closed the connection"), reached=reached)

    def on_upstream_pause_writing(self) -> None:
        self.client.pause_reading("upstream")

    def on_upstream_resume_writing(self) -> None:
        self.client.resume_reading("upstream")

    # -- failure and completion ---------------------------------------------------------

    def _upstream_broken(self, exc: Exception, *, reached: bool = True) -> None:
        retry = (
            not reached  # not one byte of a response: the request never reached the upstream
            and self.reused
            and self.method in IDEMPOTENT
            and self.body is NO_BODY
            and not self.response_started
        )
        self._release(reuse=False)
        if retry:
            # A pooled connection the upstream had already closed: the request
            # never reached it. Try again on a fresh connection.
            self.reused = False
            self.start()
            return
        name = self.upstream.name if self.upstream else "?"
        self.fail_local(502, f"upstream {name} failed: {exc}")

    def _release(self, *, reuse: bool) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.upstream is not None:
                self.upstream.outstanding -= 1
            conn.release(reuse=reuse)

    def timed_out(self) -> None:
        """Called by the client connection's tick once ``last_io`` is a response timeout old."""
        if self.finished:
            return
        if self.response_started:
            self._release(reuse=False)
            self.outcome_kind = OutcomeKind.TIMED_OUT
            self.client.abort("upstream stopped sending")
            return
        name = self.upstream.name if self.upstream else "?"
        self._release(reuse=False)
        self.fail_local(
            504, f"upstream {name} did not answer in {self.client.state.settings.response_timeout:g}s"
        )

    def fail_local(self, status: int, message: str) -> None:
        """Answer the client ourselves (the upstream is unreachable, slow or broken)."""
        if self.finished:
            return
        self._release(reuse=False)
        self.to_client.clear()
        self.outcome_kind = OutcomeKind.TIMED_OUT if status == 504 else OutcomeKind.UPSTREAM_FAILED
        self.status = status
        self.close_after = self.close_after or not self.keep_alive or not self.body_done
        if self.run is not None:  # through the response stages (stale-if-error)
            response, self.sent_bytes = error_answer(self, status, message)
        else:
            response = error_response(status, message, close=self.close_after)
            self.sent_bytes = body_size(response)
        self.client.write(response)
        self.response_started = True
        self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        record(self)
        if self.run is not None:
            done(self, self.outcome_kind)
        self.client.exchange_finished(self)

    def abandon(self) -> None:
        """The client went away: drop the upstream connection and everything pending."""
        if self.finished:
            return
        self.finished = True
        self._release(reuse=False)
        self.pending_body = None
        if self.run is not None:
            failed = self.outcome_kind is not OutcomeKind.ANSWERED
            done(self, self.outcome_kind if failed else OutcomeKind.CLIENT_GONE)
