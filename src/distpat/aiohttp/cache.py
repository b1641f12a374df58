"""The caching layer inside an aiohttp application: the stage of ``distpat cache``, driven by
:mod:`distpat.aiohttp` (the book's chapter 5, Varnish's place in front of a service; the rules are
RFC 9111's for a shared cache, see :mod:`distpat.core.cache_stage`).

:func:`cache_middleware` is a :class:`~distpat.aiohttp.PipelineMiddleware` whose one stage is a
:class:`~distpat.core.cache_stage.CacheStage` that only decides; the application's handler is the
origin:

* **a hit** is answered from the store (``Age``, ``Cache-Status: distpat; hit; ttl=N``, a 304 when
  the client's own validators match): the handler does not run;
* **a miss** runs the handler; its response (status, fields, body) passes the stage's
  ``on_response`` and ``on_body`` on its way out and is stored when RFC 9111 lets a shared cache
  store it. A :class:`aiohttp.web.Response` with a body the handler set (bytes, text, JSON) up to
  ``max_object_bytes`` can be stored; a response the handler streams itself
  (:class:`~aiohttp.web.StreamResponse`, a file) goes out as it is and is never stored;
* **concurrent misses** for one URL run the handler once: the others wait for it (at most
  ``coalesce_timeout`` seconds) and are answered from the store (``Cache-Status: ...;
  collapsed``); a response that is not storable releases them into the handler at once;
* **to validate** a stored response (``no-cache``, ``must-revalidate``, a request's ``max-age``),
  the handler gets the request with the stored validators (``If-None-Match``,
  ``If-Modified-Since``); its 304 refreshes the stored one;
* **an unsafe method** (POST, PUT, DELETE, PATCH) the handler answers with a 2xx or 3xx
  invalidates the URL and its ``Location`` / ``Content-Location``;
* ``PURGE /path`` from an address of ``purge_from`` removes the URL's responses (``X-Purge:
  prefix``: every URL under the path; ``X-Purge-Tag: TAG``: every response tagged TAG), and
  answers ``{"purged": N}``; from anywhere else it is a 405.

**stale-while-revalidate.** The stage answers the stale copy and asks for a background refresh, a
:class:`~distpat.core.stage.Fetch` to the default pool. This driver has no default pool (the
application is not one it can send requests to), so the refresh lands at once as
``unknown_pool``, nothing is sent and nothing fails: the stale copy is answered until the window
ends, and the first request after it is a miss (or a validation) that runs the handler.

The options are those of ``distpat cache`` as keywords; sizes are byte counts or the command's
text (``"64m"``, ``"512k"``, ``"1g"``: binary multiples, as :func:`distpat.config.units.parse_size`
reads the flags). See ``docs/aiohttp.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from distpat.aiohttp.middleware import PipelineMiddleware
from distpat.aiohttp.pools import UpstreamPools
from distpat.core.cache_policy import CachePolicy
from distpat.core.cache_stage import CacheSettings, CacheStage
from distpat.core.cache_store import MemoryStore
from distpat.core.pipeline import Pipeline
from distpat.core.real_ip import TrustedProxies
from distpat.core.units import parse_size
from distpat.errors import ConfigError

__all__ = ["APPLICATION", "CacheMiddleware", "cache_middleware"]

APPLICATION = "application"
"""The upstream name the handler's responses carry for the stage (``Response.upstream``)."""


class CacheMiddleware(PipelineMiddleware):
    """A :class:`PipelineMiddleware` whose one stage is a :class:`CacheStage` (:attr:`stage`: its
    ``store``, ``counts`` and ``stats()`` say what it holds and decided); made by
    :func:`cache_middleware`."""

    __slots__ = ("stage",)

    def __init__(self, stage: CacheStage) -> None:
        super().__init__(Pipeline([stage]), UpstreamPools(None), handler_upstream=APPLICATION)
        self.stage = stage

    def __repr__(self) -> str:
        return f"<CacheMiddleware {self.stage!r}>"


def _size(value: object, what: str) -> int:
    """Bytes in ``value``: a whole number, or the command's size text (``64m``)."""
    if isinstance(value, str):
        try:
            value = parse_size(value.strip())
        except ValueError:
            raise ConfigError(
                f"{what} must be a number of bytes or a size such as 512k, 64m or 1g, not {value!r}"
            ) from None
    elif isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f'{what} must be a number of bytes or a size such as "64m", not {value!r}')
    if value < 1:
        raise ConfigError(f"{what} must be at least 1 byte, not {value}")
    return value


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{what} must be 0 or more seconds, not {value!r}")
    return float(value)


def _purge_from(value: Sequence[str] | str) -> TrustedProxies | None:
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        try:
            TrustedProxies.parse([item])
        except ConfigError as exc:
            raise ConfigError(f"purge_from: {exc}".replace("trusted proxy", "address")) from None
    return TrustedProxies.parse(items) if items else None


def cache_middleware(
    *,
    max_bytes: int | str = 128 << 20,
    max_object_bytes: int | str = 8 << 20,
    purge_from: Sequence[str] | str = (),
    heuristic_freshness: bool = False,
    coalesce_timeout: float = 5.0,
    name: str = "cache",
) -> CacheMiddleware:
    """A middleware caching the responses of the application it is added to, as ``distpat
    cache`` caches an upstream's (``distpat cache --help``; :mod:`distpat.core.cache_stage`).

    ``max_bytes`` bounds the store (bodies, fields and a fixed overhead per response; least
    recently used ones are evicted), ``max_object_bytes`` what one response may take (a larger
    one goes out uncached); both are byte counts or sizes such as ``"64m"``. ``purge_from``:
    addresses or CIDR networks allowed to ``PURGE`` (none: every PURGE is refused).
    ``heuristic_freshness``: reuse responses without explicit freshness for 10% of their age
    since ``Last-Modified`` (RFC 9111 section 4.2.2). ``coalesce_timeout``: seconds a request
    waits for a concurrent miss of the same URL before running the handler itself. ``name``
    is the stage's (its notes in ``request[NOTES]``, the ``stage`` label of its stats).

    Add the middleware to ``app.middlewares`` (where it sits decides what it caches: the
    responses of the middlewares after it and the handler). Raises
    :class:`~distpat.errors.ConfigError` for a bad value, with the message naming the keyword."""
    most = _size(max_bytes, "max_bytes")
    one = _size(max_object_bytes, "max_object_bytes")
    if one > most:
        raise ConfigError(f"max_object_bytes ({one}) exceeds max_bytes ({most})")
    if not isinstance(heuristic_freshness, bool):
        raise ConfigError(f"heuristic_freshness must be true or false, not {heuristic_freshness!r}")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name must be a non-empty string, not {name!r}")
    stage = CacheStage(
        MemoryStore(most, one),
        policy=CachePolicy(heuristic=heuristic_freshness),
        settings=CacheSettings(coalesce_timeout=_seconds(coalesce_timeout, "coalesce_timeout")),
        purge_from=_purge_from(purge_from),
        name=name,
    )
    return CacheMiddleware(stage)
