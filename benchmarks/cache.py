"""Cache benchmark: distpat cache against Varnish, nginx proxy_cache and the plain proxy, in one run.

One invocation starts, on 127.0.0.1 only, each in its own process group:

  slow       a small asyncio server inside this script (a thread): every GET is answered after
             SLOW_SECONDS (about 1 s) with "slow\\n" and ``Cache-Control: max-age=3600``, and each
             request it receives is counted by its target
  backend    nginx, 1 worker: /obj/1k and /obj/64k are files of 1 KiB and 64 KiB (static files: ETag
             and Last-Modified) with ``Cache-Control: max-age=3600``; /flood/N (any N) serves the
             64 KiB file under its own URL, with the same header; /slow is passed to the slow server
  cache      distpat cache --upstream B --workers 1
  varnish    varnishd -F -a 127.0.0.1:P -s malloc,256m -f VCL -T none -j none -n DIR, the VCL naming
             only the backend (the builtin rules otherwise; Varnish runs its own worker threads)
  nginx      nginx, 1 worker, proxy_cache with a keys_zone and no proxy_cache_valid (the response's
             headers decide), ``add_header X-Cache-Status $upstream_cache_status``, the http_proxy
             benchmark's upstream settings (keepalive 64, HTTP/1.1, Connection "")
  proxy      distpat proxy --upstream B --workers 1: the miss path, no cache at all

Hits: every cache is warmed and then checked with one request (Cache-Status ``hit`` from distpat,
``X-Varnish`` with two ids from Varnish, ``X-Cache-Status: HIT`` from nginx; the proxy must just
answer the body), then driven with ``wrk -t1 -c32 --latency`` on /obj/1k and on /obj/64k in every
round, the order rotating; medians over rounds are compared (ratios are medians of same-round
ratios), with each contender's own CPU time per request (user + system from /proc, the backend's
not counted). Goal: distpat cache >= 1.5x Varnish's req/s, for 1 KiB and for 64 KiB.

Storm: STORM concurrent GETs (200) of a URL no cache has seen (/slow?storm=N, N fresh for each
contender), every connection opened first and the requests sent together; the slow server counts
what reaches it. Goal: distpat cache makes one upstream request of them. Shown too: Varnish, nginx
and nginx with ``proxy_cache_lock on`` (nginx-lock, started for this part only).

Memory: ``distpat cache --max-bytes 64m --workers 1 --admin A`` with --flood MB (500; --quick 50)
of distinct 64 KiB objects passing through (/flood/0, /flood/1 ..., each once, by a wrk Lua script,
wrk -t1 -c32), its VmRSS read from /proc every 0.05 s during the flood and 1 s after. Goal: RSS under 150 MB;
the cache's distpat_cache_bytes (which must stay within --max-bytes), distpat_cache_objects and
distpat_cache_evictions from the admin /metrics are shown at the end. Run:

    .venv/bin/python benchmarks/cache.py             # full run (a few minutes)
    .venv/bin/python benchmarks/cache.py --quick     # 1 s wrk runs, 2 rounds, a 50 MB flood

A contender that does not start, fails a check or fails under load is reported unavailable and the
others still run; the benchmark then exits with code 1 (a missed goal does not change the exit code).
Needs the Debian packages nginx-light (or nginx), varnish and wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe
from _servers import (
    LOOPBACK,
    ServiceError,
    WrkError,
    WrkResult,
    free_ports,
    interruptible,
    median_of,
    parse_wrk,
    ratio,
    require_tool,
    rss_bytes,
    run_wrk_url,
    shown_command,
    start_nginx,
    start_process,
    tool_version,
)
from http_proxy import Contender, distpat_command
from tls_sidecar import CPU_NOTE, alternate, cpu_per_request, rate_table, req_per_sec

CACHE, VARNISH, NGINX, NGINX_LOCK, PROXY = "cache", "varnish", "nginx", "nginx-lock", "proxy"
OBJECTS = {"/obj/1k": 1024, "/obj/64k": 64 * 1024}
FLOOD_OBJECT = 64 * 1024
MAX_AGE = "max-age=3600"
SLOW_SECONDS = 1.0
SLOW_BODY = b"slow\n"
STORM = 200
STORM_TIMEOUT = 30.0  # seconds for a whole storm
HIT_GOAL = 1.5  # distpat cache / Varnish req/s
RSS_GOAL_BYTES = 150 * 10**6  # 150 MB, decimal
FLOOD_MAX_BYTES = "64m"  # distpat's sizes: m is MiB
FLOOD_MAX_BYTES_VALUE = 64 * 2**20


def object_body(size: int) -> bytes:
    """The bytes of a served object: printable, and not one byte repeated (no accidental match)."""
    line = b"".join(b"%07d\n" % i for i in range(size // 8 + 1))
    return line[:size]


# --- the slow server ------------------------------------------------------------------------------


class SlowServer:
    """An asyncio HTTP/1.x server in a thread of its own: each GET answered after SLOW_SECONDS with
    SLOW_BODY and ``Cache-Control: max-age=3600``, one request a connection; ``seen`` counts the
    requests received by target."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="slow-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise ServiceError(f"the slow server did not start on {LOOPBACK}:{self.port}: {self._error}")

    def count(self, target: str) -> int:
        with self._lock:
            return self.seen[target]

    def stop(self) -> None:
        if self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # reported by start(), which waits for _ready
            self._error = e
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, LOOPBACK, self.port, backlog=1024)
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            parts = head.split(b"\r\n", 1)[0].split()
            target = parts[1].decode("latin-1") if len(parts) == 3 else "?"
            with self._lock:
                self.seen[target] += 1
            await asyncio.sleep(SLOW_SECONDS)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: "
                + MAX_AGE.encode()
                + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(SLOW_BODY), SLOW_BODY)
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()


