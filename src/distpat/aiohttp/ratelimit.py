"""The rate limiter inside an aiohttp application: the stage of ``distpat ratelimit``, driven by
:mod:`distpat.aiohttp` (the book's chapter 5, denial-of-service defense; nginx's ``limit_req``
and ``limit_conn``).

:func:`ratelimit_middleware` is a :class:`~distpat.aiohttp.PipelineMiddleware` whose one stage is
a :class:`~distpat.core.ratelimit_stage.RateLimitStage` that only decides:

* an admitted request goes on into the application's handler, and the ``RateLimit-Policy`` and
  ``RateLimit`` fields (draft-ietf-httpapi-ratelimit-headers) are added to whatever it answers;
* a request past a limit's delay threshold is held (the request's own task awaits
  ``asyncio.sleep``; no task is made for it), then goes on;
* a refused one is answered at once with the limit's status (429), ``Retry-After`` and the same
  two fields; the handler never runs;
* a concurrency bound's permit is given back once the request ends, however it ends (answered,
  the handler raised, the client left).

The options are those of ``distpat ratelimit`` as keywords, or ``limits``, a list of the pipeline
file's limit tables; they are checked by :mod:`distpat.core.limit_rules`, so a bad value is
refused with the command's message (naming the keyword). In shared mode (``redis_url``) every
process and replica with the same Redis server shares the buckets: the stage's Redis calls go
through the application's Redis client, which the middleware's ``cleanup_ctx`` opens. See
``docs/aiohttp.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from distpat.aiohttp.middleware import PipelineMiddleware
from distpat.aiohttp.pools import UpstreamPools
from distpat.core.limit_rules import (
    LIMIT_DEFAULTS,
    check_key,
    check_name,
    check_proxy,
    check_rate,
    check_status,
    limit_rule,
)
from distpat.core.limiter import DEFAULT_STATUS
from distpat.core.pipeline import Pipeline
from distpat.core.ratelimit_stage import DEFAULT_MAX_KEYS, LimitRule, RateLimitStage
from distpat.core.real_ip import TrustedProxies
from distpat.errors import ConfigError

__all__ = ["RateLimitMiddleware", "ratelimit_middleware"]

log = logging.getLogger("distpat.ratelimit")

_TABLE_KEYS = {("name" if key == "limit_name" else key): key for key in LIMIT_DEFAULTS}
"""A ``limits`` entry's keys (the pipeline file's) -> the setting each is."""


class RateLimitMiddleware(PipelineMiddleware):
    """A :class:`PipelineMiddleware` whose one stage is a :class:`RateLimitStage` (:attr:`stage`,
    whose ``counts`` and ``stats()`` say what it decided); made by :func:`ratelimit_middleware`."""

    __slots__ = ("stage",)

    def __init__(self, stage: RateLimitStage) -> None:
        super().__init__(Pipeline([stage]), UpstreamPools(None), redis_url=stage.redis_url)
        self.stage = stage

    def __repr__(self) -> str:
        return f"<RateLimitMiddleware {self.stage!r}>"


def _count(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be a whole number, not {value!r}")
    if value < minimum:
        raise ConfigError(f"{what} must be at least {minimum}, not {value}")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, not {value!r}")
    return value


def _switch(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, not {value!r}")
    return value


def _checked(values: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """One limit's values, each checked as the command checks its option."""
    out = dict(values)
    if out["rate"] is not None:
        out["rate"] = check_rate(_text(out["rate"], names["rate"]), names["rate"])
    for setting in ("burst", "delay", "concurrency"):
        out[setting] = _count(out[setting], names[setting], 0)
    out["status"] = check_status(_count(out["status"], names["status"], 1), names["status"])
    for setting in ("nodelay", "dry_run"):
        out[setting] = _switch(out[setting], names[setting])
    out["key"] = check_key(_text(out["key"], names["key"]), names["key"])
    if out["limit_name"] is not None:
        out["limit_name"] = check_name(_text(out["limit_name"], names["limit_name"]), names["limit_name"])
    return out


