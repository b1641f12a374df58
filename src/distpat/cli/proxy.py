"""``distpat proxy``: the HTTP/1.1 reverse proxy as a standalone process."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from distpat.cli.flags import add_options, add_test_flag, apply_logging, configuration_ok, flag_values
from distpat.config.proxy import OPTIONS, build_config
from distpat.errors import ConfigError
from distpat.net.proxy import ProxyConfig, ProxyServer, Reloaded
from distpat.net.tcp import TcpProxyConfig, TcpProxyServer
from distpat.net.tls import CertificateStore
from distpat.net.workers import run_workers, watch_parent
from distpat.net.workerstats import serve_worker_stats

__all__ = ["add_config_flag", "loop_factory", "register", "run_server", "serve"]

log = logging.getLogger("distpat.proxy")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "proxy",
        help="HTTP/1.1 reverse proxy: keep-alive pools, streaming, limits, health, metrics",
        description=(
            "Forward HTTP/1.1 requests to upstream servers. Every flag can also be given as a "
            "DISTPAT_<FLAG> environment variable or as a key of the TOML file named by --config "
            "(flags win over the environment, which wins over the file). Sizes take k, m, g "
            "(64k); times take ms, s, m, h (500ms, 10s); a bare number is bytes or seconds."
        ),
    )
    add_config_flag(p, "proxy")
    add_test_flag(p)
    add_options(p, OPTIONS)
    p.set_defaults(run=_run)


def add_config_flag(p: argparse.ArgumentParser, table: str) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"a TOML file of options: keys as the flags, with _, at the top level or in a [{table}] "
        "table; env DISTPAT_CONFIG",
    )


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop factory for ``--loop``: uvloop when asked for (or available, for auto)."""
    if name in ("uvloop", "auto"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise ConfigError("--loop uvloop: uvloop is not installed") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


AnyConfig = ProxyConfig | TcpProxyConfig


Reread = Callable[[], tuple[AnyConfig, dict[str, Any]]]
"""Builds the configuration again from the same flags, environment and file (for SIGHUP)."""


def _serve(
    config: AnyConfig, loop_name: str, stats_path: str | None = None, reread: Reread | None = None
) -> None:
    """Serve ``config`` until signalled; a worker also answers its parent on ``stats_path``."""
    server: ProxyServer | TcpProxyServer
    if isinstance(config, TcpProxyConfig):
        server = TcpProxyServer(config)  # SIGHUP reloads its certificates only
    else:
        worker = stats_path is not None
        server = ProxyServer(
            config, config_source=None if reread is None else lambda: _reloaded(reread, worker=worker)
        )

    async def main() -> None:
        watch_parent(asyncio.get_running_loop())  # a worker: not to outlive its parent
        stats = await serve_worker_stats(stats_path, server) if stats_path is not None else None
        try:
            await server.serve_until_signalled()
        finally:
            if stats is not None:
                stats.close()

    run_server(main(), loop_name)


def run_server(main: Coroutine[Any, Any, None], loop_name: str) -> None:
    """Run a server's main coroutine on the chosen loop; a listener that cannot bind is a one-line error."""
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        try:
            runner.run(main)
        except OSError as exc:
            raise ConfigError(f"cannot listen: {exc.strerror or exc}") from None


def _reloaded(reread: Reread, *, worker: bool) -> Reloaded:
    """The configuration read again on SIGHUP, and the logging it names to apply once the server has
    taken it (a refused reload changes nothing); ConfigError when it is not one this server can take."""
    config, values = reread()
    if not isinstance(config, ProxyConfig):
        raise ConfigError("--mode changed: a restart is needed to apply that")
    if worker:  # the parent serves the admin listener (distpat.net.workers)
        config = replace(config, admin=None)
    return config, lambda: apply_logging(values)  # the log level and format, as the file now says


def serve(config: AnyConfig, values: dict[str, Any], reread: Reread | None = None) -> int:
    """Run the server in this process, or in ``--workers`` forked ones.

    ``reread`` builds the configuration again (same flags, environment and file): SIGHUP applies
    what it returns, in every worker (see ProxyServer.reload).
    """
    if config.tls is not None:
        CertificateStore(config.tls)  # a bad certificate or key stops here, before any fork
    workers: int = values["workers"]
    loop_name = values["loop"]
    if workers == 1:
        _serve(config, loop_name, reread=reread)
        return 0
    return run_workers(
        config, workers, lambda child, stats_path: _serve(child, loop_name, stats_path, reread)
    )


def _run(args: argparse.Namespace) -> int:
    flags = flag_values(args, OPTIONS)
    config, values = build_config(flags, config_file=args.config)
    if args.test_config:
        loop_factory(values["loop"])  # --loop uvloop without uvloop installed
        return configuration_ok()
    apply_logging(values)
    return serve(config, values, lambda: build_config(flags, config_file=args.config))
