"""Rate-limiter benchmark: distpat ratelimit against the plain proxy and nginx's limit_req, in one run.

One invocation starts, on 127.0.0.1 only, each in its own process group:

  backend        nginx, 1 worker: every GET answers "hello world\\n" (12 bytes)
  proxy          distpat proxy --upstream B --workers 1
  limit-admit    distpat ratelimit --rate 100000000r/s --burst 1000 --nodelay --workers 1 (admits all)
  nginx-admit    nginx, 1 worker: limit_req_zone $binary_remote_addr zone=a:10m rate=100000000r/s;
                 limit_req zone=a burst=1000 nodelay;
  limit-reject   distpat ratelimit --rate 1r/s --nodelay --workers 1 (after the first request,
                 about one request a second passes: nearly every answer is a 429)
  nginx-reject   nginx, 1 worker: limit_req_zone ... rate=1r/s; limit_req zone=r;

Both nginx limiters have the http_proxy benchmark's proxy settings (_servers.nginx_router_body:
upstream keepalive 64, proxy_http_version 1.1, Connection ""), ``limit_req_status 429`` and
``limit_req_log_level info``: nginx's error log here takes warnings and worse, so, like distpat, it
writes no line per refusal (stock nginx logs each one at "error").

Before the runs every contender is checked: its first answer is 200 with the backend's body, then
the admitting ones answer 200 49 more times in a row, the refusing ones 429 to the second request.
Then each is driven with ``wrk -t1 -c32 --latency`` in every round, the order rotating; medians over
rounds are compared (ratios are medians of same-round ratios), with each contender's own CPU time per
request (user + system from /proc, the backend's not counted) and its share of non-2xx answers (wrk
counts every status above 399; the refusing contenders are asked again after the runs and must
still answer 429). Goals: limit-admit >= 0.9x the plain proxy's req/s, limit-reject >= 1.0x
nginx-reject's.

Redis: a redis-server on a free loopback port, and ``distpat ratelimit --workers 4`` admitting all
(the limit above) once with ``--redis redis://127.0.0.1:P`` and once on its own (each worker its own
table), alternated with ``wrk -t2 -c64``; no goal, the ratio is shown. Redis must then hold keys
named ``distpat:rl:*`` and have run the limiter's script once per request: the shared mode was used.

Memory: ``distpat ratelimit --workers 1 --rate 1r/s --burst 5 --nodelay --key header:X-Key
--max-keys 200000`` flooded with --keys requests (1,000,000; --quick 50,000), each with its own
``X-Key: kN`` (a wrk Lua script; every thread stops at its share and leaves a marker file, and the
benchmark then ends wrk with SIGINT, -d bounding it all), while its VmRSS is read from /proc and the
keys its table holds from the admin /metrics (``distpat_ratelimit_keys``, when this build serves it).
Goals: RSS under 100 MB throughout, keys <= --max-keys. Run:

    .venv/bin/python benchmarks/ratelimit.py             # full run (several minutes: the flood)
    .venv/bin/python benchmarks/ratelimit.py --quick     # 1 s wrk runs, 2 rounds, 50,000 keys

A contender that does not start, fails a check or fails under load is reported unavailable and the
others still run; the benchmark then exits with code 1 (a missed goal does not change the exit code).
Needs the Debian packages nginx-light, wrk and redis-server.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe
from _servers import (
    LOOPBACK,
    RedisError,
    ServiceError,
    WrkError,
    WrkResult,
    free_ports,
    interruptible,
    median_of,
    nginx_router_body,
    parse_wrk,
    ratio,
    redis_call,
    require_tool,
    rss_bytes,
    run_wrk_url,
    shown_command,
    start_nginx,
    start_process,
    start_redis_server,
    tool_output,
    tool_version,
)
from http_proxy import Contender, distpat_command, start_checked_backend
from tls_sidecar import CPU_NOTE, Measured, alternate, cpu_per_request, rate_table, req_per_sec

SMALL_BODY = b"hello world\n"
PROXY, LIMIT_ADMIT, NGINX_ADMIT = "proxy", "limit-admit", "nginx-admit"
LIMIT_REJECT, NGINX_REJECT = "limit-reject", "nginx-reject"
SHARED, LOCAL = "limit-redis", "limit-local"
ADMIT_ALL = ["--rate", "100000000r/s", "--burst", "1000", "--nodelay"]
REJECT = ["--rate", "1r/s", "--nodelay"]
ADMIT_CHECK = 50  # answers in a row that must be 200
REJECT_SHARE = 0.99  # least share of non-2xx answers a refusing contender must show under load
RSS_GOAL_BYTES = 100 * 10**6  # 100 MB, decimal
FLOOD_MAX_KEYS = 200_000
FLOOD_HEADER = "X-Key"
FLOOD_BURST = 5  # so the check's seventh request with one key is the first refused
KEY_PATTERN = "distpat:rl:*"


# --- contenders and their checks ------------------------------------------------------------------


@dataclass(slots=True)
class Bench:
    """What the run found: the commands shown, the summary's rows and the broken contenders."""

    tmp: Path
    distpat: list[str]
    nginx: str
    wrk: str
    commands: dict[str, str] = field(default_factory=dict)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # what, value, goal, verdict
    broken: list[str] = field(default_factory=list)

    def row(self, what: str, value: str, goal: str = "-", ok: bool | None = None) -> None:
        self.rows.append((what, value, goal, "-" if ok is None else ("met" if ok else "missed")))

    def check_row(self, what: str, value: str, expected: str, ok: bool) -> None:
        self.rows.append((what, value, expected, "ok" if ok else "BROKEN"))
        if not ok:
            self.broken.append(f"{what}: {value} (expected {expected})")