def _entry(index: int, entry: object) -> LimitRule:
    where = f"limits[{index}]"
    if not isinstance(entry, Mapping):
        raise ConfigError(f'{where} must be a mapping such as {{"rate": "10r/s", "burst": 20, "key": "ip"}}')
    for key in entry:
        if key not in _TABLE_KEYS:
            raise ConfigError(f"{where}.{key}: unknown key; a limit takes {', '.join(_TABLE_KEYS)}")
    names = {setting: f"{where}.{key}" for key, setting in _TABLE_KEYS.items()}
    values = {setting: entry.get(key, LIMIT_DEFAULTS[setting]) for key, setting in _TABLE_KEYS.items()}
    given = {setting: key in entry for key, setting in _TABLE_KEYS.items()}
    return limit_rule(_checked(values, names), given, names)


def _redis_url(url: object) -> str:
    text = _text(url, "redis_url")
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018  (a bad port raises here)
        int(parts.path.strip("/") or 0)
    except ValueError:
        raise ConfigError(f"redis_url {text!r}: invalid port or database number") from None
    if parts.scheme != "redis" or not parts.hostname:
        raise ConfigError(f"redis_url {text!r}: give redis://[:password@]host[:port][/db]")
    return text


def ratelimit_middleware(
    *,
    rate: str | None = None,
    burst: int = 0,
    key: str = "ip",
    delay: int = 0,
    nodelay: bool = False,
    status: int = DEFAULT_STATUS,
    dry_run: bool = False,
    concurrency: int = 0,
    limit_name: str | None = None,
    limits: Sequence[Mapping[str, Any]] | None = None,
    max_keys: int = DEFAULT_MAX_KEYS,
    trusted_proxy: Sequence[str] | str = (),
    redis_url: str | None = None,
    on_redis_error: str = "local",
    name: str = "ratelimit",
) -> RateLimitMiddleware:
    """A middleware limiting the requests of the application it is added to, as ``distpat
    ratelimit`` limits them (see docs/ratelimit.md for what each option does).

    One limit: ``rate`` (``"10r/s"``, ``"600r/m"``; required), ``burst``, ``key`` (``ip``,
    ``header:NAME``, ``cookie:NAME``, ``query:NAME``, ``uri``, ``path``, or ``A+B``), ``delay``
    or ``nodelay``, ``status`` of a refusal, ``dry_run``, ``concurrency`` (requests in flight per
    key; 0: no bound) and ``limit_name`` (by default ``per-`` the key's kinds). Several: ``limits``,
    a list of mappings with the pipeline file's keys (``name``, ``rate``, ``burst``, ...), instead.
    For the whole stage: ``max_keys`` each limit tracks, ``trusted_proxy`` addresses or networks
    whose ``X-Forwarded-For`` names the client, ``redis_url`` to share the buckets through one
    Redis server, and ``on_redis_error`` (``open``, ``closed`` or ``local``) while it fails; ``name``
    is the stage's.

    Add the middleware to ``app.middlewares``, its ``on_response_prepare`` to that signal (the
    fields then reach a response the handler streams itself) and, with ``redis_url``, its
    ``cleanup_ctx`` (it opens the Redis client). Raises :class:`~distpat.errors.ConfigError`."""
    one = {
        "rate": rate,
        "burst": burst,
        "key": key,
        "delay": delay,
        "nodelay": nodelay,
        "status": status,
        "dry_run": dry_run,
        "concurrency": concurrency,
        "limit_name": limit_name,
    }
    given = {setting: value != LIMIT_DEFAULTS[setting] for setting, value in one.items()}
    if limits is not None:
        set_too = [setting for setting, was in given.items() if was]
        if set_too:
            raise ConfigError(
                f"give limits or one limit's options, not both (limits and {', '.join(set_too)})"
            )
        if isinstance(limits, (str, bytes, Mapping)) or not limits:
            raise ConfigError('limits needs a list of limits, such as [{"name": "per-ip", "rate": "10r/s"}]')
        rules = [_entry(i, entry) for i, entry in enumerate(limits)]
    else:
        names = {setting: setting for setting in one}
        rules = [limit_rule(_checked(one, names), given, names)]
    proxies = (trusted_proxy,) if isinstance(trusted_proxy, str) else tuple(trusted_proxy)
    for proxy in proxies:
        check_proxy(_text(proxy, "trusted_proxy"), "trusted_proxy")
    stage = RateLimitStage(
        rules,
        trusted=TrustedProxies.parse(proxies) if proxies else None,
        max_keys=_count(max_keys, "max_keys", 1),
        name=_text(name, "name"),
        redis_url=_redis_url(redis_url) if redis_url is not None else None,
        on_redis_error=on_redis_error,
    )
    stage.notify = log.warning
    return RateLimitMiddleware(stage)
