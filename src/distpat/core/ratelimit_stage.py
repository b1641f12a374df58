"""The rate limiter as a pipeline stage (the book's chapter 5: denial-of-service defense).

:class:`RateLimitStage` judges each request by one or more limits, each with its own name, key
source and key table (:mod:`distpat.core.limiter`, :mod:`distpat.core.limiter_table`), as
nginx's ``limit_req`` does with several zones:

* every limit is asked; the request goes on only when all of them admit it, and only then is
  each limit's new state stored (a request refused by one limit costs the others nothing, as
  nginx accounts the zones only once all passed);
* a refusal is answered at once with the limit's status (429 by default), ``Retry-After``, and
  the ``RateLimit-Policy`` and ``RateLimit`` fields of draft-ietf-httpapi-ratelimit-headers; a
  limit in dry-run mode only notes what it would have refused;
* an admitted request carries the same two fields on its response, whoever answers it; one past
  a limit's delay threshold is held (:class:`~distpat.core.stage.Hold`) for the longest delay
  its limits ask, then goes on;
* with a concurrency bound, a key's requests in flight are counted and released exactly once,
  in :meth:`on_done`, whatever the outcome (nginx's ``limit_conn``; refused with 503).

The ``ip`` key source reads the client's address behind trusted proxies
(:mod:`distpat.core.real_ip`). A request whose key is missing (no such field) is not limited
by that limit. The cost of a request is 1, or what an earlier stage noted under
:data:`COST_NOTE` (a number of at least 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from distpat.core.keys import KeySource
from distpat.core.limiter import Decision, DecisionKind, Limit, policy_field, ratelimit_field, table_full
from distpat.core.limiter_table import Concurrency, KeyTable
from distpat.core.real_ip import TrustedProxies, real_key
from distpat.core.stage import Answer, Call, Effect, Forward, Hold, Outcome, Request, Stage, Tick
from distpat.errors import ConfigError

__all__ = ["COST_NOTE", "DEFAULT_MAX_KEYS", "LimitRule", "RateLimitStage"]

COST_NOTE = "cost"
"""``request.notes[COST_NOTE]``: what an earlier stage says a request costs (default 1)."""

DEFAULT_MAX_KEYS = 200_000
"""Keys per limit: about 200 bytes each with a short key (limiter_table.py), so ~40-60 MB a limit."""


@dataclass(frozen=True, slots=True)
class LimitRule:
    """One limit of the stage: the bucket, where its key comes from, and how it acts."""

    limit: Limit
    key: KeySource
    dry_run: bool = False
    """Count and note what it would refuse, refuse nothing."""
    concurrency: int = 0
    """At most this many requests in flight per key (0: no bound)."""


class RateLimitStage(Stage):
    """Requests judged by every rule's limit (see the module docstring)."""

    kind = "ratelimit"

    def __init__(
        self,
        rules: Sequence[LimitRule],
        *,
        trusted: TrustedProxies | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        name: str = "",
    ) -> None:
        if not rules:
            raise ConfigError("a ratelimit stage needs at least one limit")
        names = [rule.limit.name for rule in rules]
        for n in names:
            if names.count(n) > 1:
                raise ConfigError(f"two limits are named {n!r}: each limit needs its own name")
        self.name = name
        self.rules = tuple(rules)
        self.trusted = trusted
        self.tables = tuple(KeyTable(max_keys, rule.limit) for rule in self.rules)
        self.inflight = tuple(
            Concurrency(rule.concurrency) if rule.concurrency else None for rule in self.rules
        )
        reads: set[bytes] = set()
        for rule in self.rules:
            reads |= rule.key.reads
            if trusted and any(part.kind == "ip" for part in rule.key.parts):
                reads |= trusted.reads
        self.reads = frozenset(reads)
        self.policy = policy_field(rule.limit for rule in self.rules)
        self.counts: dict[tuple[str, str], int] = {}
        """Decisions by limit name and kind (admit, delay, reject, dry_run_reject, table_full)."""

    def __repr__(self) -> str:
        shown = ", ".join(f"{r.limit.name}:{r.limit.rate:g}r/s+{r.limit.burst}" for r in self.rules)
        return f"<RateLimitStage {self.name or self.kind!r} {shown}>"

    def _count(self, limit: str, what: str) -> None:
        key = (limit, what)
        self.counts[key] = self.counts.get(key, 0) + 1

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        cost = request.notes.get(COST_NOTE, 1)
        if not isinstance(cost, (int, float)) or isinstance(cost, bool) or cost < 1:
            cost = 1
        now = tick.mono
        judged: list[tuple[int, bytes, Decision]] = []
        refused: Decision | None = None
        for i, rule in enumerate(self.rules):
            key = real_key(rule.key, request, self.trusted)
            if key is None:
                continue
            decision = rule.limit.decide(self.tables[i].get(key), now, cost)
            if decision.kind is DecisionKind.REJECT:
                if rule.dry_run:
                    self._count(rule.limit.name, "dry_run_reject")
                    request.notes.setdefault(f"{self.name}:dry_run", rule.limit.name)
                    continue
                refused = decision
                break
            judged.append((i, key, decision))
        if refused is None:  # every limit admits: store their states (a full table refuses a new key)
            for i, key, decision in judged:
                if decision.state is not None and not self.tables[i].put(key, decision.state, now):
                    refused = table_full(decision.limit, self.tables[i].retry_after(now))
                    self._count(decision.limit.name, "table_full")
                    break
        if refused is not None:
            self._count(refused.limit.name, "reject")
            request.notes[self.name] = f"reject:{refused.limit.name}"
            return self._refusal(refused, [d for _, _, d in judged])
        acquired: list[tuple[int, bytes]] = []
        for i, key, _ in judged:
            counter = self.inflight[i]
            if counter is None:
                continue
            if not counter.acquire(key):
                for j, taken in acquired:
                    counter_j = self.inflight[j]
                    assert counter_j is not None
                    counter_j.release(taken)
                name = self.rules[i].limit.name
                self._count(name, "concurrency")
                request.notes[self.name] = f"concurrency:{name}"
                return Answer(
                    503,
                    b"503 Service Unavailable: too many requests in flight for this client\n",
                    reason=f"limit {name!r}: {self.rules[i].concurrency} requests in flight already",
                )
            acquired.append((i, key))
        if acquired:
            request.notes[f"{self.name}:held"] = acquired
        fields = (
            (b"RateLimit-Policy", self.policy),
            (b"RateLimit", ratelimit_field(d for _, _, d in judged)),
        )
        delay = 0.0
        for _, _, decision in judged:
            self._count(decision.limit.name, decision.kind.value)
            delay = max(delay, decision.delay)
        forward = Forward(respond=fields) if judged else None
        if delay > 0:
            return Hold(delay, then=lambda _: forward)
        return forward

    def _refusal(self, refused: Decision, others: list[Decision]) -> Answer:
        limit = refused.limit
        headers = [
            (b"RateLimit-Policy", self.policy),
            (b"RateLimit", ratelimit_field([*others, refused])),
        ]
        if refused.retry_after is not None:
            headers.insert(0, (b"Retry-After", b"%d" % refused.retry_after))
        why = "the limiter's key table is full" if refused.table_full else f"over the limit {limit.name!r}"
        return Answer(
            limit.status,
            f"{limit.status}: rate limited, {why}; retry after {refused.retry_after or '-'} s\n".encode(),
            headers=tuple(headers),
            reason=f"rate limit {limit.name!r}" + (" (key table full)" if refused.table_full else ""),
        )

    def on_done(self, request: Request, outcome: Outcome, tick: Tick) -> Call | None:
        held = request.notes.pop(f"{self.name}:held", None)
        if isinstance(held, list):
            for i, key in held:
                counter = self.inflight[i]
                if counter is not None:
                    counter.release(key)
        return None
