"""`distpat split` settings, and the ``split`` kind of a pipeline file's ``[[stage]]`` tables.

`distpat split` takes every option of `distpat proxy` (:data:`distpat.config.proxy.OPTIONS`)
but ``upstream`` (each variant brings its own servers), and the experiment's: ``--variant
NAME:PERCENT:URL`` (repeatable: the same NAME again adds a server to that variant's pool),
``--key SOURCE`` or ``--cookie NAME``, ``--override-header``, ``--variant-header``, ``--mirror
URL`` with ``--mirror-percent``. Read the same way as every command's options (flag, then
``DISTPAT_*`` variable, then the TOML file's top level or ``[split]`` table, then the default).

Each variant becomes a pool named after it, the mirror servers a pool named ``mirror``, and the
one stage a :class:`~distpat.core.split_stage.SplitStage` named ``split``.

In a pipeline file (:mod:`distpat.config.pipeline`) the same stage is::

    [[stage]]
    kind = "split"
    key = "cookie:sid"
    variants = [{ name = "new", percent = 10, pool = "new" }, { name = "old", percent = "*" }]
    mirror = "shadow"            # a pool
    mirror_percent = 5
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from distpat.config.options import Kind, Option, checked_by, hostport, resolve_options
from distpat.config.proxy import OPTIONS, proxy_config
from distpat.config.stages import StageTable, register
from distpat.core.keys import KeySource
from distpat.core.split import parse_percent
from distpat.core.split_stage import (
    DEFAULT_COOKIE_MAX_AGE,
    SPLIT_KEY_KINDS,
    SplitCookie,
    SplitStage,
    check_name,
)
from distpat.errors import ConfigError
from distpat.net.proxy import ProxyConfig
from distpat.net.upstream import parse_upstream_url

__all__ = [
    "MIRROR_MAX_IN_FLIGHT",
    "MIRROR_POOL",
    "SPLIT_OPTIONS",
    "SPLIT_STAGE_KEYS",
    "build_split_config",
    "build_split_stage",
    "parse_variant",
]

MIRROR_POOL = "mirror"
"""The pool `distpat split` makes of its ``--mirror`` servers."""


def parse_variant(text: str, what: str) -> tuple[str, str, str]:
    """``NAME:PERCENT:URL`` -> (name, percent text, URL); PERCENT may be empty on a repeated NAME."""
    name, sep1, rest = text.partition(":")
    percent, sep2, url = rest.partition(":")
    if not sep1 or not sep2:
        raise ConfigError(
            f"{what} must be NAME:PERCENT:URL (such as new:10:http://127.0.0.1:8081, or old:*:URL), "
            f"not {text!r}"
        )
    name, percent, url = name.strip(), percent.strip(), url.strip()
    check_name(name, f"{what}: variant name")
    if percent and percent != "*":
        try:
            parse_percent(percent)
        except ConfigError as exc:
            raise ConfigError(f"{what} {text!r}: {exc}") from None
    try:
        parse_upstream_url(url)
    except ConfigError as exc:
        raise ConfigError(f"{what} {text!r}: {exc}") from None
    return name, percent, url


def _parse_key(text: str) -> KeySource:
    return KeySource.parse(text, allowed=SPLIT_KEY_KINDS)


_key = checked_by(_parse_key)


def _cookie_name(text: str, what: str) -> str:
    try:
        KeySource.parse(f"cookie:{text}")
    except ConfigError:
        raise ConfigError(f"{what} must be a cookie name (token characters), not {text!r}") from None
    return text


def _field(text: str, what: str) -> str:
    try:
        KeySource.parse(f"header:{text}")
    except ConfigError:
        raise ConfigError(f"{what} must be a field name (token characters), not {text!r}") from None
    return text


_percent = checked_by(parse_percent)


def _url(url: str, what: str) -> str:
    try:
        parse_upstream_url(url)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    return url


def _variant_name(text: str, what: str) -> str:
    return check_name(text, what)


_EXPERIMENT: tuple[Option, ...] = (
    Option(
        "variant",
        Kind.TEXT,
        (),
        "a variant: its name, its share (up to two decimals, or * for the rest) and a server; "
        "the same NAME again adds a server to its pool (repeatable; required)",
        "NAME:PERCENT:URL",
        repeat=True,
        check=parse_variant,
    ),
    Option(
        "key",
        Kind.TEXT,
        None,
        "what assigns a request: header:NAME, cookie:NAME, query:NAME or ip (required unless --cookie)",
        "SOURCE",
        check=_key,
    ),
    Option(
        "cookie",
        Kind.TEXT,
        None,
        "key by this cookie and give visitors without it a new random ID (the same as --key cookie:NAME)",
        "NAME",
        check=_cookie_name,
    ),
    Option(
        "cookie_max_age",
        Kind.DURATION,
        float(DEFAULT_COOKIE_MAX_AGE),
        "lifetime of an issued cookie (Max-Age)",
        "TIME",
        minimum=1,
    ),
    Option(
        "override_header",
        Kind.TEXT,
        None,
        "a request field naming a variant sends the request there (QA); unknown names are ignored",
        "NAME",
        check=_field,
    ),
    Option(
        "variant_header",
        Kind.TEXT,
        None,
        "add the variant's name in this field to the upstream request and to the response",
        "NAME",
        check=_field,
    ),
    Option(
        "keyless_variant",
        Kind.TEXT,
        None,
        "the variant of requests without the key (default: as nginx hashes an empty key, the first)",
        "NAME",
        check=_variant_name,
    ),
    Option(
        "mirror",
        Kind.TEXT,
        (),
        "a shadow server: copies of --mirror-percent of the requests, answers discarded (repeatable)",
        "URL",
        repeat=True,
        check=_url,
    ),
    Option(
        "mirror_percent",
        Kind.TEXT,
        None,
        "the share of keys whose requests are mirrored (up to two decimals; needs --mirror)",
        "P",
        check=_percent,
    ),
)

MIRROR_MAX_IN_FLIGHT = Option(
    "mirror_max_in_flight",
    Kind.COUNT,
    64,
    "mirror copies in flight at once per worker; past it copies are dropped and counted",
    "N",
)
"""The engine's bound on mirror copies (``ProxyConfig.mirror_max_in_flight``)."""

