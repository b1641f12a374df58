"""``distpat cache``: the caching layer (the book's chapter 5, Varnish's place) as a process."""

from __future__ import annotations

import argparse

from distpat.cli.flags import add_options, add_test_flag, apply_logging, configuration_ok, flag_values
from distpat.cli.proxy import add_config_flag, loop_factory, serve
from distpat.config.cache import CACHE_OPTIONS, build_cache_config
from distpat.config.proxy import OPTIONS

__all__ = ["register"]

_FLAGS = (*OPTIONS, *CACHE_OPTIONS)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cache",
        help="caching reverse proxy: an RFC 9111 shared cache in front of the upstreams",
        description=(
            "Forward HTTP requests to the upstreams and keep their cacheable responses in memory, "
            "as RFC 9111 says a shared cache may: fresh ones answered from the store with Age and "
            "Cache-Status, stale ones validated with a conditional request, concurrent misses for "
            "one URL made one upstream request. --max-bytes bounds the store, --max-object-bytes "
            "what one response may take, --purge-from the addresses allowed to PURGE. Takes every "
            "flag of `distpat proxy` too; every flag can also be a DISTPAT_<FLAG> variable or a key "
            "of the TOML file named by --config (top level or a [cache] table)."
        ),
    )
    add_config_flag(p, "cache")
    add_test_flag(p)
    add_options(p, _FLAGS)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    flags = flag_values(args, _FLAGS)
    config, values = build_cache_config(flags, config_file=args.config)
    if args.test_config:
        loop_factory(values["loop"])
        return configuration_ok()
    apply_logging(values)
    return serve(config, values, lambda: build_cache_config(flags, config_file=args.config))
