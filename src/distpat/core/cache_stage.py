"""The caching layer as a pipeline stage (the book's chapter 5, where Varnish stands in front of a
replicated service): an RFC 9111 shared cache (:mod:`distpat.core.cache_policy`) over a
byte-bounded store (:mod:`distpat.core.cache_store`).

What :class:`CacheStage` does with a request, all of it decided here and carried out by the
engine through effects:

* **a hit** (fresh, or stale as the request's ``max-stale`` allows) is an :class:`Answer` built
  once per stored response and second of age (``Age``, ``Cache-Status``), a 304 when the
  client's own validators match; a HEAD is answered from the stored GET;
* **stale within stale-while-revalidate**: the stale answer at once, and one background refresh
  (a :class:`Fetch` from :meth:`on_done`) that stores what comes back;
* **to validate** (no-cache, must-revalidate, a request's max-age): forwarded with the stored
  validators; a 304 refreshes the stored fields (section 3.2) and is answered from the store;
* **a miss** joins the URL's flight (:class:`Join`): the first request goes upstream with its
  body captured for storing (streaming to its client meanwhile), the others wait and are then
  answered from the store, all woken at once. A response that turns out not storable releases
  them to go upstream in parallel and marks the URL *hit-for-miss* for a while, so later
  requests are not made to wait again; waiters have a timeout and a cap (the Join's);
* **an error** (5xx, or the engine's own 502/504) in place of a stored response's refresh is
  answered with the stale copy where ``stale-if-error`` allows (RFC 5861 section 4);
* **an unsafe method** that succeeds invalidates the URL and its ``Location`` /
  ``Content-Location`` (section 4.4);
* ``PURGE /path`` (from ``purge_from`` only) removes every variant of the URL; with the header
  ``X-Purge: prefix`` every URL under the path, with ``X-Purge-Tag: TAG`` every response tagged
  TAG (``Cache-Tag`` / ``Surrogate-Key``); each answers ``{"purged": N}``.

Every answer carries ``Cache-Status`` (RFC 9211): ``distpat; hit; ttl=N``, ``distpat;
fwd=uri-miss; stored``, ``distpat; fwd=vary-miss``, ``distpat; fwd=stale; fwd-status=304``,
``distpat; fwd=request`` (the client asked), ``distpat; fwd=bypass`` (a method not cached),
``distpat; hit; collapsed`` (a waiter of a coalesced miss), with a ``detail`` saying why a
response was not stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from distpat.core.cache_answers import hit_status, not_modified, only_if_cached, purged, stored_answer
from distpat.core.cache_policy import (
    CachePolicy,
    Stored,
    Use,
    current_age,
    make_stored,
    request_directives,
    response_directives,
    stale_if_error_allows,
    storable,
    usable,
    vary_values,
)
from distpat.core.cache_shared import SharedStore
from distpat.core.cache_store import Entry, MemoryStore
from distpat.core.cache_validation import (
    client_not_modified,
    freshen,
    invalidated_targets,
    is_unsafe,
    selected_by_304,
    validators,
)
from distpat.core.real_ip import TrustedProxies
from distpat.core.stage import (
    ALL_FIELDS,
    Amend,
    Answer,
    Call,
    Effect,
    Fetch,
    Flight,
    FlightRole,
    Forward,
    Join,
    Outcome,
    Request,
    Response,
    Stage,
    Stat,
    SubRequest,
    SubResult,
    Tick,
)

__all__ = ["CacheStage", "CacheSettings"]

_CONDITIONALS = frozenset(
    {b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range"}
)
_VALIDATORS = frozenset({b"if-none-match", b"if-modified-since"})
_READS = frozenset(
    {
        b"host",
        b"cache-control",
        b"pragma",
        b"authorization",
        b"if-none-match",
        b"if-modified-since",
        b"x-purge",
        b"x-purge-tag",
    }
)


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """How the stage coalesces and what it remembers."""

    coalesce_timeout: float = 5.0
    """Seconds a request waits for the flight it joined before going upstream itself."""
    max_waiters: int = 1024
    """Requests that may wait on one flight; more go upstream at once."""
    hit_for_miss: float = 120.0
    """Seconds a URL whose response was not storable is forwarded without coalescing."""
    refresh_deadline: float = 10.0
    """Seconds a background refresh (stale-while-revalidate) may take."""


class _Note:
    """What the stage remembers of one request between its calls (``request.notes[name]``)."""

    __slots__ = ("kind", "key", "entry", "requested", "status", "store", "refresh", "joined", "write")

    def __init__(self, kind: str, key: bytes, requested: float, entry: Entry | None = None) -> None:
        self.kind = kind
        """hit, validate, miss, bypass, purge, unsafe, waiter"""
        self.key = key
        self.entry = entry
        self.requested = requested
        self.status = b""
        """The Cache-Status value to add to the response."""
        self.store: Stored | None = None
        self.refresh = False
        self.joined = False
        self.write: Call | None = None
        """A write to the shared store to send once the request is over (from on_done)."""


def _keeps_stale(stored: Stored) -> bool:
    d = stored.directives
    return bool(d.stale_while_revalidate or d.stale_if_error)


class CacheStage(Stage):
    """See the module's docstring."""

    kind = "cache"
    reads = ALL_FIELDS | _READS

    def __init__(
        self,
        store: MemoryStore,
        *,
        policy: CachePolicy | None = None,
        settings: CacheSettings | None = None,
        purge_from: TrustedProxies | None = None,
        name: str = "",
        redis_url: str | None = None,
    ) -> None:
        self.name = name
        self.store = store
        self.redis_url = redis_url
        self.shared = SharedStore(store) if redis_url is not None else None
        """With a Redis store: the store of record, this process's store its copy (cache_shared.py)."""
        self.policy = policy or CachePolicy()
        self.settings = settings or CacheSettings()
        self.purge_from = purge_from
        self.capture = store.max_object_bytes
        self._fetch = Forward(drop=_VALIDATORS, capture=self.capture)
        """A miss goes upstream without the client's own validators, so that what comes back is a
        whole response to store (a 304 to one browser's If-None-Match would store nothing); the
        client then gets that 200, which answers its conditional request too (as Varnish does)."""
        self.hit_for_miss: dict[bytes, float] = {}
        self.refreshing: set[bytes] = set()
        self.counts: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<CacheStage {self.name or self.kind!r} {self.store!r}>"

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # -- the request ---------------------------------------------------------------------------

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        method = request.method
        host = request.field(b"host") or b""
        key = host.lower() + request.target
        now = tick.wall
        if method == b"PURGE":
            return self._purge(request, host.lower())
        if method != b"GET" and method != b"HEAD":
            note = _Note("unsafe" if is_unsafe(method) else "bypass", key, now)
            note.status = b"distpat; fwd=bypass"
            request.notes[self.name] = note
            return None
        shared = self.shared
        if shared is not None:  # the URL's variants from Redis first, then the same decision
            return shared.lookup(key, lambda: self._decide(request, key, now))
        return self._decide(request, key, now)

    def _decide(self, request: Request, key: bytes, now: float) -> Effect | None:
        method = request.method
        asked = request_directives(request)
        req, no_cache = asked
        entry = self._lookup(key, request)
        if entry is not None:
            use = usable(entry.stored, request, now, asked)
            if use is Use.FRESH or use is Use.STALE or use is Use.REFRESH:
                note = _Note("hit", key, now, entry)
                request.notes[self.name] = note
                if use is Use.REFRESH and key not in self.refreshing:
                    note.refresh = True
                    self.refreshing.add(key)
                self._count("stale" if use is not Use.FRESH else "hit")
                return self._hit(entry, request, now)
            if req.only_if_cached:
                return only_if_cached()
            if use is Use.VALIDATE:
                note = _Note("validate", key, now, entry)
                note.status = b"distpat; fwd=request" if no_cache else b"distpat; fwd=stale"
                request.notes[self.name] = note
                self._count("revalidation")
                return Forward(add=validators(entry.stored), drop=_CONDITIONALS, capture=self.capture)
        elif req.only_if_cached:
            return only_if_cached()
        note = _Note("miss", key, now, entry)
        note.status = b"distpat; fwd=request" if no_cache else b"distpat; fwd=uri-miss"
        request.notes[self.name] = note
        self._count("miss")
        if method == b"HEAD" or req.no_store or no_cache:
            return self._fetch if method == b"GET" else None
        until = self.hit_for_miss.get(key)
        if until is not None:
            if until > now:
                return self._fetch
            del self.hit_for_miss[key]
        if entry is not None:
            note.status = b"distpat; fwd=stale"
        elif self.store.variants(key):
            note.status = b"distpat; fwd=vary-miss"
        note.joined = True
        settings = self.settings
        return Join(
            key,
            lambda flight: self._woken(request, note, flight, now),
            settings.coalesce_timeout,
            settings.max_waiters,
        )

    def _lookup(self, key: bytes, request: Request) -> Entry | None:
        variants = self.store.variants(key)
        if not variants:
            return None
        for entry in variants.values():
            stored = entry.stored
            if not stored.vary:
                return entry
            if vary_values(stored.vary, request) == stored.vary_key:
                return entry
        return None

    def _woken(self, request: Request, note: _Note, flight: Flight, now: float) -> Effect | None:
        if flight.role is FlightRole.LEADER:
            return self._fetch
        note.joined = False
        if flight.role is FlightRole.SHARED:
            entry = self._lookup(note.key, request)
            if entry is not None and usable(entry.stored, request, now) in (
                Use.FRESH,
                Use.STALE,
                Use.REFRESH,
            ):
                self._count("coalesced")
                note.kind, note.entry = "hit", entry
                return self._hit(entry, request, now, collapsed=True)
        return self._fetch

    def _hit(self, entry: Entry, request: Request, now: float, *, collapsed: bool = False) -> Answer:
        self.store.touch(entry)
        stored = entry.stored
        age = current_age(stored, now)
        whole = int(age) if age < 2**31 else 2**31
        if client_not_modified(stored, request):
            return not_modified(stored, whole)
        if collapsed:  # a coalesced miss's waiter: said so, and not kept as the prebuilt hit
            return stored_answer(entry, whole, hit_status(stored, whole) + b"; collapsed")
        memo = entry.memo
        if memo is not None and memo[0] == whole:
            return memo[1]  # type: ignore[return-value]
        answer = stored_answer(entry, whole)
        entry.memo = (whole, answer)
        return answer

    def _purge(self, request: Request, host: bytes) -> Answer | Call:
        if self.purge_from is None or not self.purge_from.trusts(request.client):
            self._count("purge_refused")
            return Answer(
                405,
                b"405 Method Not Allowed: PURGE is not allowed from this address\n",
                headers=((b"Allow", b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),),
                reason=f"PURGE from {request.client}, not in purge_from",
            )
        tag = request.field(b"x-purge-tag")
        how = (request.field(b"x-purge") or b"").strip().lower()
        what = host + request.target
        if tag is not None:
            tags = tag.replace(b",", b" ").split()
            count = sum(self.store.ban_tag(t) for t in tags)
            kind, names = "tag", tags
        elif how == b"prefix":
            count = self.store.ban_prefix(what)
            kind, names = "prefix", [what]
        else:
            count = self.store.purge(what)
            kind, names = "key", [what]
        self._count("purge")
        if self.shared is not None and names:
            return self.shared.purge(kind, names, count, purged)
        return purged(count)

    # -- the response --------------------------------------------------------------------------

    def on_response(self, request: Request, response: Response, tick: Tick) -> Amend | Answer | None:
        note = request.notes.get(self.name)
        if not isinstance(note, _Note) or note.kind == "hit":
            return None
        status = response.status
        if note.kind in ("unsafe", "bypass"):
            if note.kind == "unsafe" and 200 <= status < 400 and response.upstream is not None:
                host = (request.field(b"host") or b"").lower()
                keys = [note.key]
                keys += [
                    host + t
                    for t in invalidated_targets(
                        request.method, status, host, response.headers, request.target
                    )
                ]
                for k in keys:
                    self.store.purge(k)
                if self.shared is not None:
                    note.write = self.shared.delete(keys)
                self._count("invalidation")
            return Amend(add=((b"Cache-Status", note.status),))
        entry = note.entry
        now = tick.wall
        if entry is not None and status >= 500 and stale_if_error_allows(entry.stored, request, now):
            self._count("stale_if_error")
            age = int(current_age(entry.stored, now))
            return stored_answer(
                entry, age, b"distpat; fwd=stale; fwd-status=%d; detail=stale-if-error" % status
            )
        if note.kind == "validate" and entry is not None and status == 304:
            if selected_by_304(entry.stored, response.headers, asked=True):
                updated = freshen(entry.stored, response.headers, request, note.requested, now, self.policy)
                # the freshened copy answers even when it could not be stored again
                entry = self.store.replace(entry, updated) or Entry(entry.key, updated, entry.body)
                if self.shared is not None:
                    note.write = self.shared.write(entry.key, updated, entry.body, now)
            self.store.touch(entry)
            age = int(current_age(entry.stored, now))
            validated = b"distpat; fwd=stale; fwd-status=304"
            if client_not_modified(entry.stored, request):
                return not_modified(entry.stored, age, validated)
            return stored_answer(entry, age, validated)
        if request.method != b"GET":
            return Amend(add=((b"Cache-Status", note.status),))
        directives = response_directives(response.headers, self.policy)
        why = storable(request.method, request, status, response.headers, directives, self.policy)
        if why is None and response.upstream is not None:
            stored = make_stored(
                request, status, response.headers, directives, note.requested, now, self.policy
            )
            if stored.lifetime > current_age(stored, now) or stored.validatable or _keeps_stale(stored):
                note.store = stored
                return Amend(add=((b"Cache-Status", note.status + b"; stored"),))
            why = "stale"
        if (note.joined or note.kind == "miss") and response.upstream is not None:
            # the origin answered something not storable: later misses need not wait for it
            self.hit_for_miss[note.key] = now + self.settings.hit_for_miss
            if len(self.hit_for_miss) > 100_000:
                self.hit_for_miss.clear()
        if note.kind == "validate" and entry is not None and status < 500:
            self.store.remove(entry)  # replaced by a response that is not stored
        detail = why if why is not None else "error"
        return Amend(add=((b"Cache-Status", note.status + b"; detail=" + detail.encode()),))

    def on_body(self, request: Request, response: Response, body: bytes, tick: Tick) -> Call | None:
        note = request.notes.get(self.name)
        if isinstance(note, _Note) and note.store is not None:
            stored, note.store = note.store, None
            if self.store.put(note.key, stored, body) is None:
                self._count("too_large")
            elif self.shared is not None:
                return self.shared.write(note.key, stored, body, tick.wall)
        return None

    def wants_done(self, request: Request) -> bool:
        note = request.notes.get(self.name)
        return isinstance(note, _Note) and (note.write is not None or note.refresh or note.store is not None)

    def on_done(self, request: Request, outcome: Outcome, tick: Tick) -> Call | Fetch | None:
        note = request.notes.get(self.name)
        if not isinstance(note, _Note):
            return None
        if note.write is not None:
            return note.write
        if note.store is not None:  # storable, but its body never came whole (too large, cut short)
            note.store = None
            self._count("not_stored")
            self.hit_for_miss[note.key] = tick.wall + self.settings.hit_for_miss
        if not note.refresh or note.entry is None:
            return None
        entry = note.entry
        key = note.key
        sent = tick.wall

        def refreshed(results: tuple[SubResult, ...]) -> Call | None:
            self.refreshing.discard(key)
            result = results[0]
            if not result.ok:
                return None
            received = sent + result.elapsed
            self._count("refresh")
            if result.status == 304:
                if not selected_by_304(entry.stored, result.headers, asked=True):
                    return None
                stored = freshen(entry.stored, result.headers, request, sent, received, self.policy)
                body = entry.body
                self.store.replace(entry, stored)
            else:
                directives = response_directives(result.headers, self.policy)
                if (
                    storable(b"GET", request, result.status, result.headers, directives, self.policy)
                    is not None
                ):
                    return None
                stored = make_stored(
                    request, result.status, result.headers, directives, sent, received, self.policy
                )
                body = result.body
                self.store.put(key, stored, body)
            return self.shared.write(key, stored, body, received) if self.shared is not None else None

        headers = tuple(
            (n, v)
            for n, v in (request.headers or ())
            if n.lower() not in _CONDITIONALS and n.lower() != b"host"
        ) + validators(entry.stored)
        return Fetch(
            (SubRequest(None, request.target, b"GET", headers, max_body=self.capture),),
            refreshed,
            self.settings.refresh_deadline,
        )

    # -- metrics -------------------------------------------------------------------------------

    def stats(self) -> tuple[Stat, ...]:
        stage = self.name or self.kind
        out = [
            Stat(
                "distpat_cache_requests",
                "Cache decisions: hit, stale, miss, revalidation, coalesced, "
                "stale_if_error, refresh, invalidation, purge, purge_refused, too_large.",
                "counter",
                (("stage", stage), ("result", what)),
                count,
            )
            for what, count in sorted({**self.counts, **(self.shared.counts if self.shared else {})}.items())
        ]
        out.append(
            Stat(
                "distpat_cache_bytes",
                "Bytes the cache holds (bodies, fields, overhead).",
                "gauge",
                (("stage", stage),),
                self.store.bytes_held,
            )
        )
        out.append(
            Stat(
                "distpat_cache_objects",
                "Responses the cache holds.",
                "gauge",
                (("stage", stage),),
                len(self.store),
            )
        )
        out.append(
            Stat(
                "distpat_cache_evictions",
                "Responses evicted to make room.",
                "counter",
                (("stage", stage),),
                self.store.evictions,
            )
        )
        return tuple(out)
