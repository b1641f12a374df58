"""Drive a real nutcracker (twemproxy) as an oracle for placement tests.

This is a test helper module, not a test file. It provides:

* :class:`StandInRedis` -- a tiny asyncio RESP server on 127.0.0.1 that answers
  ``GET`` with a nil bulk (``$-1``) and everything else with ``+OK``, and
  records the key (second array element) of every command it receives.
* :class:`PoolSpec` and :func:`render_config` -- a nutcracker YAML file for one
  or more pools.
* :func:`running_nutcracker` -- an async context manager that starts
  ``nutcracker -c FILE -s STATS -a 127.0.0.1 -o LOG`` and waits until every
  pool's listen port accepts, then stops it (SIGTERM, then SIGKILL) however
  the block is left.
* :func:`send_gets` -- pipeline ``GET key`` for many keys through one pool.
* :func:`nutcracker_placement` -- all of the above in one call: which server
  does nutcracker pick for each key, for a pool of stand-in servers.

Only 127.0.0.1 is ever a target, every wait has a deadline and every loop a
bound. When ``nutcracker`` is not on PATH the helpers fail the calling test
(they never skip) with the install command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "HOST",
    "NutcrackerRun",
    "PoolSpec",
    "ServerEntry",
    "StandInRedis",
    "TwemproxyServerSpec",
    "free_ports",
    "nutcracker_binary",
    "nutcracker_placement",
    "read_stats",
    "nutcracker_accepts",
    "port_accepts",
    "render_config",
    "running_nutcracker",
    "running_nutcracker_config",
    "send_gets",
    "stand_in_servers",
]

HOST = "127.0.0.1"

#: Longest request or key the stand-in accepts; longer input closes the link.
MAX_BULK = 1 << 20
#: Seconds to wait for nutcracker to accept on every listen port.
START_TIMEOUT = 10.0
#: Seconds to wait for nutcracker to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 3.0
#: Seconds one :func:`send_gets` call may take in total.
ROUTE_TIMEOUT = 15.0


def nutcracker_binary() -> str:
    """Path of the ``nutcracker`` executable; fails the test when missing."""
    path = shutil.which("nutcracker")
    if path is None:
        pytest.fail(
            "nutcracker (twemproxy) is not on PATH; the oracle tests need the "
            "real binary: run `apt-get install -y nutcracker`",
            pytrace=False,
        )
    return path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    They are drawn below the kernel's ephemeral range, so that no outgoing
    connection (of a client, a proxy or a server under test) can be given one
    of them as its local port before the test listens on it: a port from
    ``bind(0)`` is ephemeral, and a busy suite collided on one. Each is
    checked by binding it; the sockets are held until all are picked, so the
    ports are distinct.
    """
    low = 10_000
    high = max(low + 1000, _ephemeral_range()[0])
    rng = random.Random()
    socks: list[socket.socket] = []
    try:
        for _ in range(count * 50):  # bounded: a few taken ports are skipped
            if len(socks) == count:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((HOST, rng.randrange(low, high)))
            except OSError:
                s.close()
                continue
            socks.append(s)
        if len(socks) < count:
            raise RuntimeError(f"could not find {count} free ports between {low} and {high}")
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------
# The stand-in backend


class _RespParseError(Exception):
    pass


def _parse_command(buf: bytearray) -> tuple[list[bytes], int] | None:
    """Parse one RESP array of bulk strings from the front of ``buf``.

    Returns the arguments and the number of bytes consumed, or ``None`` when
    more bytes are needed.
    """
    if not buf:
        return None
    if buf[0:1] != b"*":
        raise _RespParseError(f"expected an array, got {bytes(buf[:20])!r}")
    eol = buf.find(b"\r\n")
    if eol < 0:
        return None
    count = int(buf[1:eol])
    if not 0 <= count <= 1024:
        raise _RespParseError(f"array of {count} elements")
    pos = eol + 2
    args: list[bytes] = []
    for _ in range(count):
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        if buf[pos : pos + 1] != b"$":
            raise _RespParseError("expected a bulk string")
        size = int(buf[pos + 1 : eol])
        if not 0 <= size <= MAX_BULK:
            raise _RespParseError(f"bulk of {size} bytes")
        start = eol + 2
        if len(buf) < start + size + 2:
            return None
        args.append(bytes(buf[start : start + size]))
        pos = start + size + 2
    return args, pos


