"""Servers and load for the benchmarks: processes, nginx, wrk, redis, RSS, ports.

Everything here talks to 127.0.0.1 only, and every wait is bounded by a
deadline. A started process gets its own process group (its own session), so
that ``Service.stop`` ends it and whatever it forked, and so that a Ctrl-C in
the terminal reaches the benchmark, which then stops its services in a
``finally``, rather than every child at once.
"""

from __future__ import annotations

import contextlib
import csv
import os
import pwd
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import BinaryIO, TypeVar
from urllib.parse import urlsplit

__all__ = [
    "LOOPBACK",
    "RedisBenchmarkError",
    "RedisBenchmarkResult",
    "RedisError",
    "Service",
    "ServiceError",
    "WrkError",
    "WrkResult",
    "cpu_seconds",
    "descendants",
    "free_ports",
    "interruptible",
    "median_of",
    "nginx_config",
    "nginx_proxy_body",
    "nginx_router_body",
    "open_fd_count",
    "open_files_limit",
    "parse_redis_benchmark",
    "parse_wrk",
    "raise_nofile_limit",
    "ratio",
    "redis_call",
    "require_tool",
    "rss_bytes",
    "run_parallel",
    "run_redis_benchmark",
    "run_wrk_url",
    "start_backend",
    "start_nginx",
    "start_process",
    "start_redis_server",
    "tool_output",
    "tool_version",
    "wait_for_port",
]

LOOPBACK = "127.0.0.1"
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
R = TypeVar("R")


# --- rounds -------------------------------------------------------------------------------------------


def median_of(rounds: Sequence[R | None], key: Callable[[R], float]) -> float | None:
    """The median of ``key`` over the measured rounds (None: a round failed or was skipped)."""
    values = [key(r) for r in rounds if r is not None]
    return statistics.median(values) if values else None


def ratio(
    results: Mapping[str, Sequence[R | None]], num: str, den: str, key: Callable[[R], float]
) -> float | None:
    """Median over rounds of the same-round ratio ``key(num) / key(den)``; None if no round has both."""
    pairs = [
        key(a) / key(b)
        for a, b in zip(results.get(num, []), results.get(den, []), strict=False)
        if a is not None and b is not None and key(b) > 0
    ]
    return statistics.median(pairs) if pairs else None


# --- tools --------------------------------------------------------------------------------------------


def require_tool(name: str, package: str) -> str:
    """The path of executable ``name``; exit with a message naming the Debian ``package`` if it is missing."""
    path = shutil.which(name) or shutil.which(name, path=_SBIN)
    if path is None:
        raise SystemExit(
            f"{name} not found: install the Debian package {package} (apt-get install {package}), "
            "or run ./run setup"
        )
    return path


