"""``distpat split``: the experiment router (Designing Distributed Systems, chapter 3) as a process."""

from __future__ import annotations

import argparse

from distpat.cli.flags import add_options, add_test_flag, apply_logging, configuration_ok, flag_values
from distpat.cli.proxy import add_config_flag, loop_factory, serve
from distpat.config.split import SPLIT_OPTIONS, build_split_config

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "split",
        help="experiment router: each user's requests to one variant by share, as nginx's split_clients",
        description=(
            "Send each request to one variant of a service by a key (a header, a cookie, a query "
            "argument or the client address), with the shares given: --variant new:10:URL "
            "--variant old:*:URL sends 10% of the keys to new, every time, in every process and "
            "after every restart (nginx's split_clients, bit for bit). With a cookie key, a visitor "
            "without the cookie gets a new random ID. Takes every flag of `distpat proxy` but "
            "--upstream. Every flag can also be a DISTPAT_<FLAG> variable or a key of the TOML file "
            "named by --config (top level or a [split] table)."
        ),
    )
    add_config_flag(p, "split")
    add_test_flag(p)
    add_options(p, SPLIT_OPTIONS)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    flags = flag_values(args, SPLIT_OPTIONS)
    config, values = build_split_config(flags, config_file=args.config)
    if args.test_config:
        loop_factory(values["loop"])
        return configuration_ok()
    apply_logging(values)
    return serve(config, values, lambda: build_split_config(flags, config_file=args.config))
