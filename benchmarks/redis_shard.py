"""Redis sharding benchmark: distpat redis-shard against nutcracker (twemproxy), in one run.

One invocation writes one twemproxy YAML file into a temp dir, as for the anchor in shared/ANCHORS.md
(pool alpha: hash fnv1a_64, distribution ketama, redis true, auto_eject_hosts true,
server_retry_timeout 2000, server_failure_limit 2, servers s1 s2 s3 of weight 1), and starts, on
127.0.0.1 only, each in its own process group:

  s1, s2, s3   three redis-server shards: --save '' --appendonly no --protected-mode no, each in its
               own directory of the temp dir
  nutcracker   nutcracker -c FILE -s STATS-PORT -a 127.0.0.1 (it listens on the file's listen: address)
  distpat      distpat redis-shard --config FILE --pool alpha --listen 127.0.0.1:PORT (the same file,
               its own port)

First a placement check: a few keys are SET and read back through each proxy, then looked up with a
GET on every shard directly; both proxies must put every key on the same shard. Then each proxy, and
shard s1 alone as a reference ("redis direct"), is driven with

  redis-benchmark -h 127.0.0.1 -p PORT -t set,get -n N -c 50 -r 100000 -P DEPTH -q --csv

at pipeline depths 1 and 16, in every round, the order rotating, and medians over rounds are compared
(ratios are medians of same-round ratios), with redis-benchmark, the proxies and the shards sharing the
machine's cores. Goals: distpat >= 0.5x nutcracker's ops/s at pipeline 1 and >= 0.8x at pipeline 16,
for SET and for GET both. Each table also shows the contender's own CPU time per operation (user +
system, read from /proc; the shards' is not counted for the proxies). After the runs the placement
check is repeated. Run:

    .venv/bin/python benchmarks/redis_shard.py             # full run (1 to 2 minutes)
    .venv/bin/python benchmarks/redis_shard.py --quick     # small runs, 2 rounds

redis-benchmark stops at the first error reply or closed connection, and a run slower than 10,000
ops/s is cut off: a contender that does not start, answers wrongly or makes redis-benchmark fail is
reported unavailable, with its error, and the others still run. Needs the Debian packages
redis-server, redis-tools and nutcracker.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe
from _servers import (
    LOOPBACK,
    RedisBenchmarkResult,
    RedisError,
    Service,
    ServiceError,
    free_ports,
    interruptible,
    median_of,
    ratio,
    redis_call,
    require_tool,
    run_redis_benchmark,
    shown_command,
    start_process,
    start_redis_server,
    tool_output,
    tool_version,
)
from http_proxy import (
    Contender,
    distpat_command,
    goal_line,
    unavailable_line,
    verdict,
    why_missing,
)
from tls_sidecar import Measured, Rounds, alternate, ratio_line

POOL = "alpha"
SHARDS = ("s1", "s2", "s3")
DIRECT, NUTCRACKER, DISTPAT = "redis direct (s1)", "nutcracker", "distpat"
TESTS = ("SET", "GET")  # redis-benchmark's names for -t set,get
DEPTHS = (1, 16)
GOALS = {1: 0.5, 16: 0.8}  # pipeline depth -> least distpat / nutcracker ops/s, for SET and for GET
ANCHORS = {1: ("~0.78x", "~1.03x"), 16: ("~0.33x", "~0.36x")}  # nutcracker / direct, SET and GET
REQUESTS = {1: 200_000, 16: 1_000_000}  # -n per test: a few seconds a run on the anchors' machine
QUICK_REQUESTS = {1: 20_000, 16: 100_000}
SLOWEST = 10_000  # ops/s: a redis-benchmark run that would take longer at this rate is cut off


def twemproxy_yaml(listen_port: int, shard_ports: Mapping[str, int]) -> str:
    """The anchor's nutcracker.yml: pool alpha over the shards, listening on 127.0.0.1:``listen_port``."""
    servers = "".join(f"   - {LOOPBACK}:{port}:1 {name}\n" for name, port in shard_ports.items())
    return f"""\
{POOL}:
  listen: {LOOPBACK}:{listen_port}
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: true
  server_retry_timeout: 2000
  server_failure_limit: 2
  servers:
{servers}"""


