"""Helpers for the ``distpat redis-shard`` tests: real redis-server shards, the shard proxy, raw RESP.

This is a test helper module, not a test file. It provides:

* :class:`RedisServer` -- one real ``redis-server`` on 127.0.0.1 (no persistence), which can be stopped
  (SIGTERM, as a crash would look to a client: the connection ends) and started again on the same port.
* :func:`redis_servers` -- several of them, all stopped however the block is left.
* :func:`pool_yaml` -- a nutcracker YAML pool over given ports.
* :func:`shard_service` -- an in-process :class:`~distpat.net.redis_shard.ShardService` for YAML text,
  listening on a free port, shut down however the block is left.
* :func:`running_redis_shard` -- ``python -m distpat redis-shard ARGS`` as a subprocess, entered once its
  ports accept, stopped (SIGTERM, then SIGKILL) however the block is left.
* :func:`keys_apart` -- two keys a pool puts on different servers; :func:`commands_run` -- how many
  times a redis-server ran a command (its INFO commandstats).
* :func:`raw_exchange` -- bytes to a port, and everything read back until the peer closes or goes quiet.

Only 127.0.0.1 is a target, every wait has a deadline. A missing ``redis-server`` fails the test with the
Debian package to install; it never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import hiredis
import redis.asyncio as redis

from distpat.config.twemproxy import parse_twemproxy
from distpat.net.redis_shard import ShardPool, ShardService, ShardSettings
from tests.nutcracker import free_ports, port_accepts
from tests.tlskit import Sidecar, require_binary, running_distpat

__all__ = [
    "HOST",
    "blocking_exchange",
    "commands_run",
    "keys_apart",
    "RawSession",
    "RedisServer",
    "Tap",
    "pool_yaml",
    "raw_connection",
    "raw_exchange",
    "raw_pipeline",
    "raw_session",
    "read_lines",
    "read_until_closed",
    "redis_servers",
    "running_redis_shard",
    "shard_service",
    "tap",
]

HOST = "127.0.0.1"
#: Seconds a redis-server or the shard process may take to accept.
START_TIMEOUT = 15.0
#: Seconds a stopped process may take to exit after SIGTERM, before SIGKILL.
STOP_TIMEOUT = 5.0


@dataclass(eq=False)
class RedisServer:
    """A real redis-server on 127.0.0.1:``port``, started and stopped by the test."""

    port: int
    workdir: Path
    password: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def argv(self) -> list[str]:
        binary = require_binary("redis-server", "redis-server")
        argv = [binary, "--save", "", "--appendonly", "no", "--bind", HOST, "--port", str(self.port)]
        argv += ["--dir", str(self.workdir)]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        return argv

    def log(self) -> str:
        try:
            return (self.workdir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def _spawn(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "redis.log", "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def start(self) -> None:
        """Start (or start again on the same port) and wait until it accepts."""
        self._spawn()
        assert self.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not await port_accepts(self.port):
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.process.returncode}:\n{self.log()}")
            if loop.time() > deadline:
                raise AssertionError(f"redis-server did not accept on {self.port} in time:\n{self.log()}")
            await asyncio.sleep(0.02)

    def stop_now(self) -> None:
        """SIGTERM and wait (blocking; SIGKILL after STOP_TIMEOUT)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(STOP_TIMEOUT)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_now)

    def client(self, **options: object) -> redis.Redis:
        """A redis.asyncio client straight to this server (bypassing the proxy)."""
        if self.password is not None:
            options.setdefault("password", self.password)
        return redis.Redis(host=HOST, port=self.port, socket_timeout=10, **options)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def redis_servers(
    workdir: Path, count: int, *, password: str | None = None
) -> AsyncIterator[list[RedisServer]]:
    """``count`` redis-servers on free ports; every one stopped however the block is left."""
    servers = [
        RedisServer(port, workdir / f"redis-{i}", password) for i, port in enumerate(free_ports(count))
    ]
    try:
        for server in servers:
            server._spawn()
        for server in servers:  # spawned together, waited for in turn
            assert server.process is not None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + START_TIMEOUT
            while not await port_accepts(server.port):
                if server.process.poll() is not None or loop.time() > deadline:
                    raise AssertionError(f"redis-server on {server.port} did not start:\n{server.log()}")
                await asyncio.sleep(0.02)
        yield servers
    finally:
        for server in servers:
            await server.stop()


