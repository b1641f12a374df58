"""HTTP/1.1 reverse-proxy benchmark: distpat against nginx and a naive aiohttp proxy, in one run.

One invocation starts, on 127.0.0.1 only, each in its own process group:

  backend        nginx, 1 worker: GET / answers "hello world\\n" (12 bytes); /static/64k.bin and
                 /static/1m.bin are files in the temp dir
  nginx          nginx as a reverse proxy, 1 worker, upstream keepalive 64, proxy_http_version 1.1,
                 Connection "" (otherwise stock: proxy buffering on)
  distpat        distpat proxy --workers 1
  aiohttp        a naive proxy: an aiohttp.web handler forwarding through one shared ClientSession, on uvloop

Every contender is driven with ``wrk -t1 -c32 --latency`` in every round, the order rotating, and
medians over rounds are compared (ratios are medians of same-round ratios), so that a burst of load on
this shared machine lands on all of them alike. wrk, the proxies and the backend share the machine's
cores, as for the anchors in shared/ANCHORS.md. Then distpat (or --rss-target) is made to hold 10,000
idle keep-alive client connections while its resident memory is read from /proc. Run:

    .venv/bin/python benchmarks/http_proxy.py             # full run (about 3 minutes)
    .venv/bin/python benchmarks/http_proxy.py --quick     # 1 s wrk runs, 2 rounds

A contender that does not start, answers wrongly or fails under load is reported unavailable, with its
error, and the others still run. Needs the Debian packages nginx-light and wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import shlex
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe
from _servers import (
    LOOPBACK,
    Service,
    ServiceError,
    WrkError,
    WrkResult,
    free_ports,
    median_of,
    nginx_proxy_body,
    open_fd_count,
    open_files_limit,
    raise_nofile_limit,
    ratio,
    require_tool,
    rss_bytes,
    run_wrk_url,
    start_backend,
    start_nginx,
    start_process,
    tool_version,
)

REPO = Path(__file__).resolve().parents[1]
SMALL_PATH = "/"
SMALL_BODY = b"hello world\n"
LARGE = {"64 KiB": ("/static/64k.bin", 64 * 1024), "1 MiB": ("/static/1m.bin", 1024 * 1024)}
BACKEND, NGINX, DISTPAT, AIOHTTP = "backend direct", "nginx", "distpat", "aiohttp"
RSS_TARGETS = {"distpat": DISTPAT, "nginx": NGINX, "aiohttp": AIOHTTP}
IDLE_GOAL_CONNECTIONS = 10_000
RSS_GOAL_BYTES = 150 * 10**6  # 150 MB, decimal: the strict reading of the goal
CONNECT_CONCURRENCY = 100  # connects in flight at once, well inside any listen backlog

AIOHTTP_PROXY = '''\
"""A naive aiohttp reverse proxy: one web.Application handler, one shared ClientSession, uvloop.

