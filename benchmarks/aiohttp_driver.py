"""aiohttp driver benchmark: what distpat.aiohttp's split middleware and shard handler cost inside an
aiohttp application, against the same application without them, in one run.

One invocation starts, on 127.0.0.1 only, each in its own process group:

  b1 ... b5     five backends, nginx, 1 worker each, as in benchmarks/routers.py: every GET answers
                "hello world\\n" (12 bytes) with `add_header X-Backend $server_port`
  plain         an aiohttp app whose handler answers {"variant": "a"} (web.json_response): no distpat
  split         the same app behind distpat.aiohttp.split_middleware(variants=[("a", "50"), ("b", "*")],
                key="header:X-User"), deciding only (no pools): the handler answers
                {"variant": request[distpat.aiohttp.VARIANT]}
  proxy-plain   the naive aiohttp proxy of benchmarks/http_proxy.py (its handler forwarding through one
                shared ClientSession), to b1
  shard         distpat.aiohttp.shard_handler(upstreams=[B1, ..., B5], key="uri", algorithm="nginx"),
                with distpat.aiohttp.client_context() for its client session

Each app is one process on uvloop, served by web.AppRunner(app, access_log=None) and a TCPSite with
backlog 4096 (as the naive proxy serves itself), every path routed to its handler. plain, split and
shard are this script run as `aiohttp_driver.py serve KIND PORT [UPSTREAM ...]`, with this
repository's src/ first on sys.path; proxy-plain is http_proxy.py's script, written to the temp dir.

The load is benchmarks/routers.py's: one table of --keys requests (1,000 by default, fixed by a seed),
GET /item/N?v=M with X-User: user-K, every N and every K different, sent in turn on every connection
by one wrk Lua script that every contender gets. Before the runs, and again after them, the first
--check-keys requests of the table (300 by default) are asked of every contender on one keep-alive
connection: plain must answer each with its JSON; split with the variant distpat's SplitTable (nginx's
split_clients, which routers.py compares it with) gives the user; proxy-plain with b1's body and
X-Backend; shard with the body and X-Backend of the backend distpat's nginx ring (nginx's hash
$request_uri consistent) gives the URI.

Then every contender is driven with ``wrk -t1 -c32 --latency -s SCRIPT`` in every round, the order
rotating, and medians over rounds are compared (ratios are medians of same-round ratios), so that a
burst of load on this shared machine lands on all of them alike; each contender's own CPU time per
request (user + system from /proc, the backends' not counted) is shown too. wrk, the apps and the
backends share the machine's cores. No goals are set for these figures: the script prints the cost of
the split middleware (split / plain) and the shard handler against a naive aiohttp proxy (shard /
proxy-plain), for docs/aiohttp.md. Run:

    .venv/bin/python benchmarks/aiohttp_driver.py             # full run (about a minute and a half)
    .venv/bin/python benchmarks/aiohttp_driver.py --quick     # 1 s wrk runs, 2 rounds

A contender that does not start, answers wrongly or fails under load is reported unavailable, with its
error, and the others still run. Needs the Debian packages nginx-light and wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from aiohttp import web

import distpat.aiohttp
from _machine import describe
from _servers import (
    LOOPBACK,
    ServiceError,
    WrkResult,
    free_ports,
    interruptible,
    ratio,
    require_tool,
    shown_command,
    start_process,
    tool_version,
)
from distpat.core.split import SplitTable
from distpat.ring import make_ring
from http_proxy import Contender, unavailable_line, why_missing, write_aiohttp_proxy
from routers import (
    BACKEND_HEADER,
    BACKENDS,
    SEED,
    SMALL_BODY,
    USER_HEADER,
    Target,
    add_run_options,
    measure_throughput,
    request_table,
    run_options,
    start_backends,
    wrk_script,
)
from tls_sidecar import Measured, Rounds, cpu_per_request, ratio_line

PLAIN, SPLIT, PROXY_PLAIN, SHARD = "plain", "split", "proxy-plain", "shard"
SERVED = (PLAIN, SPLIT, SHARD)  # the apps this script serves itself (proxy-plain is http_proxy.py's)
VARIANTS = (("a", "50"), ("b", "*"))  # split_clients lines: 50% a, the rest b
PLAIN_VARIANT = "a"
PAIRS = (  # numerator, denominator, what the ratio is
    (SPLIT, PLAIN, "cost of the split middleware"),
    (SHARD, PROXY_PLAIN, "shard handler vs a naive aiohttp proxy"),
)


# --- the apps (run as `aiohttp_driver.py serve KIND PORT [UPSTREAM ...]`) ---------------------------


async def plain_handler(request: web.Request) -> web.Response:
    return web.json_response({"variant": PLAIN_VARIANT})


async def split_handler(request: web.Request) -> web.Response:
    """The variant the split middleware decided, under the documented request key."""
    return web.json_response({"variant": request[distpat.aiohttp.VARIANT]})


def build_app(kind: str, upstreams: Sequence[str]) -> web.Application:
    """The application of contender ``kind``: every path to its one handler."""
    app = web.Application()
    if kind == PLAIN:
        app.router.add_get("/{tail:.*}", plain_handler)
    elif kind == SPLIT:
        split = distpat.aiohttp.split_middleware(variants=list(VARIANTS), key=f"header:{USER_HEADER}")
        app.middlewares.append(split)
        app.on_response_prepare.append(split.on_response_prepare)
        app.router.add_get("/{tail:.*}", split_handler)
    elif kind == SHARD:
        app.cleanup_ctx.append(distpat.aiohttp.client_context())
        shards = distpat.aiohttp.shard_handler(upstreams=upstreams, key="uri", algorithm="nginx")
        app.router.add_route("*", "/{tail:.*}", shards)
    else:
        raise SystemExit(f"aiohttp_driver.py serve: unknown app {kind!r} (one of {', '.join(SERVED)})")
    return app


def serve(argv: Sequence[str]) -> None:
    """``serve KIND PORT [UPSTREAM ...]``: serve one app on 127.0.0.1:PORT on uvloop until killed."""
    if len(argv) < 2 or not argv[1].isdigit():
        raise SystemExit("usage: aiohttp_driver.py serve KIND PORT [UPSTREAM ...]")
    import uvloop

    app = build_app(argv[0], argv[2:])

    async def run() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, LOOPBACK, int(argv[1]), backlog=4096).start()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    uvloop.run(run())


# --- starting everything --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expected:
    """What a contender must answer a request with: JSON naming ``variant``, or the backends' body
    with the X-Backend of the backend on port ``backend``."""

    variant: str | None = None
    backend: int | None = None


Expectation = Callable[[Target], Expected]


@dataclass(slots=True)
class Setup:
    """The running backends and contenders, what each was started as, and what each must answer."""

    backend_ports: list[int]
    contenders: list[Contender]
    commands: dict[str, str]
    expected: dict[str, Expectation]
    reported: set[str] = field(default_factory=set)  # contenders already shown unavailable

    def backend_name(self, port: str) -> str:
        """'b3' for the third backend's port (as X-Backend gives it); the port itself if it is none."""
        names = {str(p): f"b{i}" for i, p in enumerate(self.backend_ports, 1)}
        return names.get(port, port)


