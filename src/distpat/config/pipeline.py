"""The pipeline file of ``distpat run --config FILE``: the proxy's options, named pools, stages.

::

    # pipeline.toml
    listen = "127.0.0.1:8080"          # every option of `distpat proxy`, at the top level
    admin = "127.0.0.1:9901"

    [pools.old]
    upstreams = ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]

    [pools.new]
    upstreams = ["http://10.0.0.3:8080"]

    [[stage]]                          # the stages every request passes, in order
    kind = "split"
    name = "checkout"
    key = "cookie:sid"
    variants = [{ name = "new", percent = 10 }, { name = "old", percent = "*" }]

The top level holds the options of `distpat proxy` (:data:`distpat.config.proxy.OPTIONS`,
each also a ``DISTPAT_*`` variable, which wins over the file) and ``mirror_max_in_flight``.
``upstream`` is the pool named ``default`` (or write ``[pools.default]``; not both), which
takes the requests no stage sends elsewhere. Each ``[pools.NAME]`` has ``upstreams`` (URLs)
and may have its own ``balance`` (``round_robin`` or ``least_outstanding``); without one, a pool
is balanced as the top-level ``balance`` says.
Each ``[[stage]]`` has ``kind`` (looked up in :data:`distpat.config.stages.STAGE_KINDS`), an
optional ``name`` (unique; ``KIND-N`` otherwise), and its kind's keys.

Strict: an unknown key or table anywhere is refused, and every message names the file, the
table and the key.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distpat.config.options import Option, choice, resolve_options
from distpat.config.proxy import OPTIONS, proxy_config
from distpat.config.split import MIRROR_MAX_IN_FLIGHT
from distpat.config.stages import STAGE_KINDS, StageTable, build_stage
from distpat.core.split_stage import check_name
from distpat.core.stage import Stage
from distpat.errors import ConfigError
from distpat.net.proxy import ProxyConfig
from distpat.net.upstream import parse_upstream_url

__all__ = ["PIPELINE_OPTIONS", "POOL_KEYS", "load_pipeline"]

PIPELINE_OPTIONS: tuple[Option, ...] = (*OPTIONS, MIRROR_MAX_IN_FLIGHT)
"""The top-level options of a pipeline file."""

POOL_KEYS = ("upstreams", "balance")
"""The keys of a ``[pools.NAME]`` table."""

_BALANCE = next(o for o in OPTIONS if o.name == "balance")
_TABLES = ("pools", "stage")


def _load(source: str) -> dict[str, Any]:
    try:
        with Path(source).open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None


def _suggest(key: str, known: list[str]) -> str:
    hint = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _options(source: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The top level's options, every other key refused."""
    known = {o.name for o in PIPELINE_OPTIONS}
    options: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _TABLES:
            continue
        if key in known:
            options[key] = value
            continue
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            raise ConfigError(
                f"{source}: unknown table [{key}]{_suggest(key, list(_TABLES))}: a pipeline file has "
                "[pools.NAME] tables and [[stage]] tables beside its options"
            )
        raise ConfigError(f"{source}: unknown option {key!r}{_suggest(key, sorted(known))}")
    return options


