"""distpat's own Redis client: one connection, calls pipelined, every outcome delivered as a value.

For a pipeline stage that needs one Redis round trip (a rate limiter, a cache store). A call is a command
(a tuple of bytes), a callback and a timeout; the callback is called exactly once, from the event loop
and never from inside :meth:`RespClient.call`:

* ``done(value, None)`` with the decoded reply (:mod:`distpat.core.resp_decode`): ``bytes`` for a
  simple or bulk string, ``int``, ``None`` for a null, a ``list`` of values (an error inside an array is
  an :class:`~distpat.core.resp_decode.ErrorReply`);
* ``done(None, "ERR ...")`` for an error reply, its text as the server wrote it;
* ``done(None, "unavailable: <reason>")`` when the server could not be asked or did not answer: the
  connect failed or took over ``connect_timeout``, the connection was lost, a reply did not come within
  the call's ``timeout`` (the connection is then closed: the replies behind it cannot be trusted to come),
  the server refused the connection's setup (AUTH, SELECT) or sent something that is not RESP.

Commands called in one event-loop turn are written together, in one write, and replies are matched to
them in order, as the ambassador's server connections do (:mod:`distpat.net.redis_server`). After a
failure the next call connects again, but not before ``retry_after`` seconds (1 s by default): calls
meanwhile fail at once, so a Redis that is down costs a stage nothing but the answer it falls back on.
A connection the server closed while nothing was waiting (an idle timeout) is not a failure: the next call
simply connects again. One connect is one task; a call is no task and no timer of its own (one timer per
connection watches the earliest deadline).

Why this is not the ambassador's ServerConnection generalised: that class is the ambassador's hot path,
and is built around it (the pool's shared flush list, per-server statistics and latency histogram,
ejection, a stalled server pausing every client of the pool, the reply handed on to a client connection
inlined, replies forwarded as bytes, never decoded). Indirection there would cost every proxied reply.
What is the same thing is shared: the framing and its limits (:class:`~distpat.core.resp.ReplyScanner`,
inside :class:`~distpat.core.resp_decode.ReplyDecoder`), the encoding of commands and the connection
setup (:func:`~distpat.core.resp.connection_setup`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from distpat.core.resp import connection_setup, encode_command
from distpat.core.resp_decode import ErrorReply, ReplyDecoder
from distpat.errors import RespProtocolError

__all__ = ["Done", "RespClient"]

Done = Callable[[object, str | None], None]
"""A call's callback: ``(value, None)``, or ``(None, "ERR ...")``, or ``(None, "unavailable: ...")``."""

MAX_REPLY_BYTES = 64 * 1024 * 1024
"""One reply's size, by default: a larger one is a protocol error (the connection goes)."""


class RespClient:
    """A client of one Redis server (``host``, ``port``, over TCP); see the module's docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        password: str | None = None,
        db: int = 0,
        connect_timeout: float = 1.0,
        retry_after: float = 1.0,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.retry_after = retry_after
        self.max_reply_bytes = max_reply_bytes
        self.setup = connection_setup(password=password, db=db)
        self._conn: _Connection | None = None
        self._retry_at = 0.0  # loop time before which calls fail at once
        self._failure = ""  # why the last connection failed
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self._conn is not None else "idle"
        return f"<RespClient {self.host}:{self.port} {state}>"

    def call(self, command: tuple[bytes, ...], done: Done, timeout: float) -> None:
        """Send ``command``; ``done`` is called once with its outcome (never from inside this call)."""
        loop = asyncio.get_running_loop()
        if self._closed:
            loop.call_soon(_deliver, done, None, "unavailable: the client is closed")
            return
        conn = self._conn
        if conn is None:
            if loop.time() < self._retry_at:
                loop.call_soon(_deliver, done, None, f"unavailable: {self._failure}")
                return
            conn = self._conn = _Connection(self, loop)
            task = loop.create_task(conn.connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        conn.call(encode_command(command), done, loop.time() + timeout)

    async def close(self) -> None:
        """Close the connection; calls still waiting get ``unavailable: the client is closed``."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail("the client is closed", failure=False)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _lost(self, conn: _Connection, reason: str, failure: bool) -> None:
        if self._conn is conn:
            self._conn = None
        if failure:
            self._failure = reason
            self._retry_at = conn.loop.time() + self.retry_after


