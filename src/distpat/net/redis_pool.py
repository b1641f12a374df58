"""One twemproxy pool served: its listener, its ring over the servers, and the routing of commands.

Each client connection is parsed in whole batches (:class:`~distpat.core.resp.RequestParser`): every
command a read brought is routed at once, and what it adds for each server goes out in one write per server
per event-loop turn. A command whose keys live on several servers (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH)
is split into one fragment per server and the replies are merged.

Failures: a server that does not answer within the pool's ``timeout`` has its connection closed and every
command waiting on it answered with an error; commands for other servers are not touched. With
``auto_eject_hosts``, a server that failed ``server_failure_limit`` times in a row leaves the ring for
``server_retry_timeout`` ms (its keys go to the others meanwhile, as in twemproxy); with ``keep_ring`` it
stays and its keys get errors instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from distpat.core.redis_commands import COMMANDS, SCRIPT_REFUSAL, Kind, command_keys
from distpat.core.redis_local import answer_local
from distpat.core.resp import Command, error, pack_command
from distpat.core.twemproxy_pool import TwemproxyPool
from distpat.errors import RingError
from distpat.net.ratelog import LOG_INTERVAL, RateLog
from distpat.net.redis_client import RedisClient
from distpat.net.redis_fanout import SINGLE_KEY, fanout
from distpat.net.redis_metrics import Latency
from distpat.net.redis_server import ServerConnection, ServerState
from distpat.net.redis_settings import ShardSettings
from distpat.net.redis_tx import queue_command, transaction_command
from distpat.ring import Ring, from_twemproxy

__all__ = ["ShardPool"]

log = logging.getLogger("distpat.redis")

_NOT_QUEUED = frozenset((b"exec", b"discard", b"multi", b"watch", b"quit"))
"""Commands that act at once inside MULTI, as in Redis (the others are queued)."""


def _draw() -> int:
    """32 random bits for twemproxy's ``distribution: random`` (the shell's randomness)."""
    return random.getrandbits(32)


def _end_run(
    conn: ServerConnection, client: RedisClient, slot: list[Any], now: float, size: int, n: int
) -> None:
    """A run of ``n`` commands (``size`` bytes) for ``conn`` is complete: it waits for its replies."""
    conn.inflight.append((client, slot, now, size, n))
    slot[1] = n
    client.queued += n


class ShardPool:
    """One twemproxy pool served: its listener, servers, ring and clients."""

    def __init__(self, pool: TwemproxyPool, settings: ShardSettings | None = None) -> None:
        self.settings = settings or ShardSettings()
        self.pool = pool
        self.name = pool.name
        self.timeout = pool.timeout / 1000 if pool.timeout else None
        self.servers: dict[str, ServerState] = {}
        self.clients: set[RedisClient] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.to_flush: list[ServerConnection] = []
        self.dirty_clients: list[RedisClient] = []
        self.stats = dict.fromkeys(
            (
                "client_eof",
                "client_err",
                "client_connections",
                "server_ejects",
                "forward_error",
                "fragments",
            ),
            0,
        )  # nutcracker's, for its stats JSON; distpat's own counters, for /metrics only:
        self.counters = dict.fromkeys(
            ("client_request_bytes", "client_response_bytes", "transactions", "transactions_watch_aborted"), 0
        )
        self.refusals: dict[str, int] = {}  # answers the proxy gave instead of a server, by reason
        self.refusal_log = RateLog(log, interval=LOG_INTERVAL, clock=time.perf_counter)
        """One line a second per reason, for every refusal of this pool (its clients' and servers' too)."""
        self.latency = Latency()  # from a command's write to its server to the server's reply
        self.tx_latency = Latency()  # the same for a MULTI...EXEC block
        self._client_ids = 0
        self.congested: set[ServerConnection] = set()
        self.turn_pending = False
        self.cache: dict[bytes, ServerState] = {}
        self._server: asyncio.base_events.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self.next_rebuild = 0.0
        self.ring: Ring
        self.locate: Callable[[bytes], str]
        self.loop: asyncio.AbstractEventLoop
        self._set_servers(pool)

    def set_congested(self, conn: ServerConnection, congested: bool) -> None:
        """While a server holds SERVER_BACKLOG bytes it has not read, no client of the pool is read."""
        before = bool(self.congested)
        if congested:
            self.congested.add(conn)
        else:
            self.congested.discard(conn)
        if bool(self.congested) != before:
            if self.congested:
                log.warning("pool %s: server %s is not reading; clients wait", self.name, conn.server.label)
            for client in list(self.clients):
                client.update_reading()

    def next_client_id(self) -> int:
        self._client_ids += 1
        return self._client_ids

    # -- membership -------------------------------------------------------------------

    def _set_servers(self, pool: TwemproxyPool) -> None:
        old = self.servers
        # What every server connection is set up with: a change means new connections for all.
        setup_changed = (pool.redis_auth, pool.redis_db) != (self.pool.redis_auth, self.pool.redis_db)
        servers: dict[str, ServerState] = {}
        for s in pool.servers:
            state = old.get(s.ring_name)
            if state is None or state.server != s or setup_changed:
                if state is not None:
                    state.close()  # a new address, weight or setup: its connections go
                state = ServerState(self, s)
            servers[s.ring_name] = state
        for name, state in old.items():
            if name not in servers:
                state.close()
        self.servers = servers
        self.pool = pool
        self.timeout = pool.timeout / 1000 if pool.timeout else None
        self.rebuild()

    def rebuild(self, now: float | None = None) -> None:
        """The ring over the servers in service (all of them with keep_ring or without auto-eject)."""
        if now is None:
            now = time.perf_counter()
        live = []
        next_rebuild = 0.0
        for state in self.servers.values():
            if state.ejected_until and state.ejected_until <= now:
                state.ejected_until = 0.0  # back in: twemproxy retries it after server_retry_timeout
                state.failures = 0
            if state.ejected_until:
                next_rebuild = min(next_rebuild or state.ejected_until, state.ejected_until)
                if not self.settings.keep_ring:
                    continue
            live.append(state.server)
        self.next_rebuild = next_rebuild
        self.cache = {}
        if not live:
            self.ring = from_twemproxy(self.pool, draw=_draw)
            self.locate = self._nothing_live
            return
        self.ring = from_twemproxy(replace(self.pool, servers=tuple(live)), draw=_draw)
        self.locate = self.ring.get_node

    def _nothing_live(self, key: bytes) -> str:
        raise RingError("every server of the pool is ejected")

    def reload(self, pool: TwemproxyPool) -> None:
        """A new server list (SIGHUP): the ring is rebuilt, removed servers' connections closed."""
        self._set_servers(pool)
        log.info("pool %s: %d servers after reload", self.name, len(self.servers))

    # -- routing --------------------------------------------------------------------------

    def server_for(self, key: bytes, now: float) -> ServerState | bytes:
        state = self.cache.get(key)
        if state is None:
            try:
                state = self.servers[self.locate(key)]
            except RingError:
                return error("ERR every server of the pool is ejected; try again later")
            cache = self.cache
            if len(cache) >= self.settings.key_cache:
                if not self.settings.key_cache:
                    return self._check(state)
                cache.clear()
            cache[key] = state
        return self._check(state) if state.ejected_until else state

    def _check(self, state: ServerState) -> ServerState | bytes:
        if state.ejected_until:
            return error(f"ERR server {state.label} is down (ejected); its keys are not served")
        return state

    # -- refusals ------------------------------------------------------------------------------

    def refuse(self, client: RedisClient, reason: str, reply: bytes) -> None:
        """Answer ``reply`` (an error the proxy decided), counted under ``reason`` and logged."""
        self.count_refusal(client, reason, reply)
        client.answer(reply)

    def count_refusal(self, client: RedisClient, reason: str, reply: bytes) -> None:
        """Count a refusal; log it, or (past one line a second per reason) count it into the next line."""
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        self.refusal_log.log(
            logging.INFO,
            reason,
            "pool %s: client %d: refused (%s): %s",
            self.name,
            client.id,
            reason,
            reply[1:-2].decode("utf-8", "replace"),
        )

    # -- dispatch ------------------------------------------------------------------------------

    def dispatch_batch(self, client: RedisClient, commands: list[Command]) -> None:
        """Route every command of one read. Single-key commands take a short path.

        Consecutive single-key commands for one server are a run: one slot in the client's
        ``waiting`` and one record in the connection's ``inflight`` for all of them, answered with
        their replies together (the server answers them in order, one after another).
        """
        if client.held is not None:  # behind a WATCH or EXEC still waiting for its reply
            client.held.extend(commands)
            return
        now = time.perf_counter()
        if self.next_rebuild and now >= self.next_rebuild:
            self.rebuild(now)
        single = SINGLE_KEY
        server_for = self.server_for
        waiting = client.waiting
        proto = client.proto
        fast = client.authed and client.tx is None
        to_flush = self.to_flush
        pack = pack_command
        cache_get = self.cache.get
        # The run being built: its server, connection, slot, commands and bytes.
        run_state: ServerState | None = None
        run_conn: ServerConnection | None = None
        run_slot: list[Any] = []
        nothing: list[bytes] = []
        run_out = nothing.append  # the run's connection's out.append, once a run starts
        run_n = run_size = 0
        batch = iter(commands)
        for args, raw in batch:
            if fast and len(args) >= 2 and args[0] in single:
                state = cache_get(args[1])
                if state is None or state.ejected_until:
                    found = server_for(args[1], now)
                    if isinstance(found, bytes):
                        if run_conn is not None:
                            _end_run(run_conn, client, run_slot, now, run_size, run_n)
                            run_state = run_conn = None
                        self.refuse(client, "server_down", found)
                        continue
                    state = found
                data = raw if raw is not None else pack(tuple(args))
                if state is run_state:
                    run_n += 1
                    run_size += len(data)
                    run_out(data)
                    continue
                if run_conn is not None:  # _end_run, inlined
                    run_conn.inflight.append((client, run_slot, now, run_size, run_n))
                    run_slot[1] = run_n
                    client.queued += run_n
                conn = state.conns.get(proto)
                if conn is None or conn.closed:
                    conn = state.connection(proto)
                run_state, run_conn = state, conn
                run_slot = [None, 1]
                waiting.append(run_slot)
                run_n, run_size = 1, len(data)
                run_out = conn.out.append
                run_out(data)
                if not conn.flush_scheduled:
                    conn.flush_scheduled = True
                    to_flush.append(conn)
            else:
                if run_conn is not None:
                    _end_run(run_conn, client, run_slot, now, run_size, run_n)
                    run_state = run_conn = None
                self.dispatch(client, args, raw if raw is not None else pack(tuple(args)), now)
                if client.close_after:
                    break
                if client.held is not None:  # a WATCH or EXEC: what follows waits for its reply
                    client.held.extend(batch)
                    break
                fast = client.authed and client.tx is None
                proto = client.proto
        if run_conn is not None:
            _end_run(run_conn, client, run_slot, now, run_size, run_n)

    def release(self, client: RedisClient) -> None:
        """A barrier's reply is in: the commands held behind it go on, in order."""
        held, client.held = client.held, None
        fault, client.held_fault = client.held_fault, None
        if client.closing:
            return
        client.update_reading()
        if held:
            self.dispatch_batch(client, held)
        if fault is not None:
            client.fault(fault)
        client.touch()

    def dispatch(self, client: RedisClient, args: list[bytes], raw: bytes, now: float) -> None:
        name = args[0].lower()
        spec = COMMANDS.get(name)
        tx = client.tx
        if tx is not None and tx.in_multi and name not in _NOT_QUEUED:
            queue_command(self, client, tx, args, raw)
            return
        if not client.authed and name not in (b"auth", b"hello", b"quit"):
            self.refuse(client, "noauth", error("NOAUTH Authentication required."))
            return
        if spec is None:
            self.stats["forward_error"] += 1
            self.refuse(
                client,
                "unknown_command",
                error(
                    f"ERR unknown or unsupported command '{args[0].decode('utf-8', 'replace')}': "
                    "distpat does not know how to shard it"
                ),
            )
            return
        kind = spec.kind
        if kind is Kind.KEYS or (kind is Kind.SCRIPT and self.settings.allow_scripts):
            if spec.simple and len(args) >= spec.arity:
                target = self.server_for(args[1], now)
            else:
                keys = command_keys(args, spec)
                if isinstance(keys, bytes):
                    self.refuse(client, "bad_arguments", keys)
                    return
                target = self.one_server(keys, now)
            if isinstance(target, bytes):
                self.refuse(client, "crossslot" if target[:10] == b"-CROSSSLOT" else "server_down", target)
                return
            target.connection(client.proto).send(raw, client, client.wait(), now)
        elif kind is Kind.FANOUT:
            fanout(self, client, args, raw, spec, now)
        elif kind is Kind.LOCAL:
            pool = self.pool
            local = answer_local(
                name,
                args,
                client,
                password=pool.redis_auth or "",
                db=pool.redis_db,
                waiting=name == b"hello" and any(slot[0] is None for slot in client.waiting),
                watching=client.tx_conn is not None,
            )
            client.answer(local.reply)
            if local.close:
                client.close_after = True
        elif kind is Kind.TRANSACTION:
            transaction_command(self, client, name, args, now)
        else:
            reason = SCRIPT_REFUSAL if kind is Kind.SCRIPT else spec.reason
            self.refuse(
                client,
                "script" if kind is Kind.SCRIPT else "unsupported_command",
                error(
                    f"ERR '{args[0].decode('utf-8', 'replace')}' is not supported by a sharding proxy: "
                    f"{reason}"
                ),
            )

    def one_server(self, keys: list[bytes], now: float) -> ServerState | bytes:
        """The one server every key lives on, or the error reply: keys on several, or a server down."""
        first = self.server_for(keys[0], now)
        if isinstance(first, bytes):
            return first
        for key in keys[1:]:
            other = self.server_for(key, now)
            if other is not first:
                return error(
                    "CROSSSLOT Keys in request don't hash to the same server: use a hash tag "
                    f"({self.pool.hash_tag.decode() or 'none configured'}) to keep them together"
                )
        return first

    # -- batching --------------------------------------------------------------------------------

    def end_turn_soon(self) -> None:
        """Write what this event-loop turn produced once it is over: one write per server and client."""
        self.turn_pending = True
        self.loop.call_soon(self.end_turn)

    def end_turn(self) -> None:
        self.turn_pending = False
        conns, self.to_flush = self.to_flush, []
        for conn in conns:
            conn.flush()
        clients, self.dirty_clients = self.dirty_clients, []
        for client in clients:
            client.flush()

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        listen = self.pool.listen
        host = host if host is not None else listen.host
        port = port if port is not None else listen.port
        if port is None:
            self._server = await self.loop.create_unix_server(
                lambda: RedisClient(self), listen.host, backlog=self.pool.backlog
            )
        else:
            self._server = await self.loop.create_server(
                lambda: RedisClient(self),
                host,
                port,
                backlog=self.pool.backlog,
                family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            )
        if self.pool.preconnect:
            for state in self.servers.values():
                state.connection(2)
        self._tick()
        log.info("pool %s: listening on %s, %d servers", self.name, self.address, len(self.servers))

    @property
    def address(self) -> str:
        if self._server is None or not self._server.sockets:
            return "?"
        name = self._server.sockets[0].getsockname()
        return str(name) if isinstance(name, str) else f"{name[0]}:{name[1]}"

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the pool is not listening; call start() first")
        return int(self._server.sockets[0].getsockname()[1])

    def _tick(self) -> None:
        now = time.perf_counter()  # what commands are stamped with; the loop's timer only schedules
        for state in self.servers.values():
            for conn in list(state.conns.values()):
                conn.timed_out(now)
        if self.next_rebuild and now >= self.next_rebuild:
            self.rebuild(now)
        interval = min(self.timeout / 4, 0.1) if self.timeout else 0.1
        self._ticker = self.loop.call_later(interval, self._tick)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting; let clients get the replies they wait for (up to ``timeout``); close."""
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + timeout
        while any(c.waiting for c in self.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.close()
        if self._ticker is not None:
            self._ticker.cancel()
        for state in self.servers.values():
            for conn in state.conns.values():
                conn.closed = True
                if conn.transport is not None:
                    conn.transport.close()
        for task in list(self.tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def stats_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.stats)
        for state in self.servers.values():
            conns = [c for c in state.conns.values() if not c.closed]
            out[state.name] = {
                **state.stats,
                "server_connections": len(conns),
                "in_queue": sum(entry[4] for c in conns for entry in c.inflight),
                "in_queue_bytes": sum(
                    entry[3] for c in conns for entry in c.inflight
                ),  # a run: until its last reply
                "out_queue": sum(len(c.out) for c in conns),
                "out_queue_bytes": sum(len(b) for c in conns for b in c.out),
            }
        return out
