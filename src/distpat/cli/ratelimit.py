"""``distpat ratelimit``: the rate limiter (the book's chapter 5, denial-of-service defense) as a process."""

from __future__ import annotations

import argparse

from distpat.cli.flags import add_options, add_test_flag, apply_logging, configuration_ok, flag_values
from distpat.cli.proxy import add_config_flag, loop_factory, serve
from distpat.config.ratelimit import RATELIMIT_OPTIONS, build_ratelimit_config

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ratelimit",
        help="rate limiter: requests per key limited as nginx's limit_req, answered 429 past the burst",
        description=(
            "Forward HTTP requests to the upstreams, each key (the client's address by default) "
            "limited to --rate as nginx's limit_req limits it: --burst N more pass, held so the rate "
            "holds (--delay N pass at once, --nodelay all of them), the rest are refused with "
            "--status (429), Retry-After and the RateLimit-Policy / RateLimit fields. "
            "--trusted-proxy CIDR reads the client's address from X-Forwarded-For sent by those "
            "proxies only; --dry-run refuses nothing. Takes every flag of `distpat proxy` too; every "
            "flag can also be a DISTPAT_<FLAG> variable or a key of the TOML file named by --config "
            "(top level or a [ratelimit] table)."
        ),
    )
    add_config_flag(p, "ratelimit")
    add_test_flag(p)
    add_options(p, RATELIMIT_OPTIONS)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    flags = flag_values(args, RATELIMIT_OPTIONS)
    config, values = build_ratelimit_config(flags, config_file=args.config)
    if args.test_config:
        loop_factory(values["loop"])
        return configuration_ok()
    apply_logging(values)
    return serve(config, values, lambda: build_ratelimit_config(flags, config_file=args.config))
