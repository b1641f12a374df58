"""`distpat sidecar` settings: every option of `distpat proxy`, and the TLS ones.

Read the same way (flag, then ``DISTPAT_*`` variable, then the TOML file's
top level or ``[sidecar]`` table, then the default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distpat.config.options import Kind, Option, choice, hostport, resolve_options
from distpat.config.proxy import OPTIONS, proxy_config
from distpat.errors import ConfigError
from distpat.net.proxy import ProxyConfig
from distpat.net.tcp import TcpProxyConfig, parse_tcp_upstream
from distpat.net.tls import TLSOptions
from distpat.net.upstream import parse_upstream_url

__all__ = ["CLIENT_CERT_HEADER", "SIDECAR_OPTIONS", "build_sidecar_config"]

CLIENT_CERT_HEADER = b"X-Client-Cert-Subject"


def _file(value: str, what: str) -> str:
    path = value.strip()
    if not path:
        raise ConfigError(f"{what} must name a file")
    return path


def _upstream(url: str, what: str) -> str:
    if url.startswith("tcp://"):
        parse_tcp_upstream(url)
    else:
        parse_upstream_url(url)
    return url


_TLS_OPTIONS: tuple[Option, ...] = (
    Option(
        "mode",
        Kind.TEXT,
        "http",
        "http: HTTPS to HTTP; tcp: TLS to plain TCP (stunnel)",
        check=choice("http", "tcp"),
    ),
    Option(
        "cert",
        Kind.TEXT,
        (),
        "certificate chain file, PEM (repeatable; required)",
        "FILE",
        repeat=True,
        check=_file,
    ),
    Option(
        "key",
        Kind.TEXT,
        (),
        "private key file of the --cert in the same place (repeatable)",
        "FILE",
        repeat=True,
        check=_file,
    ),
    Option(
        "client_ca",
        Kind.TEXT,
        None,
        "require client certificates issued by this CA (mTLS)",
        "FILE",
        check=_file,
    ),
    Option(
        "tls_min",
        Kind.TEXT,
        "1.2",
        "lowest TLS version accepted: 1.2, 1.3",
        "VERSION",
        check=choice("1.2", "1.3"),
    ),
    Option("hsts", Kind.COUNT, None, "add Strict-Transport-Security: max-age=SECONDS", "SECONDS", minimum=0),
    Option(
        "redirect_http", Kind.TEXT, None, "plain listener redirecting to HTTPS", "HOST:PORT", check=hostport
    ),
)

SIDECAR_OPTIONS: tuple[Option, ...] = (
    *(
        Option(
            o.name,
            Kind.TEXT,
            (),
            "the upstream: http://HOST:PORT, or tcp://HOST:PORT with --mode tcp "
            "(repeatable in http mode; required)",
            o.metavar,
            repeat=True,
            check=_upstream,
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