def expectations(backend_ports: Sequence[int]) -> dict[str, Expectation]:
    """Each contender's answer to a request, from distpat's pure core: the split's table (nginx's
    split_clients) for the user, the nginx ring (hash $request_uri consistent) for the URI."""
    table = SplitTable.from_variants(VARIANTS)
    ring = make_ring("nginx", {f"{LOOPBACK}:{p}": 1 for p in backend_ports})

    def shard(t: Target) -> Expected:
        return Expected(backend=int(ring.get_node(t.path.encode()).rsplit(":", 1)[1]))

    return {
        PLAIN: lambda t: Expected(variant=PLAIN_VARIANT),
        SPLIT: lambda t: Expected(variant=table.variant(t.user.encode())),
        PROXY_PLAIN: lambda t: Expected(backend=backend_ports[0]),
        SHARD: shard,
    }


def start_all(stack: contextlib.ExitStack, tmp: Path, nginx: str) -> Setup:
    """Start the backends and the contenders (stops registered on ``stack``)."""
    ports = free_ports(BACKENDS + 4)
    backend_ports = ports[:BACKENDS]
    port = dict(zip((PLAIN, SPLIT, PROXY_PLAIN, SHARD), ports[BACKENDS:], strict=True))
    start_backends(stack, nginx, backend_ports, tmp)
    urls = [f"http://{LOOPBACK}:{p}" for p in backend_ports]
    me = str(Path(__file__).resolve())
    argvs = {
        PLAIN: [sys.executable, me, "serve", PLAIN, str(port[PLAIN])],
        SPLIT: [sys.executable, me, "serve", SPLIT, str(port[SPLIT])],
        PROXY_PLAIN: [
            sys.executable,
            str(write_aiohttp_proxy(tmp)),
            LOOPBACK,
            str(port[PROXY_PLAIN]),
            urls[0],
        ],
        SHARD: [sys.executable, me, "serve", SHARD, str(port[SHARD]), *urls],
    }
    setup = Setup(backend_ports, [], {}, expectations(backend_ports))
    for name, argv in argvs.items():
        contender = Contender(name, port[name])
        setup.commands[name] = shown_command(argv, tmp).replace(sys.executable, "python")
        try:
            contender.service = start_process(name, argv, port=port[name], log_dir=tmp, timeout=15)
        except ServiceError as e:
            contender.fail(str(e))
        else:
            stack.callback(contender.service.stop)
        setup.contenders.append(contender)
    return setup