def pool_yaml(
    name: str,
    listen_port: int,
    ports: Sequence[int],
    *,
    hash: str = "fnv1a_64",
    hash_tag: str = "",
    names: Sequence[str] = (),
    extra: Mapping[str, str] = {},
) -> str:
    """One nutcracker pool (block style, as nutcracker requires) over 127.0.0.1 ``ports``."""
    lines = [
        f"{name}:",
        f"  listen: {HOST}:{listen_port}",
        f"  hash: {hash}",
        "  distribution: ketama",
        "  redis: true",
    ]
    if hash_tag:
        lines.append(f'  hash_tag: "{hash_tag}"')
    lines += [f"  {key}: {value}" for key, value in extra.items()]
    lines.append("  servers:")
    for i, port in enumerate(ports):
        label = f" {names[i]}" if i < len(names) else ""
        lines.append(f"   - {HOST}:{port}:1{label}")
    return "\n".join(lines) + "\n"


def keys_apart(pool: ShardPool, prefix: str) -> tuple[bytes, bytes]:
    """Two keys (``PREFIX-N-key``) that ``pool`` puts on different servers (its ring's choice: check
    the shards themselves where it matters)."""
    keys = [f"{prefix}-{i}-key".encode() for i in range(200)]
    other = next(k for k in keys if pool.locate(k) != pool.locate(keys[0]))
    return keys[0], other


async def commands_run(server: RedisServer, name: str) -> int:
    """How many times ``server`` ran command ``name`` (INFO commandstats, asked directly)."""
    async with server.client() as direct:
        stats = await direct.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


@contextlib.asynccontextmanager
async def shard_service(
    yaml_text: str, settings: ShardSettings | None = None, *, stats: bool = False
) -> AsyncIterator[ShardService]:
    """An in-process ShardService over the first pool of ``yaml_text``, on a free 127.0.0.1 port.

    The port is the service's only pool's: ``service.pools[0].port``.
    """
    pools = list(parse_twemproxy(yaml_text).values())[:1]
    service = ShardService(
        lambda: pools, settings=settings, listen=(HOST, 0), stats=(HOST, 0) if stats else None
    )
    await service.start()
    try:
        yield service
    finally:
        await service.shutdown(5.0)


# --------------------------------------------------------------------------
# The distpat redis-shard process


@contextlib.asynccontextmanager
async def running_redis_shard(
    workdir: Path, port: int, *args: str, also: Sequence[int] = ()
) -> AsyncIterator[Sidecar]:
    """``python -m distpat redis-shard ARGS`` until the block is left; entered once ``port`` (and
    every port of ``also``) accepts."""
    # The stats port defaults to nutcracker's 22222: off unless a test asks for one (a later -s wins).
    async with running_distpat("redis-shard", workdir, port, ("--stats-port", "0", *args), also=also) as run:
        yield run


# --------------------------------------------------------------------------
# Raw sockets


