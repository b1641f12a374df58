"""``distpat run --config FILE``: serve a pipeline file (named pools, ``[[stage]]`` tables)."""

from __future__ import annotations

import argparse
import os

from distpat.cli.flags import add_test_flag, apply_logging, configuration_ok
from distpat.cli.proxy import loop_factory, serve
from distpat.config.pipeline import load_pipeline
from distpat.config.stages import STAGE_KINDS
from distpat.errors import ConfigError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kinds = ", ".join(sorted(STAGE_KINDS))
    p = sub.add_parser(
        "run",
        help="serve a pipeline file: the proxy's options, [pools.NAME] tables and [[stage]] tables",
        description=(
            "Serve the pipeline a TOML file describes: the options of `distpat proxy` at its top "
            "level (each also a DISTPAT_<OPTION> variable, which wins over the file), upstream pools "
            "as [pools.NAME] tables with upstreams = [...], and the stages every request passes, in "
            f"order, as [[stage]] tables with kind = ... (kinds: {kinds}). SIGHUP reads the file again."
        ),
    )
    p.add_argument("--config", metavar="FILE", help="the pipeline file (required); env DISTPAT_CONFIG")
    add_test_flag(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    source = args.config or os.environ.get("DISTPAT_CONFIG")
    if not source:
        raise ConfigError("no pipeline file: give --config FILE (or DISTPAT_CONFIG)")
    config, values = load_pipeline(source)
    if args.test_config:
        loop_factory(values["loop"])
        return configuration_ok()
    apply_logging(values)
    return serve(config, values, lambda: load_pipeline(source))