def answers(port: int, n: int, headers: Mapping[str, str] | None = None) -> list[tuple[int, bytes]] | str:
    """(status, body) of ``n`` GET / in a row on one keep-alive connection, or what went wrong."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    got: list[tuple[int, bytes]] = []
    try:
        for _ in range(n):
            conn.request("GET", "/", headers=dict(headers or {}))
            resp = conn.getresponse()
            got.append((resp.status, resp.read()))
    except (OSError, http.client.HTTPException) as e:
        return f"GET / number {len(got) + 1} failed: {type(e).__name__}: {e}"
    finally:
        conn.close()
    return got


def check_answers(port: int, kind: str, headers: Mapping[str, str] | None = None) -> str | None:
    """None if the contender answers as ``kind`` says: 'admit' (50 x 200 with the body), 'reject'
    (200 with the body, then 429) or 'keyed' (6 x 200 with the body for one key, then 429)."""
    passing = {"admit": ADMIT_CHECK, "reject": 1, "keyed": FLOOD_BURST + 1}[kind]
    got = answers(port, passing + (kind != "admit"), headers)
    if isinstance(got, str):
        return got
    for i, (status, body) in enumerate(got[:passing], 1):
        if status != 200 or body != SMALL_BODY:
            return (
                f"GET / number {i} answered {status} with {len(body)} bytes (expected 200 with the "
                f"backend's {len(SMALL_BODY)} bytes, {passing} in a row)"
            )
    if kind != "admit" and got[-1][0] != 429:
        return f"GET / number {len(got)} answered {got[-1][0]} (expected 429: over the limit)"
    return None


def start_contenders(
    bench: Bench, stack: contextlib.ExitStack, specs: Mapping[str, tuple[list[str] | str, str]]
) -> list[Contender]:
    """Start each contender (name -> (distpat arguments or an nginx http body, check kind)) and check
    it; one that fails is unavailable, and counted broken."""
    contenders = []
    for name, (how, kind) in specs.items():
        c = Contender(name, free_ports(1)[0])
        try:
            if isinstance(how, str):
                body = how.replace("LISTEN", f"{LOOPBACK}:{c.port} backlog=4096")
                bench.commands[name] = "nginx, 1 worker, http {" + body.rstrip() + "\n}"
                c.service = start_nginx(name, bench.nginx, port=c.port, base_dir=bench.tmp, http_body=body)
            else:
                argv = [*bench.distpat, how[0], "--listen", f"{LOOPBACK}:{c.port}", *how[1:]]
                bench.commands[name] = shown_command(argv, bench.tmp)
                c.service = start_process(name, argv, port=c.port, log_dir=bench.tmp, timeout=15)
        except ServiceError as e:
            c.fail(str(e))
        else:
            stack.callback(c.service.stop)
            error = check_answers(c.port, kind)
            if error:
                c.fail(f"check failed: {error}")
        if c.error:
            bench.broken.append(f"{name}: {c.error.splitlines()[0]}")
        contenders.append(c)
    return contenders


def nginx_limit_body(backend_port: int, zone: str, rate: str, limit: str) -> str:
    """nginx_proxy_body's proxy with one limit_req zone (key $binary_remote_addr) on its location."""
    upstreams = {"backend": [f"server {LOOPBACK}:{backend_port};"]}
    zone_line = f"limit_req_zone $binary_remote_addr zone={zone}:10m rate={rate};"
    server = [limit, "limit_req_status 429;", "limit_req_log_level info;"]
    return nginx_router_body(upstreams, "backend", "LISTEN", http_lines=[zone_line], server_lines=server)