class _Connection(asyncio.Protocol):
    """One connection of a :class:`RespClient`: its calls in order, and the one timer on them."""

    def __init__(self, client: RespClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.decoder = ReplyDecoder(client.max_reply_bytes)
        self.out: list[bytes] = list(client.setup)
        self.setup_left = len(client.setup)  # replies to the setup commands, not any call's
        self.waiting: deque[tuple[Done, float]] = deque()  # each call's callback and deadline
        self.lost: str | None = None
        self.flush_scheduled = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    async def connect(self) -> None:
        client = self.client
        try:
            async with asyncio.timeout(client.connect_timeout):
                await self.loop.create_connection(lambda: self, client.host, client.port)
        except TimeoutError:
            self.fail(f"connect to {client.host}:{client.port}: no answer in {client.connect_timeout:g} s")
        except OSError as exc:
            self.fail(f"connect to {client.host}:{client.port} failed: {exc.strerror or exc}")

    def call(self, data: bytes, done: Done, deadline: float) -> None:
        self.waiting.append((done, deadline))
        self.out.append(data)
        if self.transport is not None and not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)
        if self.timer is None or deadline < self.timer_at:
            self._arm(deadline)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and self.lost is None:
            data = b"".join(self.out)
            self.out.clear()
            self.transport.write(data)

    def _arm(self, deadline: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = deadline
        self.timer = self.loop.call_at(deadline, self._check_deadlines)

    def _check_deadlines(self) -> None:
        self.timer = None
        if not self.waiting or self.lost is not None:
            return
        now = self.loop.time()
        earliest = min(deadline for _, deadline in self.waiting)
        if earliest <= now:
            self.fail("a reply did not come within its call's timeout; the connection was closed")
        else:
            self._arm(earliest)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.lost is not None:
            transport.close()
            return
        self.flush()  # the setup, then what was called while connecting, in one write

    def data_received(self, data: bytes) -> None:
        try:
            values = self.decoder.feed(data)
        except RespProtocolError as exc:
            self.fail(f"the server sent an invalid reply: {exc}")
            return
        waiting = self.waiting
        for value in values:
            if self.lost is not None:  # a callback closed the client
                return
            if self.setup_left:
                self.setup_left -= 1
                if isinstance(value, ErrorReply):
                    self.fail(f"the server refused the connection setup: {value.message}")
                    return
                continue
            if not waiting:
                self.fail("the server sent a reply nobody asked for")
                return
            done, _ = waiting.popleft()
            if isinstance(value, ErrorReply):
                _deliver(done, None, value.message)
            else:
                _deliver(done, value, None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            # Closed by the server while nothing waited (an idle timeout): not a failure.
            failure = bool(self.waiting) or bool(self.setup_left)
            reason = "the server closed the connection" if exc is None else f"connection lost: {exc}"
            self.fail(reason, failure)

    def fail(self, reason: str, failure: bool = True) -> None:
        """Close; every call still waiting gets ``unavailable: reason``, once."""
        if self.lost is not None:
            return
        self.lost = reason
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()
        self.out.clear()
        self.client._lost(self, reason, failure)
        waiting, self.waiting = self.waiting, deque()
        message = f"unavailable: {reason}"
        for done, _ in waiting:
            _deliver(done, None, message)


def _deliver(done: Done, value: object, error: str | None) -> None:
    """Call ``done``; what it raises is reported to the loop, and the connection goes on."""
    try:
        done(value, error)
    except Exception as exc:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to report to
            asyncio.get_running_loop().call_exception_handler(
                {"message": "a RespClient callback raised", "exception": exc}
            )
