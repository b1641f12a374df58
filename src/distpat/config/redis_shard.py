"""`distpat redis-shard` settings: its own flags, ``DISTPAT_*`` variables and a TOML file.

The pools come from nutcracker's YAML (``-c FILE``, read by
:mod:`distpat.config.twemproxy`) or from ``--server`` entries; everything
else is one table of options (:data:`SHARD_OPTIONS`), read like the proxy's:
flag, then variable, then the TOML file named by ``--options`` (its top
level or a ``[redis_shard]`` table), then the default. nutcracker's short
flags are kept (``-c``, ``-s``, ``-a``, ``-v``, ``-o``, ``-p``, ``-i``,
``-m``), so a unit file written for nutcracker needs only the binary changed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from distpat.config.options import LOG_OPTIONS, LOOP_OPTION, Kind, Option, hostport, resolve_options
from distpat.config.twemproxy import TwemproxyListen, TwemproxyPool, TwemproxyServer, load_twemproxy
from distpat.core.redis_tx import MAX_TRANSACTION_BYTES
from distpat.errors import ConfigError
from distpat.net.redis_shard import ShardSettings

__all__ = [
    "NUTCRACKER_STATS_PORT",
    "SHARD_OPTIONS",
    "ShardOptions",
    "build_shard_options",
    "nutcracker_level",
]

NUTCRACKER_STATS_PORT = 22222
"""nutcracker's default stats port, distpat's too; 0 turns the stats listener off."""


def nutcracker_level(verbosity: int) -> str:
    """nutcracker's ``-v`` (0 emerg .. 3 err, 4 warn, 5 notice, 6 info, 7 debug .. 11) as a log level."""
    if verbosity <= 3:
        return "error"
    if verbosity == 4:
        return "warning"
    if verbosity <= 6:
        return "info"
    return "debug"


def _verbosity(value: int, what: str) -> int:
    if value > 11:
        raise ConfigError(f"{what} must be nutcracker's verbosity, 0 to 11, not {value}")
    return value


def _server(entry: str, what: str) -> TwemproxyServer:
    parts = entry.split(":")
    if len(parts) < 2:
        raise ConfigError(f"{what} {entry!r}: give HOST:PORT[:WEIGHT][:NAME]")
    host, port = parts[0], parts[1]
    weight = parts[2] if len(parts) > 2 and parts[2] else "1"
    name = ":".join(parts[3:])
    try:
        return TwemproxyServer.parse(f"{host}:{port}:{weight}" + (f" {name}" if name else ""))
    except ConfigError as exc:
        raise ConfigError(f"{what} {entry!r}: {exc}") from None


def _hash_tag(tag: str, what: str) -> str:
    if len(tag.encode()) != 2:
        raise ConfigError(f"{what} must be two characters, such as {{}}, not {tag!r}")
    return tag


def _stats_addr(host: str, what: str) -> str:
    if not host or any(c in host for c in " /@,"):
        raise ConfigError(f"{what} must be an address such as 127.0.0.1 or 0.0.0.0, not {host!r}")
    return host.strip("[]")