# --- answers: is each contender doing what it is configured to do ---------------------------------


def wrong(
    target: Target, status: int, data: bytes, content_type: str, backend: str | None, want: Expected
) -> str:
    """Why an answer is not the one expected ('' if it is)."""
    asked = f"GET {target.path} with {USER_HEADER}: {target.user} answered {status}"
    if want.variant is not None:
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        media_type = content_type.split(";", 1)[0].strip()
        if status == 200 and media_type == "application/json" and body == {"variant": want.variant}:
            return ""
        expected = json.dumps({"variant": want.variant})
        return f"{asked} {content_type or 'no type'} {data[:80]!r} (expected 200 application/json {expected})"
    if status == 200 and data == SMALL_BODY and backend == str(want.backend):
        return ""
    return (
        f"{asked} with {len(data)} bytes from {BACKEND_HEADER} {backend} (expected 200 with the backend's "
        f"{len(SMALL_BODY)} bytes from {want.backend})"
    )


def answers(port: int, targets: Sequence[Target], expect: Expectation) -> Counter[str] | str:
    """Ask for each target in turn on one keep-alive connection; what the answers named (variants or
    backend ports) and how often, or what went wrong at the first answer not as ``expect`` says."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    seen: Counter[str] = Counter()
    target = None
    try:
        for target in targets:
            conn.request("GET", target.path, headers={USER_HEADER: target.user})
            resp = conn.getresponse()
            data = resp.read()
            backend = resp.getheader(BACKEND_HEADER)
            want = expect(target)
            problem = wrong(target, resp.status, data, resp.getheader("Content-Type", ""), backend, want)
            if problem:
                return problem
            seen[want.variant if want.variant is not None else str(want.backend)] += 1
    except (OSError, http.client.HTTPException) as e:
        where = f"GET {target.path}" if target is not None else f"connecting to port {port}"
        return f"{where} failed: {type(e).__name__}: {e}"
    finally:
        conn.close()
    return seen


def check_answers(setup: Setup, targets: Sequence[Target], when: str) -> None:
    """Ask every available contender for ``targets`` and print what they answered; a contender that
    does not answer as it should is made unavailable (and stopped)."""
    print(
        f"\n## Answers {when}: the first {len(targets):,} requests of the table, one keep-alive "
        "connection per contender, each answer checked against distpat's core"
    )
    for c in setup.contenders:
        found = answers(c.port, targets, setup.expected[c.name]) if c.available else ""
        if isinstance(found, str):
            if found:
                c.fail(f"{when}: {found}")
                if c.service is not None:
                    c.service.stop()
            shown = "unavailable (see above)" if c.name in setup.reported else unavailable_line(c)
            print(f"{c.name:16s} {shown}")
            setup.reported.add(c.name)
            continue
        shown = {setup.backend_name(k) if k.isdigit() else f"variant {k}": n for k, n in found.items()}
        spread = ", ".join(f"{label} {n}" for label, n in sorted(shown.items()))
        print(f"{c.name:16s} {sum(found.values()):,} of {len(targets):,} as expected: {spread}")


# --- throughput -----------------------------------------------------------------------------------


def difference(results: Rounds[WrkResult], num: str, den: str) -> float | None:
    """Median over rounds of the same-round difference of CPU µs per request, ``num`` less ``den``."""
    pairs = [
        cpu_per_request(a) - cpu_per_request(b)
        for a, b in zip(results.get(num, []), results.get(den, []), strict=False)
        if a is not None and b is not None
    ]
    return statistics.median(pairs) if pairs else None


def throughput(setup: Setup, script: Path, wrk: str, args: argparse.Namespace) -> Rounds[WrkResult]:
    return measure_throughput(setup.contenders, script, wrk, args)


def req_per_sec(m: Measured[WrkResult]) -> float:
    return m.result.requests_per_sec


def report(setup: Setup, results: Rounds[WrkResult]) -> None:
    print("\n## Ratios (same-round, medians over rounds; no goals are set for these)")
    failed = {c.name: c for c in setup.contenders if c.error}
    for num, den, what in PAIRS:
        missing = why_missing(setup.contenders, num, den)
        print(f"{what}:")
        rps = ratio(results, num, den, req_per_sec)
        cpu = ratio(results, num, den, cpu_per_request)
        labels = [f"  {num} / {den} {measure}:" for measure in ("req/s", "CPU per request")]
        labels.append(f"  {num} - {den} CPU per request:")
        width = max(map(len, labels))
        print(ratio_line(labels[0].ljust(width), rps, missing))
        print(ratio_line(labels[1].ljust(width), cpu, missing, " (lower is better)"))
        extra = difference(results, num, den)
        if extra is not None:
            print(f"{labels[2].ljust(width)} {extra:+.1f} µs")
        for name in (num, den):
            if name in failed and rps is not None:
                print(f"  (but {name} then failed: {unavailable_line(failed[name])})")


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p, "answer check")
    args = run_options(p)

    nginx = require_tool("nginx", "nginx-light")
    wrk = require_tool("wrk", "wrk")

    print(
        "# distpat benchmark: the distpat.aiohttp routers (split middleware, shard handler) in an aiohttp app"
    )
    print(describe("distpat", "aiohttp", "uvloop"))
    wrk_version = tool_version([wrk, "-v"]).split(" [")[0]
    print(f"tools: {tool_version([nginx, '-v'])}; {wrk_version}; apps, backends and wrk share the same cores")
    table = request_table(args.keys)
    with (
        interruptible(),
        tempfile.TemporaryDirectory(prefix="distpat-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        script = Path(tmp) / "requests.lua"
        script.write_text(wrk_script(table), encoding="utf-8")
        setup = start_all(stack, Path(tmp), nginx)
        print(f"\nbackends b1 ... b{BACKENDS}: nginx on {', '.join(map(str, setup.backend_ports))}")
        for name, command in setup.commands.items():
            print(f"{name}: {command}")
        print("(each app: one process, uvloop, access log off; proxy-plain is benchmarks/http_proxy.py's)")
        first = table[0]
        print(
            f"requests: {args.keys:,}, such as GET {first.path} with {USER_HEADER}: {first.user} "
            f"(seed {SEED}; the wrk script is in the temp dir)"
        )
        targets = table[: args.check_keys]
        check_answers(setup, targets, "before the runs")
        results = throughput(setup, script, wrk, args)
        check_answers(setup, targets, "after the runs")
        report(setup, results)


if __name__ == "__main__":
    main()
