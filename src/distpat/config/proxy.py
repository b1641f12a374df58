"""`distpat proxy` settings: one table of options, read from flags, ``DISTPAT_*`` variables and TOML.

Each option is declared once (:data:`OPTIONS`); the command-line flag, the
environment variable and the TOML key are all derived from its name, so the
three never drift. Precedence: flag, then environment, then file, then the
default.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distpat.errors import ConfigError
from distpat.net.health import HealthCheck
from distpat.net.proxy import ProxyConfig
from distpat.net.server import EngineSettings
from distpat.net.tls import TLSOptions
from distpat.net.upstream import UpstreamPolicy, parse_upstream_url

__all__ = [
    "OPTIONS",
    "Option",
    "build_config",
    "env_name",
    "parse_hostport",
    "proxy_config",
    "resolve_options",
]


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); :class:`ConfigError` otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def whole_number(text: Any, what: str, minimum: int = 1) -> int:
    """``text`` as an int of at least ``minimum``; :class:`ConfigError` naming ``what`` otherwise."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a whole number, not {text!r}") from None
    if value < minimum:
        raise ConfigError(f"{what} must be at least {minimum}, not {value}")
    return value


def _positive_int(text: Any, what: str) -> int:
    return whole_number(text, what)


def _seconds(text: Any, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{what} must be a positive number of seconds, not {text!r}")
    return value


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def parse(text: Any, what: str) -> str:
        if text not in choices:
            raise ConfigError(f"{what} must be one of {', '.join(choices)}, not {text!r}")
        return str(text)

    return parse


def _bool(text: Any, what: str) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{what} must be true or false, not {text!r}")


def _path(text: Any, what: str) -> str:
    path = str(text)
    if not path.startswith("/") or any(c in path for c in " \r\n\t"):
        raise ConfigError(f"{what} must be a URL path such as /healthz, not {text!r}")
    return path


def _hostport(text: Any, what: str) -> tuple[str, int]:
    return parse_hostport(str(text), what)


def _upstreams(value: Any, what: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
    urls = tuple(str(v).strip() for v in items)
    for url in urls:
        parse_upstream_url(url)
    return urls


@dataclass(frozen=True, slots=True)
class Option:
    name: str  # the flag is --name, the variable DISTPAT_NAME, the TOML key name with _
    parse: Callable[[Any, str], Any]
    default: Any
    help: str
    metavar: str = "VALUE"
    repeat: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("listen", _hostport, None, "address to serve clients on (required)", "HOST:PORT"),
    Option(
        "upstream", _upstreams, (), "an upstream http://HOST:PORT (repeatable; required)", "URL", repeat=True
    ),
    Option("admin", _hostport, None, "admin listener: /healthz, /readyz, /metrics", "HOST:PORT"),
    Option("workers", _positive_int, 1, "processes sharing the port through SO_REUSEPORT", "N"),
    Option("loop", _choice("auto", "uvloop", "asyncio"), "auto", "event loop implementation", "NAME"),
    Option(
        "balance", _choice("round_robin", "least_outstanding"), "round_robin", "how upstreams share requests"
    ),
    Option("access_log", _choice("off", "combined", "json"), "off", "access log format, on stderr", "FORMAT"),
    Option("forwarded", _bool, False, "also add an RFC 7239 Forwarded header", "BOOL"),
    Option("max_header_bytes", _positive_int, 64 * 1024, "request line and headers limit (431)", "BYTES"),
    Option("max_body_bytes", _positive_int, 1 << 30, "request body limit (413)", "BYTES"),
    Option("max_connections", _positive_int, 20_000, "open client connections per worker (503)", "N"),
    Option("header_timeout", _seconds, 10.0, "a request's head must arrive within this (408)", "SECONDS"),
    Option(
        "keepalive_timeout", _seconds, 75.0, "idle client keep-alive connections close after this", "SECONDS"
    ),
    Option("connect_timeout", _seconds, 5.0, "upstream connect timeout (502)", "SECONDS"),
    Option("response_timeout", _seconds, 60.0, "upstream silence allowed before 504", "SECONDS"),
    Option(
        "shutdown_timeout", _seconds, 30.0, "on SIGTERM, wait this long for requests in flight", "SECONDS"
    ),
    Option("upstream_keepalive", _positive_int, 64, "idle connections kept per upstream", "N"),
    Option("max_fails", _positive_int, 2, "connect failures in a row that eject an upstream", "N"),
    Option("fail_timeout", _seconds, 10.0, "seconds an ejected upstream sits out", "SECONDS"),
    Option(
        "health_check", _path, None, "active checks: GET this path on each upstream (e.g. /healthz)", "PATH"
    ),
    Option("health_interval", _seconds, 5.0, "seconds between active checks", "SECONDS"),
    Option("health_timeout", _seconds, 2.0, "an active check not answered within this fails", "SECONDS"),
    Option("health_fails", _positive_int, 2, "failed checks in a row that take an upstream out", "N"),
)


def env_name(option: Option) -> str:
    return "DISTPAT_" + option.name.upper()


def resolve_options(
    options: Sequence[Option],
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None,
    config_file: str | None,
    table: str,
) -> dict[str, Any]:
    """Each option's value: its flag, else its ``DISTPAT_*`` variable, else the TOML file, else the default.

    The TOML file may hold the options at its top level or in a ``[table]`` table.
    """
    environ = os.environ if environ is None else environ
    file_values: dict[str, Any] = {}
    source = config_file or environ.get("DISTPAT_CONFIG")
    if source:
        try:
            with Path(source).open("rb") as f:
                raw = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: invalid TOML: {exc}") from None
        section = raw.get(table, raw)
        known = {o.name for o in options}
        for key, value in section.items():
            if key.replace("-", "_") not in known:
                raise ConfigError(f"{source}: unknown option {key!r}; known: {', '.join(sorted(known))}")
            file_values[key.replace("-", "_")] = value

    values: dict[str, Any] = {}
    for option in options:
        flag = flags.get(option.name)
        if flag not in (None, [], ()):
            raw_value, where = flag, f"--{option.name.replace('_', '-')}"
        elif env_name(option) in environ:
            raw_value, where = environ[env_name(option)], env_name(option)
        elif option.name in file_values:
            raw_value, where = file_values[option.name], f"{source}: {option.name}"
        else:
            values[option.name] = option.default
            continue
        values[option.name] = option.parse(raw_value, where)
    return values


def build_config(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> tuple[ProxyConfig, dict[str, Any]]:
    """The proxy configuration from flags (None = not given), environment and TOML file.

    Returns the :class:`ProxyConfig` and the resolved option values (workers,
    loop and the others the process layer needs).
    """
    values = resolve_options(OPTIONS, flags, environ=environ, config_file=config_file, table="proxy")
    return proxy_config(values), values


def proxy_config(
    values: Mapping[str, Any],
    *,
    scheme: str = "http",
    client_cert_header: bytes | None = None,
    response_fields: tuple[tuple[bytes, bytes], ...] = (),
    tls: TLSOptions | None = None,
    redirect_http: tuple[str, int] | None = None,
) -> ProxyConfig:
    """The :class:`ProxyConfig` for resolved option values (see :func:`resolve_options`)."""
    if values["listen"] is None:
        raise ConfigError(
            "no listen address: give --listen HOST:PORT (or DISTPAT_LISTEN, or listen in --config)"
        )
    if not values["upstream"]:
        raise ConfigError("no upstream: give --upstream http://HOST:PORT at least once")
    settings = EngineSettings(
        max_header_bytes=values["max_header_bytes"],
        max_body_bytes=values["max_body_bytes"],
        max_connections=values["max_connections"],
        header_timeout=values["header_timeout"],
        keepalive_timeout=values["keepalive_timeout"],
        connect_timeout=values["connect_timeout"],
        response_timeout=values["response_timeout"],
        forwarded=values["forwarded"],
        scheme=scheme,
        client_cert_header=client_cert_header,
        response_fields=response_fields,
    )
    policy = UpstreamPolicy(
        max_idle=values["upstream_keepalive"],
        max_fails=values["max_fails"],
        fail_timeout=values["fail_timeout"],
    )
    return ProxyConfig(
        listen=values["listen"],
        upstreams=values["upstream"],
        admin=values["admin"],
        balance=values["balance"],
        access_log=None if values["access_log"] == "off" else values["access_log"],
        shutdown_timeout=values["shutdown_timeout"],
        reuse_port=values["workers"] > 1,
        settings=settings,
        policy=policy,
        health_check=None
        if values["health_check"] is None
        else HealthCheck(
            path=values["health_check"],
            interval=values["health_interval"],
            timeout=values["health_timeout"],
            fails=values["health_fails"],
        ),
        tls=tls,
        redirect_http=redirect_http,
    )
