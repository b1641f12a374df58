"""Transactions through the Redis ambassador: MULTI/EXEC/DISCARD and WATCH/UNWATCH, on connections of
their own.

The queue is the proxy's (:class:`~distpat.core.redis_tx.Transaction` answers ``+QUEUED`` and the errors).
At EXEC, when every key of the block and of WATCH lives on one server, that server gets ``MULTI``, the
commands and ``EXEC`` in one write on a :class:`TxConnection`, a connection of this client's own (never
the shared one, where other clients' commands would land inside the block: Envoy's redis_proxy does the
same), and the client gets EXEC's reply: the results, or the null of a WATCH that saw a change. Keys on
several servers, a server ejected, a WATCH connection lost: ``-EXECABORT`` with the reason, and nothing
was sent. A server that fails or times out after the block was sent: ``-ERR`` saying the outcome is
unknown (the server ran all of it or none of it: the proxy never splits a block).

WATCH opens the client's connection to its keys' server and sends WATCH there, so a write by anyone
else makes that server's EXEC return null, exactly as Redis does; UNWATCH, DISCARD and EXEC close it.

Order: a WATCH or EXEC goes out only once every earlier command of the client has been answered, and the
client's later commands wait (unread beyond what has arrived) until its reply is in, so a pipelining
client sees its commands run in the order it sent them, across the transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distpat.core.redis_commands import wrong_arity
from distpat.core.redis_tx import Block, Transaction, queue_keys
from distpat.core.resp import OK, ReplyScanner, error
from distpat.errors import RespProtocolError
from distpat.net.redis_server import ServerState, connect, setup_commands

if TYPE_CHECKING:
    from distpat.net.redis_client import RedisClient
    from distpat.net.redis_pool import ShardPool

__all__ = ["TxConnection", "queue_command", "transaction_command"]

log = logging.getLogger("distpat.redis")

Done = Callable[[list[bytes] | str], None]
"""Called once with the request's replies, or with why it failed."""


