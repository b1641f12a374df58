"""The split and shard routers inside an aiohttp application: the stages of ``distpat split``
and ``distpat shard``, driven by :mod:`distpat.aiohttp`.

* :func:`split_middleware` is a :class:`~distpat.aiohttp.PipelineMiddleware` with one
  :class:`~distpat.core.split_stage.SplitStage` (the experiment router of *Designing
  Distributed Systems*, chapter 3; nginx's ``split_clients``). With ``pools`` each variant's
  requests go to its own pool; without, the split only decides: the request goes on into the
  application's handler with the variant under :data:`VARIANT`, and a new visitor's
  ``Set-Cookie`` is added to whatever the handler answers.
* :func:`shard_handler` is a request handler that runs a
  :class:`~distpat.core.shard_route.ShardStage` (the sharding ambassador of chapter 6; by
  default nginx's ``hash $request_uri consistent``) and forwards the request to the shard it
  picks, both bodies streaming, a connect failure moving on along the ring's order (``replicas``).

Both are built from the same core objects as the standalone commands, so a key gets the same
variant, and a URI the same shard, under ``distpat split`` / ``distpat shard``, under nginx, and
here. See ``docs/aiohttp.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from aiohttp import web

from distpat.aiohttp.exchange import Handler
from distpat.aiohttp.middleware import PipelineMiddleware
from distpat.aiohttp.pools import UpstreamPools, parse_upstream
from distpat.aiohttp.proxy import ProxySettings
from distpat.core.keys import KeySource
from distpat.core.pipeline import Pipeline
from distpat.core.shard_route import ShardStage
from distpat.core.split_stage import SPLIT_KEY_KINDS, SplitCookie, SplitStage
from distpat.core.stage import Forward, Request, Stage, Tick
from distpat.errors import ConfigError, LocalProtocolError, RingError
from distpat.ring import make_ring

__all__ = ["SHARD_POOL", "VARIANT", "SplitMiddleware", "shard_handler", "split_middleware"]

VARIANT = web.RequestKey("variant", str)
"""The variant :func:`split_middleware` chose for the request (``request[VARIANT]``), set
before the handler runs; absent for a request the split does not cover (``paths``)."""

_COOKIE = SplitCookie()  # a year's Max-Age, HttpOnly, SameSite=Lax, Secure on HTTPS

SHARD_POOL = "shards"
"""The name of the pool a :func:`shard_handler` forwards to (in its 502/504 messages)."""


class SplitMiddleware(PipelineMiddleware):
    """A :class:`PipelineMiddleware` whose one stage is a :class:`SplitStage` (:attr:`stage`);
    made by :func:`split_middleware`. It stores the variant under :data:`VARIANT`, and passes
    a request outside :attr:`paths` straight to the handler."""

    __slots__ = ("stage", "paths")

    def __init__(
        self,
        stage: SplitStage,
        pools: UpstreamPools,
        *,
        decide_only: bool,
        paths: tuple[str, ...] | None,
        settings: ProxySettings | None,
        connections: int,
    ) -> None:
        super().__init__(
            Pipeline([stage]),
            pools,
            settings=settings,
            connections=connections,
            handler_pools=stage.variant_pools.values() if decide_only else (),
        )
        self.stage = stage
        self.paths = paths
        """The paths the split covers (each with what is under it); None: every request."""

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.paths is not None and not _covered(request.path, self.paths):
            return await handler(request)
        return await super().__call__(request, handler)

    def decided(self, request: web.Request, view: Request, forward: Forward) -> None:
        variant = view.notes.get(self.stage.name)
        if isinstance(variant, str):
            request[VARIANT] = variant

    def __repr__(self) -> str:
        mode = "decides" if self.handler_pools else f"forwards to {self.pools!r}"
        return f"<SplitMiddleware {self.stage!r} {mode}>"


def _covered(path: str, paths: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in paths)


def split_middleware(
    *,
    variants: Sequence[tuple[str, str | int]] | Mapping[str, str | int],
    key: KeySource | str,
    cookie: SplitCookie | None = _COOKIE,
    override_header: str | None = None,
    variant_header: str | None = None,
    pools: Mapping[str, Sequence[str]] | None = None,
    keyless: str | None = None,
    paths: Sequence[str] | None = None,
    name: str = "split",
    settings: ProxySettings | None = None,
    connections: int = 100,
) -> SplitMiddleware:
    """A middleware that splits requests between ``variants`` as ``distpat split`` does.

    ``variants``: ``[("new", "10"), ("old", "*")]`` (or ``{"new": "10", "old": "*"}``), the
    lines of nginx's ``split_clients`` in order: shares in percent with up to two decimals,
    ``"*"`` for the rest on the last line. ``key``: where a request's key comes from
    (``"cookie:NAME"``, ``"header:NAME"``, ``"query:NAME"``, ``"ip"``, or a ``+`` of them).
    ``cookie``: with a ``cookie:NAME`` key, how a visitor without the cookie is given one
    (a random ID, assigned at once and set in the response); None: never issued.
    ``override_header``: a request field naming a variant sends the request there (QA).
    ``variant_header``: the variant's name in this field, on the request the handler or the pool
    gets (a client's own field of that name is dropped first) and on the response.
    ``pools``: ``{variant: [URL, ...]}`` for every variant, and the requests go there; None: the
    split only decides and every request goes on into the application's handler, the variant
    in ``request[VARIANT]``. ``keyless``: the variant of requests with no key (otherwise the
    first). ``paths``: the request paths the split covers, each with the paths under it
    (``["/variant"]`` covers ``/variant`` and ``/variant/x``); None: every request.
    ``name`` is the stage's, under which the variant is also in ``request[NOTES]``.

    Add the middleware to ``app.middlewares``, its ``on_response_prepare`` to the signal of that
    name (so a streamed response gets the cookie too) and, with pools, its ``cleanup_ctx``.
    Raises :class:`~distpat.errors.ConfigError` for a bad split, key, name or URL."""
    lines = _variant_lines(variants)
    source = key if isinstance(key, KeySource) else KeySource.parse(key, allowed=SPLIT_KEY_KINDS)
    names = [variant for variant, _ in lines]
    if pools is not None:
        unknown = [p for p in pools if p not in names]
        if unknown:
            raise ConfigError(f"split: pools are given for {unknown[0]!r}, which is not a variant")
        missing = [v for v in names if v not in pools]
        if missing:
            raise ConfigError(f"split: variant {missing[0]!r} has no pool (give URLs for every variant)")
    stage = SplitStage(
        lines,
        {variant: variant for variant in names},
        source,
        name=name,
        cookie=cookie,
        override_header=override_header,
        variant_header=variant_header,
        keyless=keyless,
    )
    return SplitMiddleware(
        stage,
        UpstreamPools(pools),
        decide_only=pools is None,
        paths=_paths(paths),
        settings=settings,
        connections=connections,
    )


def _variant_lines(
    variants: Sequence[tuple[str, str | int]] | Mapping[str, str | int],
) -> list[tuple[str, str]]:
    if isinstance(variants, (str, bytes)):
        raise ConfigError("split: give the variants as (name, percent) pairs, not one string")
    pairs = list(variants.items()) if isinstance(variants, Mapping) else list(variants)
    lines: list[tuple[str, str]] = []
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ConfigError(f"split: a variant is a (name, percent) pair, not {pair!r}")
        variant, share = pair
        if isinstance(share, bool) or not isinstance(share, (str, int)):
            raise ConfigError(f"split variant {variant!r}: its share is a percentage or '*', not {share!r}")
        lines.append((variant, str(share)))
    return lines


def _paths(paths: Sequence[str] | None) -> tuple[str, ...] | None:
    if paths is None:
        return None
    if isinstance(paths, str):
        raise ConfigError(f"split: paths is a list of paths, not one string ({paths!r})")
    found: list[str] = []
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError(f"split: a path to cover must begin with '/', not {path!r}")
        found.append(path.rstrip("/"))
    if "" in found:  # "/" covers everything
        return None
    return tuple(found)


# -- the shard handler -------------------------------------------------------------------


class _StripPrefix(Stage):
    """The target sent upstream without ``prefix`` (``/shard/a?b`` -> ``/a?b``), as nginx's
    ``proxy_pass http://shards/;`` in ``location /shard/`` sends it. A target not under the
    prefix is sent as it is."""

    kind = "strip_prefix"

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def on_request(self, request: Request, tick: Tick) -> Forward | None:
        target, prefix = request.target, self.prefix
        if not target.startswith(prefix):
            return None
        rest = target[len(prefix) :]
        if not rest or rest.startswith(b"?"):
            return Forward(target=b"/" + rest)
        if rest.startswith(b"/"):
            return Forward(target=rest)
        return None  # /shardx: not under /shard


def _prefix(prefix: str | None) -> bytes | None:
    if prefix is None:
        return None
    raw = prefix.encode("utf-8", "surrogateescape") if isinstance(prefix, str) else b""
    stripped = raw.rstrip(b"/")
    if not raw.startswith(b"/") or not stripped or any(c in raw for c in b"?# \t\r\n\0"):
        raise ConfigError(f"shard_handler: prefix must be a path such as /shard, not {prefix!r}")
    return stripped


async def _no_handler(request: web.Request) -> web.StreamResponse:
    raise LocalProtocolError("shard_handler: the shard stage always names its pool", status=500)


def shard_handler(
    *,
    upstreams: Sequence[str] | Mapping[str, int],
    key: str = "uri",
    algorithm: str = "nginx",
    replicas: int = 1,
    prefix: str | None = None,
    balance_factor: float | None = None,
    shard_header: str | None = None,
    settings: ProxySettings | None = None,
    name: str = "shard",
) -> Handler:
    """A request handler that forwards each request to its key's shard, as ``distpat shard`` does.

    ``upstreams``: the shards' URLs in order (``["http://10.0.0.1:8081", ...]``), or URL to
    weight. The ring (``algorithm``, a name of :data:`distpat.ring.ALGORITHMS`; ``nginx``: nginx's
    ``hash ... consistent``) places keys on each shard's ``host:port`` as the URL writes it,
    what nginx hashes for the same ``server`` lines. ``key``: where the key comes from; ``uri``
    is the request target exactly as the client sent it (nginx's ``$request_uri``, query
    included, the route's prefix included). ``replicas``: the shard and the ring's next
    distinct nodes, tried in that order when a connection cannot be made (never another
    server); a request that reached its shard is not sent again. ``prefix``: the target sent
    upstream has it removed (``/shard/a?b`` goes as ``/a?b``); the key is still the whole
    original target. ``balance_factor``: bounded loads (``c`` from 1), by this handler's
    in-flight counts. ``shard_header``: a response field naming the shard.

    The request goes through the application's client session
    (:data:`~distpat.aiohttp.CLIENT_SESSION`: a middleware's ``cleanup_ctx``, or
    :func:`~distpat.aiohttp.client_context`). Raises :class:`~distpat.errors.ConfigError` for a
    bad URL, weight, algorithm, key or option."""
    weights = _weights(upstreams)
    ring_names: dict[str, str] = {}  # URL -> the name the ring hashes
    pool_names: dict[str, str] = {}  # ring name -> the pool's upstream name
    for url in weights:
        upstream = parse_upstream(url)
        ring_name = urlsplit(url).netloc
        if ring_name in pool_names:
            raise ConfigError(f"shard_handler: {url!r} is listed twice")
        ring_names[url] = ring_name
        pool_names[ring_name] = upstream.name
    try:
        ring = make_ring(algorithm, {ring_names[url]: weight for url, weight in weights.items()})
    except RingError as exc:
        raise ConfigError(f"shard_handler: algorithm {algorithm}: {exc}") from None
    try:
        stage = ShardStage(
            ring,
            key=key,
            replicas=replicas,
            balance_factor=balance_factor,
            pool=SHARD_POOL,
            shard_header=shard_header,
            upstreams=pool_names,
            name=name,
        )
    except ConfigError as exc:
        raise ConfigError(f"shard_handler: {exc}") from None
    stripped = _prefix(prefix)
    stages: list[Stage] = [stage] if stripped is None else [stage, _StripPrefix(stripped)]
    driver = PipelineMiddleware(
        Pipeline(stages), UpstreamPools({SHARD_POOL: list(weights)}), settings=settings, publish=False
    )

    async def handler(request: web.Request) -> web.StreamResponse:
        return await driver(request, _no_handler)

    return handler


def _weights(upstreams: Sequence[str] | Mapping[str, int]) -> dict[str, int]:
    if isinstance(upstreams, str):
        raise ConfigError("shard_handler: give a list of upstream URLs, not one string")
    if isinstance(upstreams, Mapping):
        weights = dict(upstreams)
    else:
        weights = {}
        for url in upstreams:
            if url in weights:
                raise ConfigError(f"shard_handler: {url!r} is listed twice")
            weights[url] = 1
    if not weights:
        raise ConfigError("shard_handler: at least one upstream is needed")
    for url, weight in weights.items():
        if not isinstance(url, str):
            raise ConfigError(f"shard_handler: an upstream is a URL, not {url!r}")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ConfigError(
                f"shard_handler: {url!r}: a weight is a whole number of at least 1, not {weight!r}"
            )
    return weights
