"""``distpat scatter``: the scatter/gather root (Designing Distributed Systems, chapter 7) as a process."""

from __future__ import annotations

import argparse

from distpat.cli.flags import add_options, add_test_flag, apply_logging, configuration_ok, flag_values
from distpat.cli.proxy import add_config_flag, loop_factory, serve
from distpat.config.scatter import SCATTER_OPTIONS, build_scatter_config

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "scatter",
        help="scatter/gather root: a query to every shard's leaves, slow ones hedged, the top k merged",
        description=(
            "Answer GET /search?q=WORDS&k=K by asking one replica of every shard (--leaf URL[,URL...], "
            "once per shard) at once and merging their hits, by score then id. By --deadline the "
            "answer goes out with what came back, saying how many shards answered, failed or timed "
            "out (partial: true); --need all|any|N says how many must answer for a 200 (else 502, or "
            "504 when the missing ones only timed out). --hedge-after MS|pNN sends a slow shard's "
            "request again to its next replica, the first answer winning, under --hedge-max-percent "
            "of the requests sent. --merge concat:FIELD, topk:FIELD:KEY or sum:FIELD fans out any "
            "GET of a JSON API instead. Takes every flag of `distpat proxy` but --upstream. Every "
            "flag can also be a DISTPAT_<FLAG> variable or a key of the TOML file named by --config "
            "(top level or a [scatter] table)."
        ),
    )
    add_config_flag(p, "scatter")
    add_test_flag(p)
    add_options(p, SCATTER_OPTIONS)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    flags = flag_values(args, SCATTER_OPTIONS)
    config, values = build_scatter_config(flags, config_file=args.config)
    if args.test_config:
        loop_factory(values["loop"])
        return configuration_ok()
    apply_logging(values)
    return serve(config, values, lambda: build_scatter_config(flags, config_file=args.config))
