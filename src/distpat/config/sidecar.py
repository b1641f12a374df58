"""`distpat sidecar` settings: every option of `distpat proxy`, and the TLS ones.

Read the same way (flag, then ``DISTPAT_*`` variable, then the TOML file's
top level or ``[sidecar]`` table, then the default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distpat.config.proxy import (
    OPTIONS,
    Option,
    _choice,
    _hostport,
    proxy_config,
    resolve_options,
    whole_number,
)
from distpat.errors import ConfigError
from distpat.net.proxy import ProxyConfig
from distpat.net.tcp import TcpProxyConfig, parse_tcp_upstream
from distpat.net.tls import TLSOptions
from distpat.net.upstream import parse_upstream_url

__all__ = ["CLIENT_CERT_HEADER", "SIDECAR_OPTIONS", "build_sidecar_config"]

CLIENT_CERT_HEADER = b"X-Client-Cert-Subject"


def _files(value: Any, what: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
    paths = tuple(str(v).strip() for v in items)
    if not paths or any(not p for p in paths):
        raise ConfigError(f"{what} must name a file")
    return paths


def _file(value: Any, what: str) -> str:
    path = str(value).strip()
    if not path:
        raise ConfigError(f"{what} must name a file")
    return path


def _upstreams(value: Any, what: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
    urls = tuple(str(v).strip() for v in items)
    for url in urls:
        if not url.startswith("tcp://"):
            parse_upstream_url(url)
        else:
            parse_tcp_upstream(url)
    return urls


def _hsts(value: Any, what: str) -> int:
    return whole_number(value, what, minimum=0)


_TLS_OPTIONS: tuple[Option, ...] = (
    Option("mode", _choice("http", "tcp"), "http", "http: HTTPS to HTTP; tcp: TLS to plain TCP (stunnel)"),
    Option("cert", _files, (), "certificate chain file, PEM (repeatable; required)", "FILE", repeat=True),
    Option(
        "key",
        _files,
        (),
        "private key file of the --cert in the same place (repeatable)",
        "FILE",
        repeat=True,
    ),
    Option("client_ca", _file, None, "require client certificates issued by this CA (mTLS)", "FILE"),
    Option("tls_min", _choice("1.2", "1.3"), "1.2", "lowest TLS version accepted", "VERSION"),
    Option("hsts", _hsts, None, "add Strict-Transport-Security: max-age=SECONDS", "SECONDS"),
    Option("redirect_http", _hostport, None, "plain listener redirecting to HTTPS", "HOST:PORT"),
)

SIDECAR_OPTIONS: tuple[Option, ...] = (
    *(
        Option(
            o.name,
            _upstreams,
            (),
            "the upstream: http://HOST:PORT, or tcp://HOST:PORT with --mode tcp "
            "(repeatable in http mode; required)",
            o.metavar,
            repeat=True,
        )
        if o.name == "upstream"
        else o
        for o in OPTIONS
    ),
    *_TLS_OPTIONS,
)


def build_sidecar_config(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> tuple[ProxyConfig | TcpProxyConfig, dict[str, Any]]:
    """The sidecar's configuration: a TLS :class:`ProxyConfig`, or a :class:`TcpProxyConfig` (TCP mode)."""
    values = resolve_options(
        SIDECAR_OPTIONS, flags, environ=environ, config_file=config_file, table="sidecar"
    )
    certs, keys = values["cert"], values["key"]
    if not certs:
        raise ConfigError("no certificate: give --cert FILE and --key FILE")
    if len(certs) != len(keys):
        raise ConfigError(f"{len(certs)} --cert but {len(keys)} --key: give one key for each certificate")
    tcp = values["mode"] == "tcp"
    tls = TLSOptions(
        pairs=tuple(zip(certs, keys, strict=True)),
        client_ca=values["client_ca"],
        min_version=values["tls_min"],
        alpn=() if tcp else ("http/1.1",),
    )
    upstreams: tuple[str, ...] = values["upstream"]
    if not tcp:
        if any(u.startswith("tcp://") for u in upstreams):
            raise ConfigError("a tcp:// upstream needs --mode tcp")
        hsts = values["hsts"]
        fields = () if hsts is None else ((b"Strict-Transport-Security", b"max-age=%d" % hsts),)
        config = proxy_config(
            values,
            scheme="https",
            client_cert_header=CLIENT_CERT_HEADER,
            response_fields=fields,
            tls=tls,
            redirect_http=values["redirect_http"],
        )
        return config, values
    if values["listen"] is None:
        raise ConfigError("no listen address: give --listen HOST:PORT")
    if len(upstreams) != 1 or not upstreams[0].startswith("tcp://"):
        raise ConfigError("--mode tcp needs exactly one --upstream tcp://HOST:PORT")
    for name in ("hsts", "redirect_http", "health_check"):
        if values[name] is not None:
            raise ConfigError(f"--{name.replace('_', '-')} applies to --mode http only")
    return (
        TcpProxyConfig(
            listen=values["listen"],
            upstream=parse_tcp_upstream(upstreams[0]),
            tls=tls,
            admin=values["admin"],
            max_connections=values["max_connections"],
            connect_timeout=values["connect_timeout"],
            handshake_timeout=values["header_timeout"],
            shutdown_timeout=values["shutdown_timeout"],
            reuse_port=values["workers"] > 1,
        ),
        values,
    )
