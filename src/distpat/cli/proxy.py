"""``distpat proxy``: the HTTP/1.1 reverse proxy as a standalone process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any

from distpat.config.proxy import OPTIONS, Option, build_config, env_name
from distpat.errors import ConfigError
from distpat.net.proxy import ProxyConfig, ProxyServer
from distpat.net.tcp import TcpProxyConfig, TcpProxyServer
from distpat.net.tls import CertificateStore
from distpat.net.workers import run_workers
from distpat.net.workerstats import serve_worker_stats

__all__ = ["add_options", "loop_factory", "register", "run_server", "serve", "setup_logging"]

log = logging.getLogger("distpat.proxy")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "proxy",
        help="HTTP/1.1 reverse proxy: keep-alive pools, streaming, limits, health, metrics",
        description=(
            "Forward HTTP/1.1 requests to upstream servers. Every flag can also be given as a "
            "DISTPAT_<FLAG> environment variable or as a key of the TOML file named by --config "
            "(flags win over the environment, which wins over the file)."
        ),
    )
    add_options(p, OPTIONS)
    p.set_defaults(run=_run)


def add_options(p: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """``--config`` and one flag per option, each naming its environment variable."""
    p.add_argument("--config", metavar="FILE", help="a TOML file of options (keys as the flags, with _)")
    for option in options:
        flag = "--" + option.name.replace("_", "-")
        default_text = "" if option.default in (None, ()) else f" (default {option.default})"
        help_text = f"{option.help}{default_text}; env {env_name(option)}"
        if option.repeat:
            p.add_argument(flag, action="append", metavar=option.metavar, help=help_text, dest=option.name)
        else:
            p.add_argument(flag, metavar=option.metavar, help=help_text, dest=option.name)


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


def _reloaded(reread: Reread, *, worker: bool) -> ProxyConfig:
    """The configuration read again on SIGHUP; ConfigError when it is not one this server can take."""
    config, values = reread()
    if not isinstance(config, ProxyConfig):
        raise ConfigError("--mode changed: a restart is needed to apply that")
    if worker:  # the parent serves the admin listener (distpat.net.workers)
        config = replace(config, admin=None)
    level = values.get("log_level")
    if isinstance(level, str):
        logging.getLogger("distpat").setLevel(level.upper())
    return config


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
    flags = {option.name: getattr(args, option.name) for option in OPTIONS}
    config, values = build_config(flags, config_file=args.config)
    setup_logging(config.access_log)
    return serve(config, values, lambda: build_config(flags, config_file=args.config))


def setup_logging(access_log: str | None) -> None:
    """Log lines on stderr; the access log, when on, as bare lines."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    access = logging.getLogger("distpat.access")
    if access_log is not None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.propagate = False
