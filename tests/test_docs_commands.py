"""Every command line shown in README.md and docs/*.md runs, so the pages stay true.

The ```sh and ```console blocks of each page are read (in a console block, the lines after ``$ ``);
a ```toml or ```yaml block whose first line is a comment naming a file (``# proxy.toml ...``) is that
file, written into the page's working directory. A block preceded by ``<!-- not run: REASON -->`` is
skipped, and the reason is visible in the page. Every other command runs:

- ``distpat proxy|sidecar|shard|redis-shard ...`` without ``-t``: started as a process, with what it needs
  (an HTTP backend for each upstream, a redis-server for each Redis server or ``tcp://`` upstream,
  certificates from a trustme CA for each missing ``--cert``/``--key``/``--client-ca`` file), probed
  (an HTTP or HTTPS request, PING and SET through each Redis pool, the admin ``/healthz``, the stats
  JSON), left running for the block's next lines (a ``redis-cli`` or ``curl`` talking to it), and
  stopped with SIGTERM, after which it must exit 0;
- anything else the test knows (``distpat ...``, ``python -m distpat ...``, ``printf``, ``redis-cli``,
  ``curl``): run to the end under bash, exit status 0 expected (and ``configuration OK`` for ``-t``).

Addresses are moved to free ports on 127.0.0.1: each distinct ``HOST:PORT`` of a page (``:8443``,
``0.0.0.0:8443`` and ``127.0.0.1:8443`` are one address, as for the kernel; ``10.0.0.5:9000`` another)
gets its own port, in the commands and the files alike, so nothing binds another interface. ``/certs/``
is a directory of the working directory. A command the test does not know how to run fails, naming the
page, the line and why: mark it ``<!-- not run: ... -->`` or teach this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from distpat.cli import build_parser
from distpat.cli.flags import flag_values
from distpat.config.cache import CACHE_OPTIONS, build_cache_config
from distpat.config.pipeline import load_pipeline
from distpat.config.proxy import OPTIONS, build_config
from distpat.config.ratelimit import RATELIMIT_OPTIONS, build_ratelimit_config
from distpat.config.redis_shard import SHARD_OPTIONS, build_shard_options
from distpat.config.shard import SHARD_OPTIONS as HTTP_SHARD_OPTIONS
from distpat.config.shard import build_shard_config
from distpat.config.sidecar import SIDECAR_OPTIONS, build_sidecar_config
from distpat.config.split import SPLIT_OPTIONS, build_split_config
from tests.nutcracker import free_ports, port_accepts
from tests.rediskit import RedisServer
from tests.tlskit import require_binary

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
HOST = "127.0.0.1"
START_TIMEOUT = 20.0
RUN_TIMEOUT = 60.0
#: Programs a command line may start with (after the test's rewriting), beyond `distpat`.
KNOWN_PROGRAMS = {"distpat", "python", "printf", "redis-cli", "curl"}
#: Absolute paths of the pages, made relative to the working directory.
PATHS = {"/certs/": "certs/"}

_FENCE = re.compile(r"^```(\w*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->$")
_FILE_NAME = re.compile(r"^#\s*([\w.-]+\.(?:toml|ya?ml))\b")
_ADDRESS = re.compile(
    # a port without a host must not follow a word: `new:10:URL` (a split's share) and `HOST:PORT:10`
    # (a Redis server's weight) are no addresses
    r"(?:(?P<host>\[[0-9A-Fa-f:]*\]|\d{1,3}(?:\.\d{1,3}){3}|localhost|\*)|(?<![\w\]*]))"
    r":(?P<port>\d{2,5})(?!\d)"
)
_PORT_FLAG = re.compile(r"(?<=\s)(?P<flag>-s|--stats-port|-p)(?P<sep>\s+|=)(?P<port>\d{2,5})(?!\d)")
_LOCAL = {"", "*", "127.0.0.1", "0.0.0.0", "localhost", "[::1]", "[::]"}
#: The commands that serve until signalled.
SERVING = ("proxy", "sidecar", "shard", "redis-shard", "split", "ratelimit", "cache", "run")


# --------------------------------------------------------------------------
# Reading the pages


@dataclass
class Command:
    page: str
    line: int
    text: str

    def where(self) -> str:
        return f"{self.page}:{self.line}: `{self.text}`"


@dataclass
class Page:
    name: str
    blocks: list[list[Command]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def read_page(name: str, root: Path = ROOT) -> Page:
    page = Page(name)
    lines = (root / name).read_text().splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        lang, start = match[1], i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        body = lines[start + 1 : end]
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        not_run = _NOT_RUN.match(before)
        if lang in ("sh", "console"):
            if not_run:
                page.skipped.append((start + 1, not_run[1]))
            else:
                page.blocks.append(_commands(name, start + 2, body, console=lang == "console"))
        elif lang in ("toml", "yaml", "yml") and body and (named := _FILE_NAME.match(body[0])):
            page.files[named[1]] = "\n".join(body) + "\n"
        i = end + 1
    return page


def _commands(page: str, first: int, body: list[str], *, console: bool) -> list[Command]:
    commands: list[Command] = []
    pending: list[str] = []
    pending_line = 0
    for offset, raw in enumerate(body):
        text = raw.strip()
        if not pending:
            if console:
                if not text.startswith("$ "):
                    continue  # output
                text = text[2:]
            if not text or text.startswith("#"):
                continue
            pending_line = first + offset
        if text.endswith("\\"):
            pending.append(text[:-1].strip())
            continue
        pending.append(text)
        commands.append(Command(page, pending_line, " ".join(pending)))
        pending = []
    return commands


# --------------------------------------------------------------------------
# Ports and files


class Ports:
    """Each distinct address of a page -> a free 127.0.0.1 port (the same one wherever it appears)."""

    def __init__(self) -> None:
        self.ports: dict[tuple[str, int], int] = {}

    def port(self, host: str, port: int) -> int:
        key = ("local" if host in _LOCAL else host, port)
        if key not in self.ports:
            (self.ports[key],) = free_ports(1)
        return self.ports[key]

    def rewrite(self, text: str) -> str:
        def address(m: re.Match[str]) -> str:
            return f"{HOST}:{self.port(m['host'] or '', int(m['port']))}"

        def flag(m: re.Match[str]) -> str:
            return f"{m['flag']}{m['sep']}{self.port('', int(m['port']))}"

        text = _PORT_FLAG.sub(flag, _ADDRESS.sub(address, text))
        for absolute, relative in PATHS.items():
            text = text.replace(absolute, relative)
        return text


class Certificates:
    """Missing certificate, key and CA files of a page, made by trustme CAs."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.ca = trustme.CA()
        self.client_ca = trustme.CA(organization_name="distpat docs clients")
        self.client = self.client_ca.issue_cert("client@example.com", common_name="docs client")
        (cwd / "ca.pem").write_bytes(self.ca.cert_pem.bytes())

    def ensure_pairs(self, pairs: tuple[tuple[str, str], ...]) -> None:
        for cert, key in pairs:
            cert_path, key_path = self.cwd / cert, self.cwd / key
            if cert_path.exists() and key_path.exists():
                continue
            leaf = self.ca.issue_cert("localhost", HOST, "*.example.com")
            cert_path.parent.mkdir(parents=True, exist_ok=True)
            cert_path.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
            key_path.write_bytes(leaf.private_key_pem.bytes())

    def ensure_client_ca(self, path: str) -> None:
        target = self.cwd / path
        if not target.exists():
            target.write_bytes(self.client_ca.cert_pem.bytes())

    def context(self, client_certificate: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cwd / "ca.pem"))
        if client_certificate:
            self.client.configure_cert(ctx)
        return ctx