Written out and run by benchmarks/http_proxy.py as: python aiohttp_proxy.py HOST PORT UPSTREAM
"""

import asyncio
import sys

import aiohttp
import uvloop
from aiohttp import web

HOST, PORT, UPSTREAM = sys.argv[1], int(sys.argv[2]), sys.argv[3].rstrip("/")
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def session(app):
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        app[SESSION] = s
        yield


async def forward(request):
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    body = await request.read()
    async with request.app[SESSION].request(
        request.method, UPSTREAM + request.path_qs, headers=headers, data=body or None,
        allow_redirects=False,
    ) as up:
        data = await up.read()
        out = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
        return web.Response(status=up.status, headers=out, body=data)


async def main():
    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, PORT, backlog=4096).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


uvloop.run(main())
'''


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


# --- contenders ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Contender:
    """A server under test: running (``service``) or unavailable (``error``)."""

    name: str
    port: int
    service: Service | None = None
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.service is not None and self.error is None

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def fail(self, error: str) -> None:
        self.error = self.error or error


def check(port: int, expected: Mapping[str, bytes], context: ssl.SSLContext | None = None) -> str | None:
    """GET each path over one keep-alive connection (verified TLS with ``context``); None if every
    answer is 200 with the expected body."""
    over = " over TLS" if context is not None else ""
    conn = (
        http.client.HTTPSConnection(LOOPBACK, port, timeout=10, context=context)
        if context is not None
        else http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    )
    path = ""
    try:
        for path, body in expected.items():
            conn.request("GET", path)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200 or data != body:
                return (
                    f"GET {path}{over} answered {resp.status} with {len(data)} bytes "
                    f"(expected 200 with the backend's {len(body)} bytes)"
                )
    except (OSError, http.client.HTTPException) as e:  # ssl.SSLError is an OSError
        return f"GET {path}{over} failed: {type(e).__name__}: {e}"
    finally:
        conn.close()
    return None


def start_checked_backend(
    stack: contextlib.ExitStack, nginx: str, port: int, tmp: Path, expected: Mapping[str, bytes]
) -> Service:
    """The backend (stopped by ``stack``), or SystemExit if it does not answer ``expected``."""
    backend = start_backend(nginx, port=port, base_dir=tmp)
    stack.callback(backend.stop)
    error = check(port, expected)
    if error:
        raise SystemExit(f"the backend nginx does not answer as it should: {error}")
    return backend


def distpat_command(option: str | None) -> list[str]:
    if option:
        return shlex.split(option)
    for candidate in (Path(sys.executable).with_name("distpat"), REPO / ".venv" / "bin" / "distpat"):
        if candidate.exists():
            return [str(candidate)]
    found = shutil.which("distpat")
    return [found] if found else [sys.executable, "-m", "distpat"]


def start_all(
    stack: contextlib.ExitStack, tmp: Path, nginx: str, args: argparse.Namespace
) -> list[Contender]:
    """Start the backend and the proxies (stops registered on ``stack``); check each one's answers."""
    www = tmp / "www" / "static"
    www.mkdir(parents=True)
    expected = {SMALL_PATH: SMALL_BODY}
    for path, size in LARGE.values():
        body = os.urandom(size)
        (www / Path(path).name).write_bytes(body)
        expected[path] = body

    backend_port, nginx_port, distpat_port, aiohttp_port = free_ports(4)
    upstream = f"http://{LOOPBACK}:{backend_port}"
    backend = start_checked_backend(stack, nginx, backend_port, tmp, expected)

    starters: dict[str, tuple[int, Callable[[], Service]]] = {
        NGINX: (
            nginx_port,
            lambda: start_nginx(
                "nginx-proxy",
                nginx,
                port=nginx_port,
                base_dir=tmp,
                worker_connections=max(4096, args.idle_connections + 1024),
                http_body=nginx_proxy_body(backend_port, f"{LOOPBACK}:{nginx_port} backlog=4096"),
            ),
        ),
        DISTPAT: (
            distpat_port,
            lambda: start_process(
                "distpat",
                [
                    *distpat_command(args.distpat),
                    "proxy",
                    "--listen",
                    f"{LOOPBACK}:{distpat_port}",
                    "--upstream",
                    upstream,
                    "--workers",
                    "1",
                ],
                port=distpat_port,
                log_dir=tmp,
                timeout=15,
            ),
        ),
        AIOHTTP: (
            aiohttp_port,
            lambda: start_process(
                "aiohttp",
                [sys.executable, str(write_aiohttp_proxy(tmp)), LOOPBACK, str(aiohttp_port), upstream],
                port=aiohttp_port,
                log_dir=tmp,
                timeout=15,
            ),
        ),
    }
    contenders = [Contender(BACKEND, backend_port, backend)]
    for name, (port, start) in starters.items():
        contender = Contender(name, port)
        try:
            contender.service = start()
        except ServiceError as e:
            contender.fail(str(e))
        else:
            stack.callback(contender.service.stop)
            error = check(port, expected)
            if error:
                contender.fail(error)
                contender.service.stop()
        contenders.append(contender)
    return contenders


