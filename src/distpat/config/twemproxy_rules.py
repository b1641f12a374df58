"""The rules a twemproxy pool must follow: its keys and their values, the YAML refused, the pool checks.

Each pool key has a handler that turns its scalar text into a field value or rejects it; the
YAML tokens nutcracker's ``conf_validate_tokens`` refuses are listed here; and
:func:`_validate_pool` applies the checks that span keys (``conf_validate_pool``) and fills in
twemproxy's defaults. :mod:`distpat.config.twemproxy` drives them while loading a file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, TypeVar

import yaml

from distpat.core.twemhash import TWEMPROXY_HASHES
from distpat.core.twemproxy_pool import (
    TWEMPROXY_DISTRIBUTIONS,
    TwemproxyListen,
    TwemproxyPool,
    TwemproxyServer,
    _atoi,
    _parse_listen,
    _parse_server,
    _Reject,
)
from distpat.errors import ConfigError

__all__ = ["TWEMPROXY_POOL_KEYS"]

_T = TypeVar("_T")
_D = TypeVar("_D")


# --------------------------------------------------------------------------
# Key handlers: each turns the raw scalar text of one key into a field value.


def _bool(text: str) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise _Reject(f"{text!r} is not 'true' or 'false'")


def _hash(text: str) -> str:
    if text not in TWEMPROXY_HASHES:
        raise _Reject(f"unknown hash {text!r}; valid hashes: {', '.join(TWEMPROXY_HASHES)}")
    return text


def _distribution(text: str) -> str:
    if text not in TWEMPROXY_DISTRIBUTIONS:
        raise _Reject(
            f"unknown distribution {text!r}; valid distributions: {', '.join(TWEMPROXY_DISTRIBUTIONS)}"
        )
    return text


def _hash_tag(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) != 2:
        raise _Reject(f"{text!r} is not a two-byte hash tag such as '{{}}'")
    return raw


_HANDLERS: Final[Mapping[str, Callable[[str], object]]] = {
    "listen": _parse_listen,
    "hash": _hash,
    "hash_tag": _hash_tag,
    "distribution": _distribution,
    "timeout": _atoi,
    "backlog": _atoi,
    "client_connections": _atoi,
    "redis": _bool,
    "tcpkeepalive": _bool,
    "redis_auth": str,
    "redis_db": _atoi,
    "preconnect": _bool,
    "auto_eject_hosts": _bool,
    "server_connections": _atoi,
    "server_retry_timeout": _atoi,
    "server_failure_limit": _atoi,
    "servers": _parse_server,
}

TWEMPROXY_POOL_KEYS: Final = tuple(_HANDLERS)
"""Every key twemproxy 0.5.0 accepts in a pool, in its ``conf_commands`` order."""

# YAML tokens nutcracker's conf_validate_tokens refuses, and how to name them.
_DISALLOWED_TOKENS: Final[tuple[tuple[type[yaml.Token], str], ...]] = (
    (yaml.DirectiveToken, "a %YAML or %TAG directive"),
    (yaml.DocumentStartToken, "a document start marker '---'"),
    (yaml.DocumentEndToken, "a document end marker '...'"),
    (yaml.FlowSequenceStartToken, "a flow sequence '['"),
    (yaml.FlowSequenceEndToken, "a flow sequence ']'"),
    (yaml.FlowMappingStartToken, "a flow mapping '{'"),
    (yaml.FlowMappingEndToken, "a flow mapping '}'"),
    (yaml.FlowEntryToken, "a flow entry ','"),
    (yaml.AliasToken, "an alias '*'"),
    (yaml.AnchorToken, "an anchor '&'"),
    (yaml.TagToken, "a tag '!'"),
)


class _Context:
    """Builds error messages that name the file, the pool and the key."""

    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self.source = source

    def error(
        self,
        detail: str,
        *,
        pool: str | None = None,
        key: str | None = None,
        node: yaml.Node | None = None,
    ) -> ConfigError:
        parts = [self.source]
        if pool is not None:
            parts.append(f"pool {pool!r}")
        if key is not None:
            parts.append(f"key {key!r}")
        where = ": ".join(parts)
        line = f" (line {node.start_mark.line + 1})" if node is not None else ""
        return ConfigError(f"{where}: {detail}{line}")


def _validate_pool(
    ctx: _Context,
    name: str,
    node: yaml.Node,
    values: dict[str, object],
    servers: list[TwemproxyServer],
    entries: list[str],
) -> TwemproxyPool:
    listen = values.pop("listen", None)
    if not isinstance(listen, TwemproxyListen):
        raise ctx.error("is missing", pool=name, key="listen", node=node)
    if values.get("server_connections") == 0:
        raise ctx.error("cannot be 0", pool=name, key="server_connections")
    if "redis_auth" in values and values.get("redis") is not True:
        raise ctx.error("is only valid for a redis pool (redis: true)", pool=name, key="redis_auth")
    if not servers:
        raise ctx.error("has no servers", pool=name, node=node)
    seen: dict[str, str] = {}
    for server, entry in zip(servers, entries, strict=True):
        earlier = seen.setdefault(server.ring_name, entry)
        if earlier is not entry:
            raise ctx.error(
                f"entries {earlier!r} and {entry!r} have the same name {server.ring_name!r}",
                pool=name,
                key="servers",
            )
    return TwemproxyPool(
        name=name,
        listen=listen,
        servers=tuple(servers),
        hash=_get(values, "hash", str, "fnv1a_64"),
        hash_tag=_get(values, "hash_tag", bytes, b""),
        distribution=_get(values, "distribution", str, "ketama"),
        timeout=_get(values, "timeout", int, None),
        backlog=_get(values, "backlog", int, 512),
        client_connections=_get(values, "client_connections", int, 0),
        redis=_get(values, "redis", bool, False),
        tcpkeepalive=_get(values, "tcpkeepalive", bool, False),
        redis_auth=_get(values, "redis_auth", str, None),
        redis_db=_get(values, "redis_db", int, 0),
        preconnect=_get(values, "preconnect", bool, False),
        auto_eject_hosts=_get(values, "auto_eject_hosts", bool, False),
        server_connections=_get(values, "server_connections", int, 1),
        server_retry_timeout=_get(values, "server_retry_timeout", int, 30_000),
        server_failure_limit=_get(values, "server_failure_limit", int, 2),
    )


def _get(values: Mapping[str, object], key: str, kind: type[_T], default: _D) -> _T | _D:
    """``values[key]`` (which its handler made a ``kind``), or ``default``."""
    if key not in values:
        return default
    value = values[key]
    if not isinstance(value, kind):  # pragma: no cover - handlers guarantee it
        raise TypeError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value