# --------------------------------------------------------------------------
# What a serving command needs, and its probes


async def _http_backend(port: int) -> asyncio.base_events.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n")
                await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, HOST, port)


async def _http_get(port: int, *, tls: ssl.SSLContext | None = None, path: str = "/") -> int:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(HOST, port, ssl=tls, server_hostname="localhost" if tls else None), 10
    )
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return int(status_line.split()[1])
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _resp(port: int, data: bytes, *, tls: ssl.SSLContext | None = None) -> bytes:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(HOST, port, ssl=tls, server_hostname="localhost" if tls else None), 10
    )
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@dataclass
class Plan:
    """What to start before a serving command, what to wait for, and how to probe it."""

    http_upstreams: list[int] = field(default_factory=list)
    redis_ports: list[int] = field(default_factory=list)
    wait: list[int] = field(default_factory=list)
    probes: list[tuple[str, int]] = field(default_factory=list)  # (kind, port)


def _local_port(address: tuple[str, int]) -> int:
    assert address[0] in (HOST, "0.0.0.0"), f"a command would bind {address}: the test rewrites to 127.0.0.1"
    return address[1]


def plan(argv: list[str], cwd: Path, certs: Certificates) -> Plan:
    """Read the command line with distpat's own parser and configuration, as the process will."""
    args = build_parser().parse_args(argv)
    result = Plan()
    if args.command in ("proxy", "sidecar", "shard", "split", "ratelimit", "cache", "run"):
        options = {
            "proxy": OPTIONS,
            "sidecar": SIDECAR_OPTIONS,
            "shard": HTTP_SHARD_OPTIONS,
            "split": SPLIT_OPTIONS,
            "ratelimit": RATELIMIT_OPTIONS,
            "cache": (*OPTIONS, *CACHE_OPTIONS),
        }.get(args.command, ())
        flags = flag_values(args, options)
        with _chdir(cwd):
            config: Any
            if args.command == "proxy":
                config, _ = build_config(flags, environ={}, config_file=args.config)
            elif args.command == "shard":
                config, _ = build_shard_config(flags, environ={}, config_file=args.config)
            elif args.command == "split":
                config, _ = build_split_config(flags, environ={}, config_file=args.config)
            elif args.command == "ratelimit":
                config, _ = build_ratelimit_config(flags, environ={}, config_file=args.config)
            elif args.command == "cache":
                config, _ = build_cache_config(flags, environ={}, config_file=args.config)
            elif args.command == "run":
                config, _ = load_pipeline(args.config, environ={})
            else:
                config, _ = build_sidecar_config(flags, environ={}, config_file=args.config)
        tls = getattr(config, "tls", None)
        if tls is not None:
            certs.ensure_pairs(tls.pairs)
            if tls.client_ca is not None:
                certs.ensure_client_ca(tls.client_ca)
        listen = _local_port(config.listen)
        result.wait.append(listen)
        if hasattr(config, "upstreams"):  # HTTP
            for url in (*config.upstreams, *(u for _, urls in config.pools for u in urls)):
                result.http_upstreams.append(int(url.rsplit(":", 1)[1].rstrip("/")))
            kind = "http" if tls is None else ("https-client" if tls.client_ca else "https")
            result.probes.append((kind, listen))
            if config.redirect_http is not None:
                port = _local_port(config.redirect_http)
                result.wait.append(port)
                result.probes.append(("redirect", port))
        else:  # the TLS-to-TCP tunnel: a Redis behind it, as the page says
            result.redis_ports.append(config.upstream[1])
            result.probes.append(("tls-ping", listen))
        if config.admin is not None:
            port = _local_port(config.admin)
            result.wait.append(port)
            result.probes.append(("healthz", port))
    elif args.command == "redis-shard":
        with _chdir(cwd):
            shard = build_shard_options(
                flag_values(args, SHARD_OPTIONS), environ={}, options_file=args.options
            )
            pools = shard.load()
        for pool in pools:
            result.redis_ports.extend(s.port for s in pool.servers if s.port is not None)
            assert pool.listen.port is not None
            port = shard.listen[1] if shard.listen is not None else pool.listen.port
            result.wait.append(port)
            result.probes.append(("redis", port))
        if shard.stats is not None:
            result.wait.append(shard.stats[1])
            result.probes.append(("stats", shard.stats[1]))
        if shard.admin is not None:
            result.wait.append(shard.admin[1])
            result.probes.append(("healthz", shard.admin[1]))
    else:
        raise AssertionError(f"not a serving command: {argv}")
    return result


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


