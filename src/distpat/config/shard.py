"""`distpat shard` settings, and the ``[[stage]] kind = "shard"`` table of a pipeline file.

``distpat shard`` takes every option of `distpat proxy` (:data:`distpat.config.proxy.OPTIONS`)
and the shard ones (:data:`SHARD_OPTIONS`), read the same way: flag, then ``DISTPAT_*``
variable, then the TOML file's top level or ``[shard]`` table, then the default. Its
``--upstream`` values are the shards, in order: ``URL[,weight=N]`` (``http://10.0.0.1:8081``,
``http://10.0.0.2:8081,weight=3``; a space may stand for the comma, and in ``DISTPAT_UPSTREAM``,
whose values are separated by commas, ``,weight=N`` stays with the URL before it).

Each shard is placed on the ring by its address as written in the URL (``host:port``, brackets
of an IPv6 address kept, no port when the URL gives none), which is what nginx hashes for the
same ``server`` line: with ``--algorithm nginx`` (the default) every key lands on the server
nginx's ``hash $request_uri consistent`` picks for the same servers in the same order.

:func:`build_shard_stage` reads one ``[[stage]]`` table of a pipeline file (``pool``, ``key``,
``algorithm``, ``replicas``, ``balance_factor``, ``shard_header``, ``weights``, ``name``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from distpat.config.options import Kind, Option, choice, resolve_options, whole_number
from distpat.config.proxy import OPTIONS, proxy_config
from distpat.config.stages import StageTable, register
from distpat.core.keys import KeySource
from distpat.core.ring.base import Ring
from distpat.core.shard_route import KEY_KINDS, ShardStage
from distpat.core.stage import Stage
from distpat.errors import ConfigError, RingError
from distpat.net.proxy import ProxyConfig
from distpat.net.upstream import parse_upstream_url
from distpat.ring import ALGORITHMS, make_ring

__all__ = [
    "SHARD_OPTIONS",
    "SHARD_STAGE_KEYS",
    "Shard",
    "build_shard_config",
    "build_shard_stage",
    "parse_shard",
    "shard_stage",
]

DEFAULT_POOL = "default"
_SEPARATOR = re.compile(r"[,\s]+")
_ENV_WEIGHT = re.compile(r",\s*(?=weight=)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard: its URL, the name the ring hashes (as written), the pool's name for it, a weight."""

    url: str
    ring_name: str
    """``host:port`` as the URL writes it: what nginx's ``hash ... consistent`` hashes."""
    upstream: str
    """``host:port`` as the engine's pool names the upstream (``Upstream.name``)."""
    weight: int = 1


def parse_shard(text: str, where: str) -> Shard:
    """``URL[,weight=N]`` (or ``URL weight=N``) -> :class:`Shard`; :class:`ConfigError` otherwise."""
    parts = [p for p in _SEPARATOR.split(str(text).strip()) if p]
    if not parts:
        raise ConfigError(f"{where}: a shard needs a URL such as http://10.0.0.1:8081")
    url, weight = parts[0], 1
    for part in parts[1:]:
        name, eq, value = part.partition("=")
        if name.lower() != "weight" or not eq:
            raise ConfigError(f"{where}: {text!r}: unknown parameter {part!r} (a shard takes weight=N only)")
        weight = whole_number(value, f"{where}: {text!r}: weight")
    return _shard(url, weight, where)


def _shard(url: str, weight: int, where: str) -> Shard:
    try:
        host, port = parse_upstream_url(url)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return Shard(url=url, ring_name=urlsplit(url).netloc, upstream=f"{host}:{port}", weight=weight)


def _check_shard(text: str, where: str) -> str:
    parse_shard(text, where)
    return text


def _check_key(text: str, where: str) -> str:
    try:
        KeySource.parse(text, allowed=KEY_KINDS)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return text


def _check_field(text: str, where: str) -> str:
    if not text or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", text):
        raise ConfigError(f"{where} must be a field name such as X-Shard, not {text!r}")
    return text


