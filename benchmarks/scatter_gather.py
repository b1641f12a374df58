"""Scatter/gather benchmark: distpat scatter with and without hedging, and against a naive aiohttp root.

One invocation writes a corpus into its temp dir (--docs documents, 2,000 by default, of words drawn
from a fixed made-up vocabulary by a Zipf law, seeded) and starts, on 127.0.0.1 only, each in its own
process group:

  leaves         distpat leaf --corpus DIR --shard I/4 --workers 1 --admin A, two replicas of each of
                 the four shards (eight processes), and one --shard 0/1 leaf over the whole corpus
  injector       a delay injector (this script, asyncio, one process): an HTTP-aware proxy in front
                 of the first replica of each shard that holds --delay-share of the requests (3%)
                 for --delay-ms (200 ms) before passing them on, the rest at once (seeded), and
                 counts what it sees
  hedging off    distpat scatter --leaf INJECTED,CLEAN (per shard) --deadline 1000 --workers 1
  hedge 20ms     the same with --hedge-after 20 --hedge-max-percent 10
  hedge p95      the same with --hedge-after p95 --hedge-max-percent 10
  scatter clean  distpat scatter --leaf CLEAN,OTHER --deadline 1000 --workers 1 (no injector at all)
  naive root     an aiohttp app (this script, in its own process, uvloop): each query is sent to the
                 first replica it is given of every shard at once (asyncio.gather), the hits merged by
                 score then id; no hedging, no deadline; given the clean replicas

Check, before anything is timed: a few known queries (the first of the query list and a fixed
multi-word one) must get from every contender the same top-10 ids, in the same order, as the
whole-corpus leaf gives (scores are global, so the merge of the shards' top-10 is the whole top-10),
and the shards' /stats must add up to the whole corpus. A contender that differs is printed with the
difference and is broken. The clean contenders are checked again after their runs.

Latency (hedging off against hedging on, in one run, the order rotating each round): a closed-loop
client in this process, --concurrency connections (20) each asking --per-client queries (250; --quick
50) from a fixed list of 500 in turn, every latency recorded; after a warm-up (so that the p95 hedge
has latencies to go by), p50/p99/p99.9 per round, medians over rounds, and the extra sub-requests:
what reached the shards (counted by the injector for the first replicas, by the clean leaves'
distpat_http_requests_total for the others) over 4 per query, minus one. Goal: p99 with hedging
<= 0.3x the p99 without (the median of same-round ratios) for <= 10% extra requests.

Throughput: ``wrk -t1 -c32 --latency -s SCRIPT`` (a Lua script cycling through the queries) against
scatter clean and the naive root in alternating rounds; medians, and each contender's own CPU per
request (the leaves' not counted). Goal: distpat >= 3x the naive root's req/s. Run:

    .venv/bin/python benchmarks/scatter_gather.py             # full run (a few minutes)
    .venv/bin/python benchmarks/scatter_gather.py --quick     # 50 queries a client, 1 s wrk, 2 rounds

A contender that does not start, answers wrongly or fails under load is reported broken and the
others still run; the benchmark then exits with code 1 (a missed goal does not change the exit
code). Needs the Debian package wrk; aiohttp (and uvloop, if present) from the virtualenv.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe
from _servers import (
    LOOPBACK,
    Service,
    ServiceError,
    WrkResult,
    free_ports,
    interruptible,
    median_of,
    ratio,
    require_tool,
    run_wrk_url,
    shown_command,
    tool_version,
    wait_for_port,
)
from http_proxy import Contender, distpat_command
from tls_sidecar import CPU_NOTE, Measured, Rounds, alternate, cpu_per_request, rate_table, req_per_sec

SHARDS, REPLICAS = 4, 2
SEED = 7  # the corpus's, the queries' and the injector's: the same run every time
VOCABULARY = 4000
QUERIES = 500
K = 10
CHECK_QUERY = "the words of a query that no document holds all of"  # replaced by vocabulary words below
OFF, HEDGE_FIXED, HEDGE_P95 = "hedging off", "hedge 20ms", "hedge p95"
CLEAN, NAIVE = "scatter clean", "naive root"
LATENCY_GOAL = 0.3  # p99 hedged / p99 not hedged, at most
EXTRA_GOAL = 0.10  # extra sub-requests of a hedged contender, at most
THROUGHPUT_GOAL = 3.0  # scatter clean / naive root req/s, at least
ERROR_SHARE = 0.001  # failed or partial answers a latency run may have before its contender is broken


# --- the corpus and the queries --------------------------------------------------------------------


def vocabulary(n: int = VOCABULARY, seed: int = SEED) -> list[str]:
    """``n`` distinct made-up lowercase words, 3 to 9 letters, most frequent first."""
    rng = random.Random(seed)
    words: dict[str, None] = {}
    letters = "abcdefghijklmnopqrstuvwxyz"
    while len(words) < n:  # bounded: 26**3 and more words to draw from, n is a few thousand
        words.setdefault("".join(rng.choices(letters, k=rng.randint(3, 9))), None)
    return list(words)


def write_corpus(root: Path, docs: int, seed: int = SEED) -> None:
    """``docs`` text documents under ``root`` (in 20 folders), 30 to 300 words each, the words of
    :func:`vocabulary` drawn by a Zipf law (the k-th most frequent with weight 1/k)."""
    rng = random.Random(seed)
    words = vocabulary()
    cumulative: list[float] = []
    total = 0.0
    for rank in range(1, len(words) + 1):
        total += 1.0 / rank
        cumulative.append(total)
    for i in range(docs):
        path = root / f"d{i % 20:02d}" / f"doc-{i:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = rng.choices(words, cum_weights=cumulative, k=rng.randint(30, 300))
        lines = [" ".join(text[j : j + 12]) for j in range(0, len(text), 12)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def query_list(n: int = QUERIES, seed: int = SEED) -> list[str]:
    """``n`` queries of one to three words of middling frequency (ranks 20 to 1,500)."""
    rng = random.Random(seed + 1)
    words = vocabulary()[20:1500]
    return [" ".join(rng.sample(words, rng.choice((1, 2, 2, 3)))) for _ in range(n)]


def check_queries(queries: Sequence[str]) -> list[str]:
    """The queries every contender is checked with: the first of the list, a frequent word (many
    near-ties) and one of three rare words."""
    words = vocabulary()
    return [queries[0], words[3], " ".join(words[2000:2003])]


def search_target(query: str, k: int = K) -> str:
    return f"/search?q={quote_plus(query)}&k={k}"


# --- the delay injector (a process of its own: `scatter_gather.py _injector ...`) ------------------


@dataclass(slots=True)
class Route:
    """One listener of the injector: its port, the upstream it passes to, and what it saw."""

    port: int
    upstream: int
    rng: random.Random
    requests: int = 0
    delayed: int = 0


_CONNECTIONS: set[asyncio.Task[Any]] = set()  # the injector's connection tasks, held strongly


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes from ``reader`` to ``writer`` until either end closes."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _injected(
    route: Route, share: float, delay: float, r: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    """One client connection: each request head (and Content-Length body) read whole, counted, held
    for ``delay`` seconds if the route's random draw falls under ``share``, then sent upstream; the
    answers come back as bytes."""
    task = asyncio.current_task()
    if task is not None:  # held here too, not only by the loop (which may hold it weakly)
        _CONNECTIONS.add(task)
        task.add_done_callback(_CONNECTIONS.discard)
    try:
        up_r, up_w = await asyncio.open_connection(LOOPBACK, route.upstream)
    except OSError:
        w.close()
        return
    back = asyncio.create_task(_pump(up_r, w))
    try:
        while True:  # bounded by the client: it ends when the connection does
            head = await r.readuntil(b"\r\n\r\n")
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
            body = await r.readexactly(int(m.group(1))) if m else b""
            route.requests += 1
            if route.rng.random() < share:
                route.delayed += 1
                await asyncio.sleep(delay)
            up_w.write(head + body)
            await up_w.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError):
        pass
    finally:
        up_w.close()
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError, OSError):
            await asyncio.wait_for(back, 5)
        w.close()


async def _counts(routes: Sequence[Route], r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """The control listener: any request is answered with the routes' counts as JSON, then closed."""
    with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        await r.readuntil(b"\r\n\r\n")
        body = json.dumps([{"port": x.port, "requests": x.requests, "delayed": x.delayed} for x in routes])
        data = body.encode()
        w.write(
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data)
        )
        w.write(data)
        await w.drain()
    w.close()


