"""Router benchmark: distpat split and distpat shard against the plain proxy and nginx, in one run.

One invocation starts, on 127.0.0.1 only, each in its own process group:

  b1 ... b5      five backends, nginx, 1 worker each, on five ports: every GET answers "hello world\\n"
                 (12 bytes) with `add_header X-Backend $server_port`, so an answer names its backend
  distpat proxy  distpat proxy --upstream B1 ... --upstream B5 --workers 1 (round robin)
  distpat split  distpat split --variant a:50:B1 --variant b:*:B2 --key header:X-User --workers 1
  distpat shard  distpat shard --upstream B1 ... --upstream B5 --key uri --workers 1
  nginx split    nginx, 1 worker: split_clients "${http_x_user}" $variant { 50% a; * b; },
                 upstream a { server B1; } and b { server B2; }, proxy_pass http://$variant
  nginx hash     nginx, 1 worker: upstream shards { hash $request_uri consistent; server B1 ... B5; },
                 proxy_pass http://shards

Both nginx routers have the http_proxy benchmark's proxy settings (_servers.nginx_router_body: upstream
keepalive 64, proxy_http_version 1.1, Connection ""; otherwise stock). distpat split's `b:*` is the
`* b` of nginx's split_clients: the rest of the keys, as with 50 + 50.

The load is one table of --keys requests (1,000 by default, fixed by a seed): GET /item/N?v=M with
X-User: user-K, every N and every K different, so that the routers' memos and rings see a key per
request rather than one key. A wrk Lua script in the temp dir formats them all once (wrk.format in
init) and sends them in turn on every connection; every contender gets the same script.

Before the runs, the first --check-keys requests of the table (300 by default) are asked of every
contender on one keep-alive connection: each must answer 200 with the backend's body and X-Backend,
and the backends they name show the routing: distpat split must send each user where nginx's
split_clients does, distpat shard each URI where nginx's hash consistent does (and both nginx routers
are themselves checked: the split only to b1 and b2, by halves; the hash over the five). The same
check runs again after the runs, when the memos are full.

Then every contender is driven with ``wrk -t1 -c32 --latency -s SCRIPT`` in every round, the order
rotating, and medians over rounds are compared (ratios are medians of same-round ratios), so that a
burst of load on this shared machine lands on all of them alike; each contender's own CPU time per
request (user + system from /proc, the backends' not counted) is shown too. wrk, the routers and the
backends share the machine's cores, as for the anchors in shared/ANCHORS.md. Goals: distpat split and
distpat shard each >= 0.9x the plain distpat proxy's req/s, and >= 0.5x their nginx counterpart's.
Run:

    .venv/bin/python benchmarks/routers.py             # full run (about 2 minutes)
    .venv/bin/python benchmarks/routers.py --quick     # 1 s wrk runs, 2 rounds

A contender that does not start, answers wrongly or fails under load is reported unavailable, with its
error, and the others still run. Needs the Debian packages nginx-light and wrk.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import random
import sys
import tempfile
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe
from _servers import (
    LOOPBACK,
    ServiceError,
    WrkResult,
    free_ports,
    interruptible,
    nginx_router_body,
    ratio,
    require_tool,
    run_wrk_url,
    shown_command,
    start_backend,
    start_nginx,
    start_process,
    tool_version,
)
from http_proxy import Contender, check, distpat_command, goal_line, unavailable_line, verdict, why_missing
from tls_sidecar import CPU_NOTE, Measured, Rounds, alternate, cpu_per_request, rate_table, ratio_line

SMALL_BODY = b"hello world\n"
BACKENDS = 5
BACKEND_HEADER = "X-Backend"  # the port of the backend that answered, from its add_header
USER_HEADER = "X-User"
SEED = 9  # the request table's: the same requests in every run
MAX_KEYS = 10_000  # the Lua table stays well inside LuaJIT's limit on constants per function
PROXY, SPLIT, SHARD = "distpat proxy", "distpat split", "distpat shard"
NGINX_SPLIT, NGINX_HASH = "nginx split", "nginx hash"
VARIANTS = {"a": 0, "b": 1}  # variant -> index of its backend
SHARES = {"a": "50", "b": "*"}  # as nginx's split_clients below: 50% a; * b;
GOALS = (  # numerator, denominator, least req/s ratio
    (SPLIT, PROXY, 0.9),
    (SHARD, PROXY, 0.9),
    (SPLIT, NGINX_SPLIT, 0.5),
    (SHARD, NGINX_HASH, 0.5),
)
PAIRS = ((SPLIT, NGINX_SPLIT, "user"), (SHARD, NGINX_HASH, "URI"))  # distpat router, its nginx, the key


# --- the requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One request of the table: its URI (the shard key) and its X-User (the split key)."""

    path: str
    user: str


