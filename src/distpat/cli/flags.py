"""Command-line flags from option tables, and what every serving command shares (``-t``, logging)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

from distpat.cli.logs import configure_logging
from distpat.config.options import LOG_OPTIONS, Kind, Option, env_name, flag_name, resolve_options

__all__ = [
    "add_options",
    "add_test_flag",
    "apply_logging",
    "configuration_ok",
    "flag_values",
    "log_flags",
    "logging_from_flags",
]


def add_options(p: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """One flag per option, each naming its environment variable and its default."""
    for option in options:
        default_text = "" if option.default in (None, (), False) else f" (default {_shown(option)})"
        help_text = f"{option.help}{default_text}; env {env_name(option)}"
        names = [*option.aliases, flag_name(option)]
        if option.kind is Kind.SWITCH:
            p.add_argument(*names, action="store_true", default=None, help=help_text, dest=option.name)
        elif option.repeat:
            p.add_argument(*names, action="append", metavar=option.metavar, help=help_text, dest=option.name)
        else:
            p.add_argument(*names, metavar=option.metavar, help=help_text, dest=option.name)


def _shown(option: Option) -> str:
    default = option.default
    if option.kind is Kind.SIZE and isinstance(default, int):
        for suffix, scale in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
            if default % scale == 0:
                return f"{default // scale}{suffix}"
    if option.kind in (Kind.DURATION, Kind.DURATION_MS) and isinstance(default, float):
        if default >= 86400 and default % 86400 == 0:
            return f"{default / 86400:g}d"
        return f"{default:g}s"
    return str(default)


def add_test_flag(p: argparse.ArgumentParser, *aliases: str) -> None:
    p.add_argument(
        "-t",
        "--test-config",
        *aliases,
        action="store_true",
        dest="test_config",
        help="check the flags, the files and the certificates, print 'configuration OK' and exit "
        "(status 0; 2 with the error); nothing is bound or started",
    )


def flag_values(args: argparse.Namespace, options: Sequence[Option]) -> dict[str, Any]:
    return {option.name: getattr(args, option.name) for option in options}


def apply_logging(values: Mapping[str, Any], *, output: str | None = None) -> None:
    """The application log as the resolved ``log_level`` and ``log_format`` say."""
    configure_logging(values["log_level"], values["log_format"], output=output)


def log_flags(p: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format`` for a command without a configuration file."""
    add_options(p, LOG_OPTIONS)


def logging_from_flags(args: argparse.Namespace) -> None:
    """The application log of a command without a file: its flags, else ``DISTPAT_LOG_*``."""
    values = resolve_options(
        LOG_OPTIONS,
        flag_values(args, LOG_OPTIONS),
        environ=os.environ,
        config_file=None,
        table="",
        config_env=None,
    )
    apply_logging(values)


def configuration_ok() -> int:
    """What ``-t`` prints when every check passed (as ``nginx -t`` and ``nutcracker -t`` say so)."""
    print("configuration OK")
    return 0