async def serve_injector(routes: Sequence[Route], control: int, share: float, delay: float) -> None:
    servers = []
    for route in routes:

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, route: Route = route) -> None:
            await _injected(route, share, delay, r, w)

        servers.append(await asyncio.start_server(handle, LOOPBACK, route.port, backlog=4096))

    async def counts(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _counts(routes, r, w)

    servers.append(await asyncio.start_server(counts, LOOPBACK, control))
    await asyncio.Event().wait()


def injector_main(argv: Sequence[str]) -> None:
    p = argparse.ArgumentParser(prog="scatter_gather.py _injector")
    p.add_argument("--route", action="append", required=True, help="LISTEN_PORT:UPSTREAM_PORT")
    p.add_argument("--control", type=int, required=True)
    p.add_argument("--share", type=float, required=True)
    p.add_argument("--delay-ms", type=float, required=True)
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    routes = []
    for i, text in enumerate(args.route):
        listen, upstream = (int(x) for x in text.split(":"))
        routes.append(Route(listen, upstream, random.Random(f"{args.seed}:{i}")))
    run(serve_injector(routes, args.control, args.share, args.delay_ms / 1000))


def injector_counts(control: int) -> dict[int, tuple[int, int]]:
    """Listener port -> (requests seen, requests delayed), from the injector's control port."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{control}/", timeout=5) as resp:  # a loopback URL
        rows = json.loads(resp.read())
    return {row["port"]: (row["requests"], row["delayed"]) for row in rows}


def run(main: Awaitable[None]) -> None:
    """Run ``main`` on uvloop if it is installed (as the naive root and distpat do), else asyncio's loop."""

    async def wrapper() -> None:
        await main

    try:
        import uvloop
    except ImportError:
        asyncio.run(wrapper())
    else:
        uvloop.run(wrapper())


# --- the naive aiohttp root (a process of its own: `scatter_gather.py _naive ...`) -----------------


def naive_main(argv: Sequence[str]) -> None:
    """The root as one would first write it with aiohttp: gather one request per shard, merge."""
    import aiohttp
    from aiohttp import web

    p = argparse.ArgumentParser(prog="scatter_gather.py _naive")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--leaf", action="append", required=True, help="the URL of one replica of a shard")
    args = p.parse_args(argv)
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session(app: web.Application) -> Any:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            app[session_key] = s
            yield

    async def ask(s: aiohttp.ClientSession, leaf: str, q: str, k: str) -> list[dict[str, Any]] | None:
        try:
            async with s.get(f"{leaf}/search", params={"q": q, "k": k}) as resp:
                if resp.status != 200:
                    return None
                hits: list[dict[str, Any]] = (await resp.json())["hits"]
                return hits
        except (aiohttp.ClientError, ValueError, KeyError):
            return None

    async def search(request: web.Request) -> web.Response:
        t0 = time.monotonic()
        q, k = request.query.get("q", ""), request.query.get("k", "10")
        if not q.strip() or not k.isdigit() or not 1 <= int(k) <= 1000:
            return web.json_response({"error": "give q=WORDS and k=1..1000"}, status=400)
        answers = await asyncio.gather(*(ask(request.app[session_key], leaf, q, k) for leaf in args.leaf))
        merged = sorted(
            (hit for hits in answers if hits is not None for hit in hits),
            key=lambda h: (-h["score"], h["id"]),
        )
        ok = sum(a is not None for a in answers)
        body = {
            "hits": merged[: int(k)],
            "shards": {"total": len(answers), "ok": ok, "failed": len(answers) - ok, "timed_out": 0},
            "partial": ok < len(answers),
            "took_ms": round((time.monotonic() - t0) * 1000, 3),
        }
        return web.json_response(body, status=200 if ok else 502)

    async def main() -> None:
        app = web.Application()
        app.cleanup_ctx.append(session)
        app.router.add_get("/search", search)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, LOOPBACK, args.port, backlog=4096).start()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    run(main())