# --- starting everything ------------------------------------------------------------------------------


def start_all(
    stack: contextlib.ExitStack,
    tmp: Path,
    redis_server: str,
    nutcracker: str,
    args: argparse.Namespace,
) -> tuple[list[Contender], dict[str, int], str]:
    """Start the shards and both proxies (stops registered on ``stack``); (contenders, shard ports, YAML)."""
    ports = free_ports(len(SHARDS) + 4)
    shard_ports = dict(zip(SHARDS, ports, strict=False))
    nutcracker_port, stats_port, distpat_port, distpat_stats_port = ports[len(SHARDS) :]
    shards: dict[str, Service] = {}
    for name, port in shard_ports.items():
        try:
            shards[name] = start_redis_server(name, redis_server, port=port, base_dir=tmp)
        except ServiceError as e:
            raise SystemExit(f"a shard would not start: {e}") from None
        stack.callback(shards[name].stop)

    yaml = twemproxy_yaml(nutcracker_port, shard_ports)
    config = tmp / "nutcracker.yml"
    config.write_text(yaml, encoding="utf-8")
    command = [*distpat_command(args.distpat), "redis-shard"]
    distpat = [*command, "--config", str(config), "--pool", POOL, "--listen", f"{LOOPBACK}:{distpat_port}"]
    usage = tool_output([*command, "--help"])
    if "--stats-port" in usage:  # if it has a stats port: a free one, not twemproxy's 22222
        distpat += ["--stats-port", str(distpat_stats_port)]
    if "--stats-addr" in usage:  # and on loopback
        distpat += ["--stats-addr", LOOPBACK]
    # -o '': nutcracker logs to stderr, which start_process keeps in TMP/nutcracker.log (and shows if
    # it fails); -a: its stats port on loopback, not on 0.0.0.0.
    nutcracker_argv = [nutcracker, "-c", str(config), "-s", str(stats_port), "-a", LOOPBACK, "-o", ""]
    nutcracker_argv += ["-p", str(tmp / "nutcracker.pid")]
    contenders = [Contender(DIRECT, shard_ports["s1"], shards["s1"])]
    for name, port, argv in (
        (NUTCRACKER, nutcracker_port, nutcracker_argv),
        (DISTPAT, distpat_port, distpat),
    ):
        contenders.append(Contender(name, port))
        try:
            service = start_process(name, argv, port=port, log_dir=tmp, timeout=15)
        except ServiceError as e:
            contenders[-1].fail(str(e))
            continue
        stack.callback(service.stop)
        contenders[-1].service = service
    return contenders, shard_ports, yaml


# --- placement: the same shard for every key through both proxies ---------------------------------------


def placement_keys(n: int) -> list[str]:
    """``n`` keys, of two shapes by turns: ``distpat-bench:`` and 8 scattered hex digits, and
    redis-benchmark's own ``key:`` and 12 digits.

    twemproxy's fnv1a_64 is a 32-bit FNV-1a, so keys that differ only in their last characters hash
    close together and land on the same shard: 20 names ``distpat-bench:0`` to ``:19`` would miss one
    of the three shards. Scattered names reach all three.
    """
    return [
        f"distpat-bench:{i * 2654435761 % 2**32:08x}" if i % 2 == 0 else f"key:{i * 7919 % 100_000:012d}"
        for i in range(n)
    ]