def write_aiohttp_proxy(tmp: Path) -> Path:
    script = tmp / "aiohttp_proxy.py"
    script.write_text(AIOHTTP_PROXY, encoding="utf-8")
    return script


# --- throughput ---------------------------------------------------------------------------------------

Rounds = dict[str, list[WrkResult | None]]  # contender -> one result per round (None: failed or skipped)


def measure(contenders: Sequence[Contender], path: str, wrk: str, args: argparse.Namespace) -> Rounds:
    """``args.rounds`` rounds of wrk against ``path`` on every available contender, the order rotating."""
    results: Rounds = {c.name: [] for c in contenders}
    for r in range(args.rounds):
        order = list(contenders[r % len(contenders) :]) + list(contenders[: r % len(contenders)])
        done: dict[str, WrkResult | None] = {}
        for c in order:
            done[c.name] = None
            if not c.available:
                continue
            try:
                done[c.name] = run_wrk_url(
                    c.url(path), wrk=wrk, threads=1, connections=args.connections, duration=args.duration
                )
            except WrkError as e:
                if c.service is not None and c.service.alive():
                    tail = c.service.log_tail()
                    c.fail(f"wrk failed in round {r + 1}: {e}" + (f"\nits log ends:\n{tail}" if tail else ""))
            if c.service is not None and not c.service.alive():
                tail = c.service.log_tail()
                c.fail(f"{c.service.exit_status()} in round {r + 1}" + (f":\n{tail}" if tail else ""))
        for c in contenders:
            results[c.name].append(done[c.name])
    return results


def _measured(rounds: list[WrkResult | None]) -> list[WrkResult]:
    return [r for r in rounds if r is not None]


def unavailable_line(c: Contender) -> str:
    lines = (c.error or "not measured").splitlines()
    return f"unavailable: {lines[0]}" + "".join(f"\n{'':18s}| {line}" for line in lines[1:])


def goal_line(label: str, value: float | None, goal: float, missing: str) -> str:
    if value is None:
        return f"{label} n/a (goal >= {goal:g}x: NOT MET, not measured: {missing})"
    return f"{label} {value:6.2f}x (goal >= {goal:g}x: {verdict(value >= goal)})"


def why_missing(contenders: Sequence[Contender], *names: str) -> str:
    missing = [f"{c.name} unavailable" for c in contenders if c.name in names and not c.available]
    return ", ".join(missing) or "no round measured both"


def req_per_sec(r: WrkResult) -> float:
    return r.requests_per_sec


def transfer(r: WrkResult) -> float:
    return r.transfer_per_sec


def milliseconds(rounds: list[WrkResult | None], percentile: int) -> str:
    """The median over rounds of wrk's latency ``percentile``, in ms, or '?' if wrk gave none."""
    values = [r.latency[percentile] for r in _measured(rounds) if percentile in r.latency]
    return f"{statistics.median(values) * 1e3:.2f}" if values else "?"


def error_note(rounds: list[WrkResult | None]) -> str | None:
    """The errors of all rounds by kind, e.g. 'read 1028, non-2xx 3', or None if there were none."""
    total: Counter[str] = Counter()
    for r in _measured(rounds):
        total.update(r.error_counts())
    return ", ".join(f"{kind} {n:,}" for kind, n in total.items()) or None