def request_table(n: int, seed: int = SEED) -> list[Target]:
    """``n`` requests GET /item/N?v=M with X-User: user-K, every N and every K different."""
    rng = random.Random(seed)
    users = rng.sample(range(1_000_000), n)
    items = rng.sample(range(10_000_000), n)
    return [
        Target(f"/item/{item}?v={rng.randrange(10)}", f"user-{user}")
        for user, item in zip(users, items, strict=True)
    ]


def wrk_script(table: Sequence[Target]) -> str:
    """A wrk Lua script that formats every request of ``table`` once and sends them in turn."""
    rows = "".join(f'  {{"{t.path}", "{t.user}"}},\n' for t in table)
    return f"""\
-- Written by benchmarks/routers.py: {len(table):,} requests, formatted once, sent in turn.
local targets = {{
{rows}}}
local requests, count, sent = {{}}, 0, 0

function init(args)
  for i, t in ipairs(targets) do
    requests[i] = wrk.format("GET", t[1], {{ ["{USER_HEADER}"] = t[2] }})
  end
  count = #requests
end

function request()
  sent = sent % count + 1
  return requests[sent]
end
"""


# --- starting everything --------------------------------------------------------------------------


@dataclass(slots=True)
class Setup:
    """The running backends and contenders, and what each contender was started as (for the report)."""

    backend_ports: list[int]
    contenders: list[Contender]
    commands: dict[str, str]
    reported: set[str] = field(default_factory=set)  # contenders whose error the routing tables showed

    def backend_name(self, port: str) -> str:
        """'b3' for the third backend's port (as X-Backend gives it); the port itself if it is none."""
        names = {str(p): f"b{i}" for i, p in enumerate(self.backend_ports, 1)}
        return names.get(port, port)


def start_backends(stack: contextlib.ExitStack, nginx: str, ports: Sequence[int], tmp: Path) -> None:
    """The five backends (stopped by ``stack``), or SystemExit if one does not start or answer."""
    for i, port in enumerate(ports, 1):
        try:
            backend = start_backend(
                nginx,
                port=port,
                base_dir=tmp,
                name=f"backend{i}",
                server_lines=[f"add_header {BACKEND_HEADER} $server_port;"],
            )
        except ServiceError as e:
            raise SystemExit(f"backend b{i} did not start: {e}") from None
        stack.callback(backend.stop)
        error = check(port, {"/": SMALL_BODY})
        if error:
            raise SystemExit(f"backend b{i} does not answer as it should: {error}")


def nginx_split_body(backends: Sequence[str], listen: str) -> str:
    shares = [f"    {share}{'%' if share != '*' else ''} {v};" for v, share in SHARES.items()]
    split = ['split_clients "${http_x_user}" $variant {', *shares, "}"]
    upstreams = {name: [f"server {backends[i]};"] for name, i in VARIANTS.items()}
    return nginx_router_body(upstreams, "$variant", listen, http_lines=split)


def nginx_hash_body(backends: Sequence[str], listen: str) -> str:
    servers = [f"server {b};" for b in backends]
    return nginx_router_body({"shards": ["hash $request_uri consistent;", *servers]}, "shards", listen)


