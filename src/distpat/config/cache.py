"""`distpat cache` settings, and the ``[[stage]] kind = "cache"`` table of a pipeline file.

`distpat cache` takes every option of `distpat proxy` (:data:`distpat.config.proxy.OPTIONS`) and
the cache's (:data:`CACHE_OPTIONS`), read the same way: flag, then ``DISTPAT_*`` variable, then
the TOML file's top level or ``[cache]`` table, then the default. In a pipeline file the same
keys make a cache stage::

    [[stage]]
    kind = "cache"
    max_bytes = "256m"
    max_object_bytes = "8m"
    purge_from = ["127.0.0.1", "10.0.0.0/8"]
    heuristic_freshness = "off"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from distpat.config.options import Kind, Option, choice, resolve_options
from distpat.config.proxy import OPTIONS, proxy_config
from distpat.config.stages import StageTable, register
from distpat.core.cache_policy import CachePolicy
from distpat.core.cache_stage import CacheSettings, CacheStage
from distpat.core.cache_store import MemoryStore
from distpat.core.real_ip import TrustedProxies
from distpat.errors import ConfigError
from distpat.net.proxy import ProxyConfig

__all__ = ["CACHE_OPTIONS", "CACHE_STAGE_KEYS", "build_cache_config", "build_cache_stage", "cache_stage"]


def _cidr(text: str, what: str) -> str:
    try:
        TrustedProxies.parse([text])
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}".replace("trusted proxy", "address")) from None
    return text


def _store(text: str, what: str) -> str:
    if text == "memory":
        return text
    if not text.startswith("redis://"):
        raise ConfigError(f"{what} must be memory or redis://[:password@]host[:port][/db], not {text!r}")
    from distpat.net.carriers import parse_redis_url

    try:
        parse_redis_url(text)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    return text


_DEFAULT_OBJECT = 8 * 1024 * 1024

CACHE_OPTIONS: tuple[Option, ...] = (
    Option(
        "max_bytes",
        Kind.SIZE,
        128 * 1024 * 1024,
        "bytes of responses held (bodies, fields, overhead)",
        "SIZE",
    ),
    Option(
        "max_object_bytes",
        Kind.SIZE,
        _DEFAULT_OBJECT,
        "a larger response streams through uncached",
        "SIZE",
    ),
    Option(
        "store",
        Kind.TEXT,
        "memory",
        "where responses are kept: memory, or redis://host:port/db shared by several caches",
        "STORE",
        check=_store,
    ),
    Option(
        "purge_from",
        Kind.TEXT,
        (),
        "an address or CIDR network allowed to PURGE (repeatable; none: PURGE is refused)",
        "CIDR",
        repeat=True,
        check=_cidr,
    ),
    Option(
        "heuristic_freshness",
        Kind.TEXT,
        "off",
        "reuse responses without explicit freshness for 10%% of their age since Last-Modified: on or off",
        "on|off",
        check=choice("on", "off"),
    ),
    Option(
        "coalesce_timeout",
        Kind.DURATION,
        5.0,
        "how long a request waits for a coalesced miss before going upstream itself",
        "DURATION",
    ),
)
"""The cache's own options: the command's flags, and the keys of a cache stage table."""

CACHE_STAGE_KEYS = tuple(o.name for o in CACHE_OPTIONS)


def cache_stage(
    values: Mapping[str, Any], name: str = "", names: tuple[str, str] = ("max_object_bytes", "max_bytes")
) -> CacheStage:
    """A :class:`CacheStage` from the resolved values of :data:`CACHE_OPTIONS`."""
    if values["max_bytes"] < 1 or values["max_object_bytes"] < 1:
        raise ConfigError("max_bytes and max_object_bytes must be at least 1 byte")
    if values["max_object_bytes"] > values["max_bytes"] and values["max_object_bytes"] != _DEFAULT_OBJECT:
        raise ConfigError(
            f"{names[0]} ({values['max_object_bytes']} bytes) exceeds {names[1]} "
            f"({values['max_bytes']} bytes): one response cannot be larger than the whole cache"
        )  # the default alone is capped at max_bytes (by the store)
    purge: Sequence[str] = values["purge_from"]
    return CacheStage(
        MemoryStore(values["max_bytes"], values["max_object_bytes"]),
        policy=CachePolicy(heuristic=values["heuristic_freshness"] == "on"),
        settings=CacheSettings(coalesce_timeout=values["coalesce_timeout"]),
        purge_from=TrustedProxies.parse(purge) if purge else None,
        name=name,
        redis_url=None if values["store"] == "memory" else values["store"],
    )


def build_cache_config(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> tuple[ProxyConfig, dict[str, Any]]:
    """`distpat cache`'s configuration: the proxy's, with one :class:`CacheStage` named ``cache``."""
    values = resolve_options(
        (*OPTIONS, *CACHE_OPTIONS), flags, environ=environ, config_file=config_file, table="cache"
    )
    stage = cache_stage(values, "cache", ("--max-object-bytes", "--max-bytes"))
    return replace(proxy_config(values), stages=(stage,), redis=stage.redis_url), values


def build_cache_stage(table: StageTable) -> CacheStage:
    """A ``[[stage]] kind = "cache"`` table."""
    values = {o.name: table.option(o) for o in CACHE_OPTIONS}
    try:
        return cache_stage(values)
    except ConfigError as exc:
        raise table.error(None, str(exc)) from None


register(
    "cache",
    build_cache_stage,
    keys=CACHE_STAGE_KEYS,
    summary="an RFC 9111 shared cache: freshness, validation, Vary, coalescing, purge",
)