def small_responses(contenders: Sequence[Contender], wrk: str, args: argparse.Namespace) -> None:
    print(
        f"\n## Small responses: GET / (12-byte body), wrk -t1 -c{args.connections} -d{args.duration}s "
        f"--latency, median of {args.rounds} alternating rounds"
    )
    results = measure(contenders, SMALL_PATH, wrk, args)
    print(f"{'contender':16s} {'req/s':>9s}  {'p50 ms':>7s} {'p99 ms':>7s} {'errors':>7s}   req/s by round")
    for c in contenders:
        rounds = results[c.name]
        rps = median_of(rounds, req_per_sec)
        if rps is None:
            print(f"{c.name:16s} {unavailable_line(c)}")
            continue
        p50, p99 = milliseconds(rounds, 50), milliseconds(rounds, 99)
        errors = sum(r.errors for r in _measured(rounds))
        by_round = " ".join(f"{r.requests_per_sec:,.0f}" if r else "-" for r in rounds)
        print(f"{c.name:16s} {rps:9,.0f}  {p50:>7s} {p99:>7s} {errors:7d}   {by_round}")
        note = error_note(rounds)
        if note:
            print(f"{'':16s} errors: {note} (req/s then counts failed and short responses too)")
        if c.error:
            print(f"{'':16s} then {unavailable_line(c)}")
    print("(p50/p99: medians over rounds of wrk's latency percentiles; errors: socket errors + non-2xx)")
    print(
        goal_line(
            "distpat / nginx req/s:  ",
            ratio(results, DISTPAT, NGINX, req_per_sec),
            0.5,
            why_missing(contenders, DISTPAT, NGINX),
        )
    )
    print(
        goal_line(
            "distpat / aiohttp req/s:",
            ratio(results, DISTPAT, AIOHTTP, req_per_sec),
            5,
            why_missing(contenders, DISTPAT, AIOHTTP),
        )
    )
    for num, den, anchor in ((NGINX, BACKEND, "~0.55x"), (AIOHTTP, NGINX, "~0.09x")):
        value = ratio(results, num, den, req_per_sec)
        if value is not None:
            print(f"reference: {num} / {den} req/s: {value:5.2f}x (anchors: {anchor})")


def large_responses(contenders: Sequence[Contender], wrk: str, args: argparse.Namespace) -> None:
    pair = [c for c in contenders if c.name in (NGINX, DISTPAT)]
    print(
        f"\n## Large responses: wrk -t1 -c{args.connections} -d{args.duration}s, median of {args.rounds} "
        "alternating rounds; MiB/s is wrk's Transfer/sec (2**20 bytes, headers included)"
    )
    print(f"{'body':7s} {'contender':10s} {'MiB/s':>8s} {'req/s':>8s} {'p99 ms':>8s} {'errors':>7s}")
    for size, (path, _) in LARGE.items():
        results = measure(pair, path, wrk, args)
        for c in pair:
            rounds = results[c.name]
            mib = median_of(rounds, transfer)
            if mib is None:
                print(f"{size:7s} {c.name:10s} {unavailable_line(c)}")
                continue
            rps = median_of(rounds, req_per_sec) or 0.0
            p99 = milliseconds(rounds, 99)
            errors = sum(r.errors for r in _measured(rounds))
            print(f"{size:7s} {c.name:10s} {mib / 2**20:8.1f} {rps:8,.0f} {p99:>8s} {errors:7d}")
            note = error_note(rounds)
            if note:
                print(f"{'':18s} errors: {note} (MiB/s then counts failed and short responses too)")
            if c.error:
                print(f"{'':18s} then {unavailable_line(c)}")
        value = ratio(results, DISTPAT, NGINX, transfer)
        shown = f"{value:.2f}x" if value is not None else f"n/a ({why_missing(pair, DISTPAT, NGINX)})"
        print(f"{size:7s} distpat / nginx MiB/s: {shown}")
    nginx = next((c for c in pair if c.name == NGINX and c.service is not None), None)
    if nginx is not None and nginx.service is not None:
        spilled = nginx.service.log_text().count("buffered to a temporary file")
        if spilled:
            print(f"(nginx, at stock proxy_buffers, spilled {spilled} upstream responses to temp files)")


# --- idle keep-alive connections ----------------------------------------------------------------------