def start_all(stack: contextlib.ExitStack, tmp: Path, nginx: str, args: argparse.Namespace) -> Setup:
    """Start the backends and the contenders (stops registered on ``stack``)."""
    ports = free_ports(BACKENDS + 5)
    backend_ports = ports[:BACKENDS]
    port = dict(zip((PROXY, SPLIT, SHARD, NGINX_SPLIT, NGINX_HASH), ports[BACKENDS:], strict=True))
    start_backends(stack, nginx, backend_ports, tmp)
    backends = [f"{LOOPBACK}:{p}" for p in backend_ports]
    urls = [f"http://{b}" for b in backends]
    upstreams = [arg for url in urls for arg in ("--upstream", url)]
    variants = [arg for v, i in VARIANTS.items() for arg in ("--variant", f"{v}:{SHARES[v]}:{urls[i]}")]
    distpat = distpat_command(args.distpat)
    argvs = {
        PROXY: ["proxy", *upstreams],
        SPLIT: ["split", *variants, "--key", f"header:{USER_HEADER}"],
        SHARD: ["shard", *upstreams, "--key", "uri"],
    }
    bodies = {
        NGINX_SPLIT: nginx_split_body(backends, f"{LOOPBACK}:{port[NGINX_SPLIT]} backlog=4096"),
        NGINX_HASH: nginx_hash_body(backends, f"{LOOPBACK}:{port[NGINX_HASH]} backlog=4096"),
    }
    setup = Setup(backend_ports, [], {})
    for name in port:
        contender = Contender(name, port[name])
        log_name = name.replace(" ", "-")
        try:
            if name in argvs:
                command, *rest = argvs[name]
                argv = [*distpat, command, "--listen", f"{LOOPBACK}:{port[name]}", *rest, "--workers", "1"]
                setup.commands[name] = shown_command(argv, tmp)
                contender.service = start_process(log_name, argv, port=port[name], log_dir=tmp, timeout=15)
            else:
                body = textwrap.indent(bodies[name].strip("\n"), "    ")
                setup.commands[name] = f"nginx, 1 worker, http {{\n{body}\n}}"
                contender.service = start_nginx(
                    log_name, nginx, port=port[name], base_dir=tmp, http_body=bodies[name]
                )
        except ServiceError as e:
            contender.fail(str(e))
        else:
            stack.callback(contender.service.stop)
        setup.contenders.append(contender)
    return setup


# --- routing: which backend each request reached --------------------------------------------------