_SHARD_OWN: tuple[Option, ...] = (
    Option(
        "key",
        Kind.TEXT,
        "uri",
        "what places a request: uri (as the request line has it), path, header:NAME, query:NAME, cookie:NAME",
        "SOURCE",
        check=_check_key,
    ),
    Option(
        "algorithm",
        Kind.TEXT,
        "nginx",
        "the ring: nginx (placement of nginx's hash ... consistent), "
        + ", ".join(a for a in ALGORITHMS if a != "nginx"),
        "NAME",
        check=choice(*ALGORITHMS),
    ),
    Option(
        "replicas",
        Kind.COUNT,
        1,
        "distinct upstreams a request may go to: its shard, then the ring's next ones",
        "N",
    ),
    Option(
        "balance_factor",
        Kind.NUMBER,
        None,
        "bounded loads: no upstream gets more than ceil(C x mean in-flight) (C from 1, e.g. 1.25)",
        "C",
        minimum=1,
    ),
    Option(
        "shard_header",
        Kind.TEXT,
        None,
        "add this response field naming the shard",
        "NAME",
        check=_check_field,
    ),
)

SHARD_OPTIONS: tuple[Option, ...] = (
    *(
        Option(
            o.name,
            Kind.TEXT,
            (),
            "a shard: http://HOST:PORT, or http://HOST:PORT,weight=N (repeatable, in order; required)",
            o.metavar,
            repeat=True,
            check=_check_shard,
        )
        if o.name == "upstream"
        else replace(o, help="how requests without a key share the shards: round_robin, least_outstanding")
        if o.name == "balance"
        else o
        for o in OPTIONS
    ),
    *_SHARD_OWN,
)
"""Every option of `distpat proxy` (``--upstream`` names the shards) and the shard options."""


def shard_ring(shards: Sequence[Shard], algorithm: str, where: str) -> Ring:
    """The ring of ``algorithm`` over the shards' written names and weights, in order."""
    if not shards:
        raise ConfigError(f"{where}: no shards")
    seen: dict[str, str] = {}
    for s in shards:
        for name in {s.ring_name, s.upstream}:
            if name in seen:
                raise ConfigError(f"{where}: {seen[name]!r} and {s.url!r} are the same upstream ({name})")
            seen[name] = s.url
    weights = {s.ring_name: s.weight for s in shards}
    try:
        return make_ring(algorithm, weights)
    except RingError as exc:
        raise ConfigError(f"{where}: algorithm {algorithm}: {exc}") from None