async def probe(kind: str, port: int, certs: Certificates) -> str | None:
    """None when the probe got what a working server answers, else what it got."""
    if kind == "http":
        status = await _http_get(port)
        return None if status == 200 else f"GET / through it: {status}"
    if kind in ("https", "https-client"):
        status = await _http_get(port, tls=certs.context(kind == "https-client"))
        return None if status == 200 else f"GET / over TLS: {status}"
    if kind == "redirect":
        status = await _http_get(port)
        return None if 300 <= status < 400 else f"GET / on the redirect listener: {status}"
    if kind == "healthz":
        status = await _http_get(port, path="/healthz")
        return None if status == 200 else f"GET /healthz: {status}"
    if kind == "tls-ping":
        reply = await _resp(port, b"PING\r\n", tls=certs.context(False))
        return None if reply == b"+PONG\r\n" else f"PING through the tunnel: {reply!r}"
    if kind == "redis":
        reply = await _resp(port, b"*3\r\n$3\r\nSET\r\n$9\r\ndocs:test\r\n$1\r\n1\r\n")
        return None if reply == b"+OK\r\n" else f"SET through it: {reply!r}"
    if kind == "stats":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return None if data.startswith(b"{") and b'"service"' in data else f"stats: {data[:80]!r}"
    raise AssertionError(kind)