@dataclass(eq=False)
class StandInRedis:
    """A recording RESP server on 127.0.0.1 (port 0 picks a free one)."""

    port: int = 0
    received: list[bytes] = field(default_factory=list)
    _server: asyncio.Server | None = None

    async def start(self) -> StandInRedis:
        self._server = await asyncio.start_server(self._serve, HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buf += chunk
                if len(buf) > 4 * MAX_BULK:
                    return
                out = bytearray()
                while (parsed := _parse_command(buf)) is not None:
                    args, used = parsed
                    del buf[:used]
                    if len(args) >= 2:
                        self.received.append(args[1])
                    is_get = bool(args) and args[0].upper() == b"GET"
                    out += b"$-1\r\n" if is_get else b"+OK\r\n"
                if out:
                    writer.write(out)
                    await writer.drain()
        except (_RespParseError, ValueError, ConnectionError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def stand_in_servers(count: int, ports: Sequence[int | None] = ()) -> AsyncIterator[list[StandInRedis]]:
    """Start ``count`` stand-in servers; close them all on the way out."""
    servers: list[StandInRedis] = []
    try:
        for i in range(count):
            port = ports[i] if i < len(ports) else None
            servers.append(await StandInRedis(port=port or 0).start())
        yield servers
    finally:
        for srv in servers:
            await srv.close()


# --------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True, slots=True)
class ServerEntry:
    """One ``servers:`` line: ``address:weight [name]``."""

    address: str
    weight: int = 1
    name: str | None = None

    def line(self) -> str:
        text = f"{self.address}:{self.weight}"
        return f"{text} {self.name}" if self.name else text


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One nutcracker pool of a generated configuration."""

    name: str
    listen_port: int
    servers: tuple[ServerEntry, ...]
    hash: str = "fnv1a_64"
    distribution: str = "ketama"
    hash_tag: str = ""
    redis: bool = True
    extra: Mapping[str, str] = field(default_factory=dict)


def _yaml_quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def render_config(pools: Iterable[PoolSpec]) -> str:
    """nutcracker YAML (block style only, as nutcracker requires)."""
    lines: list[str] = []
    for pool in pools:
        lines.append(f"{pool.name}:")
        lines.append(f"  listen: {HOST}:{pool.listen_port}")
        lines.append(f"  hash: {pool.hash}")
        lines.append(f"  distribution: {pool.distribution}")
        if pool.hash_tag:
            lines.append(f"  hash_tag: {_yaml_quote(pool.hash_tag)}")
        lines.append(f"  redis: {'true' if pool.redis else 'false'}")
        lines.append("  timeout: 5000")
        for key, value in pool.extra.items():
            lines.append(f"  {key}: {value}")
        lines.append("  servers:")
        lines.extend(f"    - {_yaml_quote(s.line())}" for s in pool.servers)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# The nutcracker process


@dataclass(frozen=True, slots=True)
class NutcrackerRun:
    """A running nutcracker: where it listens and where it logs."""

    process: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path
    stats_port: int
    listen: Mapping[str, int]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


async def port_accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=STOP_TIMEOUT)


@contextlib.asynccontextmanager
async def running_nutcracker(pools: Sequence[PoolSpec], workdir: Path) -> AsyncIterator[NutcrackerRun]:
    """Run nutcracker for ``pools`` until the block is left (see below)."""
    listen = {p.name: p.listen_port for p in pools}
    async with running_nutcracker_config(render_config(pools), listen, workdir) as run:
        yield run


@contextlib.asynccontextmanager
async def running_nutcracker_config(
    config_text: str, listen: Mapping[str, int], workdir: Path
) -> AsyncIterator[NutcrackerRun]:
    """Run nutcracker with ``config_text`` until the block is left.

    ``listen`` maps each pool to its 127.0.0.1 listen port; all of them and
    the stats port must accept before the block is entered. The configuration,
    nutcracker's log (``-o``) and its stdout/stderr are written under
    ``workdir``. Raises ``RuntimeError`` (with the log) when nutcracker exits
    early or does not accept in time. nutcracker is stopped (SIGTERM, then
    SIGKILL) however the block is left.
    """
    binary = nutcracker_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "nutcracker.yml"
    config_path.write_text(config_text)
    log_path = workdir / "nutcracker.log"
    (stats_port,) = free_ports(1)
    with open(workdir / "nutcracker.out", "wb") as out:
        process = subprocess.Popen(
            [
                binary,
                "-c",
                str(config_path),
                "-s",
                str(stats_port),
                "-a",
                HOST,
                "-o",
                str(log_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run = NutcrackerRun(
        process=process,
        config_path=config_path,
        log_path=log_path,
        stats_port=stats_port,
        listen=dict(listen),
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        waiting = [*run.listen.values(), stats_port]
        while waiting:
            if process.poll() is not None:
                raise RuntimeError(f"nutcracker exited with {process.returncode} at start:\n{run.log_text()}")
            if loop.time() > deadline:
                raise RuntimeError(
                    f"nutcracker did not accept on ports {waiting} within "
                    f"{START_TIMEOUT} s:\n{run.log_text()}"
                )
            if await port_accepts(waiting[0]):
                waiting.pop(0)
            else:
                await asyncio.sleep(0.02)
        yield run
    finally:
        _stop(process)


def nutcracker_accepts(config_text: str, workdir: Path) -> bool:
    """Whether ``nutcracker -t`` (test configuration and exit) accepts the text.

    ``-t`` parses and validates like a real start, including resolving each
    pool's ``listen:`` host, but prints no reason; start nutcracker with
    ``-o`` to read one.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "check.yml"
    path.write_text(config_text, encoding="utf-8")
    done = subprocess.run(
        [nutcracker_binary(), "-t", "-c", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=10,
        check=False,
    )
    return done.returncode == 0


async def read_stats(run: NutcrackerRun) -> dict[str, object]:
    """nutcracker's stats JSON (its per-server keys are the server names)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, run.stats_port), 2.0)
    try:
        data = await asyncio.wait_for(reader.read(), 5.0)  # the stats server closes
        stats: dict[str, object] = json.loads(data)
        return stats
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _get_command(key: bytes) -> bytes:
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)


async def send_gets(port: int, keys: Sequence[bytes]) -> list[bytes]:
    """Pipeline ``GET key`` for every key on one connection; return the replies.

    Each reply is returned as its first line (``$-1``, ``-ERR ...``); a bulk
    reply's payload is read and dropped. Raises ``TimeoutError`` when the
    replies do not all arrive within :data:`ROUTE_TIMEOUT` seconds.
    """
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2.0)

    async def exchange() -> list[bytes]:
        writer.write(b"".join(_get_command(k) for k in keys))
        await writer.drain()
        replies: list[bytes] = []
        for _ in range(len(keys)):
            line = (await reader.readuntil(b"\r\n"))[:-2]
            if line.startswith(b"$") and line != b"$-1":
                await reader.readexactly(int(line[1:]) + 2)
            replies.append(line)
        return replies

    try:
        return await asyncio.wait_for(exchange(), ROUTE_TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# --------------------------------------------------------------------------
# One-call placement oracle


@dataclass(frozen=True, slots=True)
class TwemproxyServerSpec:
    """A stand-in server for :func:`nutcracker_placement`.

    ``port`` None picks a free port. ``name`` is the optional ``[name]`` of the
    ``servers:`` line. The server's label in the result is ``name`` when given,
    else ``127.0.0.1:port``, which is also its ketama ring name unless the
    port is 11211.
    """

    weight: int = 1
    name: str | None = None
    port: int | None = None


async def nutcracker_placement(
    servers: Sequence[TwemproxyServerSpec],
    *,
    hash: str = "fnv1a_64",
    distribution: str = "ketama",
    hash_tag: str = "",
    keys: Iterable[bytes],
    workdir: Path | None = None,
) -> dict[bytes, str]:
    """Which server nutcracker sends ``GET key`` to, for every key.

    Starts one stand-in server per spec and a nutcracker with one redis pool
    over them, sends every key through it, and returns ``{key: label}``.
    Keys must be distinct and non-empty. Everything started is stopped before
    returning, also on error.
    """
    key_list = list(keys)
    if len(set(key_list)) != len(key_list) or not all(key_list):
        raise ValueError("keys must be distinct and non-empty")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        async with stand_in_servers(len(servers), [s.port for s in servers]) as backends:
            labels = {b.port: spec.name or b.address for spec, b in zip(servers, backends, strict=True)}
            (listen_port,) = free_ports(1)
            pool = PoolSpec(
                name="placement",
                listen_port=listen_port,
                servers=tuple(
                    ServerEntry(b.address, spec.weight, spec.name)
                    for spec, b in zip(servers, backends, strict=True)
                ),
                hash=hash,
                distribution=distribution,
                hash_tag=hash_tag,
            )
            async with running_nutcracker([pool], workdir):
                replies = await send_gets(listen_port, key_list)
            bad = [(k, r) for k, r in zip(key_list, replies, strict=True) if r != b"$-1"]
            if bad:
                raise RuntimeError(f"nutcracker answered with errors: {bad[:5]}")
            placement: dict[bytes, str] = {}
            for backend in backends:
                for key in backend.received:
                    placement[key] = labels[backend.port]
    missing = [k for k in key_list if k not in placement]
    if missing:
        raise RuntimeError(f"{len(missing)} keys reached no stand-in: {missing[:5]}")
    return placement
