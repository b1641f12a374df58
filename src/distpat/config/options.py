"""One table of options per command, read from flags, ``DISTPAT_*`` variables and a TOML file.

Each option is declared once (an :class:`Option`); its flag ``--name``, its
variable ``DISTPAT_NAME`` and its TOML key ``name`` are derived from its
name, so the three never drift. Precedence: flag, then environment, then
file, then the default.

Values are checked, never coerced. Flags and variables are text, read by the
option's :class:`Kind`; a TOML value must have the TOML type of its kind (an
integer for a count, true/false for a switch, a string for an address, an
integer or a string with a unit for a size, a number or such a string for a
duration): ``workers = true`` and ``max_body_bytes = 1.9`` are errors naming
the file and the key. The file holds the options at its top level or in one
table named after the command (``[proxy]``), not both; any other key or
table is an error.
"""

from __future__ import annotations

import difflib
import enum
import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distpat.config.units import parse_duration, parse_size
from distpat.errors import ConfigError

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "LOG_OPTIONS",
    "LOOP_OPTION",
    "Kind",
    "Option",
    "choice",
    "env_name",
    "flag_name",
    "parse_hostport",
    "read_toml",
    "read_toml_value",
    "resolve_options",
    "whole_number",
]

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


class Kind(enum.Enum):
    """What an option's value is, which decides how text is read and which TOML types are accepted."""

    TEXT = "text"  # a string
    COUNT = "count"  # a whole number
    SIZE = "size"  # bytes: 65536, 64k, 1m, 1g
    DURATION = "duration"  # seconds: 10, 0.5, 500ms, 1m, 1h
    DURATION_MS = "duration_ms"  # the same, a bare number in milliseconds (twemproxy's timeout)
    NUMBER = "number"  # a decimal number: 1.25, 2 (a factor)
    BOOL = "bool"  # true/false (text: 1/0, true/false, yes/no, on/off)
    SWITCH = "switch"  # a flag without a value (--keep-ring); true/false in the environment and TOML


_TOML_TYPES: dict[Kind, tuple[type, ...]] = {
    Kind.TEXT: (str,),
    Kind.COUNT: (int,),
    Kind.SIZE: (int, str),
    Kind.DURATION: (int, float, str),
    Kind.DURATION_MS: (int, float, str),
    Kind.NUMBER: (int, float),
    Kind.BOOL: (bool,),
    Kind.SWITCH: (bool,),
}
_TOML_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "an array"}


@dataclass(frozen=True, slots=True)
class Option:
    """One option: ``--name`` (``_`` written ``-``), ``DISTPAT_NAME``, TOML key ``name``."""

    name: str
    kind: Kind
    default: Any
    help: str
    metavar: str = "VALUE"
    repeat: bool = False
    """Repeatable flag; a TOML array (or one string); a comma-separated variable."""
    check: Callable[[Any, str], Any] | None = None
    """Further validation of the read value (ranges, choices, URLs): returns the value to use."""
    minimum: int | float | None = None
    """Counts, sizes, durations and numbers: the smallest value accepted (durations: exclusive 0 when
    None)."""
    aliases: tuple[str, ...] = ()
    """More option strings for the flag (``-c``, ``--conf-file``: nutcracker's spellings)."""


def env_name(option: Option) -> str:
    return "DISTPAT_" + option.name.upper()


def flag_name(option: Option) -> str:
    return "--" + option.name.replace("_", "-")


# -- reading one value ----------------------------------------------------------------


def whole_number(text: Any, what: str, minimum: int = 1) -> int:
    """``text`` (an int, or decimal digits) as an int of at least ``minimum``, else :class:`ConfigError`."""
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise ConfigError(f"{what} must be a whole number, not {text!r}")
    if isinstance(text, str):
        stripped = text.strip()
        digits = stripped[1:] if stripped[:1] in "+-" else stripped
        if not digits.isdigit() or not digits.isascii():
            raise ConfigError(f"{what} must be a whole number, not {text!r}")
        value = int(stripped)
    else:
        value = text
    if value < minimum:
        raise ConfigError(f"{what} must be at least {minimum}, not {value}")
    return value