# --------------------------------------------------------------------------
# Running a page


class PageRun:
    def __init__(self, page: Page, cwd: Path) -> None:
        self.page = page
        self.cwd = cwd
        self.ports = Ports()
        self.certs = Certificates(cwd)
        self.bin = cwd / ".bin"
        self.bin.mkdir()
        for name, target in (
            ("distpat", f'"{sys.executable}" -m distpat'),
            ("python", f'"{sys.executable}"'),
        ):
            shim = self.bin / name
            shim.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
            shim.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DISTPAT_")}
        self.env["PATH"] = f"{self.bin}:{self.env.get('PATH', '')}"
        self.failures: list[str] = []
        self.ran: list[str] = []
        """Each command run or served, as ``page:line: `command```: none is passed over in silence."""
        self.redis: dict[int, RedisServer] = {}
        self.backends: dict[int, asyncio.base_events.Server] = {}

    def write_files(self) -> None:
        for name, text in self.page.files.items():
            (self.cwd / name).write_text(self.ports.rewrite(text))
        examples = ROOT / "examples"
        (self.cwd / "examples").mkdir()
        for path in examples.rglob("*"):
            copy = self.cwd / "examples" / path.relative_to(examples)
            if path.is_dir():
                copy.mkdir(parents=True, exist_ok=True)
            else:
                copy.parent.mkdir(parents=True, exist_ok=True)
                copy.write_text(self.ports.rewrite(path.read_text()))
        (self.cwd / "certs").mkdir()

    async def run(self) -> list[str]:
        self.write_files()
        try:
            for block in self.page.blocks:
                await self.run_block(block)
        finally:
            for server in self.backends.values():
                server.close()
            for redis_server in self.redis.values():
                await redis_server.stop()
        return self.failures

    async def run_block(self, block: list[Command]) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for command in block:
                line = self.ports.rewrite(command.text)
                words = shlex.split(line, comments=True)
                if not words:
                    continue
                programs = {words[0]} | {
                    words[i + 1] for i, w in enumerate(words[:-1]) if w in ("|", "&&", ";")
                }
                unknown = programs - KNOWN_PROGRAMS
                if unknown:
                    self.failures.append(
                        f"{command.where()}: no way to run `{sorted(unknown)[0]}` here: mark its block "
                        "`<!-- not run: REASON -->` or teach tests/test_docs_commands.py"
                    )
                    continue
                serving = (
                    words[0] == "distpat"
                    and len(words) > 1
                    and words[1] in SERVING
                    and not {"-t", "--test-config", "--test-conf", "-h", "--help"} & set(words)
                )
                if serving:
                    await stack.aclose()  # the previous server of the block stops first
                    await stack.enter_async_context(self.serving(command, words[1:]))
                else:
                    await self.run_to_end(command, line, words)

    async def run_to_end(self, command: Command, line: str, words: list[str]) -> None:
        self.ran.append(command.where())
        if words[0] == "distpat" and len(words) > 1 and words[1] in SERVING:
            try:
                plan(words[1:], self.cwd, self.certs)  # the files -t reads: certificates made
            except Exception as exc:  # reported below by the command itself if it matters
                self.failures.append(f"{command.where()}: cannot read it: {exc}")
                return
        for program in ("redis-cli", "curl"):
            if words[0] == program:
                require_binary(program, "redis-tools" if program == "redis-cli" else program)
        done = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-o", "pipefail", "-c", line],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if done.returncode != 0:
            self.failures.append(
                f"{command.where()}: exit status {done.returncode}: {done.stderr.strip()[-400:]}"
            )
        elif {"-t", "--test-config", "--test-conf"} & set(words) and "configuration OK" not in done.stdout:
            self.failures.append(f"{command.where()}: -t printed {done.stdout!r}, not 'configuration OK'")
        elif words[0] == "redis-cli" and "PONG" not in done.stdout and words[-1].lower() == "ping":
            self.failures.append(f"{command.where()}: redis-cli said {done.stdout!r}")

    @contextlib.asynccontextmanager
    async def serving(self, command: Command, argv: list[str]) -> AsyncIterator[None]:
        self.ran.append(command.where())
        try:
            needs = plan(argv, self.cwd, self.certs)
        except Exception as exc:
            self.failures.append(f"{command.where()}: its configuration does not load: {exc}")
            yield
            return
        for port in needs.http_upstreams:
            if port not in self.backends and not await port_accepts(port):
                self.backends[port] = await _http_backend(port)
        for port in needs.redis_ports:
            if port not in self.redis:
                server = RedisServer(port, self.cwd / f"redis-{port}")
                await server.start()
                self.redis[port] = server
        log_path = self.cwd / f"server-{command.line}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "distpat", *argv],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            if await self._started(command, process, needs.wait, log_path):
                for kind, port in needs.probes:
                    try:
                        trouble = await probe(kind, port, self.certs)
                    except (TimeoutError, OSError, ValueError, IndexError) as exc:
                        trouble = f"{kind} probe on port {port}: {exc!r}"
                    if trouble:
                        self.failures.append(f"{command.where()}: {trouble}")
            yield
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # the parent, which forwards it to --workers
                try:
                    code = await asyncio.to_thread(process.wait, 20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    code = await asyncio.to_thread(process.wait, 10)
                if code != 0:
                    self.failures.append(
                        f"{command.where()}: exited {code} on SIGTERM: {log_path.read_text()[-400:]}"
                    )

    async def _started(
        self, command: Command, process: subprocess.Popen[bytes], ports: list[int], log: Path
    ) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        waiting = list(ports)
        while waiting:
            if process.poll() is not None:
                self.failures.append(
                    f"{command.where()}: exited with {process.returncode}: {log.read_text()[-400:]}"
                )
                return False
            if loop.time() > deadline:
                self.failures.append(f"{command.where()}: not accepting on {waiting} after {START_TIMEOUT} s")
                return False
            if await port_accepts(waiting[0]):
                waiting.pop(0)
            else:
                await asyncio.sleep(0.05)
        return True


@pytest.mark.parametrize("name", PAGES)
async def test_every_command_line_of_the_page_works(name: str, tmp_path: Path) -> None:
    page = read_page(name)
    run = PageRun(page, tmp_path)
    failures = await run.run()
    assert not failures, "\n".join(failures)
    assert run.ran == [c.where() for block in page.blocks for c in block]


def test_the_pages_show_commands_and_say_why_some_are_not_run() -> None:
    pages = {name: read_page(name) for name in PAGES}
    commands = [c.text for page in pages.values() for block in page.blocks for c in block]
    for needed in (
        "distpat proxy",
        "distpat sidecar",
        "distpat redis-shard",
        "distpat ring",
        "distpat split",
    ):
        assert any(c.startswith(needed) for c in commands), needed
    skipped = {name: page.skipped for name, page in pages.items() if page.skipped}
    assert all(reason for page in skipped.values() for _, reason in page), skipped
    assert "README.md" in skipped  # the install and ./run blocks, with their reasons


def test_the_reader_of_pages(tmp_path: Path) -> None:
    text = (
        "intro\n<!-- not run: needs the network -->\n\n```sh\ncurl https://example.com\n```\n"
        "```sh\n# a comment\ndistpat ring locate --nodes a,b \\\n    k1 k2   # inline\n```\n"
        "```console\n$ distpat ring stats --nodes a,b\nHashRing: ...\n```\n"
        "```toml\n# x.toml: a file\nlisten = ':1'\n```\n```python\nprint()\n```\n"
    )
    (tmp_path / "page.md").write_text(text)
    page = read_page("page.md", tmp_path)
    assert page.skipped == [(4, "needs the network")]
    assert [[(c.line, c.text) for c in block] for block in page.blocks] == [
        [(9, "distpat ring locate --nodes a,b k1 k2   # inline")],
        [(13, "distpat ring stats --nodes a,b")],
    ]
    assert page.files == {"x.toml": "# x.toml: a file\nlisten = ':1'\n"}
    ports = Ports()
    rewritten = ports.rewrite(
        "--listen :8443 --admin 0.0.0.0:8443 --upstream http://10.0.0.5:8443 -s 22222 -p x.pid"
    )
    local, remote = ports.ports[("local", 8443)], ports.ports[("10.0.0.5", 8443)]
    assert rewritten == (
        f"--listen {HOST}:{local} --admin {HOST}:{local} --upstream http://{HOST}:{remote} "
        f"-s {ports.ports[('local', 22222)]} -p x.pid"
    )
    assert (
        ports.rewrite("--server 127.0.0.1:6379:1:s1")
        == f"--server {HOST}:{ports.ports[('local', 6379)]}:1:s1"
    )
    assert ports.rewrite("127.0.0.1:6379:10 new:10:http://127.0.0.1:8443 old:*:x") == (
        f"{HOST}:{ports.ports[('local', 6379)]}:10 new:10:http://{HOST}:{local} old:*:x"
    )
