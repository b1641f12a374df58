"""``distpat redis-shard``: a Redis sharding ambassador that reads twemproxy's configuration."""

from __future__ import annotations

import argparse

from distpat.cli.proxy import run_server, setup_logging
from distpat.config.proxy import parse_hostport, whole_number
from distpat.config.twemproxy import TwemproxyListen, TwemproxyPool, TwemproxyServer, load_twemproxy
from distpat.errors import ConfigError
from distpat.net.redis_shard import ShardService, ShardSettings

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "redis-shard",
        help="Redis sharding ambassador: a drop-in for twemproxy (nutcracker), with RESP3 clients",
        description=(
            "Shard Redis commands over servers by key, placing every key exactly where nutcracker "
            "would (same YAML file, same hash, same distribution). Every pool of the file is served "
            "in one process; SIGHUP re-reads the server lists without dropping clients."
        ),
    )
    p.add_argument("--config", "-c", metavar="FILE", help="nutcracker YAML configuration")
    p.add_argument("--pool", metavar="NAME", help="serve only this pool of the file")
    p.add_argument("--listen", metavar="HOST:PORT", help="listen here instead of the pool's listen:")
    p.add_argument(
        "--server",
        action="append",
        metavar="HOST:PORT[:WEIGHT][:NAME]",
        help="without --config: a server of a ketama pool (fnv1a_64), repeatable",
    )
    p.add_argument("--hash-tag", metavar="TAG", help="with --server: a two-character hash tag such as {}")
    p.add_argument("--timeout", metavar="MS", help="with --server: per-request timeout in milliseconds")
    p.add_argument("--stats-port", "-s", metavar="PORT", help="twemproxy-compatible stats JSON on this port")
    p.add_argument("--stats-addr", "-a", metavar="HOST", default="127.0.0.1", help="stats address")
    p.add_argument(
        "--admin", metavar="HOST:PORT", help="admin listener: /healthz, /readyz, Prometheus /metrics"
    )
    p.add_argument(
        "--keep-ring",
        action="store_true",
        help="never move an ejected server's keys to other servers: answer errors for them instead",
    )
    p.add_argument(
        "--max-request-bytes",
        metavar="BYTES",
        default=str(64 * 1024 * 1024),
        help="largest command (and what a client may buffer); over it: a protocol error (default 64 MiB)",
    )
    p.add_argument(
        "--key-cache",
        metavar="N",
        default="262144",
        help="remember the server of up to N distinct keys (0: hash every key; default 262144)",
    )
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto", help="event loop")
    p.set_defaults(run=_run)


def _quick_pool(args: argparse.Namespace) -> TwemproxyPool:
    servers = []
    for entry in args.server:
        parts = entry.split(":")
        if len(parts) < 2:
            raise ConfigError(f"--server {entry!r}: give HOST:PORT[:WEIGHT][:NAME]")
        host, port = parts[0], parts[1]
        weight = parts[2] if len(parts) > 2 and parts[2] else "1"
        name = ":".join(parts[3:])
        servers.append(TwemproxyServer.parse(f"{host}:{port}:{weight}" + (f" {name}" if name else "")))
    listen = args.listen or "127.0.0.1:22121"
    host, port = parse_hostport(listen, "--listen")
    tag = (args.hash_tag or "").encode()
    if tag and len(tag) != 2:
        raise ConfigError("--hash-tag must be two characters, such as {}")
    return TwemproxyPool(
        name="default",
        listen=TwemproxyListen(address=listen, host=host, port=port),
        servers=tuple(servers),
        redis=True,
        hash_tag=tag,
        timeout=whole_number(args.timeout, "--timeout") if args.timeout else None,
    )


def _run(args: argparse.Namespace) -> int:
    if args.config and args.server:
        raise ConfigError("give --config FILE or --server entries, not both")
    if not args.config and not args.server:
        raise ConfigError("no servers: give --config nutcracker.yml or --server HOST:PORT at least once")

    def load() -> list[TwemproxyPool]:
        if not args.config:
            return [_quick_pool(args)]
        pools = load_twemproxy(args.config)
        if args.pool is not None:
            if args.pool not in pools:
                raise ConfigError(f"{args.config}: no pool {args.pool!r}; pools: {', '.join(pools)}")
            pools = {args.pool: pools[args.pool]}
        for pool in pools.values():
            if not pool.redis:
                raise ConfigError(f"{args.config}: pool {pool.name!r} is memcached (redis: false)")
        return list(pools.values())

    listen = parse_hostport(args.listen, "--listen") if args.listen and args.config else None
    stats = (args.stats_addr, whole_number(args.stats_port, "--stats-port", 0)) if args.stats_port else None
    settings = ShardSettings(
        max_request_bytes=whole_number(args.max_request_bytes, "--max-request-bytes"),
        keep_ring=args.keep_ring,
        key_cache=whole_number(args.key_cache, "--key-cache", 0),
    )
    try:
        admin = parse_hostport(args.admin, "--admin") if args.admin else None
        service = ShardService(load, settings=settings, listen=listen, stats=stats, admin=admin)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    setup_logging(None)
    run_server(service.serve_until_signalled(), args.loop)
    return 0