# --- 1: admitting and refusing, against the proxy and nginx ---------------------------------------


def share_refused(rounds: Sequence[Measured[WrkResult] | None]) -> float | None:
    done = [m.result for m in rounds if m is not None]
    total = sum(r.requests for r in done)
    return sum(r.non_2xx for r in done) / total if total else None


def main_section(bench: Bench, stack: contextlib.ExitStack, backend: str, args: argparse.Namespace) -> None:
    port = int(backend.rsplit(":", 1)[1])
    specs: dict[str, tuple[list[str] | str, str]] = {
        PROXY: (["proxy", "--upstream", backend, "--workers", "1"], "admit"),
        LIMIT_ADMIT: (["ratelimit", "--upstream", backend, *ADMIT_ALL, "--workers", "1"], "admit"),
        NGINX_ADMIT: (
            nginx_limit_body(port, "a", "100000000r/s", "limit_req zone=a burst=1000 nodelay;"),
            "admit",
        ),
        LIMIT_REJECT: (["ratelimit", "--upstream", backend, *REJECT, "--workers", "1"], "reject"),
        NGINX_REJECT: (nginx_limit_body(port, "r", "1r/s", "limit_req zone=r;"), "reject"),
    }
    contenders = start_contenders(bench, stack, specs)
    for name, command in bench.commands.items():
        print(f"{name}: {command}")
    print(
        f"\n## Admitting and refusing: GET /, wrk -t1 -c{args.connections} -d{args.duration}s --latency, "
        f"median of {args.rounds} alternating rounds"
    )

    def run(c: Contender) -> WrkResult:
        return run_wrk_url(c.url("/"), wrk=bench.wrk, connections=args.connections, duration=args.duration)

    results = alternate(contenders, "wrk", run, args)
    rate_table(contenders, results, {})
    print(CPU_NOTE)
    print(f"{'contender':16s} {'non-2xx share':>13s}")
    for c in contenders:
        share = share_refused(results[c.name])
        print(f"{c.name:16s} {f'{share:.2%}' if share is not None else 'n/a':>13s}")
        if share is None:
            continue
        if specs[c.name][1] == "reject":
            again = check_answers(c.port, "admit") if c.available else None  # a 429 fails it, as wanted
            still = again is not None and "answered 429" in again
            bench.check_row(
                f"{c.name} non-2xx share under load",
                f"{share:.2%}",
                f">= {REJECT_SHARE:.0%}",
                share >= REJECT_SHARE,
            )
            bench.check_row(
                f"{c.name} answers 429 after the runs", "yes" if still else f"no: {again}", "yes", still
            )
        else:
            bench.check_row(f"{c.name} non-2xx share under load", f"{share:.2%}", "0%", share == 0)
    for name, den, goal in ((LIMIT_ADMIT, PROXY, 0.9), (LIMIT_REJECT, NGINX_REJECT, 1.0)):
        value = ratio(results, name, den, req_per_sec)
        shown = f"{value:.2f}x" if value is not None else "n/a (not measured)"
        bench.row(f"{name} / {den} req/s", shown, f">= {goal:g}x", value is not None and value >= goal)
    for c in contenders:
        rps = median_of(results[c.name], req_per_sec)
        cpu = median_of(results[c.name], cpu_per_request)
        shown = f"{rps:,.0f} req/s, {cpu:.1f} CPU µs/req" if rps is not None and cpu is not None else "n/a"
        bench.row(f"{c.name}", shown)


