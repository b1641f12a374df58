"""One rate limit's settings, checked and made into a :class:`~distpat.core.ratelimit_stage.LimitRule`.

The rules of `distpat ratelimit`'s options, of a pipeline file's ``limits`` tables
(:mod:`distpat.config.ratelimit`) and of :func:`distpat.aiohttp.ratelimit_middleware`'s keywords, in
one place, so each refuses a bad value with the same :class:`~distpat.errors.ConfigError` message;
each caller names the setting its own way (``--burst``, ``limits[0].burst``, ``burst``), passed in
as ``what`` or ``names``. The settings are nginx's ``limit_req`` (``rate=``, ``burst=``, ``delay=``,
``nodelay``, ``limit_req_status``, ``limit_req_dry_run``) and ``limit_conn`` (``concurrency``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distpat.core.keys import KeySource
from distpat.core.limiter import DEFAULT_STATUS, Limit, check_limit_name, parse_rate
from distpat.core.ratelimit_stage import LimitRule
from distpat.core.real_ip import TrustedProxies
from distpat.errors import ConfigError

__all__ = [
    "LIMIT_DEFAULTS",
    "check_key",
    "check_name",
    "check_proxy",
    "check_rate",
    "check_status",
    "default_limit_name",
    "limit_rule",
]

LIMIT_DEFAULTS: Mapping[str, Any] = {
    "rate": None,
    "burst": 0,
    "key": "ip",
    "delay": 0,
    "nodelay": False,
    "status": DEFAULT_STATUS,
    "dry_run": False,
    "concurrency": 0,
    "limit_name": None,
}
"""One limit's settings and their defaults (``rate`` has none: it must be given)."""


def check_rate(text: str, what: str) -> str:
    """``text`` when nginx's ``rate=`` would take it (``10r/s``, ``600r/m``)."""
    try:
        parse_rate(text)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    return text


def check_key(text: str, what: str) -> str:
    """``text`` when it names a key source (:meth:`KeySource.parse <distpat.core.keys.KeySource.parse>`)."""
    try:
        KeySource.parse(text)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    return text


def check_status(status: int, what: str) -> int:
    """A refusal's status: an HTTP error status."""
    if not 400 <= status <= 599:
        raise ConfigError(f"{what} must be an HTTP error status (4xx or 5xx), not {status}")
    return status


def check_name(text: str, what: str) -> str:
    """A limit's name, as the RateLimit fields can carry it."""
    try:
        return check_limit_name(text)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def check_proxy(text: str, what: str) -> str:
    """A trusted proxy: an address or a CIDR network."""
    try:
        TrustedProxies.parse([text])
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    return text


def default_limit_name(key: str) -> str:
    """``per-`` and the kinds of the key source: ``per-ip``, ``per-header``, ``per-ip+cookie``."""
    return "per-" + "+".join(part.kind for part in KeySource.parse(key).parts)


def limit_rule(values: Mapping[str, Any], given: Mapping[str, bool], names: Mapping[str, str]) -> LimitRule:
    """A :class:`LimitRule` from one limit's values (every key of :data:`LIMIT_DEFAULTS`, each
    already checked on its own); ``given`` says which were set, ``names`` how to call each
    setting in a message (``--burst``, or a table's key)."""
    if values["rate"] is None:
        raise ConfigError(f"no rate: give {names['rate']} such as 10r/s or 600r/m")
    burst, delay = values["burst"], values["delay"]
    if values["nodelay"] and given["delay"]:
        raise ConfigError(
            f"{names['nodelay']} and {names['delay']} {delay}: give one ({names['nodelay']} is "
            f"{names['delay']} equal to {names['burst']})"
        )
    if delay > burst:
        raise ConfigError(
            f"{names['delay']} {delay} exceeds {names['burst']} {burst}: at most the whole burst "
            f"passes at once ({names['nodelay']})"
        )
    name = values["limit_name"] or default_limit_name(values["key"])
    limit = Limit(
        name,
        parse_rate(values["rate"]),
        burst,
        burst if values["nodelay"] else delay,
        values["status"],
    )
    return LimitRule(limit, KeySource.parse(values["key"]), values["dry_run"], values["concurrency"])
