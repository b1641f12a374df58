"""``distpat sidecar``: TLS termination in front of an HTTP (or TCP) service, as a standalone process."""

from __future__ import annotations

import argparse

from distpat.cli.proxy import add_options, serve, setup_logging
from distpat.config.sidecar import SIDECAR_OPTIONS, build_sidecar_config
from distpat.net.proxy import ProxyConfig

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sidecar",
        help="TLS-terminating sidecar: HTTPS in front of an HTTP-only (or plain TCP) service",
        description=(
            "Terminate TLS and forward plain HTTP (or, with --mode tcp, plain TCP) to a local service, "
            "as the sidecar of Designing Distributed Systems' chapter 2. Takes every flag of "
            "`distpat proxy` too. Certificates are reloaded when their files change (checked every "
            "second) and on SIGHUP. Every flag can also be a DISTPAT_<FLAG> variable or a key of the "
            "TOML file named by --config."
        ),
    )
    add_options(p, SIDECAR_OPTIONS)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    flags = {option.name: getattr(args, option.name) for option in SIDECAR_OPTIONS}
    config, values = build_sidecar_config(flags, config_file=args.config)
    setup_logging(config.access_log if isinstance(config, ProxyConfig) else None)
    return serve(config, values, lambda: build_sidecar_config(flags, config_file=args.config))