# --- the servers ----------------------------------------------------------------------------------


def backend_body(port: int, www: Path, slow_port: int) -> str:
    """The backend nginx's ``http { }`` body: the objects, the flood's URLs and /slow."""
    return f"""
server {{
    listen {LOOPBACK}:{port} backlog=4096;
    root {www};
    location /obj/ {{ add_header Cache-Control "{MAX_AGE}"; }}
    location ~ ^/flood/[0-9]+$ {{
        add_header Cache-Control "{MAX_AGE}";
        try_files /obj/64k =404;
    }}
    location /slow {{ proxy_pass http://{LOOPBACK}:{slow_port}; }}
}}
"""


def nginx_cache_body(backend_port: int, listen: str, cache_dir: Path, zone: str, lock: bool) -> str:
    """nginx's ``http { }`` body: proxy_cache in front of the backend, only response headers deciding."""
    locking = "        proxy_cache_lock on;\n" if lock else ""
    return f"""
proxy_cache_path {cache_dir} levels=1:2 keys_zone={zone}:10m max_size=256m inactive=60m use_temp_path=off;
upstream backend {{
    server {LOOPBACK}:{backend_port};
    keepalive 64;
    keepalive_requests 1000000;
}}
server {{
    listen {listen};
    location / {{
        proxy_pass http://backend;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_cache {zone};
{locking}        add_header X-Cache-Status $upstream_cache_status;
    }}
}}
"""


def varnish_vcl(backend_port: int) -> str:
    return f'vcl 4.1;\n\nbackend default {{\n    .host = "{LOOPBACK}";\n    .port = "{backend_port}";\n}}\n'


@dataclass(slots=True)
class Bench:
    """What the run found: the commands shown, the summary's rows and the broken contenders."""

    tmp: Path
    distpat: list[str]
    nginx: str
    varnishd: str
    wrk: str
    backend_port: int
    commands: dict[str, str] = field(default_factory=dict)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # what, value, goal, verdict
    broken: list[str] = field(default_factory=list)

    @property
    def backend(self) -> str:
        return f"http://{LOOPBACK}:{self.backend_port}"

    def row(self, what: str, value: str, goal: str = "-", ok: bool | None = None) -> None:
        self.rows.append((what, value, goal, "-" if ok is None else ("met" if ok else "missed")))

    def note_unavailable(self, contenders: Sequence[Contender]) -> None:
        """Count each contender that has failed as broken, once."""
        for c in contenders:
            line = f"{c.name}: {c.error.splitlines()[0]}" if c.error else None
            if line and not any(b.startswith(f"{c.name}: ") for b in self.broken):
                self.broken.append(line)

    def check_row(self, what: str, value: str, expected: str, ok: bool) -> None:
        self.rows.append((what, value, expected, "ok" if ok else "BROKEN"))
        if not ok:
            self.broken.append(f"{what}: {value} (expected {expected})")