# --- 2: shared through Redis, against each worker on its own --------------------------------------


def redis_keys(port: int) -> tuple[int, str | None]:
    """(how many keys match distpat:rl:*, one of them) in the Redis server on ``port``."""
    count, example = redis_call(
        port,
        [
            ["EVAL", "return #redis.call('KEYS', ARGV[1])", "0", KEY_PATTERN],
            ["EVAL", "return redis.call('KEYS', ARGV[1])[1]", "0", KEY_PATTERN],
        ],
    )
    name = example.decode("utf-8", "replace") if isinstance(example, bytes) else None
    return (count if isinstance(count, int) else 0), name


def script_calls(port: int) -> int:
    """EVAL and EVALSHA calls the Redis server on ``port`` has run (INFO commandstats)."""
    (info,) = redis_call(port, [["INFO", "commandstats"]])
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else ""
    return sum(int(n) for n in re.findall(r"^cmdstat_eval(?:sha)?:calls=(\d+)", text, re.MULTILINE))


def redis_section(bench: Bench, stack: contextlib.ExitStack, backend: str, args: argparse.Namespace) -> None:
    redis_server = require_tool("redis-server", "redis-server")
    redis_port = free_ports(1)[0]
    try:
        redis = start_redis_server("redis", redis_server, port=redis_port, base_dir=bench.tmp)
    except ServiceError as e:
        bench.check_row("redis-server starts", str(e).splitlines()[0], "running", False)
        return
    stack.callback(redis.stop)
    url = f"redis://{LOOPBACK}:{redis_port}"
    common = ["ratelimit", "--upstream", backend, *ADMIT_ALL, "--workers", "4"]
    bench.commands.clear()
    contenders = start_contenders(
        bench, stack, {SHARED: ([*common, "--redis", url], "admit"), LOCAL: (common, "admit")}
    )
    print(f"\nredis: {shown_command(redis.argv, bench.tmp)}")
    for name, command in bench.commands.items():
        print(f"{name}: {command}")
    print(
        f"\n## Shared limits: wrk -t2 -c{args.redis_connections} -d{args.duration}s --latency, median of "
        f"{args.rounds} alternating rounds; Redis's own CPU is not in {SHARED}'s"
    )
    seen: list[int] = []
    sent = ADMIT_CHECK
    calls_before = script_calls(redis_port)

    def run(c: Contender) -> WrkResult:
        nonlocal sent
        result = run_wrk_url(
            c.url("/"), wrk=bench.wrk, threads=2, connections=args.redis_connections, duration=args.duration
        )
        if c.name == SHARED:
            seen.append(redis_keys(redis_port)[0])  # at once: a key lives a second past its last request
            sent += result.requests
        return result

    results = alternate(contenders, "wrk", run, args)
    rate_table(contenders, results, {})
    print(CPU_NOTE)
    value = ratio(results, SHARED, LOCAL, req_per_sec)
    print(f"{SHARED} / {LOCAL} req/s: " + (f"{value:.2f}x" if value is not None else "n/a"))
    bench.row(f"{SHARED} / {LOCAL} req/s (4 workers)", f"{value:.2f}x" if value is not None else "n/a")
    for c in contenders:
        rps = median_of(results[c.name], req_per_sec)
        bench.row(f"{c.name} (4 workers)", f"{rps:,.0f} req/s" if rps is not None else "n/a")
    shared = next(c for c in contenders if c.name == SHARED)
    if not shared.available:
        return
    try:
        check = check_answers(shared.port, "admit")
        count, example = redis_keys(redis_port)
        calls = script_calls(redis_port) - calls_before
    except (OSError, RedisError) as e:
        bench.check_row("Redis reachable after the runs", f"{type(e).__name__}: {e}", "yes", False)
        return
    sent += ADMIT_CHECK
    print(f"keys {KEY_PATTERN} right after each {SHARED} run: {', '.join(map(str, seen)) or '-'}")
    print(f"after the runs, {ADMIT_CHECK} more requests: {count} key(s) {KEY_PATTERN}, such as {example}")
    print(f"limiter script calls in Redis during the runs: {calls:,} for {sent:,} requests completed")
    bench.check_row(
        f"Redis holds {KEY_PATTERN} keys", f"{count} ({example})", ">= 1", check is None and count >= 1
    )
    bench.check_row("Redis script calls / requests", f"{calls:,} / {sent:,}", ">= 1 each", calls >= sent)


