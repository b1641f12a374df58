"""`distpat proxy` settings: one table of options, read from flags, ``DISTPAT_*`` variables and TOML.

Each option is declared once (:data:`OPTIONS`); the command-line flag, the
environment variable and the TOML key are all derived from its name, so the
three never drift (see :mod:`distpat.config.options`). Precedence: flag,
then environment, then file, then the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distpat.config.options import (
    LOG_OPTIONS,
    LOOP_OPTION,
    Kind,
    Option,
    choice,
    env_name,
    hostport,
    parse_hostport,
    resolve_options,
    whole_number,
)
from distpat.core.stage import Stage
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
    "whole_number",
]


def _path(value: str, what: str) -> str:
    if not value.startswith("/") or any(c in value for c in " \r\n\t"):
        raise ConfigError(f"{what} must be a URL path such as /healthz, not {value!r}")
    return value


def _upstream(url: str, what: str) -> str:
    parse_upstream_url(url)
    return url


OPTIONS: tuple[Option, ...] = (
    Option(
        "listen",
        Kind.TEXT,
        None,
        "address to serve clients on (required; :PORT: all IPv4)",
        "HOST:PORT",
        check=hostport,
    ),
    Option(
        "upstream",
        Kind.TEXT,
        (),
        "an upstream http://HOST:PORT (repeatable; required)",
        "URL",
        repeat=True,
        check=_upstream,
    ),
    Option(
        "admin", Kind.TEXT, None, "admin listener: /healthz, /readyz, /metrics", "HOST:PORT", check=hostport
    ),
    Option("workers", Kind.COUNT, 1, "processes sharing the port through SO_REUSEPORT", "N"),
    LOOP_OPTION,
    Option(
        "balance",
        Kind.TEXT,
        "round_robin",
        "how upstreams share requests: round_robin, least_outstanding",
        "NAME",
        check=choice("round_robin", "least_outstanding"),
    ),
    Option(
        "access_log",
        Kind.TEXT,
        "off",
        "access log on stderr: off, combined, json",
        "FORMAT",
        check=choice("off", "combined", "json"),
    ),
    *LOG_OPTIONS,
    Option("forwarded", Kind.BOOL, False, "also add an RFC 7239 Forwarded header", "BOOL"),
    Option(
        "underscores_in_headers",
        Kind.BOOL,
        False,
        "forward request fields with _ in their names (off: dropped, as nginx)",
        "BOOL",
    ),
    Option("max_header_bytes", Kind.SIZE, 64 * 1024, "request line and headers limit (431)", "SIZE"),
    Option(
        "max_response_header_bytes",
        Kind.SIZE,
        64 * 1024,
        "upstream status line and headers limit (502)",
        "SIZE",
    ),
    Option("max_body_bytes", Kind.SIZE, 1 << 30, "request body limit (413)", "SIZE"),
    Option("max_connections", Kind.COUNT, 20_000, "open client connections per worker (503)", "N"),
    Option("header_timeout", Kind.DURATION, 10.0, "a request's head must arrive within this (408)", "TIME"),
    Option(
        "keepalive_timeout",
        Kind.DURATION,
        75.0,
        "idle client keep-alive connections close after this",
        "TIME",
    ),
    Option("connect_timeout", Kind.DURATION, 5.0, "upstream connect timeout (502)", "TIME"),
    Option("response_timeout", Kind.DURATION, 60.0, "upstream silence allowed before 504", "TIME"),
    Option(
        "shutdown_timeout", Kind.DURATION, 30.0, "on SIGTERM, wait this long for requests in flight", "TIME"
    ),
    Option("upstream_keepalive", Kind.COUNT, 64, "idle connections kept per upstream", "N"),
    Option("max_fails", Kind.COUNT, 2, "connect failures in a row that eject an upstream", "N"),
    Option("fail_timeout", Kind.DURATION, 10.0, "how long an ejected upstream sits out", "TIME"),
    Option(
        "health_check",
        Kind.TEXT,
        None,
        "active checks: GET this path on each upstream (e.g. /healthz)",
        "PATH",
        check=_path,
    ),
    Option("health_interval", Kind.DURATION, 5.0, "time between active checks", "TIME"),
    Option("health_timeout", Kind.DURATION, 2.0, "an active check not answered within this fails", "TIME"),
    Option("health_fails", Kind.COUNT, 2, "failed checks in a row that take an upstream out", "N"),
)


def build_config(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> tuple[ProxyConfig, dict[str, Any]]:
    """The proxy configuration from flags (None = not given), environment and TOML file.

    Returns the :class:`ProxyConfig` and the resolved option values (workers,
    loop, log settings and the others the process layer needs).
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
    pools: tuple[tuple[str, tuple[str, ...]], ...] = (),
    stages: tuple[Stage, ...] = (),
    mirror_max_in_flight: int = 64,
    pool_balance: tuple[tuple[str, str], ...] = (),
    redis: str | None = None,
    local_only: bool = False,
) -> ProxyConfig:
    """The :class:`ProxyConfig` for resolved option values (see :func:`resolve_options`).

    ``pools`` (named upstream pools) and ``stages`` (the pipeline) are the routers'; with named
    pools the default pool (``upstream``) may be empty.
    """
    if values["listen"] is None:
        raise ConfigError(
            "no listen address: give --listen HOST:PORT (or DISTPAT_LISTEN, or listen in --config)"
        )
    if not values["upstream"] and not pools and not local_only:
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
        underscores_in_headers=values["underscores_in_headers"],
        max_response_header_bytes=values["max_response_header_bytes"],
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
        pools=pools,
        stages=stages,
        mirror_max_in_flight=mirror_max_in_flight,
        pool_balance=pool_balance,
        redis=redis,
        local_only=local_only,
    )