def locate(c: Contender, shard_ports: Mapping[str, int], keys: Sequence[str], tag: str) -> dict[str, str]:
    """SET each key to a value of its own through ``c`` and GET it back; then the shard that holds it.

    RedisError or OSError from the proxy; ValueError if it answers wrongly or a key is on no shard.
    """
    values = {key: f"{c.name}:{tag}:{key}".encode() for key in keys}
    replies = redis_call(
        c.port, [("SET", k, v.decode()) for k, v in values.items()] + [("GET", k) for k in keys]
    )
    for key, stored, read in zip(keys, replies, replies[len(keys) :], strict=False):
        if stored != b"OK" or read != values[key]:
            raise ValueError(f"SET {key} answered {stored!r}, then GET answered {read!r}")
    try:
        on_shard = {name: redis_call(port, [("GET", k) for k in keys]) for name, port in shard_ports.items()}
    except (RedisError, OSError) as e:
        raise SystemExit(f"a shard does not answer GET: {type(e).__name__}: {e}") from None
    found: dict[str, str] = {}
    for i, key in enumerate(keys):
        holders = [name for name, got in on_shard.items() if got[i] == values[key]]
        if len(holders) != 1:
            raise ValueError(f"{key} was SET through it but found on {len(holders)} shards")
        found[key] = holders[0]
    return found


def placement(
    contenders: Sequence[Contender], shard_ports: Mapping[str, int], keys: Sequence[str], tag: str
) -> int | None:
    """Print where each proxy put ``keys``; the keys on the same shard through both (None: not compared)."""
    where: dict[str, dict[str, str]] = {}
    for c in contenders:
        if c.name == DIRECT:
            continue
        if not c.available:
            print(f"{c.name:12s} {unavailable_line(c)}")
            continue
        try:
            where[c.name] = locate(c, shard_ports, keys, tag)
        except (RedisError, OSError, ValueError) as e:
            c.fail(f"placement check ({tag}) failed: {type(e).__name__}: {e}")
            print(f"{c.name:12s} {unavailable_line(c)}")
            if c.service is not None:
                c.service.stop()
            continue
        spread = Counter(where[c.name].values())
        shown = ", ".join(f"{name} {spread[name]}" for name in shard_ports)
        print(f"{c.name:12s} {len(keys)} of {len(keys)} keys read back, each found on one shard: {shown}")
    if len(where) < 2:
        missing = why_missing(contenders, NUTCRACKER, DISTPAT)
        print(f"same shard through nutcracker and distpat: not compared ({missing})")
        return None
    same = [k for k in keys if where[NUTCRACKER][k] == where[DISTPAT][k]]
    print(f"same shard through nutcracker and distpat: {len(same)} of {len(keys)} keys")
    for key in [k for k in keys if k not in same][:5]:
        print(f"  {key}: nutcracker put it on {where[NUTCRACKER][key]}, distpat on {where[DISTPAT][key]}")
    return len(same)


# --- throughput ---------------------------------------------------------------------------------------

Run = Measured[RedisBenchmarkResult]


def ops(test: str) -> Callable[[Run], float]:
    def key(m: Run) -> float:
        return m.result.ops_per_sec[test]

    return key


def cpu_per_op(m: Run) -> float:
    """Microseconds of the contender's CPU per SET or GET redis-benchmark completed."""
    done = m.result.requests * len(TESTS)
    return m.server_cpu / done * 1e6 if done else 0.0


def p99_ms(rounds: Sequence[Run | None], test: str) -> str:
    values = [m.result.p99[test] for m in rounds if m is not None and test in m.result.p99]
    return f"{statistics.median(values) * 1e3:.2f}" if values else "?"


def benchmark_runner(
    depth: int, requests: int, redis_benchmark: str, args: argparse.Namespace
) -> Callable[[Contender], RedisBenchmarkResult]:
    def run(c: Contender) -> RedisBenchmarkResult:
        return run_redis_benchmark(
            c.port,
            redis_benchmark=redis_benchmark,
            tests=[t.lower() for t in TESTS],
            requests=requests,
            clients=args.clients,
            keyspace=args.keyspace,
            pipeline=depth,
            timeout=30 + requests * len(TESTS) / SLOWEST,
        )

    return run