class TxConnection(asyncio.Protocol):
    """One client's own connection to one server, for WATCH and one MULTI...EXEC block; never pooled.

    One request at a time (:meth:`request`): its bytes, how many replies it gets, and a callback called
    exactly once. ``sent`` says whether the bytes went out, so a failure can say if anything may have run.
    """

    def __init__(self, server: ServerState, proto: int) -> None:
        self.server = server
        self.pool = server.pool
        self.transport: asyncio.Transport | None = None
        self.scanner = ReplyScanner(self.pool.settings.max_reply_bytes)
        self.setup = setup_commands(self.pool.pool, proto)
        self.setup_left = len(self.setup)
        self.lost: str | None = None  # why this connection can no longer be used
        self.data: bytes | None = None  # a request waiting for the connection
        self.expect = 0
        self.replies: list[bytes] = []
        self.done: Done | None = None
        self.sent = False
        self.started = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.server.tx_connections += 1
        task = asyncio.get_running_loop().create_task(self._connect())
        self.pool.tasks.add(task)
        task.add_done_callback(self.pool.tasks.discard)

    async def _connect(self) -> None:
        reason = await connect(self.server, self)
        if reason is not None and self.lost is None:
            self.server.stats["server_err"] += 1
            self.server.failed(time.perf_counter())
            self.fail(f"server {self.server.label} unreachable: {reason}")

    def request(self, data: bytes, expect: int, done: Done) -> None:
        if self.lost is not None:
            done(self.lost)
            return
        self.expect, self.done, self.replies, self.sent = expect, done, [], False
        self.started = time.perf_counter()
        timeout = self.pool.timeout
        if timeout:
            self.timer = asyncio.get_running_loop().call_later(timeout, self._timed_out)
        if self.transport is not None:
            self._write(data)
        else:
            self.data = data

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.sent = True
        stats = self.server.stats
        stats["requests"] += 1
        stats["request_bytes"] += len(data)
        self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.lost is not None:
            transport.close()
            return
        if self.setup:
            transport.write(b"".join(self.setup))  # type: ignore[attr-defined]
        if self.data is not None:
            data, self.data = self.data, None
            self._write(data)

    def data_received(self, data: bytes) -> None:
        try:
            replies = self.scanner.feed(data)
        except RespProtocolError as exc:
            self.fail(f"server {self.server.label} sent an invalid reply: {exc}")
            return
        self.server.stats["response_bytes"] += len(data)
        while replies and self.setup_left:
            first = replies.pop(0)
            self.setup_left -= 1
            if first[:1] in (b"-", b"!"):
                message = first[1:].strip().decode("utf-8", "replace")
                self.fail(f"server {self.server.label} refused the connection setup: {message}")
                return
        if not replies:
            return
        if self.done is None or len(self.replies) + len(replies) > self.expect:
            self.fail(f"server {self.server.label} sent a reply nobody asked for")
            return
        self.replies += replies
        if len(self.replies) == self.expect:
            self.server.stats["responses"] += 1
            self.server.succeeded()
            self.pool.tx_latency.observe(time.perf_counter() - self.started)
            self._finish(self.replies)

    def _finish(self, result: list[bytes] | str) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        done, self.done = self.done, None
        if done is not None:
            done(result)

    def _timed_out(self) -> None:
        self.timer = None
        self.server.stats["server_timedout"] += 1
        timeout = self.pool.timeout or 0.0
        self.fail(f"timeout: server {self.server.label} did not answer in {timeout * 1000:.0f} ms")
        self.server.failed(time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.server.stats["server_eof"] += 1
            self.fail(f"server {self.server.label} closed the connection")

    def fail(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
            self.server.tx_connections -= 1
        if self.transport is not None:
            self.transport.abort()
        self._finish(reason)

    def close(self) -> None:
        """Done with it (EXEC answered, UNWATCH, DISCARD, the client gone): nothing more is sent."""
        if self.lost is None:
            self.lost = "the connection was closed"
            self.server.tx_connections -= 1
        self.done = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()


# -- the commands ---------------------------------------------------------------------------------


def queue_command(
    pool: ShardPool, client: RedisClient, tx: Transaction, args: list[bytes], raw: bytes
) -> None:
    """A command inside MULTI: ``+QUEUED``, or its error (and EXEC will abort)."""
    if not client.authed:
        keys: list[bytes] | bytes = error("NOAUTH Authentication required.")
    else:
        keys = queue_keys(args, allow_scripts=pool.settings.allow_scripts)
    reply = tx.queue(raw, keys)
    if reply[:1] == b"-":  # the command's own error, or the block grown past max_transaction_bytes
        reason = "transaction_queue" if isinstance(keys, bytes) else "transaction_too_large"
        pool.refuse(client, reason, reply)
    else:
        client.answer(reply)


def transaction_command(
    pool: ShardPool, client: RedisClient, name: bytes, args: list[bytes], now: float
) -> None:
    """MULTI, EXEC, DISCARD, WATCH, UNWATCH."""
    tx = client.tx
    if tx is None:
        tx = client.tx = Transaction(pool.settings.max_transaction_bytes)
    if name == b"watch":
        _watch(pool, client, tx, args, now)
    elif len(args) != 1:
        reply = wrong_arity(args[0])
        pool.refuse(client, "wrong_arity", tx.flag(reply) if tx.in_multi else reply)
    elif name == b"multi":
        client.answer(tx.multi())
    elif name == b"exec":
        _exec(pool, client, tx, now)
    elif name == b"discard":
        reply = tx.discard()
        if reply == OK:
            _release_watch(client)
        client.answer(reply)
    else:  # unwatch, outside MULTI (inside, it is queued: keyless, so it flags the block)
        tx.unwatch()
        _release_watch(client)
        client.answer(OK)
    if client.tx is not None and client.tx.idle and client.tx_conn is None:
        client.tx = None


def _release_watch(client: RedisClient) -> None:
    conn, client.tx_conn = client.tx_conn, None
    if conn is not None:
        conn.close()


def _watch(pool: ShardPool, client: RedisClient, tx: Transaction, args: list[bytes], now: float) -> None:
    if len(args) < 2:
        pool.refuse(client, "wrong_arity", wrong_arity(args[0]))
        return
    if tx.in_multi:
        client.answer(error("ERR WATCH inside MULTI is not allowed"))
        return
    keys = args[1:]
    target = pool.one_server([*tx.watched, *keys], now)
    if isinstance(target, bytes):
        pool.refuse(client, "watch_servers", target)
        return
    conn = client.tx_conn
    if conn is not None and (conn.lost is not None or conn.server is not target):
        why = conn.lost or f"its keys now live on {target.label}"
        tx.unwatch()
        _release_watch(client)
        pool.refuse(client, "watch_lost", error(f"ERR the earlier WATCH was lost ({why}): watch again"))
        return
    if conn is None:
        conn = client.tx_conn = TxConnection(target, client.proto)
    tx.watch(keys)
    slot = client.wait()

    def done(result: list[bytes] | str) -> None:
        if isinstance(result, str):
            tx.unwatch()
            _release_watch(client)
            reply = error(f"ERR {result}; the WATCH is not in place")
            pool.count_refusal(client, "server_failed", reply)
        else:
            reply = result[0]
        client.complete(slot, reply)
        pool.release(client)

    data = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)
    client.hold_until(slot, lambda: conn.request(data, 1, done))


def _abort(reason: bytes) -> bytes:
    """``-EXECABORT`` with the reason a reply gave (``-ERR ...`` or ``-CROSSSLOT ...``)."""
    text = reason[1:-2].decode("utf-8", "replace")
    return error(f"EXECABORT Transaction discarded, nothing was applied: {text.removeprefix('ERR ')}")


def _exec(pool: ShardPool, client: RedisClient, tx: Transaction, now: float) -> None:
    watch = client.tx_conn
    if not tx.in_multi:  # "ERR EXEC without MULTI", and the WATCH stays, as in Redis
        reply = tx.exec()
        assert isinstance(reply, bytes)
        client.answer(reply)
        return
    plan = tx.exec()
    if isinstance(plan, bytes):  # aborted, or an empty block: the transaction is over, WATCH too
        _release_watch(client)
        if plan[:1] == b"-":
            pool.refuse(client, "transaction_aborted", plan)
        else:
            client.answer(plan)
        return
    target = pool.one_server(list(plan.keys), now)
    if isinstance(target, bytes):
        _release_watch(client)
        pool.refuse(client, "transaction_servers", _abort(target))
        return
    if watch is not None and watch.lost is not None:
        _release_watch(client)
        pool.refuse(client, "watch_lost", _abort(error(f"ERR the WATCH was lost ({watch.lost})")))
        return
    if watch is not None and watch.server is not target:
        _release_watch(client)
        reason = f"ERR the WATCHed keys are on {watch.server.label}, the block's on {target.label}"
        pool.refuse(client, "transaction_servers", _abort(error(reason)))
        return
    conn = watch if watch is not None else TxConnection(target, client.proto)
    client.tx_conn = conn  # closed with the client if it leaves before the reply
    pool.counters["transactions"] += 1
    slot = client.wait()
    _send_block(pool, client, conn, plan, slot)


def _send_block(
    pool: ShardPool, client: RedisClient, conn: TxConnection, plan: Block, slot: list[Any]
) -> None:
    def done(result: list[bytes] | str) -> None:
        if client.tx_conn is conn:
            client.tx_conn = None
        conn.close()
        if isinstance(result, str):
            outcome = "whether it ran is unknown" if conn.sent else "nothing was sent"
            reply = error(f"ERR {result}; the transaction went to it whole, {outcome}")
            pool.count_refusal(client, "server_failed", reply)
        else:
            reply = result[-1]
            if reply in (b"*-1\r\n", b"_\r\n"):
                pool.counters["transactions_watch_aborted"] += 1
        client.complete(slot, reply)
        if client.tx is not None and client.tx.idle:
            client.tx = None
        pool.release(client)

    client.hold_until(slot, lambda: conn.request(plan.wire(), plan.replies, done))
