"""``distpat redis-shard``: a Redis sharding ambassador that reads twemproxy's configuration.

It takes nutcracker's command-line habits too (``-c FILE -s PORT -a ADDR -v N
-o FILE -p FILE -t``), so a unit file written for nutcracker needs only the
binary changed; ``-d`` is refused (run it under a supervisor).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from distpat import __version__
from distpat.cli.flags import add_options, add_test_flag, configuration_ok, flag_values
from distpat.cli.logs import configure_logging
from distpat.cli.proxy import loop_factory, run_server
from distpat.config.redis_shard import SHARD_OPTIONS, ShardOptions, build_shard_options
from distpat.errors import ConfigError
from distpat.net.redis_shard import ShardService

__all__ = ["register"]

log = logging.getLogger("distpat.redis")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "redis-shard",
        help="Redis sharding ambassador: a drop-in for twemproxy (nutcracker), with RESP3 clients",
        description=(
            "Shard Redis commands over servers by key, placing every key exactly where nutcracker "
            "would (same YAML file, same hash, same distribution). Every pool of the file is served "
            "in one process; SIGHUP re-reads the server lists without dropping clients. Every flag "
            "can also be a DISTPAT_<FLAG> variable or a key of the TOML file named by --options; "
            "nutcracker's flags -c -s -a -v -o -p -t work as in nutcracker."
        ),
    )
    p.add_argument(
        "--options",
        metavar="FILE",
        help="a TOML file of these options (keys as the flags, with _), at the top level or in a "
        "[redis_shard] table; env DISTPAT_OPTIONS",
    )
    add_test_flag(p, "--test-conf")
    p.add_argument(
        "-d",
        "--daemonize",
        action="store_true",
        help="refused: distpat stays in the foreground; run it under a supervisor (systemd, a container)",
    )
    p.add_argument("-V", action="version", version=f"distpat {__version__}", help="show the version and exit")
    add_options(p, SHARD_OPTIONS)
    p.set_defaults(run=_run)


@contextlib.contextmanager
def _pid_file(path: str | None) -> Iterator[None]:
    """Write the process id to ``path`` (as nutcracker's ``-p``) and remove it at exit if it is still ours."""
    if path is None:
        yield
        return
    mine = f"{os.getpid()}\n"
    try:
        Path(path).write_text(mine)
    except OSError as exc:
        raise ConfigError(f"--pid-file {path}: cannot write: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if Path(path).read_text() == mine:
                os.unlink(path)


def _service(options: ShardOptions) -> ShardService:
    try:
        return ShardService(
            options.load,
            settings=options.settings,
            listen=options.listen,
            stats=options.stats,
            admin=options.admin,
        )
    except ValueError as exc:  # ConfigError is one; ShardService's own are ValueErrors
        raise ConfigError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    if args.daemonize:
        raise ConfigError(
            "-d: distpat redis-shard does not daemonize; run it in the foreground under a supervisor"
        )
    options = build_shard_options(flag_values(args, SHARD_OPTIONS), options_file=args.options)
    service = _service(options)  # reads and checks the YAML file, builds every ring; binds nothing
    if args.test_config:
        loop_factory(options.loop)
        return configuration_ok()
    configure_logging(options.log_level, options.log_format, output=options.output)
    for flag in options.no_effect:
        log.info("%s is accepted for nutcracker's command lines and has no effect in distpat", flag)
    with _pid_file(options.pid_file):
        run_server(service.serve_until_signalled(), options.loop)
    return 0