# --- starting everything -------------------------------------------------------------------------


@dataclass(slots=True)
class Bench:
    """What the run found: the commands shown, the summary's rows and the broken contenders."""

    tmp: Path
    distpat: list[str]
    wrk: str
    args: argparse.Namespace
    commands: dict[str, str] = field(default_factory=dict)
    admin: dict[str, int] = field(default_factory=dict)  # a distpat contender's admin port
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # what, value, goal, verdict
    broken: list[str] = field(default_factory=list)

    def row(self, what: str, value: str, goal: str = "-", ok: bool | None = None) -> None:
        self.rows.append((what, value, goal, "-" if ok is None else ("met" if ok else "missed")))

    def check_row(self, what: str, value: str, expected: str, ok: bool) -> None:
        self.rows.append((what, value, expected, "ok" if ok else "BROKEN"))
        if not ok:
            self.broken.append(f"{what}: {value} (expected {expected})")


@dataclass(slots=True)
class Leaves:
    """The leaf processes: ``replicas[shard][r]`` and the whole-corpus leaf, each (port, admin port)."""

    replicas: list[list[tuple[int, int]]]
    whole: tuple[int, int]
    injected: list[int]  # the injector's listener in front of replicas[shard][0], per shard
    control: int  # the injector's control port


def start_all_at_once(
    bench: Bench, stack: contextlib.ExitStack, specs: Mapping[str, tuple[list[str], int]], timeout: float
) -> dict[str, Service]:
    """Start every ``name -> (argv, port)`` at once (each indexes the corpus as it starts, so one after
    the other would take their sum), then wait for each port; ServiceError names the first that failed."""
    services: dict[str, Service] = {}
    for name, (argv, port) in specs.items():
        log_path = bench.tmp / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        services[name] = Service(name, argv, proc, log_path, port)
        stack.callback(services[name].stop)
    for name, service in services.items():
        try:
            wait_for_port(service.port, timeout=timeout, proc=service.proc)
        except ServiceError as e:
            tail = service.log_tail()
            raise ServiceError(f"{name} {e}" + (f":\n{tail}" if tail else " (no output)")) from None
    return services