def goal_met(contenders: Sequence[Contender], results: Rounds[RedisBenchmarkResult], depth: int) -> bool:
    """Print distpat / nutcracker for SET and GET against the goal of ``depth``; True if both meet it."""
    goal = GOALS[depth]
    distpat = next(c for c in contenders if c.name == DISTPAT)
    met = []
    for test in TESTS:
        label = f"distpat / nutcracker {test} ops/s:"
        value = ratio(results, DISTPAT, NUTCRACKER, ops(test))
        if value is not None and distpat.error:
            # A contender that failed (an error reply, a closed connection, a wrong answer) is not fast.
            print(f"{label} {value:6.2f}x (goal >= {goal:g}x: NOT MET: distpat failed, see above)")
            met.append(False)
            continue
        print(goal_line(label, value, goal, why_missing(contenders, DISTPAT, NUTCRACKER)))
        met.append(value is not None and value >= goal)
    print(f"pipeline {depth} goal, distpat >= {goal:g}x nutcracker for SET and GET: {verdict(all(met))}")
    return all(met)


def pipeline(
    contenders: Sequence[Contender], depth: int, requests: int, redis_benchmark: str, args: argparse.Namespace
) -> bool:
    """Measure and print one pipeline depth; True if distpat met the goal."""
    print(
        f"\n## Pipeline {depth}: redis-benchmark -t set,get -n {requests:,} -c {args.clients} "
        f"-r {args.keyspace} -P {depth} -q --csv, median of {args.rounds} alternating rounds"
    )
    run = benchmark_runner(depth, requests, redis_benchmark, args)
    results = alternate(contenders, "redis-benchmark", run, args)
    print(
        f"{'contender':18s} {'SET ops/s':>10s} {'GET ops/s':>10s} {'SET p99 ms':>10s} {'GET p99 ms':>10s} "
        f"{'CPU µs/op':>9s}   SET/GET ops/s by round"
    )
    for c in contenders:
        rounds = results[c.name]
        rates = [median_of(rounds, ops(test)) for test in TESTS]
        if rates[0] is None or rates[1] is None:
            print(f"{c.name:18s} {unavailable_line(c)}")
            continue
        cpu = median_of(rounds, cpu_per_op) or 0.0
        by_round = " ".join(
            "/".join(f"{m.result.ops_per_sec[t]:,.0f}" for t in TESTS) if m else "-" for m in rounds
        )
        print(
            f"{c.name:18s} {rates[0]:10,.0f} {rates[1]:10,.0f} {p99_ms(rounds, 'SET'):>10s} "
            f"{p99_ms(rounds, 'GET'):>10s} {cpu:9.2f}   {by_round}"
        )
        if c.error:
            print(f"{'':18s} then {unavailable_line(c)}")
    print(
        "(p99: medians over rounds of redis-benchmark's; CPU µs/op: user + system CPU of the contender's\n"
        " own processes during the run, from /proc, divided by the SETs and GETs done; for redis direct,\n"
        " that server's; the shards behind a proxy are not counted)"
    )
    met = goal_met(contenders, results, depth)
    print(
        ratio_line(
            "distpat / nutcracker CPU per op:",
            ratio(results, DISTPAT, NUTCRACKER, cpu_per_op),
            why_missing(contenders, DISTPAT, NUTCRACKER),
            " (lower is better)",
        )
    )
    refs = [ratio(results, NUTCRACKER, DIRECT, ops(test)) for test in TESTS]
    if refs[0] is not None and refs[1] is not None:
        anchors = " / ".join(ANCHORS[depth])
        print(
            f"reference: nutcracker / redis direct ops/s: SET {refs[0]:.2f}x, GET {refs[1]:.2f}x "
            f"(anchors: {anchors})"
        )
    return met


# --- main ---------------------------------------------------------------------------------------------


