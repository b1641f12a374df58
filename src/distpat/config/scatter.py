"""`distpat scatter` settings: the scatter/gather root of the book's chapter 7.

`distpat scatter --listen HOST:PORT --leaf URL[,URL...] [--leaf ...] [--deadline MS]
[--hedge-after MS|pNN] [--hedge-max-percent P] [--need all|any|N]`, plus the options of
`distpat proxy` but ``--upstream``: each ``--leaf`` is one shard, its comma-separated URLs that
shard's replicas (pool ``shard-I``, tried in the order given).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from distpat.config.options import Kind, Option, resolve_options
from distpat.config.proxy import OPTIONS, proxy_config
from distpat.config.stages import StageTable, register
from distpat.config.units import parse_duration
from distpat.core.scatter_stage import ScatterStage
from distpat.errors import ConfigError
from distpat.net.proxy import ProxyConfig
from distpat.net.upstream import parse_upstream_url

__all__ = [
    "SCATTER_OPTIONS",
    "SCATTER_STAGE_KEYS",
    "build_scatter_config",
    "build_scatter_stage",
    "parse_hedge",
]


def _leaf(text: str, what: str) -> str:
    for url in text.split(","):
        try:
            parse_upstream_url(url.strip())
        except ConfigError as exc:
            raise ConfigError(f"{what}: {exc}") from None
    return text


def parse_hedge(text: str) -> tuple[float | None, int | None]:
    """``--hedge-after``: ``off``, a delay (``20``: milliseconds, or ``20ms``, ``0.05s``), or
    ``pNN`` (the shards' observed NN-th latency percentile) -> (seconds, percentile)."""
    if text == "off":
        return None, None
    if text.startswith("p") and text[1:].isdigit():
        percentile = int(text[1:])
        if not 1 <= percentile <= 99:
            raise ConfigError(f"hedge percentile {text!r}: give p1 to p99")
        return None, percentile
    try:
        return parse_duration(text, "ms"), None
    except ValueError:
        raise ConfigError(f"hedge-after {text!r}: give off, a delay in ms (20, 20ms) or pNN (p95)") from None


def _hedge(text: str, what: str) -> str:
    try:
        parse_hedge(text)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    return text


def _need(text: str, what: str) -> str:
    if text not in ("all", "any") and not (text.isdigit() and int(text) >= 1):
        raise ConfigError(f"{what} must be all, any or a number of shards, not {text!r}")
    return text


SCATTER_OPTIONS: tuple[Option, ...] = (
    Option(
        "leaf",
        Kind.TEXT,
        (),
        "one shard: its replicas' URLs, comma-separated (repeat for each shard)",
        "URL[,URL...]",
        repeat=True,
        check=_leaf,
    ),
    Option("deadline", Kind.DURATION_MS, 1.0, "answer with what has come by then (milliseconds)", "MS"),
    Option(
        "hedge_after",
        Kind.TEXT,
        "off",
        "hedge a shard's request after MS, or pNN of its latencies",
        "MS|pNN",
        check=_hedge,
    ),
    Option("hedge_max_percent", Kind.NUMBER, 10.0, "hedges stay under this percentage of requests", "P"),
    Option(
        "need",
        Kind.TEXT,
        "any",
        "shards that must answer for a 200: all, any, or N",
        "all|any|N",
        check=_need,
    ),
)
_SERVER_OPTIONS = tuple(o for o in OPTIONS if o.name != "upstream")
ALL_OPTIONS = (*_SERVER_OPTIONS, *SCATTER_OPTIONS)


def build_scatter_config(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> tuple[ProxyConfig, dict[str, Any]]:
    """`distpat scatter`'s configuration: one pool per shard, one ScatterStage."""
    values = resolve_options(ALL_OPTIONS, flags, environ=environ, config_file=config_file, table="scatter")
    if not values["leaf"]:
        raise ConfigError("no leaves: give --leaf URL[,URL...] once per shard")
    pools: list[tuple[str, tuple[str, ...]]] = []
    shards: list[tuple[str, tuple[str, ...]]] = []
    for i, text in enumerate(values["leaf"]):
        urls = tuple(u.strip() for u in text.split(",") if u.strip())
        names = tuple("{}:{}".format(*parse_upstream_url(u)) for u in urls)
        if len(set(names)) != len(names):
            raise ConfigError(f"--leaf {text!r}: a replica is named twice")
        pools.append((f"shard-{i}", urls))
        shards.append((f"shard-{i}", names))
    hedge_after, percentile = parse_hedge(values["hedge_after"])
    need = values["need"]
    stage = ScatterStage(
        shards,
        deadline=values["deadline"],
        hedge_after=hedge_after,
        hedge_percentile=percentile,
        hedge_max_percent=float(values["hedge_max_percent"]),
        need=need if need in ("all", "any") else int(need),
    )
    config = proxy_config({**values, "upstream": ()}, pools=tuple(pools), local_only=True)
    return replace(config, stages=(stage,)), values


# -- a pipeline file's [[stage]] table --------------------------------------------------------

SCATTER_STAGE_KEYS = ("shards", "deadline", "hedge_after", "hedge_max_percent", "need")


def build_scatter_stage(table: StageTable) -> ScatterStage:
    """``[[stage]] kind = "scatter"``: ``shards`` names a pool per shard (its upstreams the replicas,
    in order), and the command's ``deadline``, ``hedge_after``, ``hedge_max_percent``, ``need``."""
    names = table.get("shards")
    if not isinstance(names, list) or not names:
        raise table.error("shards", 'needs a list of pools, one per shard, such as ["shard-0", "shard-1"]')
    shards = []
    for i, name in enumerate(names):
        pool = table.pool(f"shards[{i}]", name)
        shards.append((pool, tuple("{}:{}".format(*parse_upstream_url(u)) for u in table.pools[pool])))
    option = {o.name: o for o in SCATTER_OPTIONS}
    hedge_after, percentile = parse_hedge(table.option(option["hedge_after"]))
    need = table.option(option["need"])
    try:
        return ScatterStage(
            shards,
            deadline=table.option(option["deadline"]),
            hedge_after=hedge_after,
            hedge_percentile=percentile,
            hedge_max_percent=float(table.option(option["hedge_max_percent"])),
            need=need if need in ("all", "any") else int(need),
        )
    except ConfigError as exc:
        raise table.error(None, str(exc)) from None


register(
    "scatter",
    build_scatter_stage,
    keys=SCATTER_STAGE_KEYS,
    summary="scatter/gather: a query to one replica of every shard, hedged, merged top-k, partial said",
)
