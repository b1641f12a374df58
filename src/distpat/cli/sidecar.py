"""``distpat sidecar``: TLS termination in front of an HTTP (or TCP) service, as a standalone process."""

from __future__ import annotations

import argparse

from distpat.cli.flags import add_options, add_test_flag, apply_logging, configuration_ok, flag_values
from distpat.cli.proxy import add_config_flag, loop_factory, serve
from distpat.config.sidecar import SIDECAR_OPTIONS, build_sidecar_config
from distpat.net.pem import check_tls_files
from distpat.net.tls import CertificateStore

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
    add_config_flag(p, "sidecar")
    add_test_flag(p)
    add_options(p, SIDECAR_OPTIONS)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    flags = flag_values(args, SIDECAR_OPTIONS)
    config, values = build_sidecar_config(flags, config_file=args.config)
    assert config.tls is not None  # the sidecar always terminates TLS
    check_tls_files(config.tls)  # what each file holds, before OpenSSL says "PEM lib"
    if args.test_config:
        CertificateStore(config.tls)  # the pairs loaded as the server loads them
        loop_factory(values["loop"])
        return configuration_ok()
    apply_logging(values)
    return serve(config, values, lambda: build_sidecar_config(flags, config_file=args.config))