def _size(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        try:
            number = parse_size(str(value).strip())
        except ValueError:
            raise ConfigError(
                f"{what} must be a size in bytes (such as 65536, 64k, 1m, 1g), not {value!r}"
            ) from None
    if number < minimum:
        raise ConfigError(f"{what} must be at least {minimum} bytes, not {value!r}")
    return number


def _duration(value: Any, what: str, unit: str, minimum: float | None) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) * (0.001 if unit == "ms" else 1.0)
    else:
        try:
            seconds = parse_duration(str(value), unit)
        except ValueError:
            if str(value).strip().startswith("-"):
                raise ConfigError(f"{what} must be a positive number of seconds, not {value!r}") from None
            example = "500, 2s, 1m" if unit == "ms" else "10, 0.5, 500ms, 1m, 1h"
            raise ConfigError(f"{what} must be a duration (such as {example}), not {value!r}") from None
    if not math.isfinite(seconds) or (seconds <= 0 if minimum is None else seconds < minimum):
        bound = "a positive number of seconds" if minimum is None else f"at least {minimum:g} seconds"
        raise ConfigError(f"{what} must be {bound}, not {value!r}")
    return seconds


def _number(value: Any, what: str, minimum: float | None) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ConfigError(f"{what} must be a number (such as 1.25), not {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{what} must be a finite number, not {value!r}")
    if minimum is not None and number < minimum:
        raise ConfigError(f"{what} must be at least {minimum:g}, not {value!r}")
    return number


def _bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{what} must be true or false (on/off, yes/no, 1/0), not {value!r}")


def read_value(option: Option, value: Any, where: str) -> Any:
    """One value of ``option`` (text from a flag or variable, or a TOML value already type-checked)."""
    kind = option.kind
    if kind is Kind.COUNT:
        result: Any = whole_number(value, where, int(option.minimum if option.minimum is not None else 1))
    elif kind is Kind.SIZE:
        result = _size(value, where, int(option.minimum if option.minimum is not None else 1))
    elif kind in (Kind.DURATION, Kind.DURATION_MS):
        unit = "ms" if kind is Kind.DURATION_MS else "s"
        result = _duration(value, where, unit, None if option.minimum is None else float(option.minimum))
    elif kind is Kind.NUMBER:
        result = _number(value, where, None if option.minimum is None else float(option.minimum))
    elif kind in (Kind.BOOL, Kind.SWITCH):
        result = _bool(value, where)
    else:
        result = str(value)
    return result if option.check is None else option.check(result, where)


def _read(option: Option, raw: Any, where: str, *, typed: bool) -> Any:
    """An option's value from one source; ``typed``: a TOML value, whose type is checked first."""
    if option.repeat:
        if typed:
            items = raw if isinstance(raw, list) else [raw]
            for item in items:
                _check_toml_type(option, item, where)
        elif isinstance(raw, list | tuple):  # repeated flags
            items = list(raw)
        else:  # a variable: comma-separated
            items = [v for v in str(raw).split(",") if v.strip()]
        return tuple(
            read_value(option, item.strip() if isinstance(item, str) else item, where) for item in items
        )
    if typed:
        _check_toml_type(option, raw, where)
    return read_value(option, raw, where)


def read_toml_value(option: Option, value: Any, where: str) -> Any:
    """A TOML value of ``option`` (an array for a repeatable one): its TOML type checked, then read."""
    return _read(option, value, where, typed=True)


def _check_toml_type(option: Option, value: Any, where: str) -> None:
    allowed = _TOML_TYPES[option.kind]
    # bool is an int subclass in Python, not in TOML: true is never a number.
    if type(value) not in allowed:
        wanted = " or ".join(_TOML_NAMES[t] for t in allowed)
        if option.kind is Kind.SIZE:
            wanted = 'an integer or a string such as "64k"'
        elif option.kind in (Kind.DURATION, Kind.DURATION_MS):
            wanted = 'a number or a string such as "500ms"'
        elif option.kind is Kind.NUMBER:
            wanted = "a number"
        if isinstance(value, bool):
            got = f"a boolean ({str(value).lower()})"
        else:
            got = f"{_TOML_NAMES.get(type(value), 'a TOML ' + type(value).__name__)} ({value!r})"
        raise ConfigError(f"{where} must be {wanted}, not {got}")


# -- checks shared by the tables ----------------------------------------------------------


def checked_by(parse: Callable[[str], object]) -> Callable[[Any, str], str]:
    """An ``Option.check`` that lets ``parse`` judge the text (its ConfigError given again with
    the option's name in front) and keeps the text as it is."""

    def check(text: Any, what: str) -> str:
        try:
            parse(text)
        except ConfigError as exc:
            raise ConfigError(f"{what}: {exc}") from None
        return str(text)

    return check


