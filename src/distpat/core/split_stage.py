"""The experiment router of *Designing Distributed Systems* (Burns, 2018), chapter 3: a split
stage that sends each user to one variant of a service ("10% to the new build").

:class:`SplitStage` is a pipeline stage (:mod:`distpat.core.stage`): for each request it reads a
key (:class:`~distpat.core.keys.KeySource`: ``header:NAME``, ``cookie:NAME``, ``query:NAME`` or
``ip``), finds the key's variant as nginx's ``split_clients`` does (:mod:`distpat.core.split`,
MurmurHash2 over the key's bytes against boundaries in hundredths of a percent), and answers
with a :class:`~distpat.core.stage.Forward` to that variant's pool. Failover stays in the pool:
a variant's servers are one named pool, and the engine never leaves it.

The assignment depends on nothing but the key and the percentages, so it is the same in every
process and after every restart; growing the first variant's share only moves its boundary up,
so none of its users leaves it (nginx's boundaries are running sums, :class:`SplitTable`).

What else a request may get:

* **A cookie, when the key is one** (``cookie:NAME``): a visitor without it (or with an empty
  one) gets a new ID, 16 hex digits of the tick's random bits, in ``Set-Cookie: NAME=ID;
  Path=/; Max-Age=...; HttpOnly; SameSite=Lax`` (``; Secure`` on HTTPS), and is assigned by
  that ID at once, as on every later request that sends it back. The upstream sees the Cookie
  field it will see from then on: the request's other cookies with ``NAME=ID`` added.
* **An override** (``override_header``): a request naming a variant in that field goes there
  (for QA); a value that names no variant is ignored.
* **The variant's name** in ``variant_header``, on the upstream request (a client's own field
  of that name is dropped first, so it cannot pose as another variant) and on the response.
* **A mirror** (``mirror_pool``, ``mirror_percent``): a key chosen by
  :func:`~distpat.core.split.mirrored` (the same key, always the same choice, spread evenly over
  the variants) has its requests copied to the mirror pool, bodies included; the engine sends
  the copies, bounds them and throws their answers away.
* **A note**: ``request.notes[stage.name]`` is the variant's name, so
  :meth:`~distpat.core.stage.Stage.decision` reports it and the engine counts requests by
  variant.

A request without the key (no such header, argument or cookie, or an empty value; a cookie
key whose issuing is turned off) is hashed as nginx hashes an empty value: ``murmur2(b"") ==
0``, the first variant. ``keyless`` names another variant for them. Their mirror choice is a
draw of the tick's random bits, in the same proportion (they have no key to be consistent
about).

The hot path is one memo lookup: keys seen recently map to a ready-made Forward (at most two
per variant exist, mirrored or not), as :class:`~distpat.core.split.CachedSplit` keeps
variants: bounded, emptied when full, long keys never stored. Pure: the randomness comes in the
:class:`~distpat.core.stage.Tick`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from distpat.core.keys import KeySource, cookie_value
from distpat.core.split import SplitTable, format_hundredths, mirrored_for_hash, murmur2, parse_percent
from distpat.core.stage import Forward, Request, Stage, Tick
from distpat.errors import ConfigError

__all__ = ["DEFAULT_COOKIE_MAX_AGE", "SPLIT_KEY_KINDS", "SplitCookie", "SplitStage", "check_name"]

SPLIT_KEY_KINDS = ("ip", "header", "cookie", "query")
"""The key sources a split takes (and combinations of them with ``+``)."""

DEFAULT_COOKIE_MAX_AGE = 365 * 86400
"""A year: a visitor keeps the ID (and so the variant) while the experiment lasts."""

_NAME_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~-")
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ID_MASK = (1 << 64) - 1


def check_name(name: str, what: str) -> str:
    """A variant or pool name: letters, digits and ``. _ ~ -`` (it goes into fields and metric labels)."""
    raw = name.encode("ascii", "replace") if isinstance(name, str) else b""
    if not raw or any(c not in _NAME_CHARS for c in raw):
        raise ConfigError(f"{what} {name!r} must be letters, digits and . _ ~ - only (and not empty)")
    return name


def _field_name(name: bytes | str | None, what: str) -> bytes | None:
    if name is None:
        return None
    raw = name.encode("ascii", "replace") if isinstance(name, str) else name
    if not raw or any(c not in _TOKEN for c in raw):
        raise ConfigError(f"{what} {name!r} is not a field name (token characters only)")
    return raw


@dataclass(frozen=True, slots=True)
class SplitCookie:
    """How the visitor cookie is issued (RFC 6265 section 4.1): its lifetime; ``Secure`` is added
    on HTTPS requests."""

    max_age: int = DEFAULT_COOKIE_MAX_AGE
    """Seconds (``Max-Age``); at least 1."""

    def __post_init__(self) -> None:
        if type(self.max_age) is not int or self.max_age < 1:
            raise ConfigError(
                f"split cookie: Max-Age must be a whole number of seconds >= 1, not {self.max_age!r}"
            )


@dataclass(frozen=True, slots=True)
class _Route:
    variant: str
    mirrored: bool
    forward: Forward


class SplitStage(Stage):
    """Send each request to its key's variant pool (see the module docstring).

    ``variants`` are the split's lines in order, ``(name, percent_text)`` as
    :meth:`SplitTable.from_variants` reads them (``"10"``, ``"0.5"``, ``"*"``); ``pools`` names
    each variant's pool. ConfigError for a bad split, a variant without a pool (or a pool without
    a variant), a bad name, a mirror pool without a share or the other way round.
    """

    kind = "split"

    def __init__(
        self,
        variants: Sequence[tuple[str, str]],
        pools: Mapping[str, str],
        key: KeySource,
        *,
        name: str = "",
        cookie: SplitCookie | None = SplitCookie(),
        override_header: bytes | str | None = None,
        variant_header: bytes | str | None = None,
        mirror_pool: str | None = None,
        mirror_percent: str | None = None,
        keyless: str | None = None,
        max_memo: int = 4096,
        max_key_bytes: int = 256,
    ) -> None:
        self.name = name
        self.table = SplitTable.from_variants(variants)
        for variant in self.table.names:
            check_name(variant, "split: variant name")
        missing = [v for v in self.table.names if v not in pools]
        if missing:
            raise ConfigError(f"split: variant {missing[0]!r} has no pool")
        extra = [v for v in pools if v not in self.table.names]
        if extra:
            raise ConfigError(f"split: a pool is given for {extra[0]!r}, which is not a variant of the split")
        self.variant_pools = {
            v: check_name(pools[v], f"split variant {v!r}: pool name") for v in self.table.names
        }
        unknown = [p.kind for p in key.parts if p.kind not in SPLIT_KEY_KINDS]
        if unknown:
            raise ConfigError(
                f"split: key source {key.text!r}: {unknown[0]} is not a split key; use ip, header:NAME, "
                "cookie:NAME or query:NAME"
            )
        self.key = key
        self.cookie = cookie if key.is_cookie else None
        """How visitors without the cookie get one; None: the key is no cookie, or issuing is off."""
        self._cookie_name = key.parts[0].name if self.cookie is not None else b""
        override = _field_name(override_header, "split: override header")
        self.override_header = None if override is None else override.lower()
        """The field naming a variant for QA (lowercase), or None."""
        self.variant_header = _field_name(variant_header, "split: variant header")
        if (mirror_pool is None) != (mirror_percent is None):
            raise ConfigError(
                "split: a mirror needs both a pool and a percentage of requests"
                if mirror_pool is not None
                else "split: a mirror percentage needs a mirror pool"
            )
        self.mirror_pool = None if mirror_pool is None else check_name(mirror_pool, "split: mirror pool")
        try:
            self.mirror_share = 0 if mirror_percent is None else parse_percent(mirror_percent)
        except ConfigError as exc:
            raise ConfigError(f"split: mirror {exc}") from None
        if keyless is not None and keyless not in self.table.names:
            raise ConfigError(
                f"split: the keyless variant {keyless!r} is not one of {', '.join(self.table.names)}"
            )
        self.keyless = keyless
        if max_memo < 1 or max_key_bytes < 0:
            raise ConfigError(
                f"split memo: max_memo >= 1 and max_key_bytes >= 0, not {max_memo}, {max_key_bytes}"
            )
        self.max_memo = max_memo
        self.max_key_bytes = max_key_bytes
        self._memo: dict[bytes, _Route] = {}
        self._routes = {(v, m): self._make_route(v, m) for v in self.table.names for m in (False, True)}
        self._by_field = {v.encode("ascii"): v for v in self.table.names}
        reads = set(key.reads)
        if self.override_header is not None:
            reads.add(self.override_header)
        self.reads = frozenset(reads)
        pool_names = list(self.variant_pools.values())
        if self.mirror_pool is not None:
            pool_names.append(self.mirror_pool)
        self.pools = tuple(dict.fromkeys(pool_names))
        header = self.variant_header
        self.drops = frozenset() if header is None else frozenset({header.lower()})
        # the tick's random bits make a new visitor's ID, and draw the mirror for keyless requests
        self.uses_tick = self.cookie is not None or self.mirror_share > 0

    def _make_route(self, variant: str, mirrored: bool) -> _Route:
        header = self.variant_header
        fields = () if header is None else ((header, variant.encode("ascii")),)
        return _Route(
            variant,
            mirrored,
            Forward(
                pool=self.variant_pools[variant],
                add=fields,  # a client's own field of that name is dropped in the one pass (self.drops)
                respond=fields,
                mirror=(self.mirror_pool,) if mirrored and self.mirror_pool is not None else (),
            ),
        )

    def __repr__(self) -> str:
        shares = ", ".join(f"{v}:{p}" for v, p in self.variants())
        return f"<SplitStage {self.name or self.kind!r} key={self.key.text} [{shares}]>"

    def variants(self) -> tuple[tuple[str, str], ...]:
        """Each line's variant and share as text (``("b", "10")``, ``("a", "90")``)."""
        return tuple((v, format_hundredths(h)) for v, h in self.table.shares)

    @property
    def cached(self) -> int:
        """How many keys the memo holds now."""
        return len(self._memo)

    # -- the request ---------------------------------------------------------------------

    def on_request(self, request: Request, tick: Tick) -> Forward:
        key = self.key.extract(request)
        if not key:
            if self.cookie is not None:
                return self._issue(request, tick)
            route = self._keyless(tick)
        else:
            route = self._memo.get(key) or self._route(key)
        if self.override_header is not None:
            wanted = request.field(self.override_header)
            if wanted is not None:
                variant = self._by_field.get(wanted.strip())
                if variant is not None and variant != route.variant:
                    route = self._routes[variant, route.mirrored]
        request.notes[self.name] = route.variant
        return route.forward

    def _route(self, key: bytes) -> _Route:
        key_hash = murmur2(key)
        mirrored = self.mirror_share > 0 and mirrored_for_hash(key_hash, self.mirror_share)
        route = self._routes[self.table.variant_for_hash(key_hash), mirrored]
        if len(key) <= self.max_key_bytes:
            memo = self._memo
            if len(memo) >= self.max_memo:
                memo.clear()
            memo[key] = route
        return route

    def _keyless(self, tick: Tick) -> _Route:
        variant = self.keyless if self.keyless is not None else self.table.variant_for_hash(murmur2(b""))
        drawn = self.mirror_share > 0 and mirrored_for_hash(tick.rand & 0xFFFFFFFF, self.mirror_share)
        return self._routes[variant, drawn]

    def _issue(self, request: Request, tick: Tick) -> Forward:
        """A visitor without the cookie: a new ID, assigned now, set in the response."""
        assert self.cookie is not None
        name = self._cookie_name
        ident = b"%016x" % (tick.rand & _ID_MASK)
        cookie = name + b"=" + ident
        route = self._route(ident)
        variant = route.variant
        if self.override_header is not None:
            wanted = request.field(self.override_header)
            chosen = None if wanted is None else self._by_field.get(wanted.strip())
            if chosen is not None:
                variant = chosen
                route = self._routes[chosen, route.mirrored]
        request.notes[self.name] = variant
        set_cookie = b"%s; Path=/; Max-Age=%d; HttpOnly; SameSite=Lax" % (cookie, self.cookie.max_age)
        if request.scheme == "https":
            set_cookie += b"; Secure"
        others = [
            part.strip(b" \t")
            for part in (request.field(b"cookie") or b"").split(b";")
            if part.strip(b" \t") and not _is_cookie(part, name)
        ]
        upstream_cookie = b"; ".join([*others, cookie])
        plan = route.forward
        return Forward(
            pool=plan.pool,
            add=(*plan.add, (b"Cookie", upstream_cookie)),
            drop=frozenset({b"cookie"}),  # replaced by the one with the new ID (the first request only)
            respond=(*plan.respond, (b"Set-Cookie", set_cookie)),
            mirror=plan.mirror,
        )


def _is_cookie(part: bytes, name: bytes) -> bool:
    """Whether one ``name=value`` piece of a Cookie field is cookie ``name`` (any case, as
    :func:`~distpat.core.keys.cookie_value` matches it)."""
    return cookie_value(part, name) is not None