def start_contender(bench: Bench, stack: contextlib.ExitStack, name: str) -> Contender:
    """Start one contender on a free port (its stop on ``stack``); unavailable if it does not start."""
    c = Contender(name, free_ports(1)[0])
    listen = f"{LOOPBACK}:{c.port}"
    try:
        if name in (NGINX, NGINX_LOCK):
            cache_dir = bench.tmp / f"{name}-cache"
            body = nginx_cache_body(
                bench.backend_port, f"{listen} backlog=4096", cache_dir, "hits", name == NGINX_LOCK
            )
            bench.commands[name] = (
                "nginx, 1 worker, http {" + body.replace(str(bench.tmp), "$TMP").rstrip() + "\n}"
            )
            c.service = start_nginx(name, bench.nginx, port=c.port, base_dir=bench.tmp, http_body=body)
        elif name == VARNISH:
            vcl = bench.tmp / "varnish.vcl"
            vcl.write_text(varnish_vcl(bench.backend_port), encoding="utf-8")
            argv = [bench.varnishd, "-F", "-a", listen, "-s", "malloc,256m", "-f", str(vcl)]
            argv += ["-T", "none", "-j", "none", "-n", str(bench.tmp / "varnish")]
            vcl_text = " ".join(varnish_vcl(bench.backend_port).split())
            bench.commands[name] = shown_command(argv, bench.tmp) + f"  (VCL: {vcl_text})"
            c.service = start_process(name, argv, port=c.port, log_dir=bench.tmp, timeout=30)
        else:
            command = "cache" if name == CACHE else "proxy"
            argv = [
                *bench.distpat,
                command,
                "--listen",
                listen,
                "--upstream",
                bench.backend,
                "--workers",
                "1",
            ]
            bench.commands[name] = shown_command(argv, bench.tmp)
            c.service = start_process(name, argv, port=c.port, log_dir=bench.tmp, timeout=20)
    except ServiceError as e:
        c.fail(str(e))
    else:
        stack.callback(c.service.stop)
    return c


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """(status, header fields by lower-case name, body) of one GET on a fresh connection."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def hit_evidence(name: str, fields: Mapping[str, str]) -> tuple[bool, str]:
    """Whether an answer's fields show it was a hit, and the fields that tell."""
    if name == CACHE:
        status = fields.get("cache-status", "")
        return bool(re.search(r"(^|;)\s*hit\b", status)), f"Cache-Status: {status or '(none)'}"
    if name == VARNISH:
        ids = fields.get("x-varnish", "").split()
        return len(ids) == 2, f"X-Varnish: {' '.join(ids) or '(none)'}, Age: {fields.get('age', '(none)')}"
    if name in (NGINX, NGINX_LOCK):
        status = fields.get("x-cache-status", "")
        return status == "HIT", f"X-Cache-Status: {status or '(none)'}"
    return True, "no cache"


def warm_and_check(c: Contender) -> str | None:
    """Warm the contender with each object twice, then one more GET each must be a hit with the
    object's bytes; None if so, else what went wrong. The evidence is printed."""
    for path, size in OBJECTS.items():
        body = object_body(size)
        try:
            for _ in range(2):
                get(c.port, path)
            status, fields, data = get(c.port, path)
        except (OSError, http.client.HTTPException) as e:
            return f"GET {path} failed: {type(e).__name__}: {e}"
        if status != 200 or data != body:
            return f"GET {path} answered {status} with {len(data)} bytes (expected 200 with {size})"
        hit, evidence = hit_evidence(c.name, fields)
        print(f"{c.name:10s} GET {path:9s} -> {status}, {evidence}")
        if not hit:
            return f"GET {path} after warming is not a hit ({evidence})"
    return None


# --- 1: hits ----------------------------------------------------------------------------------------


