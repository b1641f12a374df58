"""``distpat scatter``: the scatter/gather root of a sharded search (the book's chapter 7) as a process."""

from __future__ import annotations

import argparse

from distpat.cli.flags import add_options, add_test_flag, apply_logging, configuration_ok, flag_values
from distpat.cli.proxy import add_config_flag, loop_factory, serve
from distpat.config.scatter import ALL_OPTIONS, build_scatter_config

__all__ = ["register"]

_FLAGS = ALL_OPTIONS


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "scatter",
        help="scatter/gather root: a query sent to every shard's leaf, hedged, merged, partial answers said",
        description=(
            "Send each GET /search?q=WORDS&k=K to one replica of every shard (--leaf, once per shard, "
            "its replicas comma-separated) at once; after --hedge-after (ms, or pNN of the shards' "
            "latencies) a request still out goes to the shard's next replica, the first answer wins, "
            "hedges stay under --hedge-max-percent of requests. At --deadline the root answers with "
            "the merged top K of what came, saying which shards failed or were late; --need all makes "
            "a partial answer a 502/504. Takes the flags of `distpat proxy` but --upstream."
        ),
    )
    add_config_flag(p, "scatter")
    add_test_flag(p)
    add_options(p, _FLAGS)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    flags = flag_values(args, _FLAGS)
    config, values = build_scatter_config(flags, config_file=args.config)
    if args.test_config:
        loop_factory(values["loop"])
        return configuration_ok()
    apply_logging(values)
    return serve(config, values, lambda: build_scatter_config(flags, config_file=args.config))
