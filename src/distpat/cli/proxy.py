"""``distpat proxy``: the HTTP/1.1 reverse proxy as a standalone process."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from distpat.cli.flags import add_options, add_test_flag, apply_logging, configuration_ok, flag_values
from distpat.config.proxy import OPTIONS, build_config
from distpat.errors import ConfigError
from distpat.net.proxy import ProxyConfig, ProxyServer
from distpat.net.tcp import TcpProxyConfig, TcpProxyServer
from distpat.net.tls import CertificateStore
from distpat.net.workers import run_workers

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


def _serve(config: AnyConfig, loop_name: str) -> None:
    server = TcpProxyServer(config) if isinstance(config, TcpProxyConfig) else ProxyServer(config)
    run_server(server.serve_until_signalled(), loop_name)


def run_server(main: Coroutine[Any, Any, None], loop_name: str) -> None:
    """Run a server's main coroutine on the chosen loop; a listener that cannot bind is a one-line error."""
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        try:
            runner.run(main)
        except OSError as exc:
            raise ConfigError(f"cannot listen: {exc.strerror or exc}") from None


def serve(config: AnyConfig, values: dict[str, Any]) -> int:
    """Run the server in this process, or in ``--workers`` forked ones."""
    if config.tls is not None:
        CertificateStore(config.tls)  # a bad certificate or key stops here, before any fork
    workers: int = values["workers"]
    if workers == 1:
        _serve(config, values["loop"])
        return 0
    return run_workers(config, workers, lambda child: _serve(child, values["loop"]))


def _run(args: argparse.Namespace) -> int:
    config, values = build_config(flag_values(args, OPTIONS), config_file=args.config)
    if args.test_config:
        loop_factory(values["loop"])  # --loop uvloop without uvloop installed
        return configuration_ok()
    apply_logging(values)
    return serve(config, values)