def hits_section(bench: Bench, contenders: Sequence[Contender], args: argparse.Namespace) -> None:
    print("\n## Warming: each object twice, then one GET that must be a hit")
    for c in contenders:
        if c.available:
            error = warm_and_check(c)
            if error:
                c.fail(f"check failed: {error}")
    bench.note_unavailable(contenders)
    for path, size in OBJECTS.items():
        print(
            f"\n## Hits: GET {path} ({size:,}-byte body), wrk -t1 -c{args.connections} -d{args.duration}s "
            f"--latency, median of {args.rounds} alternating rounds"
        )

        def run(c: Contender, path: str = path) -> WrkResult:
            return run_wrk_url(
                c.url(path), wrk=bench.wrk, connections=args.connections, duration=args.duration
            )

        results = alternate(contenders, "wrk", run, args)
        rate_table(contenders, results, {})
        bench.note_unavailable(contenders)
        print(CPU_NOTE)
        label = f"{size // 1024} KiB"
        for c in contenders:
            non_2xx = sum(m.result.non_2xx for m in results[c.name] if m is not None)
            if any(m is not None for m in results[c.name]):
                bench.check_row(f"{c.name} {label}: non-2xx under load", f"{non_2xx:,}", "0", non_2xx == 0)
        value = ratio(results, CACHE, VARNISH, req_per_sec)
        shown = f"{value:.2f}x" if value is not None else "n/a (not measured)"
        print(f"{CACHE} / {VARNISH} req/s, {label}: {shown} (goal >= {HIT_GOAL:g}x)")
        ok = value is not None and value >= HIT_GOAL
        bench.row(f"{CACHE} / {VARNISH} req/s, {label}", shown, f">= {HIT_GOAL:g}x", ok)
        for other in (NGINX, PROXY):
            value = ratio(results, CACHE, other, req_per_sec)
            bench.row(f"{CACHE} / {other} req/s, {label}", f"{value:.2f}x" if value is not None else "n/a")
        for c in contenders:
            rps = median_of(results[c.name], req_per_sec)
            cpu = median_of(results[c.name], cpu_per_request)
            shown = (
                f"{rps:,.0f} req/s, {cpu:.1f} CPU µs/req" if rps is not None and cpu is not None else "n/a"
            )
            bench.row(f"{c.name}, {label}", shown)


# --- 2: the storm -------------------------------------------------------------------------------------


async def _storm(port: int, target: str, n: int) -> list[tuple[int, bytes] | str]:
    """``n`` connections opened first, then one GET ``target`` on each at once; (status, body) or an
    error per connection."""
    request = (f"GET {target} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n\r\n").encode()
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(n):
            conns.append(await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), 10))

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bytes] | str:
            try:
                writer.write(request)
                await writer.drain()
                data = await reader.read(-1)  # Connection: close, so the answer ends with the connection
            except OSError as e:
                return f"{type(e).__name__}: {e}"
            head, _, body = data.partition(b"\r\n\r\n")
            m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
            return (int(m.group(1)), body) if m else f"not an HTTP answer: {data[:60]!r}"

        return list(await asyncio.wait_for(asyncio.gather(*(one(r, w) for r, w in conns)), STORM_TIMEOUT))
    finally:
        for _, writer in conns:
            writer.close()


def storm(port: int, target: str, n: int) -> list[tuple[int, bytes] | str]:
    try:
        return asyncio.run(_storm(port, target, n))
    except (OSError, TimeoutError) as e:
        return [f"the storm failed: {type(e).__name__}: {e}"]