@dataclass(slots=True)
class Idle:
    """What holding ``requested`` idle keep-alive connections to one server came to."""

    requested: int
    opened: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    open_at_measure: int = 0
    rss_before: int = 0
    rss_held: int = 0
    rss_after: int = 0
    processes: int = 0
    server_fds: int | None = None


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open_one(port: int, gate: asyncio.Semaphore, timeout: float) -> Conn:
    async with gate:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), timeout)
        try:
            writer.write(f"GET / HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n\r\n".encode("ascii"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            status, *lines = head.decode("latin-1").split("\r\n")
            if not status.startswith("HTTP/1.1 200"):
                raise ConnectionError(f"answered {status!r}")
            headers = {k.strip().lower(): v.strip().lower() for k, _, v in (h.partition(":") for h in lines)}
            if headers.get("connection") == "close":
                raise ConnectionError("answered with Connection: close")
            if "content-length" in headers:
                await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
            elif headers.get("transfer-encoding") == "chunked":
                await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), timeout)
        except BaseException:
            writer.close()
            raise
        return reader, writer


def _still_open(conn: Conn) -> bool:
    reader, writer = conn
    return not reader.at_eof() and reader.exception() is None and not writer.transport.is_closing()


async def hold_idle(pid: int, port: int, n: int, result: Idle) -> None:
    """Open ``n`` keep-alive connections, one GET each, and read the server's RSS while they sit idle."""
    result.rss_before, _ = rss_bytes(pid)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    t0 = time.monotonic()
    tasks: list[asyncio.Task[Conn]] = []
    conns: list[Conn] = []
    try:
        tasks += (asyncio.ensure_future(_open_one(port, gate, 10.0)) for _ in range(n))
        done, pending = await asyncio.wait(tasks, timeout=max(60.0, n / 50))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            result.failures["gave up: not open within the overall time limit"] += len(pending)
        result.seconds = time.monotonic() - t0
        for task in done:
            error = task.exception()
            if error is None:
                conns.append(task.result())
            else:
                result.failures[f"{type(error).__name__}: {str(error)[:80]}"] += 1
        result.opened = len(conns)
        await asyncio.sleep(1.0)  # let the server settle (and any idle timeout show)
        result.open_at_measure = sum(1 for c in conns if _still_open(c))
        result.rss_held, result.processes = rss_bytes(pid)
        result.server_fds = open_fd_count(pid)
    finally:
        for task in tasks:
            task.cancel()  # a no-op for those done; the rest (after an error or interrupt) stop connecting
        writers = [t.result()[1] for t in tasks if t.done() and not t.cancelled() and t.exception() is None]
        for writer in writers:
            writer.close()
        if writers:
            await asyncio.wait([asyncio.ensure_future(w.wait_closed()) for w in writers], timeout=15)
    await asyncio.sleep(1.0)
    result.rss_after, _ = rss_bytes(pid)