def routes(port: int, targets: Sequence[Target]) -> list[str] | str:
    """Each target's X-Backend, asked in turn on one keep-alive connection; or what went wrong, if an
    answer is not 200 with the backends' body and an X-Backend."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    seen: list[str] = []
    target = None
    try:
        for target in targets:
            conn.request("GET", target.path, headers={USER_HEADER: target.user})
            resp = conn.getresponse()
            data = resp.read()
            backend = resp.getheader(BACKEND_HEADER)
            if resp.status != 200 or data != SMALL_BODY or backend is None:
                return (
                    f"GET {target.path} with {USER_HEADER}: {target.user} answered {resp.status} with "
                    f"{len(data)} bytes{'' if backend else f' and no {BACKEND_HEADER}'} (expected 200 "
                    f"with the backend's {len(SMALL_BODY)} bytes and {BACKEND_HEADER})"
                )
            seen.append(backend)
    except (OSError, http.client.HTTPException) as e:
        where = f"GET {target.path}" if target is not None else f"connecting to port {port}"
        return f"{where} failed: {type(e).__name__}: {e}"
    finally:
        conn.close()
    return seen


@dataclass(frozen=True, slots=True)
class Agreement:
    """How often a distpat router sent a request to the backend its nginx counterpart did."""

    same: int
    asked: int
    differing: tuple[str, ...]  # the first few that differ, for the report

    def __str__(self) -> str:
        return f"{self.same:,} of {self.asked:,}"


Routes = dict[str, list[str]]  # contender -> the backend of each request asked, in order


def agreement(
    seen: Routes, setup: Setup, targets: Sequence[Target], ours: str, theirs: str, key: str
) -> Agreement | None:
    if ours not in seen or theirs not in seen:
        return None
    differing: list[str] = []
    for target, a, b in zip(targets, seen[ours], seen[theirs], strict=True):
        if a != b and len(differing) < 3:
            shown = target.user if key == "user" else target.path
            differing.append(f"{shown}: {setup.backend_name(a)} vs {setup.backend_name(b)}")
    same = sum(a == b for a, b in zip(seen[ours], seen[theirs], strict=True))
    return Agreement(same, len(targets), tuple(differing))


def expectation(name: str, backends: Sequence[str], setup: Setup) -> str | None:
    """What is wrong with where ``name`` sent the requests, or None if it is as its config says."""
    used = set(backends)
    allowed = {str(p) for p in setup.backend_ports}
    if name in (SPLIT, NGINX_SPLIT):
        allowed = {str(setup.backend_ports[i]) for i in VARIANTS.values()}
    stray = sorted(setup.backend_name(b) for b in used - allowed)
    if stray:
        return f"sent requests to {', '.join(stray)}, outside its {len(allowed)} upstreams"
    if len(used) < len(allowed) and len(backends) >= 20 * len(allowed):
        unused = sorted(setup.backend_name(b) for b in allowed - used)
        return f"never sent a request to {', '.join(unused)} ({len(backends):,} asked)"
    return None


def routing(setup: Setup, targets: Sequence[Target], when: str) -> dict[str, Agreement | None]:
    """Ask every available contender for ``targets``, print where they went; the agreements by router.

    A contender that does not answer as it should is made unavailable."""
    print(
        f"\n## Routing {when}: the first {len(targets):,} requests of the table, one keep-alive "
        f"connection per contender, the backend that answered named by its {BACKEND_HEADER}"
    )
    seen: Routes = {}
    names = [f"b{i}" for i in range(1, BACKENDS + 1)]
    print(f"{'contender':16s} " + " ".join(f"{n:>5s}" for n in names) + "   (requests per backend)")
    for c in setup.contenders:
        found = routes(c.port, targets) if c.available else ""
        if isinstance(found, str):
            if found:
                c.fail(found)
                if c.service is not None:
                    c.service.stop()
            shown = "unavailable (see above)" if c.name in setup.reported else unavailable_line(c)
            print(f"{c.name:16s} {shown}")
            setup.reported.add(c.name)
            continue
        seen[c.name] = found
        counts = Counter(setup.backend_name(b) for b in found)
        print(f"{c.name:16s} " + " ".join(f"{counts.get(n, 0):5d}" for n in names))
        problem = expectation(c.name, found, setup)
        if problem:
            print(f"{'':16s} NOT AS CONFIGURED: {problem}")
    result: dict[str, Agreement | None] = {}
    for ours, theirs, key in PAIRS:
        agreed = agreement(seen, setup, targets, ours, theirs, key)
        result[ours] = agreed
        if agreed is None:
            print(f"{ours} against {theirs}: not compared ({why_missing(setup.contenders, ours, theirs)})")
            continue
        print(f"{ours} sent {agreed} {key}s to the backend {theirs} chose")
        for line in agreed.differing:
            print(f"{'':16s} differs: {line} ({ours} vs {theirs})")
    return result


# --- throughput -----------------------------------------------------------------------------------


def measure_throughput(
    contenders: Sequence[Contender], script: Path, wrk: str, args: argparse.Namespace
) -> Rounds[WrkResult]:
    """Every contender driven by wrk with the request table's script, in alternating rounds; the
    table of rates and CPU per request printed (also used by aiohttp_driver.py)."""
    print(
        f"\n## Throughput: the {args.keys:,} requests in turn, wrk -t1 -c{args.connections} "
        f"-d{args.duration}s --latency -s SCRIPT, median of {args.rounds} alternating rounds"
    )

    def run(c: Contender) -> WrkResult:
        return run_wrk_url(
            c.url("/"),
            wrk=wrk,
            threads=1,
            connections=args.connections,
            duration=args.duration,
            script=script,
        )

    results = alternate(contenders, "wrk", run, args)
    rate_table(contenders, results, {})
    print(CPU_NOTE)
    return results


def throughput(setup: Setup, script: Path, wrk: str, args: argparse.Namespace) -> Rounds[WrkResult]:
    results = measure_throughput(setup.contenders, script, wrk, args)
    for num, den, _ in GOALS:
        missing = why_missing(setup.contenders, num, den)
        value = ratio(results, num, den, cpu_per_request)
        print(ratio_line(f"{num} / {den} CPU per request:", value, missing, " (lower is better)"))
    return results


def req_per_sec(m: Measured[WrkResult]) -> float:
    return m.result.requests_per_sec


def goals(
    setup: Setup,
    results: Rounds[WrkResult],
    before: Mapping[str, Agreement | None],
    after: Mapping[str, Agreement | None],
) -> None:
    print("\n## Goals")
    failed = {c.name for c in setup.contenders if c.error}
    for num, den, goal in GOALS:
        label = f"{num} / {den} req/s:".ljust(36)
        value = ratio(results, num, den, req_per_sec)
        if value is not None and num in failed:
            # A router that failed (under load, or answering wrongly after it) is not fast.
            print(f"{label} {value:6.2f}x (goal >= {goal:g}x: NOT MET: {num} failed, see above)")
            continue
        print(goal_line(label, value, goal, why_missing(setup.contenders, num, den)))
    for ours, theirs, key in PAIRS:
        pair = (before.get(ours), after.get(ours))
        label = f"{ours}: {key}s routed as by {theirs}, before and after the runs:"
        if pair[0] is None or pair[1] is None:
            print(f"{label} not compared: NOT MET ({why_missing(setup.contenders, ours, theirs)})")
            continue
        ok = all(a.same == a.asked for a in pair if a is not None)
        print(f"{label} {pair[0]} and {pair[1]} (goal: all): {verdict(ok)}")


# --- main -----------------------------------------------------------------------------------------


def add_run_options(p: argparse.ArgumentParser, check: str) -> None:
    """The options of a run over the request table (also aiohttp_driver.py's); ``check`` names the
    answer check the first requests of the table go through."""
    p.add_argument("--quick", action="store_true", help="1 s wrk runs and 2 rounds, for a smoke run")
    p.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 4; --quick 1)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds, at least 2 (default 5)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument(
        "--keys", type=int, default=1000, help=f"requests in the table, at most {MAX_KEYS:,} (default 1000)"
    )
    p.add_argument(
        "--check-keys", type=int, default=300, help=f"requests of the table in the {check} (default 300)"
    )


def run_options(p: argparse.ArgumentParser) -> argparse.Namespace:
    """The parsed options of :func:`add_run_options`, defaults filled in and bounds checked."""
    args = p.parse_args()
    args.duration = args.duration or (1 if args.quick else 4)
    args.rounds = max(2, args.rounds or (2 if args.quick else 5))
    if args.duration < 1 or args.connections < 1 or not 1 <= args.keys <= MAX_KEYS or args.check_keys < 1:
        p.error(
            f"--duration, --connections and --check-keys must be at least 1, --keys from 1 to {MAX_KEYS:,}"
        )
    args.check_keys = min(args.check_keys, args.keys)
    return args


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p, "routing check")
    p.add_argument("--distpat", default=None, help="command that runs distpat (default: .venv/bin/distpat)")
    args = run_options(p)

    nginx = require_tool("nginx", "nginx-light")
    wrk = require_tool("wrk", "wrk")

    print("# distpat benchmark: experiment router (split) and sharding router (shard)")
    print(describe("distpat", "uvloop", "httptools"))
    wrk_version = tool_version([wrk, "-v"]).split(" [")[0]
    print(f"tools: {tool_version([nginx, '-v'])}; {wrk_version}; servers and wrk share the same cores")
    table = request_table(args.keys)
    with (
        interruptible(),
        tempfile.TemporaryDirectory(prefix="distpat-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        script = Path(tmp) / "requests.lua"
        script.write_text(wrk_script(table), encoding="utf-8")
        setup = start_all(stack, Path(tmp), nginx, args)
        print(f"\nbackends b1 ... b{BACKENDS}: nginx on {', '.join(map(str, setup.backend_ports))}")
        for name, command in setup.commands.items():
            print(f"{name}: {command}")
        first = table[0]
        print(
            f"requests: {args.keys:,}, such as GET {first.path} with {USER_HEADER}: {first.user} "
            f"(seed {SEED}; the wrk script is in the temp dir)"
        )
        targets = table[: args.check_keys]
        before = routing(setup, targets, "before the runs")
        results = throughput(setup, script, wrk, args)
        after = routing(setup, targets, "after the runs")
        goals(setup, results, before, after)


if __name__ == "__main__":
    main()