SPLIT_OPTIONS: tuple[Option, ...] = (
    Option(
        "listen",
        Kind.TEXT,
        None,
        "address to serve clients on (required; :PORT: all IPv4)",
        "HOST:PORT",
        check=hostport,
    ),
    *_EXPERIMENT,
    MIRROR_MAX_IN_FLIGHT,
    *(o for o in OPTIONS if o.name not in ("listen", "upstream")),
)
"""`distpat split`: the proxy's options without ``upstream``, and the experiment's."""


def _lines(variants: Sequence[tuple[str, str, str]]) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """The split's lines and each variant's servers from ``--variant`` values, in order."""
    shares: dict[str, str] = {}
    servers: dict[str, list[str]] = {}
    for name, percent, url in variants:
        if name not in shares:
            if not percent:
                raise ConfigError(
                    f"--variant {name}::{url}: the first --variant of {name!r} needs its share "
                    "(NAME:PERCENT:URL; later ones may leave it out)"
                )
            shares[name], servers[name] = percent, [url]
            continue
        if percent and percent != shares[name]:
            raise ConfigError(
                f"--variant {name}:{percent}:{url}: {name!r} was given {shares[name]} before; a repeated "
                "--variant adds a server to the variant's pool, so give its share once (or the same again)"
            )
        if url in servers[name]:
            raise ConfigError(f"--variant {name}:{percent}:{url}: {url} is in {name!r}'s pool already")
        servers[name].append(url)
    return list(shares.items()), servers


def _key_source(key: str | None, cookie: str | None, *, key_name: str, cookie_name: str) -> KeySource:
    if cookie is not None:
        source = KeySource.parse(f"cookie:{cookie}")
        if key is not None and KeySource.parse(key, allowed=SPLIT_KEY_KINDS) != source:
            raise ConfigError(
                f"{cookie_name} {cookie} keys by that cookie, but {key_name} says {key!r}: give one of them"
            )
        return source
    if key is None:
        raise ConfigError(
            f"no key: give {key_name} SOURCE (header:NAME, cookie:NAME, query:NAME or ip) "
            f"or {cookie_name} NAME"
        )
    return KeySource.parse(key, allowed=SPLIT_KEY_KINDS)


