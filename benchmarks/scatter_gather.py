"""Scatter/gather benchmark: hedging against the tail, and the root against a naive aiohttp gather.

One invocation starts, on 127.0.0.1 only, each in its own process group:

  corpus       --docs documents (2,000) of words drawn from a fixed vocabulary (seeded), in the temp dir
  leaves       four shards x two replicas: eight `distpat leaf --corpus DIR --shard I/4`, plus one
               `distpat leaf --shard 0/1` over the whole corpus (the reference for the merge check)
  injector     a delay injector of this script's, in front of the first replica of each shard: it
               holds --slow-percent of the requests (3%, seeded) --slow-ms (200 ms), passes the rest
  hedge-off    `distpat scatter --leaf INJECTED,CLEAN x4 --deadline 2000`
  hedge-on     the same with `--hedge-after HEDGE (p95: the shards' observed 95th percentile, as The
               Tail at Scale suggests) --hedge-max-percent 10`
  naive        an aiohttp app of this script's: per query, asyncio.gather of one aiohttp request per
               shard (to its clean replica), merged by score then id; no hedging, no deadline

Before timing, every root answers the same merged top-10 ids as the whole-corpus leaf for a few
queries (a root that differs is broken). Then, alternated in --rounds rounds:

* **tail latency**: a closed loop of --clients (8) concurrent clients, --queries queries in all per contender
  and round, against hedge-off and hedge-on through the injector; each latency kept; p50, p99 and
  p99.9 over every round's latencies, and the extra requests of hedging (the root's own
  ``distpat_scatter_events_total{event="hedge_sent"}`` over the sub-requests sent). Goal: hedge-on's
  p99 <= 0.3x hedge-off's, for at most 10% extra requests.
* **throughput**: `wrk -t1 -c32` cycling through the queries, against hedge-off over the clean
  replicas only and the naive root over the same. Goal: distpat >= 3x the naive root.

    .venv/bin/python benchmarks/scatter_gather.py            # full run
    .venv/bin/python benchmarks/scatter_gather.py --quick    # 2 rounds, fewer queries, 1 s wrk runs

Needs wrk (Debian package wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from _machine import describe
from _servers import ServiceError, free_ports, require_tool, run_wrk_url, start_process

HOST = "127.0.0.1"
VOCABULARY = [f"w{i}" for i in range(400)]
SHARDS = 4

NAIVE = """
import asyncio, json, sys
import aiohttp
from aiohttp import web

shards = sys.argv[2].split(",")

async def search(request):
    session = request.app["session"]
    k = int(request.query.get("k", "10"))
    async def one(url):
        async with session.get(url + "/search", params={"q": request.query["q"], "k": str(k)}) as r:
            return (await r.json())["hits"]
    lists = await asyncio.gather(*(one(u) for u in shards))
    hits = sorted((h for l in lists for h in l), key=lambda h: (-h["score"], h["id"]))[:k]
    return web.json_response({"hits": hits})

async def session(app):
    app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await app["session"].close()

app = web.Application()
app.router.add_get("/search", search)
app.cleanup_ctx.append(session)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def make_corpus(directory: Path, documents: int, rng: random.Random) -> list[str]:
    weights = [1.0 / (i + 1) for i in range(len(VOCABULARY))]  # Zipf-like: common and rare words
    for i in range(documents):
        words = rng.choices(VOCABULARY, weights, k=rng.randint(20, 120))
        (directory / f"doc{i:05d}.txt").write_text(" ".join(words))
    # queries of the rarer words: a leaf answers in a fraction of a millisecond, so the roots, not the
    # leaves, are what the throughput runs measure
    return [" ".join(rng.sample(VOCABULARY[150:], rng.randint(1, 3))) for _ in range(200)]


class Injector:
    """A TCP proxy in front of one leaf that holds some requests before passing them on."""

    def __init__(self, upstream: int, slow_fraction: float, slow_seconds: float, seed: int) -> None:
        self.upstream = upstream
        self.slow_fraction = slow_fraction
        self.slow_seconds = slow_seconds
        self.rng = random.Random(seed)
        self.requests = 0
        self.slowed = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:  # the loop keeps only a weak reference to a connection's task
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                if self.rng.random() < self.slow_fraction:
                    self.slowed += 1
                    await asyncio.sleep(self.slow_seconds)
                up_writer.write(head)
                await up_writer.drain()
                response = await up_reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in response.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await up_reader.readexactly(length)
                writer.write(response + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            up_writer.close()


def serve_injectors(injectors: Sequence[Injector], ports: Sequence[int]) -> None:
    """Run the injectors on ``ports`` in a thread with its own loop (a daemon: it ends with the script)."""
    ready = threading.Event()

    def run() -> None:
        async def main() -> None:
            for injector, port in zip(injectors, ports, strict=True):
                await asyncio.start_server(injector.handle, HOST, port)
            ready.set()
            await asyncio.Event().wait()

        asyncio.run(main())

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)