def unchunked(body: bytes) -> bytes:
    """The body of an answer that may be chunked (a lone chunk or several), as its bytes."""
    out, rest = b"", body
    for _ in range(1000):  # bounded: a storm's answers are a few bytes
        size_line, sep, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            return body
        if not sep or size == 0:
            return out
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def storm_section(
    bench: Bench, stack: contextlib.ExitStack, slow: SlowServer, contenders: Sequence[Contender]
) -> None:
    lock = start_contender(bench, stack, NGINX_LOCK)
    print(f"\n{NGINX_LOCK}: {bench.commands[NGINX_LOCK]}")
    print(
        f"\n## Storm: {STORM} concurrent GETs of a URL not seen before (/slow?storm=N), the slow server "
        f"answering after {SLOW_SECONDS:g} s; what reaches it"
    )
    print(f"{'contender':12s} {'upstream requests':>17s} {'200 + body':>10s} {'seconds':>8s}  other answers")
    storm_ones = [c for c in contenders if c.name in (CACHE, VARNISH, NGINX)] + [lock]
    for n, c in enumerate(storm_ones, 1):
        if not c.available:
            print(f"{c.name:12s} unavailable: {(c.error or '').splitlines()[0] if c.error else ''}")
            bench.note_unavailable([c])
            continue
        target = f"/slow?storm={n}"
        t0 = time.monotonic()
        got = storm(c.port, target, STORM)
        seconds = time.monotonic() - t0
        time.sleep(0.2)  # the last upstream requests counted
        upstream = slow.count(target)
        good = sum(1 for g in got if isinstance(g, tuple) and g[0] == 200 and unchunked(g[1]) == SLOW_BODY)
        other = Counter(str(g[0]) if isinstance(g, tuple) else g.split(":")[0] for g in got)
        other.subtract({"200": good})
        shown = ", ".join(f"{k} x{v}" for k, v in other.items() if v > 0) or "-"
        print(f"{c.name:12s} {upstream:17d} {good:10d} {seconds:8.2f}  {shown}")
        bench.check_row(
            f"storm: {c.name} answers 200 with the body", f"{good} of {STORM}", f"{STORM}", good == STORM
        )
        if c.name == CACHE:
            bench.row(f"storm: {c.name} upstream requests", f"{upstream}", "1", upstream == 1)
        else:
            bench.row(f"storm: {c.name} upstream requests", f"{upstream}")


# --- 3: memory under a flood of distinct objects --------------------------------------------------


def flood_script(count: int, marker: Path) -> str:
    """A wrk Lua script for one thread: GET /flood/0 ... /flood/COUNT-1, each once; at the last answer
    it leaves the file ``marker`` and stops (what the other connections send meanwhile is /obj/1k)."""
    return f"""\
-- Written by benchmarks/cache.py: {count:,} distinct URLs, each requested once.
function init(args)
  sent, answered, ok, other = 0, 0, 0, 0
end

function request()
  local n = sent
  sent = sent + 1
  if n >= {count} then return wrk.format("GET", "/obj/1k") end -- in flight at the stop: no new object
  return wrk.format("GET", "/flood/" .. n)
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 else other = other + 1 end
  answered = answered + 1
  if answered == {count} then
    io.write(string.format("flood: answered %d, 200 %d, other %d\\n", answered, ok, other))
    local f = io.open("{marker}", "w")
    if f then f:close() end
    wrk.thread:stop()
  end
end
"""


