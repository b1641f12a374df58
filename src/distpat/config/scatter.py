"""`distpat scatter` settings, and the ``scatter`` kind of a pipeline file's ``[[stage]]`` tables.

`distpat scatter` takes every option of `distpat proxy` (:data:`distpat.config.proxy.OPTIONS`)
but ``upstream`` (each shard brings its own servers), and the root's: ``--leaf URL[,URL...]``
(repeatable: one shard each, its URLs the shard's replicas in preference order), ``--deadline
MS``, ``--hedge-after MS|pNN``, ``--hedge-max-percent P``, ``--need all|any|N`` and ``--merge
NAME`` (``search``, ``concat:FIELD``, ``topk:FIELD:KEY``, ``sum:FIELD``). Read the same way as
every command's options (flag, then ``DISTPAT_*`` variable, then the TOML file's top level or
``[scatter]`` table, then the default).

Shard ``I`` (from 0) becomes the pool ``shard-I`` and the one stage a
:class:`~distpat.core.scatter_stage.ScatterStage` named ``scatter``: with ``--merge search`` it
answers ``GET /search`` only, with a generic merge every GET.

In a pipeline file (:mod:`distpat.config.pipeline`) the same stage is::

    [[stage]]
    kind = "scatter"
    name = "root"
    shards = [["http://127.0.0.1:9001", "http://127.0.0.1:9002"], ["http://127.0.0.1:9003"]]
    deadline = 500          # milliseconds, or "500ms", "1s"
    hedge_after = "p95"     # or "20ms"
    hedge_max_percent = 5
    need = "any"
    merge = "search"

A shard given as URLs becomes the pool ``NAME-shard-I`` (NAME: the stage's name, or
``scatter-N`` for the N-th table); a shard given as a string names one of the file's pools.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distpat.config.options import Kind, Option, checked_by, hostport, read_value, resolve_options
from distpat.config.proxy import OPTIONS, proxy_config
from distpat.config.stages import StageTable, register
from distpat.core.scatter_merge import parse_merge
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
    "parse_leaf",
]


def _name(url: str) -> str:
    host, port = parse_upstream_url(url)
    return f"{host}:{port}"


def parse_leaf(text: str, what: str) -> tuple[str, ...]:
    """``URL[,URL...]``: one shard's replicas, in preference order."""
    urls = tuple(u.strip() for u in text.split(","))
    if not all(urls):
        raise ConfigError(f"{what} must be URL[,URL...] (one shard's replicas), not {text!r}")
    names = []
    for url in urls:
        try:
            names.append(_name(url))
        except ConfigError as exc:
            raise ConfigError(f"{what} {text!r}: {exc}") from None
    if len(set(names)) != len(names):
        raise ConfigError(f"{what} {text!r}: a replica is listed twice")
    return urls


_MS = Option("hedge_after", Kind.DURATION_MS, None, "", minimum=0)


def parse_hedge(value: Any, what: str) -> tuple[float | None, int | None]:
    """``pNN`` (a percentile, 1 to 99) or a duration (``20``: milliseconds, ``20ms``, ``0.1s``):
    (seconds, None) or (None, NN)."""
    text = str(value).strip() if not isinstance(value, bool) else ""
    if text[:1] in ("p", "P"):
        digits = text[1:]
        if not (digits.isdigit() and digits.isascii() and 1 <= int(digits) <= 99):
            raise ConfigError(f"{what} must be MS or pNN (p50 to p99), not {value!r}")
        return None, int(digits)
    try:
        return float(read_value(_MS, value, what)), None
    except ConfigError:
        raise ConfigError(
            f"{what} must be a duration (20, 20ms, 0.1s) or pNN (such as p95), not {value!r}"
        ) from None


def _need(value: Any, what: str) -> str:
    text = str(value).strip() if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if text in ("all", "any") or (text.isdigit() and text.isascii() and int(text) >= 1):
        return text
    raise ConfigError(f"{what} must be all, any or a number of shards, not {value!r}")


def _percent(value: float, what: str) -> float:
    if not 0 <= value <= 100:
        raise ConfigError(f"{what} must be 0 to 100, not {value!r}")
    return value


_ROOT: tuple[Option, ...] = (
    Option(
        "leaf",
        Kind.TEXT,
        (),
        "a shard: its leaves' URLs, replicas in preference order (repeatable: one per shard; required)",
        "URL[,URL...]",
        repeat=True,
        check=parse_leaf,
    ),
    Option("deadline", Kind.DURATION_MS, 1.0, "answer by then with what came back (milliseconds)", "MS"),
    Option(
        "hedge_after",
        Kind.TEXT,
        None,
        "send a shard's request again to its next replica after MS, or after that shard's pNN latency "
        "(such as p95; half the deadline until 20 answers are seen)",
        "MS|pNN",
        check=parse_hedge,
    ),
    Option(
        "hedge_max_percent",
        Kind.NUMBER,
        5.0,
        "hedges stay under P percent of the sub-requests sent",
        "P",
        minimum=0,
        check=_percent,
    ),
    Option(
        "need",
        Kind.TEXT,
        "any",
        "shards that must answer for a 200: all, any or N (fewer: 502, or 504 if they only timed out)",
        "all|any|N",
        check=_need,
    ),
    Option(
        "merge",
        Kind.TEXT,
        "search",
        "how answers merge: search (GET /search, the top k hits), concat:FIELD, topk:FIELD:KEY, sum:FIELD",
        "NAME",
        check=checked_by(parse_merge),
    ),
)