def idle_connections(contenders: Sequence[Contender], args: argparse.Namespace) -> None:
    name = RSS_TARGETS[args.rss_target]
    target = next(c for c in contenders if c.name == name)
    n = args.idle_connections
    print(
        f"\n## Idle keep-alive connections: RSS of {name} holding {n:,} idle client connections "
        "(one GET each, then idle), after the runs above"
    )
    is_goal = name == DISTPAT
    goal = f"goal <= {RSS_GOAL_BYTES / 1e6:.0f} MB"
    if not target.available or target.service is None:
        print(f"{name}: {unavailable_line(target)}")
        if is_goal:
            print(f"{goal}: NOT MET (not measured: {name} unavailable)")
        return

    pid = target.service.pid
    soft, hard = raise_nofile_limit()
    ours_used = open_fd_count(os.getpid(), children=False) or 0
    budget = soft - ours_used - 64
    notes = []
    if budget < n:
        notes.append(
            f"this process may open only {max(budget, 0):,}: its RLIMIT_NOFILE is soft {soft:,} / hard "
            f"{hard:,} with {ours_used} already open (raise the hard limit, e.g. ulimit -Hn, to open more)"
        )
        n = max(budget, 0)
    server_limit = open_files_limit(pid)
    if server_limit is not None and server_limit < n + 64:
        notes.append(f"{name}'s own RLIMIT_NOFILE is {server_limit:,}: expect refusals past that")
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        if high - low + 1 < n:
            notes.append(f"only {high - low + 1:,} ephemeral ports ({low}-{high}) for one destination")
    except (OSError, ValueError):
        pass
    for note in notes:
        print(f"note: {note}")

    result = Idle(requested=n)
    asyncio.run(hold_idle(pid, target.port, n, result))

    mb = 1e6
    print(
        f"opened {result.opened:,} of {args.idle_connections:,} in {result.seconds:.1f} s "
        f"({CONNECT_CONCURRENCY} connects in flight); still open when measured: {result.open_at_measure:,}; "
        f"{name}'s open fds then: {result.server_fds if result.server_fds is not None else '?'}"
    )
    for failure, count in result.failures.most_common(5):
        print(f"  failed x{count:,}: {failure}")
    per_conn = (result.rss_held - result.rss_before) / result.opened if result.opened else 0.0
    print(
        f"RSS (sum of VmRSS over {result.processes} process{'es' if result.processes != 1 else ''}): "
        f"before {result.rss_before / mb:.1f} MB, holding {result.rss_held / mb:.1f} MB "
        f"({per_conn / 1024:+.1f} KiB per connection), after closing {result.rss_after / mb:.1f} MB"
    )
    held_all = result.open_at_measure >= IDLE_GOAL_CONNECTIONS
    if is_goal:
        ok = held_all and result.rss_held <= RSS_GOAL_BYTES
        why = "" if held_all else f"; {result.open_at_measure:,} connections held, the goal is at 10,000"
        print(f"{name} RSS holding {IDLE_GOAL_CONNECTIONS:,} idle connections: {goal}: {verdict(ok)}{why}")
    else:
        print(f"(the {goal} is distpat's; {name} is shown for reference or to check the harness)")


# --- main ---------------------------------------------------------------------------------------------


_caught: list[int] = []


def _interrupt_on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM and SIGHUP act as Ctrl-C: unwind through the finally blocks that stop every service."""
    _caught.append(signum)
    raise KeyboardInterrupt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 s wrk runs and 2 rounds, for a smoke run")
    p.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 4; --quick 1)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds, at least 2 (default 5)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument(
        "--idle-connections", type=int, default=IDLE_GOAL_CONNECTIONS, help="for the RSS part (default 10000)"
    )
    p.add_argument(
        "--rss-target",
        choices=sorted(RSS_TARGETS),
        default="distpat",
        help="whose RSS to measure with idle connections (default distpat; others check the harness)",
    )
    p.add_argument("--distpat", default=None, help="command that runs distpat (default: .venv/bin/distpat)")
    args = p.parse_args()
    args.duration = args.duration or (1 if args.quick else 4)
    args.rounds = max(2, args.rounds or (2 if args.quick else 5))
    if args.duration < 1 or args.connections < 1 or args.idle_connections < 0:
        p.error("--duration and --connections must be at least 1, --idle-connections at least 0")

    nginx = require_tool("nginx", "nginx-light")
    wrk = require_tool("wrk", "wrk")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt_on_signal)
    raise_nofile_limit()  # before any server starts, so that they inherit it

    print("# distpat benchmark: HTTP/1.1 reverse proxy")
    print(describe("aiohttp", "uvloop", "httptools"))
    wrk_version = tool_version([wrk, "-v"]).split(" [")[0]
    print(f"tools: {tool_version([nginx, '-v'])}; {wrk_version}; servers and wrk share the same cores")
    try:
        with tempfile.TemporaryDirectory(prefix="distpat-bench-") as tmp, contextlib.ExitStack() as stack:
            contenders = start_all(stack, Path(tmp), nginx, args)
            small_responses(contenders, wrk, args)
            large_responses(contenders, wrk, args)
            idle_connections(contenders, args)
    except KeyboardInterrupt:
        signum = _caught[-1] if _caught else signal.SIGINT
        print(f"\ninterrupted by {signal.Signals(signum).name}: every server was stopped", file=sys.stderr)
        raise SystemExit(128 + signum) from None


if __name__ == "__main__":
    main()