def build_split_config(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> tuple[ProxyConfig, dict[str, Any]]:
    """`distpat split`'s configuration: one pool per variant (and ``mirror``), the split stage."""
    values = resolve_options(SPLIT_OPTIONS, flags, environ=environ, config_file=config_file, table="split")
    if not values["variant"]:
        raise ConfigError(
            "no variant: give --variant NAME:PERCENT:URL for each variant (such as --variant "
            "new:10:http://127.0.0.1:8081 --variant old:*:http://127.0.0.1:8080)"
        )
    lines, servers = _lines(values["variant"])
    mirror: tuple[str, ...] = values["mirror"]
    if mirror and values["mirror_percent"] is None:
        raise ConfigError("--mirror needs --mirror-percent P: the share of keys to mirror")
    if values["mirror_percent"] is not None and not mirror:
        raise ConfigError("--mirror-percent needs --mirror URL: the server that gets the copies")
    if mirror and MIRROR_POOL in servers:
        raise ConfigError(f"a variant named {MIRROR_POOL!r} would share its pool's name with --mirror's")
    keyless = values["keyless_variant"]
    if keyless is not None and keyless not in servers:
        raise ConfigError(f"--keyless-variant {keyless}: no --variant is named so ({', '.join(servers)})")
    stage = SplitStage(
        lines,
        {name: name for name in servers},
        _key_source(values["key"], values["cookie"], key_name="--key", cookie_name="--cookie"),
        name="split",
        cookie=SplitCookie(max_age=max(1, round(values["cookie_max_age"]))),
        override_header=values["override_header"],
        variant_header=values["variant_header"],
        mirror_pool=MIRROR_POOL if mirror else None,
        mirror_percent=values["mirror_percent"],
        keyless=keyless,
    )
    pools = tuple((name, tuple(urls)) for name, urls in servers.items())
    if mirror:
        pools += ((MIRROR_POOL, mirror),)
    config = proxy_config(
        {**values, "upstream": ()},
        pools=pools,
        stages=(stage,),
        mirror_max_in_flight=values["mirror_max_in_flight"],
    )
    return config, values


# -- the [[stage]] kind ------------------------------------------------------------------------

SPLIT_STAGE_KEYS = (
    "variants",
    "key",
    "cookie",
    "cookie_max_age",
    "override_header",
    "variant_header",
    "keyless_variant",
    "mirror",
    "mirror_percent",
)
_OPTION = {o.name: o for o in _EXPERIMENT}


def _percent_value(table: StageTable, key: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise table.error(key, f'must be a percentage (such as 10, 0.5 or "*"), not {value!r}')
    text = value if isinstance(value, str) else repr(value)
    if text != "*":
        try:
            parse_percent(text)
        except ConfigError as exc:
            raise table.error(key, str(exc)) from None
    return text


def build_split_stage(table: StageTable) -> SplitStage:
    """A ``[[stage]] kind = "split"`` table: ``variants`` an array of ``{name, percent, pool}``
    (``pool`` defaults to the name; a name may appear on several lines, as in nginx)."""
    variants = table.get("variants")
    if not isinstance(variants, list) or not variants:
        raise table.error(
            "variants",
            'needs an array of variants, such as [{ name = "new", percent = 10 }, '
            '{ name = "old", percent = "*" }]',
        )
    lines: list[tuple[str, str]] = []
    pools: dict[str, str] = {}
    for i, entry in enumerate(variants):
        key = f"variants[{i}]"
        if not isinstance(entry, dict):
            raise table.error(key, 'must be a table such as { name = "new", percent = 10, pool = "new" }')
        unknown = [k for k in entry if k not in ("name", "percent", "pool")]
        if unknown:
            raise table.error(f"{key}.{unknown[0]}", "unknown key; a variant takes name, percent and pool")
        name = entry.get("name")
        if not isinstance(name, str):
            raise table.error(f"{key}.name", "needs the variant's name (a string)")
        try:
            check_name(name, "variant name")
        except ConfigError as exc:
            raise table.error(f"{key}.name", str(exc)) from None
        if "percent" not in entry:
            raise table.error(f"{key}.percent", 'needs the variant\'s share (such as 10, 0.5 or "*")')
        percent = _percent_value(table, f"{key}.percent", entry["percent"])
        pool = table.pool(f"{key}.pool", entry.get("pool", name))
        if pools.setdefault(name, pool) != pool:
            raise table.error(
                f"{key}.pool", f"variant {name!r} is sent to pool {pools[name]!r} on an earlier line"
            )
        lines.append((name, percent))
    mirror = table.get("mirror")
    mirror_pool = None if mirror is None else table.pool("mirror", mirror)
    mirror_percent = table.get("mirror_percent")
    if (mirror is None) != (mirror_percent is None):
        missing = "mirror_percent" if mirror is not None else "mirror"
        raise table.error(missing, "a mirror needs both mirror (a pool) and mirror_percent")
    percent_text = None if mirror_percent is None else _percent_value(table, "mirror_percent", mirror_percent)
    if percent_text == "*":
        raise table.error("mirror_percent", "must be a percentage, not '*'")
    key_text = table.option(_OPTION["key"])
    cookie = table.option(_OPTION["cookie"])
    try:
        source = _key_source(key_text, cookie, key_name="key", cookie_name="cookie")
    except ConfigError as exc:
        raise table.error("key", str(exc)) from None
    keyless = table.option(_OPTION["keyless_variant"])
    if keyless is not None and keyless not in pools:
        raise table.error("keyless_variant", f"no variant is named {keyless!r} ({', '.join(pools)})")
    return SplitStage(
        lines,
        pools,
        source,
        cookie=SplitCookie(max_age=max(1, round(table.option(_OPTION["cookie_max_age"])))),
        override_header=table.option(_OPTION["override_header"]),
        variant_header=table.option(_OPTION["variant_header"]),
        mirror_pool=mirror_pool,
        mirror_percent=percent_text,
        keyless=keyless,
    )


register(
    "split",
    build_split_stage,
    keys=SPLIT_STAGE_KEYS,
    summary="the experiment router: each key's variant by nginx's split_clients, a mirror",
)