def versions(redis_server: str, redis_benchmark: str, nutcracker: str) -> str:
    """'redis-server 7.0.15; redis-benchmark 7.0.15; nutcracker 0.5.0'."""
    server = re.search(r"v=(\S+)", tool_version([redis_server, "--version"]))
    lines = tool_output([nutcracker, "-V"]).strip().splitlines()
    twemproxy = lines[0].removeprefix("This is ").replace("-", " ", 1) if lines else "nutcracker unknown"
    return (
        f"redis-server {server.group(1) if server else 'unknown'}; "
        f"{tool_version([redis_benchmark, '--version'])}; {twemproxy}"
    )


def report(
    contenders: Sequence[Contender],
    shard_ports: Mapping[str, int],
    yaml: str,
    redis_benchmark: str,
    args: argparse.Namespace,
    workdir: Path,
) -> None:
    """The placement check, both pipeline depths, the placement check again, and the goals."""
    print("\nconfig: one file for both proxies (distpat listens on its own --listen port):")
    print("".join(f"    {line}\n" for line in yaml.splitlines()), end="")
    for c in contenders:
        if c.service is not None:
            print(f"{c.name}: {shown_command(c.service.argv, workdir)}")
    keys = placement_keys(args.keys)
    print(f"\n## Placement: {args.keys} keys SET and read back through each proxy, then found on a shard")
    before = placement(contenders, shard_ports, keys, "before")
    met = {
        depth: pipeline(contenders, depth, args.requests[depth], redis_benchmark, args) for depth in DEPTHS
    }
    print("\n## Placement after the runs: the same keys SET again, with new values")
    after = placement(contenders, shard_ports, keys, "after")
    print("\n## Goals")
    for depth, ok in met.items():
        print(f"pipeline {depth}: distpat >= {GOALS[depth]:g}x nutcracker ops/s, SET and GET: {verdict(ok)}")
    same = "not compared" if before is None or after is None else f"{before} and {after} of {args.keys}"
    print(f"placement: keys on the same shard as through nutcracker, before and after the runs: {same}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10x fewer requests and 2 rounds, for a smoke run")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds, at least 2 (default 3)")
    p.add_argument(
        "--requests-p1", type=int, default=None, help="-n at pipeline 1 (default 200000; --quick 20000)"
    )
    p.add_argument(
        "--requests-p16", type=int, default=None, help="-n at pipeline 16 (default 1000000; --quick 100000)"
    )
    p.add_argument("--clients", type=int, default=50, help="redis-benchmark -c (default 50)")
    p.add_argument("--keyspace", type=int, default=100_000, help="redis-benchmark -r (default 100000)")
    p.add_argument("--keys", type=int, default=20, help="keys in the placement check (default 20)")
    p.add_argument("--distpat", default=None, help="command that runs distpat (default: .venv/bin/distpat)")
    args = p.parse_args()
    args.rounds = max(2, args.rounds or (2 if args.quick else 3))
    sizes = QUICK_REQUESTS if args.quick else REQUESTS
    args.requests = {1: args.requests_p1 or sizes[1], 16: args.requests_p16 or sizes[16]}
    if min(*args.requests.values(), args.clients, args.keyspace, args.keys) < 1 or args.keys > 10_000:
        p.error(
            "--requests-p1, --requests-p16, --clients, --keyspace and --keys must be at least 1, "
            "--keys at most 10000"
        )

    redis_server = require_tool("redis-server", "redis-server")
    redis_benchmark = require_tool("redis-benchmark", "redis-tools")
    nutcracker = require_tool("nutcracker", "nutcracker")

    print("# distpat benchmark: Redis sharding proxy")
    print(describe("distpat", "uvloop", "PyYAML"))
    print(
        f"tools: {versions(redis_server, redis_benchmark, nutcracker)}; shards, proxies and redis-benchmark "
        "share the same cores"
    )
    with (
        interruptible(),
        tempfile.TemporaryDirectory(prefix="distpat-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        contenders, shard_ports, yaml = start_all(stack, Path(tmp), redis_server, nutcracker, args)
        report(contenders, shard_ports, yaml, redis_benchmark, args, Path(tmp))


if __name__ == "__main__":
    main()