# --- 3: memory under a flood of distinct keys -----------------------------------------------------


def flood_script(threads: int, per_thread: int, marker: Path) -> str:
    """A wrk Lua script: each thread sends ``X-Key: kN`` with its own N (thread id + threads x its
    counter: no two alike), stops at ``per_thread`` answers and leaves the file ``marker<id>``."""
    return f"""\
-- Written by benchmarks/ratelimit.py: {per_thread:,} requests per thread, each with its own {FLOOD_HEADER}.
local threads, next_id = {{}}, 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  nthreads = {threads}
  sent, answered, ok, refused, other = 0, 0, 0, 0, 0
end

function request()
  local n = tid + nthreads * sent
  sent = sent + 1
  return wrk.format(nil, nil, {{ ["{FLOOD_HEADER}"] = "k" .. n }})
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 elseif status == 429 then refused = refused + 1 else other = other + 1 end
  answered = answered + 1
  if answered == {per_thread} then
    local f = io.open("{marker}" .. tid, "w")
    if f then f:close() end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local s, a, r, o = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    s, a, r, o = s + t:get("sent"), a + t:get("ok"), r + t:get("refused"), o + t:get("other")
  end
  io.write(string.format("flood: sent %d, 200 %d, 429 %d, other %d\\n", s, a, r, o))
end
"""


def metrics_keys(admin_port: int) -> int | None:
    """The sum of distpat_ratelimit_keys on the admin /metrics; None if it has no such sample."""
    url = f"http://{LOOPBACK}:{admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:  # a loopback http:// URL
        text = resp.read().decode("utf-8", "replace")
    values = re.findall(r"^distpat_ratelimit_keys(?:\{[^}]*\})? ([\d.e+]+)$", text, re.MULTILINE)
    return int(sum(float(v) for v in values)) if values else None


def default_max_keys(distpat: Sequence[str]) -> str:
    text = tool_output([*distpat, "ratelimit", "--help"])
    # The option's own help, not the usage line's [--max-keys N]; its text may wrap before "(default".
    m = re.search(r"^\s+--max-keys N\s.*?\(default (\d+)\)", text, re.DOTALL | re.MULTILINE)
    return f"{int(m.group(1)):,}" if m else "unknown"