SHARD_OPTIONS: tuple[Option, ...] = (
    Option("config", Kind.TEXT, None, "nutcracker YAML configuration", "FILE", aliases=("-c", "--conf-file")),
    Option("pool", Kind.TEXT, None, "serve only this pool of the file", "NAME"),
    Option(
        "listen",
        Kind.TEXT,
        None,
        "listen here instead of the pool's listen: (:PORT: all IPv4)",
        "HOST:PORT",
        check=hostport,
    ),
    Option(
        "server",
        Kind.TEXT,
        (),
        "without --config: a server of a ketama pool (fnv1a_64), repeatable",
        "HOST:PORT[:WEIGHT][:NAME]",
        repeat=True,
        check=_server,
    ),
    Option(
        "hash_tag",
        Kind.TEXT,
        None,
        "with --server: a two-character hash tag such as {}",
        "TAG",
        check=_hash_tag,
    ),
    Option(
        "timeout", Kind.DURATION_MS, None, "with --server: per-request timeout (a bare number: ms)", "TIME"
    ),
    Option(
        "stats_port",
        Kind.COUNT,
        NUTCRACKER_STATS_PORT,
        "twemproxy-compatible stats JSON on this port (0: off)",
        "PORT",
        minimum=0,
        aliases=("-s",),
    ),
    Option(
        "stats_addr",
        Kind.TEXT,
        "127.0.0.1",
        "the stats listener's address",
        "ADDR",
        aliases=("-a",),
        check=_stats_addr,
    ),
    Option(
        "admin",
        Kind.TEXT,
        None,
        "admin listener: /healthz, /readyz, Prometheus /metrics",
        "HOST:PORT",
        check=hostport,
    ),
    Option(
        "keep_ring",
        Kind.SWITCH,
        False,
        "never move an ejected server's keys to other servers: answer errors for them instead",
    ),
    Option(
        "allow_scripts",
        Kind.SWITCH,
        False,
        "route EVAL/EVALSHA/FCALL (and _RO) by their declared keys; a script can then run any command "
        "(FLUSHALL, KEYS ...) on the server its keys route to",
    ),
    Option(
        "max_request_bytes",
        Kind.SIZE,
        64 << 20,
        "largest command (and what a client may buffer); over it: a protocol error",
        "SIZE",
    ),
    Option(
        "max_transaction_bytes",
        Kind.SIZE,
        MAX_TRANSACTION_BYTES,
        "what one client's MULTI block may hold until EXEC (each command's overhead counted); "
        "over it: the block is refused and EXEC aborts",
        "SIZE",
    ),
    Option(
        "key_cache",
        Kind.COUNT,
        262_144,
        "remember the server of up to N distinct keys (0: hash every key)",
        "N",
        minimum=0,
    ),
    Option(
        "shutdown_timeout", Kind.DURATION, 30.0, "on SIGTERM, wait this long for commands in flight", "TIME"
    ),
    LOOP_OPTION,
    *(dataclasses.replace(o, default=None) for o in LOG_OPTIONS),
    Option(
        "verbose",
        Kind.COUNT,
        None,
        "nutcracker's log verbosity 0..11, as a log level (5, 6: info; 7+: debug)",
        "N",
        minimum=0,
        aliases=("-v", "--verbosity"),
        check=_verbosity,
    ),
    Option(
        "output",
        Kind.TEXT,
        None,
        "append the log to this file (default: standard error)",
        "FILE",
        aliases=("-o",),
    ),
    Option(
        "pid_file",
        Kind.TEXT,
        None,
        "write the process id to this file, removed at exit",
        "FILE",
        aliases=("-p",),
    ),
    Option(
        "stats_interval",
        Kind.DURATION_MS,
        None,
        "accepted for nutcracker's unit files: stats are always live",
        "MS",
        aliases=("-i",),
    ),
    Option(
        "mbuf_size",
        Kind.SIZE,
        None,
        "accepted for nutcracker's unit files: distpat has no mbufs",
        "BYTES",
        aliases=("-m",),
    ),
)


@dataclass(frozen=True, slots=True)
class ShardOptions:
    """Everything `distpat redis-shard` runs with, read and checked."""

    load: Callable[[], list[TwemproxyPool]]
    """The pools to serve: reads the YAML file (again, on SIGHUP), or the --server pool."""
    listen: tuple[str, int] | None
    stats: tuple[str, int] | None
    admin: tuple[str, int] | None
    settings: ShardSettings
    loop: str
    log_level: str
    log_format: str
    output: str | None
    pid_file: str | None
    no_effect: tuple[str, ...]
    """nutcracker flags given that distpat accepts but has no use for (``-i``, ``-m``)."""