def shard_stage(
    shards: Sequence[Shard],
    *,
    algorithm: str = "nginx",
    key: str = "uri",
    replicas: int = 1,
    balance_factor: float | None = None,
    shard_header: str | None = None,
    pool: str | None = None,
    name: str = "",
    where: str = "shard",
) -> ShardStage:
    """The :class:`ShardStage` for ``shards`` (one pool's upstreams, in configuration order)."""
    ring = shard_ring(shards, algorithm, where)
    if replicas > len(shards):
        raise ConfigError(f"{where}: replicas {replicas} is more than the number of shards, {len(shards)}")
    try:
        return ShardStage(
            ring,
            key=key,
            replicas=replicas,
            balance_factor=balance_factor,
            pool=pool,
            shard_header=shard_header,
            upstreams={s.ring_name: s.upstream for s in shards},
            name=name,
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def build_shard_config(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> tuple[ProxyConfig, dict[str, Any]]:
    """`distpat shard`'s configuration: a :class:`ProxyConfig` whose default pool is the shards and
    whose one stage is the :class:`ShardStage` over them; and the resolved option values."""
    env = dict(os.environ if environ is None else environ)
    if "DISTPAT_UPSTREAM" in env:  # keep ",weight=N" with its URL when the variable is split at commas
        env["DISTPAT_UPSTREAM"] = _ENV_WEIGHT.sub(" ", env["DISTPAT_UPSTREAM"])
    values = resolve_options(SHARD_OPTIONS, flags, environ=env, config_file=config_file, table="shard")
    if not values["upstream"]:
        raise ConfigError("no shard: give --upstream http://HOST:PORT at least once (one per shard)")
    shards = [parse_shard(text, "--upstream") for text in values["upstream"]]
    if values["replicas"] > len(shards):
        raise ConfigError(
            f"--replicas {values['replicas']} is more than the number of shards (--upstream), {len(shards)}"
        )
    stage = shard_stage(
        shards,
        algorithm=values["algorithm"],
        key=values["key"],
        replicas=values["replicas"],
        balance_factor=values["balance_factor"],
        shard_header=values["shard_header"],
        name="shard",
        where="--upstream",
    )
    config = proxy_config({**values, "upstream": tuple(s.url for s in shards)})
    return replace(config, stages=(stage,)), values


# -- a pipeline file's [[stage]] table --------------------------------------------------------

_STAGE_KEYS: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "name": str,
    "pool": str,
    "key": str,
    "algorithm": str,
    "replicas": int,
    "balance_factor": (int, float),
    "shard_header": str,
    "weights": dict,
}
_TYPE_NAMES = {str: "a string", int: "an integer", dict: "a table"}

SHARD_STAGE_KEYS = tuple(k for k in _STAGE_KEYS if k not in ("kind", "name"))
"""The keys of a ``[[stage]] kind = "shard"`` table beside ``kind`` and ``name``."""


def build_shard_stage(table: Mapping[str, object], pools: Mapping[str, Sequence[str]], where: str) -> Stage:
    """One ``[[stage]]`` table of ``kind = "shard"``: the shards are the upstreams of ``pool``
    (``pools`` maps each pool's name to its URLs; ``default`` is the ``upstream`` list), weighted
    by ``weights = { "URL" = N }``. ``where`` names the file and the table in every error."""
    for name, value in table.items():
        wanted = _STAGE_KEYS.get(name)
        if wanted is None:
            raise ConfigError(f"{where}: unknown key {name!r} (a shard stage takes {', '.join(_STAGE_KEYS)})")
        if isinstance(value, bool) or not isinstance(value, wanted):
            shown = _TYPE_NAMES.get(wanted, "a number") if isinstance(wanted, type) else "a number"
            raise ConfigError(f"{where}: {name} must be {shown}, not {value!r}")
    if table.get("kind", "shard") != "shard":
        raise ConfigError(f"{where}: kind is {table['kind']!r}, not 'shard'")
    pool = str(table.get("pool", DEFAULT_POOL))
    urls = pools.get(pool)
    if urls is None:
        known = ", ".join(sorted(pools)) or "none"
        raise ConfigError(f"{where}: pool {pool!r} is not configured (pools: {known})")
    weights = table.get("weights", {})
    assert isinstance(weights, Mapping)
    for url, weight in weights.items():
        if url not in urls:
            raise ConfigError(f"{where}: weights: {url!r} is not an upstream of pool {pool!r}")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ConfigError(
                f"{where}: weights: {url!r} must be a whole number of at least 1, not {weight!r}"
            )
    shards = [_shard(url, int(weights.get(url, 1)), f"{where}: pool {pool!r}") for url in urls]
    algorithm = str(table.get("algorithm", "nginx"))
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"{where}: algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
    key = str(table.get("key", "uri"))
    _check_key(key, f"{where}: key")
    header = table.get("shard_header")
    if header is not None:
        _check_field(str(header), f"{where}: shard_header")
    factor = table.get("balance_factor")
    replicas = table.get("replicas", 1)
    assert isinstance(replicas, int)
    assert factor is None or isinstance(factor, int | float)
    return shard_stage(
        shards,
        algorithm=algorithm,
        key=key,
        replicas=replicas,
        balance_factor=None if factor is None else float(factor),
        shard_header=None if header is None else str(header),
        pool=None if pool == DEFAULT_POOL else pool,
        name=str(table.get("name", "")),
        where=where,
    )


def _from_table(table: StageTable) -> Stage:
    return build_shard_stage(table.values, table.pools, table.where)


register(
    "shard",
    _from_table,
    keys=SHARD_STAGE_KEYS,
    summary="the sharding ambassador: each key's shard on a ring (nginx's hash ... consistent), replicas",
)