def start_leaves(bench: Bench, stack: contextlib.ExitStack, corpus: Path) -> Leaves:
    n = SHARDS * REPLICAS + 1
    ports = free_ports(2 * n + SHARDS + 1)
    pairs = [(ports[2 * i], ports[2 * i + 1]) for i in range(n)]
    replicas = [pairs[s * REPLICAS : (s + 1) * REPLICAS] for s in range(SHARDS)]
    leaves = Leaves(replicas, pairs[-1], ports[2 * n : 2 * n + SHARDS], ports[-1])
    specs: dict[str, tuple[list[str], int]] = {}

    def leaf(name: str, shard: str, port: int, admin: int) -> None:
        argv = [*bench.distpat, "leaf", "--listen", f"{LOOPBACK}:{port}", "--corpus", str(corpus)]
        argv += ["--shard", shard, "--workers", "1", "--admin", f"{LOOPBACK}:{admin}"]
        specs[name] = (argv, port)

    for s, pair in enumerate(replicas):
        for r, (port, admin) in enumerate(pair):
            leaf(f"leaf-{s}-{'ab'[r]}", f"{s}/{SHARDS}", port, admin)
    leaf("leaf-whole", "0/1", *leaves.whole)
    argv = [sys.executable, str(Path(__file__).resolve()), "_injector", "--control", str(leaves.control)]
    argv += ["--share", str(bench.args.delay_share), "--delay-ms", str(bench.args.delay_ms)]
    for s, port in enumerate(leaves.injected):
        argv += ["--route", f"{port}:{replicas[s][0][0]}"]
    specs["injector"] = (argv, leaves.control)
    services = start_all_at_once(bench, stack, specs, timeout=60)
    first = next(iter(services.values()))
    bench.commands["leaves"] = shown_command(first.argv, bench.tmp).replace("leaf-0-a", "...")
    bench.commands["injector"] = shown_command(argv, bench.tmp)
    return leaves


def url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}"


def contender_argvs(bench: Bench, leaves: Leaves) -> dict[str, list[str]]:
    """What each contender runs (the distpat ones without --listen, added when started)."""
    injected = [
        ["--leaf", f"{url(leaves.injected[s])},{url(r[1][0])}"] for s, r in enumerate(leaves.replicas)
    ]
    clean = [["--leaf", f"{url(r[1][0])},{url(r[0][0])}"] for r in leaves.replicas]
    hedge = ["--hedge-max-percent", str(bench.args.hedge_max_percent)]
    base = ["scatter", "--deadline", "1000", "--workers", "1"]
    naive = [sys.executable, str(Path(__file__).resolve()), "_naive"]
    return {
        OFF: [*base, *(a for leaf in injected for a in leaf)],
        HEDGE_FIXED: [
            *base,
            *(a for leaf in injected for a in leaf),
            "--hedge-after",
            bench.args.hedge_after,
            *hedge,
        ],
        HEDGE_P95: [*base, *(a for leaf in injected for a in leaf), "--hedge-after", "p95", *hedge],
        CLEAN: [*base, *(a for leaf in clean for a in leaf)],
        NAIVE: [*naive, *(a for r in leaves.replicas for a in ("--leaf", url(r[1][0])))],
    }


def start_contenders(bench: Bench, stack: contextlib.ExitStack, leaves: Leaves) -> list[Contender]:
    argvs = contender_argvs(bench, leaves)
    ports = free_ports(2 * len(argvs))
    contenders = []
    specs: dict[str, tuple[list[str], int]] = {}
    for (name, argv), port, admin in zip(argvs.items(), ports[::2], ports[1::2], strict=True):
        if name == NAIVE:
            full = [*argv, "--port", str(port)]
        else:
            full = [*bench.distpat, argv[0], "--listen", f"{LOOPBACK}:{port}", *argv[1:]]
            full += ["--admin", f"{LOOPBACK}:{admin}"]
            bench.admin[name] = admin
        specs[name] = (full, port)
        bench.commands[name] = shown_command(full, bench.tmp)
    for name, (argv, port) in specs.items():  # one at a time: they index nothing, and a failure is its own
        c = Contender(name, port)
        try:
            c.service = start_all_at_once(bench, stack, {name.replace(" ", "-"): (argv, port)}, timeout=20)[
                name.replace(" ", "-")
            ]
        except ServiceError as e:
            c.fail(str(e))
            bench.broken.append(f"{name}: {str(e).splitlines()[0]}")
        contenders.append(c)
    return contenders