@dataclass(slots=True)
class Flood:
    rss_before: int = 0
    rss_max: int = 0
    rss_after: int = 0
    keys_max: int | None = None
    keys_after: int | None = None
    samples: int = 0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)  # sent, 200, 429, other
    wrk: WrkResult | None = None


def drive_flood(bench: Bench, pid: int, port: int, admin: int, keys: int, f: Flood) -> None:
    """Run the flood against ``port``; RSS of ``pid`` sampled every 0.2 s, /metrics every second."""
    threads = 1
    marker = bench.tmp / "flood-done-"
    script = bench.tmp / "flood.lua"
    script.write_text(flood_script(threads, keys // threads, marker), encoding="utf-8")
    bound = max(60, keys // 500)  # seconds: -d, in case the flood is slower than 500 requests a second
    argv = [bench.wrk, f"-t{threads}", "-c32", f"-d{bound}s", "-s", str(script), f"http://{LOOPBACK}:{port}/"]
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
                    held = metrics_keys(admin)
                    if held is not None:
                        f.keys_max = max(f.keys_max or 0, held)
            if all((marker.parent / f"{marker.name}{i}").exists() for i in range(threads)):
                proc.send_signal(signal.SIGINT)  # wrk sleeps out -d otherwise; SIGINT ends it with its report
                break
            time.sleep(0.2)
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
    m = re.search(r"flood: sent (\d+), 200 (\d+), 429 (\d+), other (\d+)", out)
    if m is None:
        raise WrkError(f"the flood script printed no counts: {out.strip()[-300:]!r}")
    f.counts = dict(zip(("sent", "200", "429", "other"), map(int, m.groups()), strict=True))
    time.sleep(1.0)
    f.rss_after = rss_bytes(pid)[0]
    f.rss_max = max(f.rss_max, f.rss_after)
    with contextlib.suppress(OSError):
        f.keys_after = metrics_keys(admin)


def rss_section(bench: Bench, stack: contextlib.ExitStack, backend: str, args: argparse.Namespace) -> None:
    port, admin = free_ports(2)
    argv = [*bench.distpat, "ratelimit", "--listen", f"{LOOPBACK}:{port}", "--upstream", backend]
    argv += ["--workers", "1", "--rate", "1r/s", "--burst", str(FLOOD_BURST), "--nodelay"]
    argv += [
        "--key",
        f"header:{FLOOD_HEADER}",
        "--max-keys",
        str(FLOOD_MAX_KEYS),
        "--admin",
        f"{LOOPBACK}:{admin}",
    ]
    print(f"\n## Memory: {args.keys:,} requests, each with its own {FLOOD_HEADER}, wrk -t1 -c32 -s FLOOD")
    print(f"limit-keys: {shown_command(argv, bench.tmp)}")
    print(f"(--max-keys defaults to {default_max_keys(bench.distpat)})")
    try:
        service = start_process("limit-keys", argv, port=port, log_dir=bench.tmp, timeout=15)
    except ServiceError as e:
        bench.check_row("limit-keys starts", str(e).splitlines()[0], "running", False)
        return
    stack.callback(service.stop)
    error = check_answers(port, "keyed", {FLOOD_HEADER: "probe"})
    if error:
        bench.check_row("limit-keys check", error, f"{FLOOD_BURST + 1} x 200 for one key, then 429", False)
        return
    f = Flood()
    try:
        drive_flood(bench, service.pid, port, admin, args.keys, f)
    except (WrkError, OSError, subprocess.TimeoutExpired) as e:
        bench.check_row("the flood", f"{type(e).__name__}: {e}", "runs", False)
        return
    if not service.alive():
        bench.check_row("limit-keys under the flood", service.exit_status(), "running", False)
        return
    mb, c = 1e6, f.counts
    answered = c["200"] + c["429"]
    print(
        f"sent {c['sent']:,} distinct keys in {f.seconds:.1f} s; answered 200 {c['200']:,}, "
        f"429 {c['429']:,}, "
        f"other {c['other']:,} (wrk: {f.wrk.requests if f.wrk else 0:,} requests, "
        f"{f.wrk.requests_per_sec if f.wrk else 0:,.0f} req/s)"
    )
    print(
        f"RSS (VmRSS, {f.samples} samples): before {f.rss_before / mb:.1f} MB, max {f.rss_max / mb:.1f} MB, "
        f"1 s after {f.rss_after / mb:.1f} MB"
    )
    if f.keys_max is None and f.keys_after is None:
        print("keys held: not measured (this build's /metrics has no distpat_ratelimit_keys)")
    else:
        print(f"keys held (distpat_ratelimit_keys): max seen {f.keys_max}, 1 s after {f.keys_after}")
    bench.check_row(
        "flood: distinct keys answered 200/429",
        f"{answered:,} of {args.keys:,}",
        f"{args.keys:,}",
        answered >= args.keys and c["other"] == 0,
    )
    bench.row(
        "flood RSS max",
        f"{f.rss_max / mb:.1f} MB",
        f"< {RSS_GOAL_BYTES / mb:.0f} MB",
        f.rss_max < RSS_GOAL_BYTES,
    )
    if f.keys_max is None:
        bench.row(
            "flood keys held (no distpat_ratelimit_keys on /metrics)",
            "not measured",
            f"<= {FLOOD_MAX_KEYS:,}",
        )
    else:
        bench.row(
            "flood keys held, max", f"{f.keys_max:,}", f"<= {FLOOD_MAX_KEYS:,}", f.keys_max <= FLOOD_MAX_KEYS
        )


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 s wrk runs, 2 rounds, a 50,000-key flood")
    p.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 4; --quick 1)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds, at least 2 (default 5)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections, first part (default 32)")
    p.add_argument(
        "--redis-connections", type=int, default=64, help="wrk connections, Redis part (default 64)"
    )
    p.add_argument(
        "--keys", type=int, default=None, help="requests of the flood (default 1,000,000; --quick 50,000)"
    )
    p.add_argument("--distpat", default=None, help="command that runs distpat (default: .venv/bin/distpat)")
    args = p.parse_args()
    args.duration = args.duration or (1 if args.quick else 4)
    args.rounds = max(2, args.rounds or (2 if args.quick else 5))
    args.keys = args.keys or (50_000 if args.quick else 1_000_000)
    if args.duration < 1 or args.connections < 1 or args.redis_connections < 2 or args.keys < 1:
        p.error("--duration, --connections and --keys must be at least 1, --redis-connections at least 2")

    nginx = require_tool("nginx", "nginx-light")
    wrk = require_tool("wrk", "wrk")
    redis_server = require_tool("redis-server", "redis-server")
    print("# distpat benchmark: rate limiter (ratelimit)")
    print(describe("distpat", "uvloop", "httptools"))
    wrk_version = tool_version([wrk, "-v"]).split(" [")[0]
    print(
        f"tools: {tool_version([nginx, '-v'])}; {wrk_version}; {tool_version([redis_server, '--version'])}; "
        "servers and wrk share the same cores"
    )
    with (
        interruptible(),
        tempfile.TemporaryDirectory(prefix="distpat-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        bench = Bench(Path(tmp), distpat_command(args.distpat), nginx, wrk)
        backend_port = free_ports(1)[0]
        start_checked_backend(stack, nginx, backend_port, bench.tmp, {"/": SMALL_BODY})
        backend = f"http://{LOOPBACK}:{backend_port}"
        print(f"\nbackend: nginx on {backend_port}, GET / answers {SMALL_BODY!r}")
        sections: list[Callable[[Bench, contextlib.ExitStack, str, argparse.Namespace], None]] = [
            main_section,
            redis_section,
            rss_section,
        ]
        for section in sections:
            with contextlib.ExitStack() as own:  # each section's servers stop before the next starts
                section(bench, own, backend, args)
        summary(bench)
    if bench.broken:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