def top_ids(port: int, query: str) -> list[str]:
    url = f"http://{HOST}:{port}/search?" + urllib.parse.urlencode({"q": query, "k": "10"})
    with urllib.request.urlopen(url, timeout=10) as response:
        return [h["id"] for h in json.loads(response.read())["hits"]]


def scrape_hedges(admin: int) -> float:
    with urllib.request.urlopen(f"http://{HOST}:{admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("distpat_scatter_events_total") and 'event="hedge_sent"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def closed_loop(port: int, queries: Sequence[str], concurrency: int) -> list[float]:
    """Latencies (seconds) of every query, ``concurrency`` clients each on its own keep-alive connection."""
    latencies: list[float] = []
    todo = list(queries)

    async def client() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while todo:
                query = todo.pop()
                target = "/search?" + urllib.parse.urlencode({"q": query, "k": "10"})
                started = time.perf_counter()
                writer.write(f"GET {target} HTTP/1.1\r\nHost: root\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    async with asyncio.timeout(300):
        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=3000, help="queries per contender and round")
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--slow-percent", type=float, default=3.0)
    parser.add_argument("--slow-ms", type=float, default=200.0)
    parser.add_argument("--hedge", default="p95", help="--hedge-after of hedge-on (ms or pNN)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the latency runs")
    parser.add_argument("--duration", type=int, default=4)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.queries, args.duration = 2, 600, 1
    wrk = require_tool("wrk", "wrk")
    distpat = str(Path(sys.executable).with_name("distpat"))
    print("# distpat benchmark: scatter/gather (chapter 7)")
    print(describe("distpat", "uvloop", "aiohttp"))
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="distpat-sg-") as tmp:
        work = Path(tmp)
        corpus = work / "corpus"
        corpus.mkdir()
        queries = make_corpus(corpus, args.docs, rng)
        services = []
        try:
            ports = free_ports(2 * SHARDS + 1 + SHARDS + 3 + 2)
            leaf_ports, rest = ports[: 2 * SHARDS + 1], ports[2 * SHARDS + 1 :]
            inject_ports, root_ports, admin_ports = (
                rest[:SHARDS],
                rest[SHARDS : SHARDS + 3],
                rest[SHARDS + 3 :],
            )
            for i in range(2 * SHARDS):
                shard = f"{i // 2}/{SHARDS}"
                argv = [
                    distpat,
                    "leaf",
                    "--listen",
                    f"{HOST}:{leaf_ports[i]}",
                    "--corpus",
                    str(corpus),
                    "--shard",
                    shard,
                ]
                services.append(
                    start_process(f"leaf-{i}", argv, port=leaf_ports[i], log_dir=work, timeout=60)
                )
            whole = leaf_ports[2 * SHARDS]
            argv = [distpat, "leaf", "--listen", f"{HOST}:{whole}", "--corpus", str(corpus)]
            services.append(start_process("leaf-whole", argv, port=whole, log_dir=work, timeout=60))
            injectors = [
                Injector(leaf_ports[2 * s], args.slow_percent / 100, args.slow_ms / 1000, seed=s)
                for s in range(SHARDS)
            ]
            serve_injectors(injectors, inject_ports)
            injected = [
                f"--leaf=http://{HOST}:{inject_ports[s]},http://{HOST}:{leaf_ports[2 * s + 1]}"
                for s in range(SHARDS)
            ]
            clean = [f"--leaf=http://{HOST}:{leaf_ports[2 * s + 1]}" for s in range(SHARDS)]
            base = [distpat, "scatter", "--deadline", "2000", "--workers", "1"]
            roots = {
                "hedge-off": [
                    *base,
                    "--listen",
                    f"{HOST}:{root_ports[0]}",
                    "--admin",
                    f"{HOST}:{admin_ports[0]}",
                    *injected,
                ],
                "hedge-on": [
                    *base,
                    "--listen",
                    f"{HOST}:{root_ports[1]}",
                    "--admin",
                    f"{HOST}:{admin_ports[1]}",
                    *injected,
                    "--hedge-after",
                    args.hedge,
                    "--hedge-max-percent",
                    "10",
                ],
            }
            port_of = {"hedge-off": root_ports[0], "hedge-on": root_ports[1]}
            for name, argv in roots.items():
                print(f"{name}: {' '.join(argv[1:])}")
                services.append(start_process(name, argv, port=port_of[name], log_dir=work))
            naive_port, throughput_port = root_ports[2], free_ports(1)[0]
            script = work / "naive.py"
            script.write_text(NAIVE)
            clean_urls = ",".join(f"http://{HOST}:{leaf_ports[2 * s + 1]}" for s in range(SHARDS))
            services.append(
                start_process(
                    "naive",
                    [sys.executable, str(script), str(naive_port), clean_urls],
                    port=naive_port,
                    log_dir=work,
                )
            )
            tp_argv = [*base, "--listen", f"{HOST}:{throughput_port}", *clean]
            services.append(start_process("distpat-clean", tp_argv, port=throughput_port, log_dir=work))
            print(f"naive: aiohttp, asyncio.gather over {clean_urls}")
            print(
                f"injector: {args.slow_percent:g}% of requests to each shard's first replica held "
                f"{args.slow_ms:g} ms"
            )
            # the merge check
            broken = []
            for name, port in (
                ("hedge-off", port_of["hedge-off"]),
                ("hedge-on", port_of["hedge-on"]),
                ("naive", naive_port),
                ("distpat-clean", throughput_port),
            ):
                for query in queries[:5]:
                    if top_ids(port, query) != top_ids(whole, query):
                        broken.append(name)
                        print(f"{name}: the merged top-10 for {query!r} differs from the whole-corpus leaf's")
                        break
            print(
                "merge check: "
                + (
                    "every root equals the whole-corpus leaf"
                    if not broken
                    else "BROKEN: " + ", ".join(broken)
                )
            )
            # tail latency
            lat: dict[str, list[float]] = {"hedge-off": [], "hedge-on": []}
            sub_requests = {"hedge-off": 0, "hedge-on": 0}
            for r in range(args.rounds):
                order = ["hedge-off", "hedge-on"] if r % 2 == 0 else ["hedge-on", "hedge-off"]
                for name in order:
                    qs = [queries[(r * args.queries + i) % len(queries)] for i in range(args.queries)]
                    got = asyncio.run(closed_loop(port_of[name], qs, args.clients))
                    lat[name].extend(got)
                    sub_requests[name] += len(got) * SHARDS
                    print(
                        f"round {r + 1} {name}: {len(got)} queries, p99 {percentile(got, 99) * 1000:.1f} ms"
                    )
            hedges = scrape_hedges(admin_ports[1])
            extra = hedges / sub_requests["hedge-on"] * 100
            print()
            print(
                f"## Tail latency: {args.queries} queries x {args.rounds} rounds, "
                f"{args.clients} concurrent clients"
            )
            print(f"{'contender':<10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}  extra requests")
            for name in ("hedge-off", "hedge-on"):
                values = lat[name]
                extra_text = f"{extra:.2f}% ({hedges:.0f} hedges)" if name == "hedge-on" else "-"
                print(
                    f"{name:<10} {percentile(values, 50) * 1000:8.2f} {percentile(values, 99) * 1000:8.2f} "
                    f"{percentile(values, 99.9) * 1000:9.2f}  {extra_text}"
                )
            p99_ratio = percentile(lat["hedge-on"], 99) / percentile(lat["hedge-off"], 99)
            slowed = sum(i.slowed for i in injectors)
            print(f"injected: {slowed} of {sum(i.requests for i in injectors)} first-replica requests held")
            # throughput
            rates: dict[str, list[float]] = {"distpat": [], "naive": []}
            lua = work / "queries.lua"
            lua.write_text(
                "local q = {"
                + ",".join(
                    json.dumps("/search?" + urllib.parse.urlencode({"q": x, "k": "10"})) for x in queries
                )
                + "}\nlocal i = 0\nrequest = function()\n  i = i % #q + 1\n"
                + "  return wrk.format('GET', q[i])\nend\n"
            )
            for r in range(args.rounds):
                pairs: list[tuple[str, int]] = [("distpat", throughput_port), ("naive", naive_port)]
                for contender, at in pairs if r % 2 == 0 else pairs[::-1]:
                    result = run_wrk_url(f"http://{HOST}:{at}/", wrk=wrk, duration=args.duration, script=lua)
                    rates[contender].append(result.requests_per_sec)
            print()
            print(
                f"## Throughput: wrk -t1 -c32 -d{args.duration}s over the clean replicas, "
                f"{args.rounds} rounds"
            )
            for name, values in rates.items():
                print(
                    f"{name:<10} {statistics.median(values):10,.0f} req/s   by round: "
                    + " ".join(f"{v:,.0f}" for v in values)
                )
            throughput_ratio = statistics.median(
                a / b for a, b in zip(rates["distpat"], rates["naive"], strict=True)
            )
            print()
            print("## Summary")
            print(
                f"hedge-on p99 / hedge-off p99   {p99_ratio:.2f}x   goal <= 0.3x: "
                + ("met" if p99_ratio <= 0.3 else "missed")
            )
            print(
                f"extra requests of hedging      {extra:.2f}%   goal <= 10%: "
                + ("met" if extra <= 10 else "missed")
            )
            print(
                f"distpat / naive aiohttp root   {throughput_ratio:.2f}x   goal >= 3x: "
                + ("met" if throughput_ratio >= 3 else "missed")
            )
            return 1 if broken else 0
        except ServiceError as exc:
            print(f"a contender could not start: {exc}")
            return 1
        finally:
            for service in reversed(services):
                service.stop()


if __name__ == "__main__":
    sys.exit(main())