# --- the check -----------------------------------------------------------------------------------


def get_json(port: int, target: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def top_ids(port: int, query: str) -> list[str] | str:
    """The ids of the top-10 for ``query``, or what was wrong with the answer."""
    try:
        status, body = get_json(port, search_target(query))
    except (OSError, http.client.HTTPException, ValueError) as e:
        return f"GET {search_target(query)} failed: {type(e).__name__}: {e}"
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("hits"), list):
        return f"GET {search_target(query)} answered {status}: {str(body)[:200]}"
    if body.get("partial") or body.get("shards", {}).get("ok", SHARDS) != SHARDS:
        return f"GET {search_target(query)} answered a partial answer: {body.get('shards')}"
    return [str(h.get("id")) for h in body["hits"]]


def check_stats(bench: Bench, leaves: Leaves) -> None:
    """Each replica set's /stats must add up to the whole leaf's documents."""
    try:
        whole = get_json(leaves.whole[0], "/stats")[1]["docs"]
        for r in range(REPLICAS):
            docs = [get_json(pair[r][0], "/stats")[1]["docs"] for pair in leaves.replicas]
            bench.check_row(
                f"replica set {'ab'[r]}: documents of the {SHARDS} shards",
                f"{' + '.join(map(str, docs))} = {sum(docs):,}",
                f"{whole:,} (whole)",
                sum(docs) == whole == bench.args.docs,
            )
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as e:
        bench.check_row("leaves' /stats", f"{type(e).__name__}: {e}", "answers", False)


def check_answers(
    bench: Bench, contenders: Sequence[Contender], whole: int, queries: Sequence[str], when: str
) -> None:
    """Every available contender's top-10 ids for the check queries against the whole leaf's."""
    expected = {q: top_ids(whole, q) for q in queries}
    for ids in expected.values():
        if isinstance(ids, str):
            raise SystemExit(f"the whole-corpus leaf does not answer as it should: {ids}")
    for c in contenders:
        if not c.available:
            continue
        problems = []
        for q in queries:
            got, want = top_ids(c.port, q), expected[q]
            if isinstance(got, str):
                problems.append(got)
            elif got != want:
                problems.append(f"q={q!r}: top-{K} ids {got} differ from the whole leaf's {want}")
        if problems:
            c.fail(f"check {when}: {problems[0]}")
            for line in problems:
                print(f"MISMATCH {c.name} ({when}): {line}")
        bench.check_row(
            f"{c.name}: top-{K} as the whole leaf, {when}",
            f"{len(queries) - len(problems)} of {len(queries)} queries",
            "all",
            not problems,
        )


# --- latency: a closed-loop client ---------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep the connection) of one HTTP/1.1 response (Content-Length or chunked)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip().lower()
    if "chunked" in fields.get("transfer-encoding", ""):
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, to the empty line
            pass
        data = bytes(body)
    else:
        data = await reader.readexactly(int(fields.get("content-length", "0")))
    return status, data, fields.get("connection") != "close"


@dataclass(frozen=True, slots=True)
class LatencyRun:
    """One closed-loop run against one contender; latencies in seconds, sorted."""

    latencies: tuple[float, ...]
    seconds: float
    failed: int  # not 200, or the connection failed
    partial: int  # 200 with "partial": true
    subrequests: int  # what reached the shards (the injector's and the clean leaves' counts)
    delayed: int  # of them, held by the injector
    root_hedges: int  # hedges the root says it sent (its distpat_scatter_events, event hedge_sent)

    def percentile(self, p: float) -> float:
        """Nearest rank; 0 without latencies."""
        if not self.latencies:
            return 0.0
        return self.latencies[max(0, math.ceil(len(self.latencies) * p / 100) - 1)]

    @property
    def queries(self) -> int:
        return len(self.latencies) + self.failed

    @property
    def extra(self) -> float:
        """Sub-requests beyond one per shard per query, as a share of those."""
        base = SHARDS * self.queries
        return self.subrequests / base - 1 if base else 0.0