def _quick_pool(values: Mapping[str, Any]) -> TwemproxyPool:
    listen = values["listen"] or ("127.0.0.1", 22121)
    host, port = listen
    timeout = values["timeout"]
    return TwemproxyPool(
        name="default",
        listen=TwemproxyListen(address=f"{host}:{port}", host=host, port=port),
        servers=values["server"],
        redis=True,
        hash_tag=(values["hash_tag"] or "").encode(),
        timeout=None if timeout is None else max(1, round(timeout * 1000)),
    )


def _file_loader(path: str, pool: str | None) -> Callable[[], list[TwemproxyPool]]:
    def load() -> list[TwemproxyPool]:
        pools = load_twemproxy(path)
        if pool is not None:
            if pool not in pools:
                raise ConfigError(f"{path}: no pool {pool!r}; pools: {', '.join(pools)}")
            pools = {pool: pools[pool]}
        for each in pools.values():
            if not each.redis:
                raise ConfigError(
                    f"{path}: pool {each.name!r} is memcached (redis: false); distpat serves Redis"
                )
        return list(pools.values())

    return load


def _writable_place(path: str, what: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise ConfigError(f"{what} {path}: cannot write in {directory}")
    return path


def build_shard_options(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    options_file: str | None = None,
) -> ShardOptions:
    """The ambassador's settings from flags (None = not given), ``DISTPAT_*`` variables and the TOML file."""
    sources: dict[str, int] = {}
    values = resolve_options(
        SHARD_OPTIONS,
        flags,
        environ=environ,
        config_file=options_file,
        table="redis_shard",
        config_env="DISTPAT_OPTIONS",
        sources=sources,
    )
    config, servers = values["config"], values["server"]
    if config and servers:
        raise ConfigError("give --config FILE or --server entries, not both")
    if not config and not servers:
        raise ConfigError("no servers: give --config nutcracker.yml (-c) or --server HOST:PORT at least once")
    if config:
        for name in ("hash_tag", "timeout"):
            if values[name] is not None:
                raise ConfigError(
                    f"--{name.replace('_', '-')} goes with --server; with --config it is the pool's key"
                )
        load = _file_loader(config, values["pool"])
    else:
        if values["pool"] is not None:
            raise ConfigError("--pool chooses a pool of --config FILE")
        pool = _quick_pool(values)

        def load() -> list[TwemproxyPool]:
            return [pool]

    # -v and --log-level say the same thing: the one from the higher source wins (a flag over a
    # variable over the file); both from one source is a contradiction.
    level_rank, verbose_rank = sources["log_level"], sources["verbose"]
    if level_rank and level_rank == verbose_rank:
        raise ConfigError("give --log-level or -v (nutcracker's verbosity), not both")
    if verbose_rank > level_rank:
        level = nutcracker_level(values["verbose"])
    else:
        level = values["log_level"] or "info"
    stats_port = values["stats_port"]
    if stats_port > 65535:
        raise ConfigError(f"--stats-port must be a port, 0 to 65535 (0: off), not {stats_port}")
    no_effect = tuple(
        f"--{n.replace('_', '-')}" for n in ("stats_interval", "mbuf_size") if values[n] is not None
    )
    return ShardOptions(
        load=load,
        listen=values["listen"] if config else None,
        stats=None if stats_port == 0 else (values["stats_addr"], stats_port),
        admin=values["admin"],
        settings=ShardSettings(
            max_request_bytes=values["max_request_bytes"],
            max_transaction_bytes=values["max_transaction_bytes"],
            keep_ring=bool(values["keep_ring"]),
            allow_scripts=bool(values["allow_scripts"]),
            key_cache=values["key_cache"],
            shutdown_timeout=values["shutdown_timeout"],
        ),
        loop=values["loop"],
        log_level=level,
        log_format=values["log_format"] or "text",
        output=None if values["output"] is None else _writable_place(values["output"], "--output"),
        pid_file=None if values["pid_file"] is None else _writable_place(values["pid_file"], "--pid-file"),
        no_effect=no_effect,
    )