def shown(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "n/a"


def cache_metrics(admin_port: int) -> dict[str, float]:
    """distpat_cache_bytes, _objects and _evictions (a counter: _total may follow) from the admin
    /metrics, each summed over stages."""
    url = f"http://{LOOPBACK}:{admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:  # a loopback http:// URL
        text = resp.read().decode("utf-8", "replace")
    out: dict[str, float] = {}
    for name in ("bytes", "objects", "evictions"):
        values = re.findall(
            rf"^distpat_cache_{name}(?:_total)?(?:{{[^}}]*}})? ([\d.e+]+)$", text, re.MULTILINE
        )
        if values:
            out[name] = sum(float(v) for v in values)
    return out


@dataclass(slots=True)
class Flood:
    rss_before: int = 0
    rss_max: int = 0
    rss_after: int = 0
    samples: int = 0
    seconds: float = 0.0
    answered: int = 0
    ok: int = 0
    wrk: WrkResult | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    bytes_max: float = 0.0


def drive_flood(bench: Bench, pid: int, port: int, admin: int, count: int, f: Flood) -> None:
    """Run the flood against ``port``; RSS of ``pid`` sampled every 0.05 s, /metrics every second."""
    marker = bench.tmp / "flood-done"
    script = bench.tmp / "flood.lua"
    script.write_text(flood_script(count, marker), encoding="utf-8")
    bound = max(60, count // 50)  # seconds: -d, in case the flood is slower than 50 objects a second
    argv = [bench.wrk, "-t1", "-c32", f"-d{bound}s", "-s", str(script), f"http://{LOOPBACK}:{port}/"]
    f.rss_before = f.rss_max = rss_bytes(pid)[0]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        last_scrape = 0.0
        while proc.poll() is None and time.monotonic() < t0 + bound + 30:  # bounded by wrk's -d
            f.rss_max = max(f.rss_max, rss_bytes(pid)[0])
            f.samples += 1
            if time.monotonic() - last_scrape >= 1.0:
                last_scrape = time.monotonic()
                with contextlib.suppress(OSError):
                    f.bytes_max = max(f.bytes_max, cache_metrics(admin).get("bytes", 0.0))
            if marker.exists():
                proc.send_signal(signal.SIGINT)  # wrk sleeps out -d otherwise; SIGINT ends it with its report
                break
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    f.seconds = time.monotonic() - t0
    f.rss_max = max(f.rss_max, rss_bytes(pid)[0])
    if proc.returncode != 0:
        raise WrkError(f"wrk exited with code {proc.returncode}: {out.strip()[-300:]}")
    f.wrk = parse_wrk(out)
    m = re.search(r"flood: answered (\d+), 200 (\d+), other (\d+)", out)
    if m is None:
        raise WrkError(f"the flood script printed no counts: {out.strip()[-300:]!r}")
    f.answered, f.ok = int(m.group(1)), int(m.group(2))
    time.sleep(1.0)
    f.rss_after = rss_bytes(pid)[0]
    f.rss_max = max(f.rss_max, f.rss_after)
    with contextlib.suppress(OSError):
        f.metrics = cache_metrics(admin)
        f.bytes_max = max(f.bytes_max, f.metrics.get("bytes", 0.0))


def rss_section(bench: Bench, stack: contextlib.ExitStack, args: argparse.Namespace) -> None:
    port, admin = free_ports(2)
    count = max(1, args.flood * 10**6 // FLOOD_OBJECT)
    argv = [*bench.distpat, "cache", "--listen", f"{LOOPBACK}:{port}", "--upstream", bench.backend]
    argv += ["--workers", "1", "--max-bytes", FLOOD_MAX_BYTES, "--admin", f"{LOOPBACK}:{admin}"]
    print(
        f"\n## Memory: {count:,} distinct {FLOOD_OBJECT // 1024} KiB objects "
        f"({count * FLOOD_OBJECT / 1e6:,.0f} MB) through the cache, each once, wrk -t1 -c32 -s FLOOD"
    )
    print(f"cache-64m: {shown_command(argv, bench.tmp)}")
    try:
        service = start_process("cache-64m", argv, port=port, log_dir=bench.tmp, timeout=20)
    except ServiceError as e:
        bench.check_row("cache-64m starts", str(e).splitlines()[0], "running", False)
        return
    stack.callback(service.stop)
    f = Flood()
    try:
        drive_flood(bench, service.pid, port, admin, count, f)
    except (WrkError, OSError, subprocess.TimeoutExpired) as e:
        bench.check_row("the flood", f"{type(e).__name__}: {e}", "runs", False)
        return
    if not service.alive():
        bench.check_row("cache-64m under the flood", service.exit_status(), "running", False)
        return
    mb = 1e6
    rps = f.wrk.requests_per_sec if f.wrk else 0.0
    print(f"answered {f.answered:,} in {f.seconds:.1f} s, 200 {f.ok:,} ({rps:,.0f} req/s)")
    print(
        f"RSS (VmRSS, {f.samples} samples): before {f.rss_before / mb:.1f} MB, max {f.rss_max / mb:.1f} MB, "
        f"1 s after {f.rss_after / mb:.1f} MB"
    )
    held, objects, evictions = (f.metrics.get(k) for k in ("bytes", "objects", "evictions"))
    print(
        f"/metrics at the end: distpat_cache_bytes {shown(held)} (max seen {f.bytes_max:,.0f}; "
        f"--max-bytes {FLOOD_MAX_BYTES} = {FLOOD_MAX_BYTES_VALUE:,}), "
        f"distpat_cache_objects {shown(objects)}, distpat_cache_evictions {shown(evictions)}"
    )
    bench.check_row("flood: answered 200", f"{f.ok:,} of {count:,}", f"{count:,}", f.ok == count)
    bench.row(
        "flood RSS max",
        f"{f.rss_max / mb:.1f} MB",
        f"< {RSS_GOAL_BYTES / mb:.0f} MB",
        f.rss_max < RSS_GOAL_BYTES,
    )
    bench.check_row(
        "flood: distpat_cache_bytes, max seen",
        f"{f.bytes_max:,.0f}",
        f"<= {FLOOD_MAX_BYTES_VALUE:,}",
        held is not None and f.bytes_max <= FLOOD_MAX_BYTES_VALUE,
    )
    bench.row("flood: distpat_cache_objects / evictions", f"{shown(objects)} / {shown(evictions)}")


# --- main -----------------------------------------------------------------------------------------


def summary(bench: Bench) -> None:
    print("\n## Summary")
    width = max(len(r[0]) for r in bench.rows) if bench.rows else 10
    vwidth = max(len(r[1]) for r in bench.rows) if bench.rows else 10
    print(f"{'':{width}s}  {'value':{vwidth}s}  {'goal / check':14s}  result")
    for what, value, goal, verdict in bench.rows:
        print(f"{what:{width}s}  {value:{vwidth}s}  {goal:14s}  {verdict}")
    for line in bench.broken:
        print(f"BROKEN: {line}")


def start_backend(bench: Bench, stack: contextlib.ExitStack, slow: SlowServer) -> None:
    """The backend nginx (stopped by ``stack``), or SystemExit if it does not answer as it should."""
    www = bench.tmp / "www"
    (www / "obj").mkdir(parents=True)
    for path, size in OBJECTS.items():
        (www / path.lstrip("/")).write_bytes(object_body(size))
    body = backend_body(bench.backend_port, www, slow.port)
    backend = start_nginx("backend", bench.nginx, port=bench.backend_port, base_dir=bench.tmp, http_body=body)
    stack.callback(backend.stop)
    expected: dict[str, tuple[bytes, bool]] = {p: (object_body(s), True) for p, s in OBJECTS.items()}
    expected["/flood/7"] = (object_body(FLOOD_OBJECT), False)
    for path, (data, etag) in expected.items():
        status, fields, got = get(bench.backend_port, path)
        if (
            status != 200
            or got != data
            or fields.get("cache-control") != MAX_AGE
            or (etag and "etag" not in fields)
        ):
            raise SystemExit(
                f"the backend nginx answers GET {path} with {status}, {len(got)} bytes, {fields}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 s wrk runs, 2 rounds, a 50 MB flood")
    p.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 4; --quick 1)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds, at least 2 (default 5)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--flood", type=int, default=None, help="MB of distinct objects (default 500; --quick 50)")
    p.add_argument("--distpat", default=None, help="command that runs distpat (default: .venv/bin/distpat)")
    args = p.parse_args()
    args.duration = args.duration or (1 if args.quick else 4)
    args.rounds = max(2, args.rounds or (2 if args.quick else 5))
    args.flood = args.flood or (50 if args.quick else 500)
    if args.duration < 1 or args.connections < 1 or args.flood < 1:
        p.error("--duration, --connections and --flood must be at least 1")

    nginx = require_tool("nginx", "nginx-light")
    varnishd = require_tool("varnishd", "varnish")
    wrk = require_tool("wrk", "wrk")
    print("# distpat benchmark: cache")
    print(describe("distpat", "uvloop", "httptools"))
    wrk_version = tool_version([wrk, "-v"]).split(" [")[0]
    varnish_version = tool_version([varnishd, "-V"])
    print(
        f"tools: {tool_version([nginx, '-v'])}; {varnish_version}; {wrk_version}; "
        "servers and wrk share the cores"
    )
    with (
        interruptible(),
        tempfile.TemporaryDirectory(prefix="distpat-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        backend_port, slow_port = free_ports(2)
        bench = Bench(Path(tmp), distpat_command(args.distpat), nginx, varnishd, wrk, backend_port)
        slow = SlowServer(slow_port)
        slow.start()
        stack.callback(slow.stop)
        start_backend(bench, stack, slow)
        print(
            f"\nbackend: nginx on {backend_port}: /obj/1k, /obj/64k, /flood/N with Cache-Control: {MAX_AGE}; "
            f"/slow passed to the slow server on {slow_port} ({SLOW_SECONDS:g} s)"
        )
        with contextlib.ExitStack() as own:
            contenders = [start_contender(bench, own, name) for name in (CACHE, VARNISH, NGINX, PROXY)]
            for name, command in bench.commands.items():
                print(f"{name}: {command}")
            hits_section(bench, contenders, args)
            storm_section(bench, own, slow, contenders)
        with contextlib.ExitStack() as own:
            rss_section(bench, own, args)
        summary(bench)
    if bench.broken:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