async def closed_loop(
    port: int, targets: Sequence[str], concurrency: int, per_client: int
) -> tuple[list[float], int, int, float]:
    """``concurrency`` connections, each asking ``per_client`` of ``targets`` in turn (client i starting
    at its own offset), the next as soon as the last is answered; (latencies, failed, partial, seconds)."""
    latencies: list[float] = []
    failed = partial = 0

    async def client(i: int) -> None:
        nonlocal failed, partial
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            for j in range(per_client):
                target = targets[(i * per_client + j) % len(targets)]
                t0 = time.perf_counter()
                try:
                    if conn is None:
                        conn = await asyncio.open_connection(LOOPBACK, port)
                    conn[1].write(f"GET {target} HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
                    status, body, keep = await asyncio.wait_for(read_response(conn[0]), 30)
                except (
                    OSError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    TimeoutError,
                    ValueError,
                ):
                    failed += 1
                    if conn is not None:
                        conn[1].close()
                    conn = None
                    continue
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    failed += 1
                    latencies.pop()
                elif b'"partial": true' in body:
                    partial += 1
                if not keep:
                    conn[1].close()
                    conn = None
        finally:
            if conn is not None:
                conn[1].close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return latencies, failed, partial, time.perf_counter() - t0


def leaf_requests(admin: int) -> int:
    """The sum of distpat_http_requests_total on a leaf's admin /metrics."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{admin}/metrics", timeout=5) as resp:  # a loopback URL
        text = resp.read().decode("utf-8", "replace")
    return int(
        sum(float(v) for v in re.findall(r"^distpat_http_requests_total\{[^}]*\} ([\d.e+]+)$", text, re.M))
    )


def shard_counts(leaves: Leaves) -> tuple[int, int]:
    """(sub-requests that reached the shards so far, of them delayed): the injector's counts for the
    first replicas, the clean leaves' own for the second."""
    counts = injector_counts(leaves.control)
    seen = sum(counts[p][0] for p in leaves.injected)
    delayed = sum(counts[p][1] for p in leaves.injected)
    return seen + sum(leaf_requests(pair[1][1]) for pair in leaves.replicas), delayed


def root_hedges(admin: int | None) -> int:
    """The hedges a distpat root says it sent (distpat_scatter_events, event hedge_sent); 0 without
    an admin port."""
    if admin is None:
        return 0
    with urllib.request.urlopen(f"http://{LOOPBACK}:{admin}/metrics", timeout=5) as resp:  # a loopback URL
        text = resp.read().decode("utf-8", "replace")
    found = re.findall(
        r'^distpat_scatter_events(?:_total)?\{[^}]*event="hedge_sent"[^}]*\} ([\d.e+]+)$', text, re.M
    )
    return int(sum(float(v) for v in found))


def latency_runner(
    bench: Bench, leaves: Leaves, targets: Sequence[str], per_client: int
) -> Callable[[Contender], LatencyRun]:
    def measure(c: Contender) -> LatencyRun:
        admin = bench.admin.get(c.name)
        try:
            before, delayed_before = shard_counts(leaves)
            hedges_before = root_hedges(admin)
            latencies, failed, partial, seconds = asyncio.run(
                closed_loop(c.port, targets, bench.args.concurrency, per_client)
            )
            after, delayed_after = shard_counts(leaves)
            hedges = root_hedges(admin) - hedges_before
        except (OSError, ValueError, KeyError) as e:
            raise ServiceError(f"counting the shards' requests failed: {type(e).__name__}: {e}") from None
        return LatencyRun(
            tuple(sorted(latencies)),
            seconds,
            failed,
            partial,
            after - before,
            delayed_after - delayed_before,
            hedges,
        )

    return measure


def at_percentile(p: float) -> Callable[[Measured[LatencyRun]], float]:
    def key(m: Measured[LatencyRun]) -> float:
        return m.result.percentile(p)

    return key


def ms(value: float | None) -> str:
    return f"{value * 1000:.1f}" if value is not None else "n/a"


def latency_section(
    bench: Bench, contenders: Sequence[Contender], leaves: Leaves, targets: Sequence[str]
) -> None:
    args = bench.args
    print(
        f"\n## Latency: {args.concurrency} connections x {args.per_client} queries in turn (closed loop), "
        f"{args.delay_share:.0%} of the first replicas' requests held {args.delay_ms:g} ms; "
        f"median of {args.rounds} alternating rounds"
    )
    warmup = latency_runner(bench, leaves, targets, args.warmup)
    for c in contenders:  # the p95 hedge needs latencies to go by; every contender gets the same
        if c.available:
            with contextlib.suppress(ServiceError):
                warmup(c)
    results = alternate(
        contenders, "the closed loop", latency_runner(bench, leaves, targets, args.per_client), args
    )
    print(
        f"{'contender':14s} {'queries':>7s} {'q/s':>6s} {'p50 ms':>7s} {'p99 ms':>7s} {'p99.9 ms':>8s} "
        f"{'extra':>6s} {'root says':>9s} {'held':>5s} {'failed':>6s} {'partial':>7s}   p99 ms by round"
    )
    for c in contenders:
        rounds = results[c.name]
        done = [m.result for m in rounds if m is not None]
        if not done:
            print(f"{c.name:14s} unavailable: {(c.error or 'not measured').splitlines()[0]}")
            continue
        queries = sum(r.queries for r in done)
        sub = sum(r.subrequests for r in done)
        extra = sub / (SHARDS * queries) - 1 if queries else 0.0
        held = sum(r.delayed for r in done) / sub if sub else 0.0
        failed, partial = sum(r.failed for r in done), sum(r.partial for r in done)
        qps = median_of(rounds, lambda m: m.result.queries / m.result.seconds)
        p50, p99, p999 = (median_of(rounds, at_percentile(p)) for p in (50, 99, 99.9))
        said = sum(r.root_hedges for r in done)
        root_says = f"{said / (SHARDS * queries):.1%}" if queries and c.name in bench.admin else "-"
        by_round = " ".join(ms(m.result.percentile(99)) if m else "-" for m in rounds)
        print(
            f"{c.name:14s} {queries:7,d} {qps or 0:6,.0f} {ms(p50):>7s} {ms(p99):>7s} {ms(p999):>8s} "
            f"{extra:6.1%} {root_says:>9s} {held:5.1%} {failed:6d} {partial:7d}   {by_round}"
        )
        if c.error:
            print(f"{'':14s} then unavailable: {c.error.splitlines()[0]}")
        bench.check_row(
            f"{c.name}: failed or partial answers in the closed loop",
            f"{failed + partial:,} of {queries:,}",
            f"<= {ERROR_SHARE:.1%}",
            failed + partial <= ERROR_SHARE * queries,
        )
        bench.row(f"{c.name}: p50 / p99 / p99.9", f"{ms(p50)} / {ms(p99)} / {ms(p999)} ms")
        if c.name != OFF:
            value = ratio(results, c.name, OFF, at_percentile(99))
            shown = f"{value:.2f}x" if value is not None else "n/a (not measured)"
            bench.row(
                f"{c.name} / {OFF}: p99",
                shown,
                f"<= {LATENCY_GOAL:g}x",
                value is not None and value <= LATENCY_GOAL,
            )
            bench.row(
                f"{c.name}: extra requests", f"{extra:.1%}", f"<= {EXTRA_GOAL:.0%}", extra <= EXTRA_GOAL
            )
    print(
        "(extra: sub-requests that reached the shards beyond 4 a query, counted by the injector and the\n"
        " clean leaves; root says: the root's own distpat_scatter_events hedge_sent over 4 a query; held:\n"
        " the share of sub-requests the injector delayed; p50/p99/p99.9: each round's nearest-rank\n"
        " percentiles of every latency, medians over rounds)"
    )


# --- throughput ----------------------------------------------------------------------------------


def wrk_script(targets: Sequence[str]) -> str:
    rows = "".join(f'  "{t}",\n' for t in targets)
    return f"""\
-- Written by benchmarks/scatter_gather.py: {len(targets)} queries, sent in turn on every connection.
local targets = {{
{rows}}}
local requests, sent = {{}}, 0

function init(args)
  for i, t in ipairs(targets) do
    requests[i] = wrk.format("GET", t)
  end
end

function request()
  sent = sent % #requests + 1
  return requests[sent]
end
"""


def throughput_section(bench: Bench, contenders: Sequence[Contender], targets: Sequence[str]) -> None:
    args = bench.args
    script = bench.tmp / "queries.lua"
    script.write_text(wrk_script(targets), encoding="utf-8")
    print(
        f"\n## Throughput: the {len(targets)} queries in turn, no injector, wrk -t1 -c{args.connections} "
        f"-d{args.duration}s --latency -s SCRIPT, median of {args.rounds} alternating rounds"
    )

    def measure(c: Contender) -> WrkResult:
        return run_wrk_url(
            c.url("/"), wrk=bench.wrk, connections=args.connections, duration=args.duration, script=script
        )

    results: Rounds[WrkResult] = alternate(contenders, "wrk", measure, args)
    rate_table(contenders, results, {})
    print(CPU_NOTE.replace("the backend's", "the leaves'"))
    for c in contenders:
        done = [m.result for m in results[c.name] if m is not None]
        if done:
            errors = sum(r.errors for r in done)
            bench.check_row(f"{c.name}: errors under wrk", f"{errors:,}", "0", errors == 0)
        rps = median_of(results[c.name], req_per_sec)
        cpu = median_of(results[c.name], cpu_per_request)
        shown = f"{rps:,.0f} req/s, {cpu:,.1f} CPU µs/req" if rps is not None and cpu is not None else "n/a"
        bench.row(f"{c.name}: wrk", shown)
    value = ratio(results, CLEAN, NAIVE, req_per_sec)
    shown = f"{value:.2f}x" if value is not None else "n/a (not measured)"
    bench.row(
        f"{CLEAN} / {NAIVE} req/s",
        shown,
        f">= {THROUGHPUT_GOAL:g}x",
        value is not None and value >= THROUGHPUT_GOAL,
    )


# --- main ----------------------------------------------------------------------------------------


def summary(bench: Bench) -> None:
    print("\n## Summary")
    width = max((len(r[0]) for r in bench.rows), default=10)
    vwidth = max((len(r[1]) for r in bench.rows), default=10)
    print(f"{'':{width}s}  {'value':{vwidth}s}  {'goal / check':14s}  result")
    for what, value, goal, verdict in bench.rows:
        print(f"{what:{width}s}  {value:{vwidth}s}  {goal:14s}  {verdict}")
    for line in bench.broken:
        print(f"BROKEN: {line}")


def options() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="50 queries a client, 1 s wrk runs, 2 rounds")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds, at least 2 (default 5)")
    p.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 4; --quick 1)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--concurrency", type=int, default=20, help="closed-loop connections (default 20)")
    p.add_argument(
        "--per-client", type=int, default=None, help="queries per closed-loop connection (250; --quick 50)"
    )
    p.add_argument("--docs", type=int, default=2000, help="documents in the corpus (default 2000)")
    p.add_argument("--delay-share", type=float, default=0.03, help="share of requests delayed (default 0.03)")
    p.add_argument("--delay-ms", type=float, default=200.0, help="how long they are held (default 200)")
    p.add_argument("--hedge-after", default="20", help="the fixed hedge's --hedge-after (default 20 ms)")
    p.add_argument("--hedge-max-percent", type=float, default=10.0, help="the hedged ones' cap (default 10)")
    p.add_argument("--distpat", default=None, help="command that runs distpat (default: .venv/bin/distpat)")
    args = p.parse_args()
    args.duration = args.duration or (1 if args.quick else 4)
    args.rounds = max(2, args.rounds or (2 if args.quick else 5))
    args.per_client = args.per_client or (50 if args.quick else 250)
    args.warmup = max(5, args.per_client // 5)
    if min(args.duration, args.connections, args.concurrency, args.per_client, args.docs) < 1:
        p.error("--duration, --connections, --concurrency, --per-client and --docs must be at least 1")
    if not 0 <= args.delay_share <= 1 or args.delay_ms < 0:
        p.error("--delay-share is 0 to 1, --delay-ms at least 0")
    return args


def main() -> None:
    if sys.argv[1:2] == ["_injector"]:
        injector_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["_naive"]:
        naive_main(sys.argv[2:])
        return
    args = options()
    wrk = require_tool("wrk", "wrk")
    print("# distpat benchmark: scatter/gather (scatter, leaf), hedged and not, and a naive aiohttp root")
    print(describe("distpat", "aiohttp", "uvloop", "httptools"))
    print(f"tools: {tool_version([wrk, '-v']).split(' [')[0]}; servers, leaves and load share the same cores")
    queries = query_list()
    targets = [search_target(q) for q in queries]
    with (
        interruptible(),
        tempfile.TemporaryDirectory(prefix="distpat-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        bench = Bench(Path(tmp), distpat_command(args.distpat), wrk, args)
        corpus = bench.tmp / "corpus"
        write_corpus(corpus, args.docs)
        print(
            f"corpus: {args.docs:,} documents of 30 to 300 words from {VOCABULARY:,} made-up ones (Zipf, "
            f"seed {SEED}); {len(queries)} queries such as {queries[0]!r}, {queries[1]!r}"
        )
        try:
            leaves = start_leaves(bench, stack, corpus)
        except ServiceError as e:
            raise SystemExit(f"the leaves or the injector did not start: {e}") from None
        contenders = start_contenders(bench, stack, leaves)
        for name, command in bench.commands.items():
            print(f"{name}: {command}")
        print("\n## Check: top-10 ids against the whole-corpus leaf")
        check_stats(bench, leaves)
        checked = check_queries(queries)
        check_answers(bench, contenders, leaves.whole[0], checked, "before the runs")
        by_name = {c.name: c for c in contenders}
        latency_section(bench, [by_name[n] for n in (OFF, HEDGE_FIXED, HEDGE_P95)], leaves, targets)
        clean = [by_name[CLEAN], by_name[NAIVE]]
        throughput_section(bench, clean, targets)
        check_answers(bench, clean, leaves.whole[0], checked, "after the runs")
        summary(bench)
    if bench.broken:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
