"""`distpat ratelimit` settings, and the ``[[stage]] kind = "ratelimit"`` table of a pipeline file.

`distpat ratelimit` takes every option of `distpat proxy` (:data:`distpat.config.proxy.OPTIONS`)
and one limit's (:data:`LIMIT_OPTIONS`), read the same way: flag, then ``DISTPAT_*`` variable,
then the TOML file's top level or ``[ratelimit]`` table, then the default. The limit is nginx's
``limit_req``: ``--rate`` as nginx writes it (``10r/s``, ``600r/m``), ``--burst N``, ``--delay N``
or ``--nodelay`` (``delay=burst``), refusals with ``--status`` (429 by default, nginx says 503),
``--dry-run`` (nginx's ``limit_req_dry_run``), ``--concurrency N`` (``limit_conn``), the client's
address behind ``--trusted-proxy`` networks (``set_real_ip_from``, ``real_ip_recursive on``).
The command's one stage is a :class:`~distpat.core.ratelimit_stage.RateLimitStage` named
``ratelimit``.

In a pipeline file (:mod:`distpat.config.pipeline`) one stage may hold several limits, each a
table with the same keys as the command's options (``name`` for ``limit_name``)::

    [[stage]]
    kind = "ratelimit"
    trusted_proxy = ["10.0.0.0/8"]
    max_keys = 100000
    redis = "redis://127.0.0.1:6379/0"   # shared by every worker and replica (optional)
    on_redis_error = "local"             # open, closed or local, while Redis fails
    limits = [
      { name = "per-ip", rate = "10r/s", burst = 20, key = "ip" },
      { name = "per-key", rate = "100r/m", key = "header:X-Api-Key", concurrency = 4 },
    ]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from distpat.config.options import Kind, Option, choice, read_toml_value, resolve_options
from distpat.config.proxy import OPTIONS, proxy_config
from distpat.config.stages import StageTable, register
from distpat.core.limit_rules import (
    LIMIT_DEFAULTS,
    check_key,
    check_name,
    check_proxy,
    check_rate,
    check_status,
    default_limit_name,
    limit_rule,
)
from distpat.core.ratelimit_stage import DEFAULT_MAX_KEYS, ON_REDIS_ERROR, LimitRule, RateLimitStage
from distpat.core.real_ip import TrustedProxies
from distpat.errors import ConfigError
from distpat.net.proxy import ProxyConfig

__all__ = [
    "LIMIT_OPTIONS",
    "RATELIMIT_OPTIONS",
    "RATELIMIT_STAGE_KEYS",
    "build_ratelimit_config",
    "build_ratelimit_stage",
    "default_limit_name",
]


def _redis(text: str, what: str) -> str:
    from distpat.net.carriers import parse_redis_url

    try:
        parse_redis_url(text)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    return text


log = logging.getLogger("distpat.ratelimit")


LIMIT_OPTIONS: tuple[Option, ...] = (
    Option(
        "rate",
        Kind.TEXT,
        LIMIT_DEFAULTS["rate"],
        "requests per key, as nginx's rate=: 10r/s, 600r/m (required)",
        "RATE",
        check=check_rate,
    ),
    Option(
        "burst",
        Kind.COUNT,
        LIMIT_DEFAULTS["burst"],
        "requests a key may send beyond the rate before it is refused",
        "N",
        minimum=0,
    ),
    Option(
        "key",
        Kind.TEXT,
        LIMIT_DEFAULTS["key"],
        "what a bucket belongs to: ip, header:NAME, cookie:NAME, query:NAME, uri, path, or A+B",
        "SOURCE",
        check=check_key,
    ),
    Option(
        "delay",
        Kind.COUNT,
        LIMIT_DEFAULTS["delay"],
        "requests of a burst that pass at once; the rest up to --burst are held (nginx's delay=)",
        "N",
        minimum=0,
    ),
    Option(
        "nodelay",
        Kind.SWITCH,
        LIMIT_DEFAULTS["nodelay"],
        "the whole burst passes at once (nginx's nodelay; --delay = --burst)",
    ),
    Option(
        "status",
        Kind.COUNT,
        LIMIT_DEFAULTS["status"],
        "the status of a refusal (4xx or 5xx)",
        "CODE",
        check=check_status,
    ),
    Option(
        "dry_run", Kind.SWITCH, LIMIT_DEFAULTS["dry_run"], "refuse nothing: only count what would be refused"
    ),
    Option(
        "concurrency",
        Kind.COUNT,
        LIMIT_DEFAULTS["concurrency"],
        "requests in flight per key (more are refused with 503; 0: no bound)",
        "N",
        minimum=0,
    ),
    Option(
        "limit_name",
        Kind.TEXT,
        LIMIT_DEFAULTS["limit_name"],
        "the limit's name in the RateLimit fields (default per-KIND of --key, such as per-ip)",
        "NAME",
        check=check_name,
    ),
)
"""One limit's options: the command's flags, and the keys of a ``limits`` entry of a stage table
(checked by :mod:`distpat.core.limit_rules`, which :func:`distpat.aiohttp.ratelimit_middleware` uses too)."""

_STAGE_WIDE: tuple[Option, ...] = (
    Option(
        "max_keys",
        Kind.COUNT,
        DEFAULT_MAX_KEYS,
        "keys each limit tracks; past it a new key is refused until one drains",
        "N",
    ),
    Option(
        "trusted_proxy",
        Kind.TEXT,
        (),
        "a proxy whose X-Forwarded-For names the client: an address or CIDR network (repeatable)",
        "CIDR",
        repeat=True,
        check=check_proxy,
    ),
    Option(
        "redis",
        Kind.TEXT,
        None,
        "share the limits through this Redis server: redis://[:password@]host[:port][/db]",
        "URL",
        check=_redis,
    ),
    Option(
        "on_redis_error",
        Kind.TEXT,
        "local",
        "while Redis fails: open (admit), closed (refuse with 503) or local (this process's own limits)",
        "MODE",
        check=choice(*ON_REDIS_ERROR),
    ),
)

RATELIMIT_OPTIONS: tuple[Option, ...] = (*OPTIONS, *LIMIT_OPTIONS, *_STAGE_WIDE)
"""`distpat ratelimit`: every option of `distpat proxy`, one limit's, the key table's and the proxies'."""