def tool_output(argv: Sequence[str]) -> str:
    """What a tool prints (stdout and stderr), or '' if it cannot be run within 10 s."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


def tool_version(argv: Sequence[str]) -> str:
    """The first line a tool prints about its version, or 'unknown'."""
    lines = tool_output(argv).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


# --- ports and processes ------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free on 127.0.0.1 a moment ago (held together, so no repeats)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ServiceError(RuntimeError):
    """A process that would not start, or did not open its port in time; the message has its output."""


def _tail(path: Path, lines: int = 12, limit: int = 4000) -> str:
    try:
        text = path.read_bytes()[-limit:].decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class Service:
    """A subprocess in its own process group, its output in a log file; ``stop()`` ends the group."""

    __slots__ = ("argv", "log_path", "name", "port", "proc")

    def __init__(
        self, name: str, argv: Sequence[str], proc: subprocess.Popen[bytes], log_path: Path, port: int
    ):
        self.name = name
        self.argv = list(argv)
        self.proc = proc
        self.log_path = log_path
        self.port = port

    def __repr__(self) -> str:
        return f"<Service {self.name} pid={self.pid} port={self.port} {self.exit_status()}>"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_status(self) -> str:
        """'running', 'exited with code N' or 'was killed by SIGNAME'."""
        code = self.proc.poll()
        if code is None:
            return "running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def log_text(self) -> str:
        """Everything the process has printed so far (decoded leniently), '' if the log is gone."""
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 12) -> str:
        return _tail(self.log_path, lines)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to the process group, then SIGKILL after ``timeout`` seconds; safe to call twice."""
        pgid = self.proc.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                break  # the whole group is gone
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self.proc.poll()  # reap the leader, so that it stops counting
                if not _group_members(pgid):
                    break
                time.sleep(0.05)
            if not _group_members(pgid):
                break
        self.proc.poll()


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    return [pid for pid, (state, _, pgrp) in _proc_table().items() if pgrp == pgid and state != "Z"]


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Inside, SIGTERM and SIGHUP act as Ctrl-C; an interrupt exits with 128 + its number, after a line on
    stderr, once the ``finally`` blocks and context managers inside (every ``Service.stop``) have run."""
    caught: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except KeyboardInterrupt:
        name = signal.Signals(caught[-1] if caught else signal.SIGINT)
        print(f"\ninterrupted by {name.name}: every server was stopped", file=sys.stderr)
        raise SystemExit(128 + name.value) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_for_port(port: int, *, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until 127.0.0.1:``port`` accepts a TCP connection; ServiceError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"exited with code {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise ServiceError(f"not listening on {LOOPBACK}:{port} after {timeout:g} s")
        time.sleep(0.05)


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    log_dir: Path,
    timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
) -> Service:
    """Start ``argv`` in a new session, output to ``log_dir/name.log``, and wait until ``port`` is open.

    On failure the process is stopped and ServiceError carries the exit code and its last lines of output.
    """
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(env) if env is not None else None,
            )
        except OSError as e:
            raise ServiceError(f"{name}: cannot run {argv[0]}: {e}") from e
    service = Service(name, argv, proc, log_path, port)
    try:
        wait_for_port(port, timeout=timeout, proc=proc)
    except ServiceError as e:
        service.stop()
        tail = service.log_tail()
        raise ServiceError(f"{name} {e}" + (f":\n{tail}" if tail else " (no output)")) from None
    except BaseException:
        service.stop()
        raise
    return service


# --- nginx --------------------------------------------------------------------------------------------

_TEMP_PATHS = {  # directive -> the module that owns it (nginx refuses a directive of a module left out)
    "client_body_temp_path": None,
    "proxy_temp_path": "http_proxy",
    "fastcgi_temp_path": "http_fastcgi",
    "uwsgi_temp_path": "http_uwsgi",
    "scgi_temp_path": "http_scgi",
}


def nginx_config(
    workdir: Path,
    http_body: str,
    *,
    worker_connections: int = 1024,
    built_without: frozenset[str] = frozenset(),
) -> str:
    """A complete nginx.conf: one worker, in the foreground, every path inside ``workdir``.

    ``http_body`` goes inside ``http { }``; access logging is off, warnings go to stderr (the service
    log), and ``keepalive_requests 1000000`` is set, as for every anchor. ``built_without`` names
    modules the binary lacks (from ``nginx -V``), whose temp-path directives are left out.
    """
    lines = [
        "daemon off;",
        "master_process on;",
        "worker_processes 1;",
        f"pid {workdir / 'nginx.pid'};",
        "error_log stderr warn;",
    ]
    if os.geteuid() == 0:
        # As root the worker would drop to 'nobody', which cannot read a private temp dir.
        user = pwd.getpwuid(0)
        lines.append(f"user {user.pw_name};")
    lines += [f"events {{ worker_connections {worker_connections}; }}", "http {"]
    for directive, module in _TEMP_PATHS.items():
        if module is None or module not in built_without:
            lines.append(f"    {directive} {workdir / directive.split('_temp_path')[0]};")
    lines += [
        "    access_log off;",
        "    default_type application/octet-stream;",
        "    keepalive_requests 1000000;",
        "    keepalive_timeout 75s;",
    ]
    lines += ["    " + line if line.strip() else "" for line in http_body.strip("\n").splitlines()]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _built_without(nginx: str) -> frozenset[str]:
    text = tool_output([nginx, "-V"])
    return frozenset(m.group(1) for m in re.finditer(r"--without-(\w+)_module", text))


def start_nginx(
    name: str,
    nginx: str,
    *,
    port: int,
    base_dir: Path,
    http_body: str,
    worker_connections: int = 1024,
    timeout: float = 10.0,
) -> Service:
    """Write ``base_dir/name/nginx.conf`` around ``http_body`` and run nginx on it until ``port`` opens."""
    workdir = base_dir / name
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(
        nginx_config(
            workdir,
            http_body,
            worker_connections=worker_connections,
            built_without=_built_without(nginx),
        ),
        encoding="utf-8",
    )
    argv = [nginx, "-p", str(workdir), "-c", str(conf), "-e", "stderr"]
    return start_process(name, argv, port=port, log_dir=base_dir, timeout=timeout)


def nginx_proxy_body(backend_port: int, listen: str, *server_lines: str) -> str:
    """nginx's ``http { }`` body as a reverse proxy to the backend, as the anchors ran it.

    An upstream with ``keepalive 64``, HTTP/1.1 to it and ``Connection ""``; ``listen`` is what follows
    ``listen`` (``127.0.0.1:8080 ssl backlog=4096``) and ``server_lines`` go into the server block.
    """
    upstreams = {"backend": [f"server {LOOPBACK}:{backend_port};"]}
    return nginx_router_body(upstreams, "backend", listen, server_lines=server_lines)


def nginx_router_body(
    upstreams: Mapping[str, Sequence[str]],
    proxy_pass: str,
    listen: str,
    *,
    http_lines: Sequence[str] = (),
    server_lines: Sequence[str] = (),
) -> str:
    """nginx's ``http { }`` body proxying to one of several upstream groups, with the anchors' settings.

    ``upstreams`` maps each group's name to its lines (a balancing method first, such as ``hash
    $request_uri consistent;``, then its ``server`` lines); every group gets ``keepalive 64`` after
    them, where nginx wants it. Requests go to ``http://PROXY_PASS`` (a group's name, or a variable
    holding one, such as ``$variant``) over HTTP/1.1 with ``Connection ""``. ``http_lines`` come first
    (a ``split_clients`` block), ``server_lines`` go into the server block.
    """
    groups = "".join(
        f"upstream {name} {{\n"
        + "".join(f"    {line}\n" for line in lines)
        + "    keepalive 64;\n    keepalive_requests 1000000;\n}\n"
        for name, lines in upstreams.items()
    )
    before = "".join(f"{line}\n" for line in http_lines)
    extra = "".join(f"    {line}\n" for line in server_lines)
    return f"""
{before}{groups}server {{
    listen {listen};
{extra}    location / {{
        proxy_pass http://{proxy_pass};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
}}
"""


def start_backend(
    nginx: str, *, port: int, base_dir: Path, name: str = "backend", server_lines: Sequence[str] = ()
) -> Service:
    """The benchmarks' backend: nginx, 1 worker; ``GET /`` (and every other path) answers "hello
    world\\n", ``/static/`` serves the files of ``base_dir/www/static``. ``name`` names its directory
    and log (one per backend when there are several); ``server_lines`` go into its server block, such
    as ``add_header X-Backend $server_port;``."""
    extra = "".join(f"    {line}\n" for line in server_lines)
    return start_nginx(
        name,
        nginx,
        port=port,
        base_dir=base_dir,
        worker_connections=4096,
        http_body=f"""
server {{
    listen {LOOPBACK}:{port} backlog=4096;
{extra}    location / {{ return 200 "hello world\\n"; }}
    location ^~ /static/ {{ root {base_dir / "www"}; }}
}}
""",
    )


def shown_command(argv: Sequence[str], workdir: Path | None = None) -> str:
    """``argv`` for a report: the repository and the run's temporary directory left out of its paths,
    so that the output describes the benchmark, not the machine it ran in."""
    text = shlex.join(argv)
    if workdir is not None:
        text = text.replace(str(workdir), "$TMP")
    return text.replace(str(Path(__file__).resolve().parents[1]) + "/", "")


# --- wrk ----------------------------------------------------------------------------------------------


class WrkError(RuntimeError):
    """wrk failed, timed out or printed something that is not a report."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run. Times in seconds, transfer in bytes per second (wrk counts in powers of 1024)."""

    requests: int
    duration: float
    requests_per_sec: float
    transfer_per_sec: float
    latency: Mapping[int, float]  # percentile (50, 75, 90, 99) -> seconds; empty without --latency
    socket_errors: Mapping[str, int]  # wrk's kinds: connect, read, write, timeout
    non_2xx: int

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx

    def error_counts(self) -> dict[str, int]:
        """The non-zero error counts by kind: connect, read, write, timeout, non-2xx."""
        counts = {**self.socket_errors, "non-2xx": self.non_2xx}
        return {kind: n for kind, n in counts.items() if n}


_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_SUMMARY = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TRANSFER = re.compile(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_SOCKET_ERROR_KINDS = ("connect", "read", "write", "timeout")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(text: str) -> WrkResult:
    """Parse wrk 4's report (with or without ``--latency``); WrkError if it is not one."""
    summary, rps, transfer = _SUMMARY.search(text), _RPS.search(text), _TRANSFER.search(text)
    if summary is None or rps is None or transfer is None:
        raise WrkError(f"not a wrk report: {text.strip()[-500:]!r}")
    latency = {int(p): float(v) * _TIME_UNITS[u] for p, v, u in _PERCENTILE.findall(text)}
    errors = _SOCKET_ERRORS.search(text)  # wrk prints the line only when there were some
    socket_errors = dict(zip(_SOCKET_ERROR_KINDS, map(int, errors.groups()), strict=True)) if errors else {}
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests=int(summary.group(1)),
        duration=float(summary.group(2)) * _TIME_UNITS[summary.group(3)],
        requests_per_sec=float(rps.group(1)),
        transfer_per_sec=float(transfer.group(1)) * _SIZE_UNITS[transfer.group(2)],
        latency=latency,
        socket_errors=socket_errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run_wrk_url(
    url: str,
    *,
    wrk: str = "wrk",
    threads: int = 1,
    connections: int = 32,
    duration: int = 4,
    latency: bool = True,
    headers: Sequence[str] = (),
    script: Path | None = None,
) -> WrkResult:
    """Run ``wrk -tT -cC -dDs [--latency] [-H ...] [-s SCRIPT] url`` against an http:// or https:// URL
    on 127.0.0.1, and parse its report. A ``script`` may choose the requests (its ``request()``), not
    where they go: wrk connects to the URL's host and port whatever the script does.

    wrk does not verify certificates. Over https it keeps the TLS session of a connection it closes and
    offers it when it reconnects, so a server that resumes sessions does resumed handshakes after the
    first one on each connection.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname != LOOPBACK:
        raise ValueError(f"benchmarks only target http(s)://{LOOPBACK}, not {url}")
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        *(["--latency"] if latency else []),
        *(arg for header in headers for arg in ("-H", header)),
        *(["-s", str(script)] if script is not None else []),
        url,
    ]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    except subprocess.TimeoutExpired as e:
        raise WrkError(f"wrk did not finish within {duration + 30} s") from e
    if out.returncode != 0:
        raise WrkError(f"wrk exited with code {out.returncode}: {(out.stderr + out.stdout).strip()[-500:]}")
    return parse_wrk(out.stdout)


# --- several load processes at once -------------------------------------------------------------------


def run_parallel(argvs: Sequence[Sequence[str]], *, timeout: float) -> tuple[list[str], float]:
    """Run every argv at once, each in its own process group; (outputs, seconds until the last exited).

    Each output is the process's stdout and stderr together. ServiceError if one cannot be started,
    exits with a non-zero code, or is still running after ``timeout`` seconds; whatever is still
    running then (or on any exception, Ctrl-C included) is killed with its group.
    """
    procs: list[subprocess.Popen[str]] = []
    try:
        t0 = time.monotonic()
        for argv in argvs:
            try:
                procs.append(
                    subprocess.Popen(
                        list(argv),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                        start_new_session=True,
                    )
                )
            except OSError as e:
                raise ServiceError(f"cannot run {argv[0]}: {e}") from e
        outputs = []
        for proc in procs:  # bounded: every wait shares the one deadline
            try:
                out, _ = proc.communicate(timeout=max(0.0, t0 + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise ServiceError(f"{argvs[0][0]} still running after {timeout:g} s") from None
            outputs.append(out)
        seconds = time.monotonic() - t0
        for argv, proc, out in zip(argvs, procs, outputs, strict=True):
            if proc.returncode != 0:
                raise ServiceError(
                    f"{shlex.join(argv)} exited with code {proc.returncode}: {out.strip()[-500:]}"
                )
        return outputs, seconds
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# --- redis: servers, a small client, redis-benchmark ------------------------------------------------


def start_redis_server(
    name: str, redis_server: str, *, port: int, base_dir: Path, timeout: float = 10.0
) -> Service:
    """redis-server on 127.0.0.1:``port``, persistence off, in ``base_dir/name``, until it listens."""
    workdir = base_dir / name
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [redis_server, "--save", "", "--appendonly", "no", "--bind", LOOPBACK, "--port", str(port)]
    argv += ["--protected-mode", "no", "--dir", str(workdir)]
    return start_process(name, argv, port=port, log_dir=base_dir, timeout=timeout)


class RedisError(RuntimeError):
    """A Redis server (or proxy) answered with an error reply, or with something that is not RESP."""


RedisReply = bytes | int | None  # simple string or bulk string, integer, nil


def _redis_reply(reader: BinaryIO) -> RedisReply:
    line = reader.readline(65536)
    if not line.endswith(b"\r\n"):
        raise RedisError(f"not a RESP reply line: {line[:100]!r}" if line else "connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RedisError(rest.decode("utf-8", "replace"))
    if kind == b":" and rest.lstrip(b"-").isdigit():
        return int(rest)
    if kind == b"$" and rest == b"-1":
        return None
    if kind == b"$" and rest.isdigit():
        data = reader.read(int(rest) + 2)
        if len(data) != int(rest) + 2 or not data.endswith(b"\r\n"):
            raise RedisError(f"bulk reply cut short: {data[:100]!r}")
        return data[:-2]
    raise RedisError(f"unexpected reply: {line[:100]!r}")


def redis_call(port: int, commands: Sequence[Sequence[str]], *, timeout: float = 5.0) -> list[RedisReply]:
    """Send ``commands`` pipelined on one connection to 127.0.0.1:``port``; their replies, in order.

    RedisError on the first error reply (or a reply that is not RESP); OSError if the connection fails
    or a reply takes more than ``timeout`` seconds. Arrays are not read: only the commands with simple
    replies (SET, GET, DEL, DBSIZE, PING ...) are for this client.
    """
    request = bytearray()
    for command in commands:
        request += b"*%d\r\n" % len(command)
        for arg in command:
            data = arg.encode("utf-8")
            request += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock, sock.makefile("rb") as reader:
        sock.sendall(request)
        return [_redis_reply(reader) for _ in commands]


class RedisBenchmarkError(ServiceError):
    """redis-benchmark failed (an error reply stops it), timed out or printed no report for a test."""


@dataclass(frozen=True, slots=True)
class RedisBenchmarkResult:
    """One ``redis-benchmark --csv`` run; per test as it names them (SET, GET ...), latencies in seconds."""

    requests: int  # per test, as asked with -n
    ops_per_sec: Mapping[str, float]
    p50: Mapping[str, float]
    p99: Mapping[str, float]
    notes: tuple[str, ...]  # other lines it printed, e.g. "WARNING: Could not fetch server CONFIG"


def parse_redis_benchmark(text: str, tests: Sequence[str], requests: int) -> RedisBenchmarkResult:
    """Parse the output of ``redis-benchmark --csv`` (7.x columns); RedisBenchmarkError if a test
    has no row or any line speaks of an error."""
    rows: dict[str, dict[str, str]] = {}
    notes: list[str] = []
    header: list[str] | None = None
    for fields in csv.reader(text.splitlines()):
        if header is None and fields[:2] == ["test", "rps"]:
            header = fields
        elif header is not None and len(fields) == len(header):
            rows[fields[0].upper()] = dict(zip(header, fields, strict=True))
        elif fields:
            notes.append(",".join(fields).strip())
    errors = [note for note in notes if "error" in note.lower()]
    missing = [t.upper() for t in tests if t.upper() not in rows]
    if errors or missing:
        what = f"errors: {'; '.join(errors)[:300]}" if errors else f"no report for {', '.join(missing)}"
        raise RedisBenchmarkError(f"redis-benchmark {what}: {text.strip()[-300:]!r}")
    try:
        values = {
            column: {test: float(row[column]) for test, row in rows.items()}
            for column in ("rps", "p50_latency_ms", "p99_latency_ms")
        }
    except (KeyError, ValueError) as e:
        what = f"redis-benchmark printed an unexpected report ({e}): {text[-300:]!r}"
        raise RedisBenchmarkError(what) from e
    return RedisBenchmarkResult(
        requests=requests,
        ops_per_sec=values["rps"],
        p50={t: ms / 1e3 for t, ms in values["p50_latency_ms"].items()},
        p99={t: ms / 1e3 for t, ms in values["p99_latency_ms"].items()},
        notes=tuple(notes),
    )


def run_redis_benchmark(
    port: int,
    *,
    redis_benchmark: str = "redis-benchmark",
    tests: Sequence[str] = ("set", "get"),
    requests: int,
    clients: int = 50,
    keyspace: int = 100_000,
    pipeline: int = 1,
    timeout: float,
) -> RedisBenchmarkResult:
    """``redis-benchmark -h 127.0.0.1 -p PORT -t TESTS -n N -c C -r K -P D -q --csv``, parsed.

    It runs in its own process group, killed after ``timeout`` seconds. redis-benchmark exits at the
    first error reply or when the server closes a connection: both end in RedisBenchmarkError.
    """
    argv = [redis_benchmark, "-h", LOOPBACK, "-p", str(port), "-t", ",".join(tests), "-n", str(requests)]
    argv += ["-c", str(clients), "-r", str(keyspace), "-P", str(pipeline), "-q", "--csv"]
    try:
        (out,), _ = run_parallel([argv], timeout=timeout)
    except ServiceError as e:
        raise RedisBenchmarkError(str(e)) from None
    return parse_redis_benchmark(out, tests, requests)


# --- /proc: memory and file descriptors ---------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, process group) of ``pid`` from /proc/PID/stat; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # The command name sits in parentheses and may itself hold spaces or ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return fields[0], int(fields[1]), int(fields[2])
    except (IndexError, ValueError):
        return None


def _proc_table() -> dict[int, tuple[str, int, int]]:
    """(state, ppid, process group) of every process, from one scan of /proc."""
    table: dict[int, tuple[str, int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                table[int(entry)] = stat
    return table


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for child, (state, parent, _) in _proc_table().items():
        if state != "Z":
            children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:  # bounded: each pid of the one scan is visited once
        child = todo.pop()
        if child not in found:
            found.append(child)
            todo.extend(children.get(child, []))
    return found


def _status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes(pid: int, *, children: bool = True) -> tuple[int, int]:
    """(sum of VmRSS in bytes, processes counted) for ``pid`` and, by default, all its descendants.

    A sum of VmRSS counts pages shared between the processes once per process: an upper bound.
    """
    total, counted = 0, 0
    for p in [pid, *(descendants(pid) if children else [])]:
        kb = _status_kb(p, "VmRSS")
        if kb is not None:
            total += kb * 1024
            counted += 1
    return total, counted


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks, from /proc/PID/stat; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # fields[0] is the state, the third field of the line
    try:
        return int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU seconds used so far by ``pid`` and, by default, its live descendants.

    Read from /proc at clock-tick resolution (usually 10 ms). A descendant that exits takes its time
    with it, so the difference of two readings undercounts if the server's processes come and go.
    """
    ticks = 0
    for p in [pid, *(descendants(pid) if children else [])]:
        ticks += _cpu_ticks(p) or 0
    return ticks / os.sysconf("SC_CLK_TCK")


def open_fd_count(pid: int, *, children: bool = True) -> int | None:
    """Open file descriptors of ``pid`` (and descendants); None if /proc/PID/fd cannot be read."""
    total = 0
    for p in [pid, *(descendants(pid) if children else [])]:
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            if p == pid:
                return None
    return total


def open_files_limit(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE of process ``pid``, from /proc/PID/limits (None if unreadable or unlimited)."""
    try:
        text = Path(f"/proc/{pid}/limits").read_text(encoding="utf-8")
    except OSError:
        return None
    m = re.search(r"^Max open files\s+(\d+|unlimited)", text, re.MULTILINE)
    return int(m.group(1)) if m and m.group(1).isdigit() else None


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (children inherit it); (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