SCATTER_OPTIONS: tuple[Option, ...] = (
    Option(
        "listen",
        Kind.TEXT,
        None,
        "address to serve clients on (required; :PORT: all IPv4)",
        "HOST:PORT",
        check=hostport,
    ),
    *_ROOT,
    *(o for o in OPTIONS if o.name not in ("listen", "upstream")),
)
"""`distpat scatter`: the proxy's options without ``upstream``, and the root's."""


def _stage(
    shards: list[tuple[str, tuple[str, ...]]],
    *,
    deadline: float,
    hedge: tuple[float | None, int | None] | None,
    hedge_max_percent: float,
    need: str,
    merge: str,
    name: str = "",
) -> ScatterStage:
    after, percentile = hedge if hedge is not None else (None, None)
    if need not in ("all", "any") and int(need) > len(shards):
        raise ConfigError(f"need {need}: more than the {len(shards)} shard(s) given")
    return ScatterStage(
        shards,
        deadline=deadline,
        hedge_after=after,
        hedge_percentile=percentile,
        hedge_max_percent=hedge_max_percent,
        need=need if need in ("all", "any") else int(need),
        mode=merge,
        path=b"/search" if merge == "search" else None,
        name=name,
    )


def build_scatter_config(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> tuple[ProxyConfig, dict[str, Any]]:
    """`distpat scatter`'s configuration: one pool per ``--leaf`` (``shard-I``), the scatter stage."""
    values = resolve_options(
        SCATTER_OPTIONS, flags, environ=environ, config_file=config_file, table="scatter"
    )
    leaves: tuple[tuple[str, ...], ...] = values["leaf"]
    if not leaves:
        raise ConfigError(
            "no leaf: give --leaf URL[,URL...] for each shard (such as --leaf http://127.0.0.1:9001 "
            "--leaf http://127.0.0.1:9002,http://127.0.0.1:9003)"
        )
    pools = tuple((f"shard-{i}", urls) for i, urls in enumerate(leaves))
    try:
        stage = _stage(
            [(pool, tuple(_name(u) for u in urls)) for pool, urls in pools],
            deadline=values["deadline"],
            hedge=values["hedge_after"],
            hedge_max_percent=values["hedge_max_percent"],
            need=values["need"],
            merge=values["merge"],
            name="scatter",
        )
    except ConfigError as exc:
        raise ConfigError(f"--{str(exc).removeprefix('scatter: ')}") from None
    return proxy_config({**values, "upstream": ()}, pools=pools, stages=(stage,)), values


# -- the [[stage]] kind ------------------------------------------------------------------------

SCATTER_STAGE_KEYS = ("shards", "deadline", "hedge_after", "hedge_max_percent", "need", "merge")
_OPTION = {o.name: o for o in _ROOT}


def build_scatter_stage(table: StageTable) -> ScatterStage:
    """A ``[[stage]] kind = "scatter"`` table: ``shards`` an array whose entries are arrays of
    replica URLs (the stage's own pools) or names of the file's pools."""
    raw = table.get("shards")
    if not isinstance(raw, list) or not raw:
        raise table.error(
            "shards",
            'needs an array of shards, such as [["http://127.0.0.1:9001"], ["http://127.0.0.1:9002"]]',
        )
    prefix = table.name or f"scatter-{table.index}"
    shards: list[tuple[str, tuple[str, ...]]] = []
    for i, entry in enumerate(raw):
        key = f"shards[{i}]"
        if isinstance(entry, str):
            pool = table.pool(key, entry)
            urls = table.pools[pool]
        elif isinstance(entry, list) and entry and all(isinstance(u, str) for u in entry):
            try:
                urls = parse_leaf(",".join(entry), "replicas")
            except ConfigError as exc:
                raise table.error(key, str(exc)) from None
            pool = table.add_pool(key, f"{prefix}-shard-{i}", urls)
        else:
            raise table.error(key, "must be an array of replica URLs, or the name of a pool (a string)")
        shards.append((pool, tuple(_name(u) for u in urls)))
    values = {name: table.option(_OPTION[name]) for name in ("deadline", "hedge_max_percent", "merge")}
    for name, check in (("hedge_after", parse_hedge), ("need", _need)):  # a string or a number
        given = table.values.get(name)
        values[name] = (
            _OPTION[name].default if given is None else check(given, f"{table.where}, key {name!r}")
        )
    try:
        return _stage(
            shards,
            deadline=values["deadline"],
            hedge=values["hedge_after"],
            hedge_max_percent=values["hedge_max_percent"],
            need=values["need"],
            merge=values["merge"],
        )
    except ConfigError as exc:
        raise table.error(None, str(exc).removeprefix("scatter: ")) from None


register(
    "scatter",
    build_scatter_stage,
    keys=SCATTER_STAGE_KEYS,
    summary="the scatter/gather root: every shard asked, slow ones hedged, answers merged",
)