def build_ratelimit_config(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> tuple[ProxyConfig, dict[str, Any]]:
    """`distpat ratelimit`'s configuration: the proxy's, with one :class:`RateLimitStage` of one
    limit; and the resolved option values."""
    sources: dict[str, int] = {}
    values = resolve_options(
        RATELIMIT_OPTIONS, flags, environ=environ, config_file=config_file, table="ratelimit", sources=sources
    )
    names = {o.name: "--" + o.name.replace("_", "-") for o in LIMIT_OPTIONS}
    rule = limit_rule(values, {name: sources[name] > 0 for name in names}, names)
    stage = RateLimitStage(
        [rule],
        trusted=TrustedProxies.parse(values["trusted_proxy"]) if values["trusted_proxy"] else None,
        max_keys=values["max_keys"],
        name="ratelimit",
        redis_url=values["redis"],
        on_redis_error=values["on_redis_error"],
    )
    stage.notify = log.warning
    config = proxy_config(values)
    return replace(config, stages=(stage,), redis=values["redis"]), values


# -- a pipeline file's [[stage]] table --------------------------------------------------------

_ENTRY_KEYS = {("name" if o.name == "limit_name" else o.name): o for o in LIMIT_OPTIONS}
RATELIMIT_STAGE_KEYS = ("limits", *(o.name for o in _STAGE_WIDE))
"""The keys of a ``[[stage]] kind = "ratelimit"`` table beside ``kind`` and ``name``."""


def _entry(table: StageTable, index: int, entry: object) -> LimitRule:
    where = f"limits[{index}]"
    if not isinstance(entry, dict):
        raise table.error(where, 'must be a table such as { rate = "10r/s", burst = 20, key = "ip" }')
    for key in entry:
        if key not in _ENTRY_KEYS:
            raise table.error(f"{where}.{key}", f"unknown key; a limit takes {', '.join(_ENTRY_KEYS)}")
    values: dict[str, Any] = {}
    for key, option in _ENTRY_KEYS.items():
        values[option.name] = (
            read_toml_value(option, entry[key], f"{table.where}, key '{where}.{key}'")
            if key in entry
            else option.default
        )
    names = {option.name: f"{where}.{key}" for key, option in _ENTRY_KEYS.items()}
    try:
        return limit_rule(values, {option.name: key in entry for key, option in _ENTRY_KEYS.items()}, names)
    except ConfigError as exc:
        raise table.error(where, str(exc)) from None


def build_ratelimit_stage(table: StageTable) -> RateLimitStage:
    """A ``[[stage]] kind = "ratelimit"`` table: ``limits`` an array of limit tables, and the
    stage's ``trusted_proxy``, ``max_keys``, ``redis`` and ``on_redis_error``."""
    limits = table.get("limits")
    if not isinstance(limits, list) or not limits:
        raise table.error(
            "limits",
            'needs an array of limits, such as [{ name = "per-ip", rate = "10r/s", burst = 20, key = "ip" }]',
        )
    rules = [_entry(table, i, entry) for i, entry in enumerate(limits)]
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        first = seen.setdefault(rule.limit.name, i)
        if first != i:
            raise table.error(
                f"limits[{i}].name",
                f"limits[{first}] is named {rule.limit.name!r} already: give each limit its own name",
            )
    option = {o.name: o for o in _STAGE_WIDE}
    proxies: Sequence[str] = table.option(option["trusted_proxy"])
    stage = RateLimitStage(
        rules,
        trusted=TrustedProxies.parse(proxies) if proxies else None,
        max_keys=table.option(option["max_keys"]),
        redis_url=table.option(option["redis"]),
        on_redis_error=table.option(option["on_redis_error"]),
    )
    stage.notify = log.warning
    return stage


register(
    "ratelimit",
    build_ratelimit_stage,
    keys=RATELIMIT_STAGE_KEYS,
    summary="the rate limiter: nginx's limit_req buckets per key, RateLimit fields, limit_conn",
)