def _pools(source: str, raw: object, balances: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """The pools of the file, by name; their own ``balance`` values go into ``balances``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: pools must be tables, [pools.NAME] with upstreams = [...]")
    pools: dict[str, tuple[str, ...]] = {}
    for name, table in raw.items():
        where = f"{source}: [pools.{name}]"
        try:
            check_name(name, "pool name")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not isinstance(table, dict):
            raise ConfigError(f'{where}: must be a table with upstreams = ["http://HOST:PORT", ...]')
        for key in table:
            if key not in POOL_KEYS:
                raise ConfigError(
                    f"{where}: unknown key {key!r}{_suggest(key, list(POOL_KEYS))}; a pool takes "
                    f"{', '.join(POOL_KEYS)}"
                )
        urls = table.get("upstreams")
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise ConfigError(
                f"{where}, key 'upstreams': needs an array of upstream URLs, such as "
                '["http://127.0.0.1:8081"]'
            )
        for url in urls:
            try:
                parse_upstream_url(url)
            except ConfigError as exc:
                raise ConfigError(f"{where}, key 'upstreams': {exc}") from None
        if len(set(urls)) != len(urls):
            twice = next(u for u in urls if urls.count(u) > 1)
            raise ConfigError(f"{where}, key 'upstreams': {twice} is listed twice")
        if "balance" in table:
            own = table["balance"]
            if not isinstance(own, str):
                raise ConfigError(f"{where}, key 'balance': must be a string, not {own!r}")
            choice("round_robin", "least_outstanding")(own, f"{where}, key 'balance'")
            balances[name] = own
        pools[name] = tuple(urls)
    return pools


def _stages(
    source: str, raw: object, pools: Mapping[str, tuple[str, ...]], added: dict[str, tuple[str, ...]]
) -> tuple[Stage, ...]:
    """The stages of the file; the pools they make themselves go into ``added``."""
    tables = raw if isinstance(raw, list) else None
    if tables is None or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(
            f"{source}: stage must be [[stage]] tables (an array of tables), each with kind = ..."
        )
    stages: list[Stage] = []
    names: dict[str, int] = {}
    for index, table in enumerate(tables, 1):
        kind = table.get("kind")
        if not isinstance(kind, str) or not kind:
            known = ", ".join(sorted(STAGE_KINDS))
            raise ConfigError(f'{source}: [[stage]] {index}: needs kind = "..." (one of {known})')
        name = table.get("name", "")
        values = {k: v for k, v in table.items() if k not in ("kind", "name")}
        entry = StageTable(
            source, index, kind, name if isinstance(name, str) else "", values, {**pools, **added}
        )
        if not isinstance(name, str):
            raise entry.error("name", f"must be a string, not {name!r}")
        if name:
            try:
                check_name(name, "stage name")
            except ConfigError as exc:
                raise entry.error("name", str(exc)) from None
        stage = build_stage(entry)
        added.update(entry.added)
        label = stage.name or f"{kind}-{index}"
        if label in names:
            raise entry.error("name", f"{label!r} is the name of [[stage]] {names[label]} already")
        names[label] = index
        stage.name = label
        for pool in stage.pools:
            if pool not in pools and pool not in added:
                raise entry.error(None, f"uses pool {pool!r}, which no [pools.{pool}] table defines")
        stages.append(stage)
    return tuple(stages)


def load_pipeline(
    source: str, *, environ: Mapping[str, str] | None = None
) -> tuple[ProxyConfig, dict[str, Any]]:
    """The :class:`ProxyConfig` of pipeline file ``source`` and the resolved top-level options
    (workers, loop, logging: what the process layer needs). ``DISTPAT_*`` variables in
    ``environ`` (default: the process's) win over the file's options."""
    raw = _load(source)
    values = resolve_options(
        PIPELINE_OPTIONS,
        {},
        environ=environ,
        config_file=source,
        table="",
        config_env=None,
        file_values=_options(source, raw),
    )
    balances: dict[str, str] = {}
    pools = _pools(source, raw.get("pools", {}), balances)
    default = pools.pop("default", None)
    if default is not None and values["upstream"]:
        raise ConfigError(
            f"{source}: both upstream and [pools.default] give the default pool: keep one of them"
        )
    upstreams: tuple[str, ...] = default if default is not None else values["upstream"]
    every_pool = dict(pools)
    if upstreams:
        every_pool["default"] = upstreams
    added: dict[str, tuple[str, ...]] = {}
    stages = _stages(source, raw.get("stage", []), every_pool, added)
    pools.update(added)
    if not upstreams and not (pools and stages):
        raise ConfigError(
            f"{source}: nothing to forward to: give upstream = [...] (or a [pools.default] table) for "
            "the requests no stage routes, or [pools.NAME] tables and [[stage]] tables that route to them"
        )
    config = proxy_config(
        {**values, "upstream": upstreams},
        pools=tuple(pools.items()),
        stages=stages,
        mirror_max_in_flight=values["mirror_max_in_flight"],
        pool_balance=tuple(balances.items()),
        redis=_redis_server(source, stages),
    )
    return config, values


def _redis_server(source: str, stages: tuple[Stage, ...]) -> str | None:
    """The one Redis server the stages' Calls go to (the engine keeps one client), or None."""
    named = [(stage.name, stage.redis_url) for stage in stages if stage.redis_url is not None]
    for name, url in named[1:]:
        if url != named[0][1]:
            raise ConfigError(
                f"{source}: [[stage]] {name!r} uses Redis {url}, [[stage]] {named[0][0]!r} {named[0][1]}: "
                "every stage of a pipeline shares one Redis server"
            )
    return named[0][1] if named else None
