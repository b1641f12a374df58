"""``distpat leaf``: a search leaf holding one shard of a corpus (the book's chapter 7) as a process."""

from __future__ import annotations

import argparse

from distpat.cli.flags import add_options, add_test_flag, apply_logging, configuration_ok, flag_values
from distpat.cli.proxy import add_config_flag, loop_factory, serve
from distpat.config.leaf import ALL_OPTIONS, build_leaf_config

__all__ = ["register"]

_FLAGS = ALL_OPTIONS


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "leaf",
        help="search leaf: one shard of a corpus indexed, answering GET /search?q=WORDS&k=K as JSON",
        description=(
            "Index the text documents under --corpus that belong to --shard I/N (by a stable hash of "
            "their paths) and answer GET /search?q=WORDS&k=K with the shard's best K by BM25, scored "
            "with the whole corpus's statistics so that leaves' scores compare, and GET /stats. Takes "
            "the flags of `distpat proxy` but --upstream (a leaf forwards nothing); every flag can also "
            "be a DISTPAT_<FLAG> variable or a key of the TOML file named by --config (top level or a "
            "[leaf] table)."
        ),
    )
    add_config_flag(p, "leaf")
    add_test_flag(p)
    add_options(p, _FLAGS)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    flags = flag_values(args, _FLAGS)
    config, values = build_leaf_config(flags, config_file=args.config)
    if args.test_config:
        loop_factory(values["loop"])
        return configuration_ok()
    apply_logging(values)
    return serve(config, values, lambda: build_leaf_config(flags, config_file=args.config))