def choice(*choices: str) -> Callable[[Any, str], str]:
    def check(value: Any, what: str) -> str:
        if value not in choices:
            raise ConfigError(f"{what} must be one of {', '.join(choices)}, not {value!r}")
        return str(value)

    return check


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` -> (host, port); :class:`ConfigError` otherwise.

    ``:PORT`` (or ``*:PORT``) means every IPv4 interface (``0.0.0.0``), as nginx's
    ``listen 8443`` and nutcracker's ``-a 0.0.0.0`` do; give ``[::]:PORT`` for IPv6.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not port.isascii() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT or :PORT, not {text!r}")
    if host in ("", "*"):
        return "0.0.0.0", int(port)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c in host for c in " /[]@,") or (":" in host and not text.startswith("[")):
        raise ConfigError(f"{what} must be HOST:PORT or :PORT, not {text!r}")
    return host, int(port)


def hostport(value: Any, what: str) -> tuple[str, int]:
    return parse_hostport(str(value), what)


# -- the TOML file and the resolution -------------------------------------------------------


def read_toml(source: str, options: Sequence[Option], table: str) -> dict[str, Any]:
    """The options of ``source``'s top level or its ``[table]`` table (one or the other), checked by name.

    Values are returned as read (their types are checked by :func:`resolve_options`).
    """
    try:
        with Path(source).open("rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    known = {o.name for o in options}
    section: dict[str, Any] = raw
    where = ""
    if table in raw and isinstance(raw[table], dict):
        beside = [k for k in raw if k != table]
        if beside:
            raise ConfigError(
                f"{source}: key {beside[0]!r} beside the [{table}] table: put the options at the top "
                f"level or in [{table}], not both"
            )
        section, where = raw[table], f" in [{table}]"
    for key, value in section.items():
        if key in known:
            continue
        if isinstance(value, dict):
            raise ConfigError(
                f"{source}: unknown table [{key}]: this command reads its options from the top level "
                f"or a [{table}] table"
            )
        hint = difflib.get_close_matches(key.replace("-", "_"), sorted(known), n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{source}: unknown option {key!r}{where}{suggestion}")
    return dict(section)


def resolve_options(
    options: Sequence[Option],
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None,
    config_file: str | None,
    table: str,
    config_env: str | None = "DISTPAT_CONFIG",
    sources: dict[str, int] | None = None,
    file_values: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Each option's value: its flag, else its ``DISTPAT_*`` variable, else the TOML file, else the default.

    ``flags`` maps option names to what the command line gave (None, or an
    empty list, when not given). The file is ``config_file``, else the
    variable ``config_env`` (None: no variable names one), else none.
    ``sources``, when given, receives where each value came from: 3 a flag,
    2 a variable, 1 the file, 0 the default (for options that stand for one
    another, such as redis-shard's ``-v`` and ``--log-level``).
    ``file_values``, when given, are the file's option values already read (by a reader of a
    file that holds more than options, such as a pipeline's); ``config_file`` then only names it.
    """
    rank = {} if sources is None else sources
    environ = os.environ if environ is None else environ
    source = config_file or (environ.get(config_env) if config_env else None) or None
    if file_values is None:
        file_values = read_toml(source, options, table) if source else {}
    values: dict[str, Any] = {}
    for option in options:
        flag = flags.get(option.name)
        env = env_name(option)
        if flag not in (None, [], ()) and flag is not False:
            values[option.name] = _read(option, flag, flag_name(option), typed=False)
            rank[option.name] = 3
        elif env in environ:
            values[option.name] = _read(option, environ[env], env, typed=False)
            rank[option.name] = 2
        elif option.name in file_values:
            values[option.name] = _read(
                option, file_values[option.name], f"{source}: {option.name}", typed=True
            )
            rank[option.name] = 1
        else:
            values[option.name] = option.default
            rank[option.name] = 0
    return values


# -- the application log, on every command -------------------------------------------------

LOG_OPTIONS: tuple[Option, ...] = (
    Option(
        "log_level",
        Kind.TEXT,
        "info",
        "application log level: debug, info, warning, error",
        "LEVEL",
        check=choice(*LOG_LEVELS),
    ),
    Option(
        "log_format",
        Kind.TEXT,
        "text",
        "application log lines: text, or json (one object a line)",
        "FORMAT",
        check=choice(*LOG_FORMATS),
    ),
)

LOOP_OPTION = Option(
    "loop",
    Kind.TEXT,
    "auto",
    "event loop: auto, uvloop, asyncio",
    "NAME",
    check=choice("auto", "uvloop", "asyncio"),
)
