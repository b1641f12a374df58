"""``distpat shard``: the HTTP sharding ambassador (Designing Distributed Systems, chapter 6)."""

from __future__ import annotations

import argparse

from distpat.cli.flags import add_options, add_test_flag, apply_logging, configuration_ok, flag_values
from distpat.cli.proxy import add_config_flag, loop_factory, serve
from distpat.config.shard import SHARD_OPTIONS, build_shard_config

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "shard",
        help="HTTP sharding ambassador: each request to its key's shard (nginx's hash ... consistent)",
        description=(
            "Send each HTTP request to the shard its key belongs to: the request URI by default, "
            "placed as nginx's `hash $request_uri consistent` places it over the same servers, so a "
            "site moving from nginx keeps every key where it was. --replicas N lets a request whose "
            "shard is down go to the ring's next distinct nodes (never elsewhere); --balance-factor C "
            "bounds each upstream's requests in flight to C times the mean. --upstream is one shard "
            "(URL, or URL,weight=N), in order. Takes every flag of `distpat proxy` too; every flag "
            "can also be a DISTPAT_<FLAG> variable or a key of the TOML file named by --config "
            "(top level or a [shard] table)."
        ),
    )
    add_config_flag(p, "shard")
    add_test_flag(p)
    add_options(p, SHARD_OPTIONS)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    flags = flag_values(args, SHARD_OPTIONS)
    config, values = build_shard_config(flags, config_file=args.config)
    if args.test_config:
        loop_factory(values["loop"])  # --loop uvloop without uvloop installed
        return configuration_ok()
    apply_logging(values)
    return serve(config, values, lambda: build_shard_config(flags, config_file=args.config))