@contextlib.asynccontextmanager
async def raw_connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5.0)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def read_until_closed(reader: asyncio.StreamReader, *, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Everything the peer sends until it closes (True) or ``timeout`` seconds pass (False)."""
    data = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return bytes(data), False
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            return bytes(data), False
        except ConnectionError:
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data += chunk


async def read_lines(reader: asyncio.StreamReader, count: int, *, timeout: float = 10.0) -> list[bytes]:
    """``count`` CRLF-ended lines (with their CRLF), within ``timeout`` seconds in all."""

    async def read() -> list[bytes]:
        return [await reader.readuntil(b"\r\n") for _ in range(count)]

    return await asyncio.wait_for(read(), timeout)


async def raw_exchange(port: int, data: bytes, *, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send ``data`` on a new connection; return what came back and whether the peer closed."""
    async with raw_connection(port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        return await read_until_closed(reader, timeout=timeout)


def _blocking_exchange(port: int, data: bytes, timeout: float) -> tuple[bytes, bool]:
    received = bytearray()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        with contextlib.suppress(ConnectionError):  # the peer may close before it has read everything
            sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return bytes(received), False
        except ConnectionError:  # a reset after the data: what came first was read already
            pass
    return bytes(received), True


async def blocking_exchange(port: int, data: bytes, *, timeout: float = 10.0) -> tuple[bytes, bool]:
    """:func:`raw_exchange` over a plain socket, in a thread.

    For a peer that closes while input is still unread: its reset can then overtake the read, and a
    plain ``recv`` still returns the bytes that came before it (asyncio's stream reader would raise).
    """
    return await asyncio.to_thread(_blocking_exchange, port, data, timeout)


def encode(args: Sequence[bytes]) -> bytes:
    """One command as a multibulk request (written here, independently of distpat's codec)."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


async def raw_pipeline(
    port: int, commands: Sequence[Sequence[bytes]], *, timeout: float = 30.0
) -> list[object]:
    """Send every command on one connection in one write; the replies decoded by hiredis, in order.

    Error replies come back as ``hiredis.ReplyError`` objects. Works with any RESP2 server or proxy
    (nutcracker too: no HELLO, no CLIENT SETINFO).
    """
    async with raw_connection(port) as (reader, writer):
        writer.write(b"".join(encode(c) for c in commands))

        async def read() -> list[object]:
            parser = hiredis.Reader()
            replies: list[object] = []
            while len(replies) < len(commands):
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {len(replies)} of {len(commands)} replies")
                parser.feed(chunk)
                while (reply := parser.gets()) is not False:
                    replies.append(reply)
            return replies

        await writer.drain()
        return await asyncio.wait_for(read(), timeout)


@dataclass(eq=False)
class RawSession:
    """One raw connection: a command out, its reply back, decoded by hiredis and as bytes."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parser: hiredis.Reader = field(default_factory=hiredis.Reader)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, *, timeout: float = 10.0) -> tuple[object, bytes]:
        """The next reply: (decoded, its bytes as they came)."""
        raw = bytearray()

        async def read() -> object:
            while (reply := self.parser.gets()) is False:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise ConnectionError(f"closed by the peer; got {bytes(raw)!r}")
                raw.extend(chunk)
                self.parser.feed(chunk)
            return reply

        return await asyncio.wait_for(read(), timeout), bytes(raw)

    async def call(self, *args: bytes | str) -> tuple[object, bytes]:
        await self.send(encode([a.encode() if isinstance(a, str) else a for a in args]))
        return await self.reply()


@contextlib.asynccontextmanager
async def raw_session(port: int) -> AsyncIterator[RawSession]:
    async with raw_connection(port) as (reader, writer):
        yield RawSession(reader, writer)


# --------------------------------------------------------------------------
# A tap: what a client library really sends


@dataclass(eq=False)
class Tap:
    """A TCP relay on 127.0.0.1 that records both directions of every connection through it."""

    upstream: int
    port: int = 0
    to_server: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)

    def commands(self) -> list[list[bytes]]:
        """What clients sent, decoded (multibulk only)."""
        parser = hiredis.Reader()
        parser.feed(bytes(self.to_server))
        out: list[list[bytes]] = []
        while (command := parser.gets()) is not False:
            out.append(command)
        return out

    def replies(self) -> list[object]:
        """What came back, decoded (RESP2 or RESP3); errors as ``hiredis.ReplyError``."""
        parser = hiredis.Reader()
        parser.feed(bytes(self.to_client))
        out: list[object] = []
        while (reply := parser.gets()) is not False:
            out.append(reply)
        return out


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray) -> None:
    try:
        while chunk := await reader.read(65536):
            record += chunk
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def tap(upstream: int) -> AsyncIterator[Tap]:
    """A :class:`Tap` in front of 127.0.0.1:``upstream`` until the block is left."""
    recorder = Tap(upstream)
    handlers: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        handlers.add(me)
        writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(HOST, upstream), 5.0)
            writers.append(up_writer)
            await asyncio.gather(
                _relay(reader, up_writer, recorder.to_server), _relay(up_reader, writer, recorder.to_client)
            )
        finally:
            handlers.discard(me)
            writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    recorder.port = server.sockets[0].getsockname()[1]
    try:
        yield recorder
    finally:
        server.close()
        for writer in writers:  # every relay reads EOF and ends
            writer.close()
        if handlers:
            await asyncio.wait(list(handlers), timeout=5.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5.0)
