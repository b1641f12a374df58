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

**Shared mode** (``redis_url``): the buckets live in one Redis server instead of this process's
tables, so every worker and replica shares one limit; a request is judged by one script call
(:mod:`distpat.core.limiter_shared`), a :class:`~distpat.core.stage.Call` whose continuation
decides with the same :meth:`Limit.decide <distpat.core.limiter.Limit.decide>`. When Redis does not
answer (or answers an error), ``on_redis_error`` says what happens: ``"open"`` admits (with the
``RateLimit-Policy`` field only), ``"closed"`` refuses with 503, ``"local"`` judges by this
process's own tables. The switch to that mode and the return from it are reported once each
(:attr:`RateLimitStage.notify`) and counted. The concurrency bound is always this process's.

The ``ip`` key source reads the client's address behind trusted proxies
(:mod:`distpat.core.real_ip`). A request whose key is missing (no such field) is not limited
by that limit. The cost of a request is 1, or what an earlier stage noted under
:data:`COST_NOTE` (a number of at least 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from distpat.core.keys import KeySource
from distpat.core.limiter import Decision, DecisionKind, Limit, policy_field, ratelimit_field, table_full
from distpat.core.limiter_shared import read_reply, script_call
from distpat.core.limiter_table import Concurrency, KeyTable
from distpat.core.real_ip import TrustedProxies, real_key
from distpat.core.stage import (
    Answer,
    Call,
    CallResult,
    Effect,
    Forward,
    Hold,
    Outcome,
    Request,
    Stage,
    Stat,
    Tick,
)
from distpat.errors import ConfigError, RespProtocolError

__all__ = ["COST_NOTE", "DEFAULT_MAX_KEYS", "ON_REDIS_ERROR", "REDIS_TIMEOUT", "LimitRule", "RateLimitStage"]

COST_NOTE = "cost"
"""``request.notes[COST_NOTE]``: what an earlier stage says a request costs (default 1)."""

DEFAULT_MAX_KEYS = 200_000
"""Keys per limit: about 200 bytes each with a short key (limiter_table.py), so ~40-60 MB a limit."""

ON_REDIS_ERROR = ("open", "closed", "local")
"""What a shared limiter does while its Redis server fails: admit, refuse (503), or judge locally."""

REDIS_TIMEOUT = 0.5
"""Seconds a shared decision waits for Redis before it counts as a Redis error."""

_MEMO_SIZE = 4096
"""Forward and refusal values kept for reuse, per stage (cleared when full)."""

_Keyed = list[tuple[int, bytes]]  # (rule index, key) of the rules that apply to a request
_Judged = list[tuple[int, bytes, Decision]]


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
        redis_url: str | None = None,
        on_redis_error: str = "local",
        redis_timeout: float = REDIS_TIMEOUT,
    ) -> None:
        if not rules:
            raise ConfigError("a ratelimit stage needs at least one limit")
        names = [rule.limit.name for rule in rules]
        for n in names:
            if names.count(n) > 1:
                raise ConfigError(f"two limits are named {n!r}: each limit needs its own name")
        if on_redis_error not in ON_REDIS_ERROR:
            raise ConfigError(
                f"on_redis_error must be one of {', '.join(ON_REDIS_ERROR)}, not {on_redis_error!r}"
            )
        self.name = name
        self.rules = tuple(rules)
        self.trusted = trusted
        self.redis_url = redis_url
        self.on_redis_error = on_redis_error
        self.redis_timeout = redis_timeout
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
        self.uses_done = any(rule.concurrency for rule in self.rules)
        self._one = (
            len(self.rules) == 1 and not self.rules[0].dry_run and not self.uses_done and not redis_url
        )
        self._counted = {kind: (self.rules[0].limit.name, kind.value) for kind in DecisionKind}
        self.policy = policy_field(rule.limit for rule in self.rules)
        # The effects a decision comes to, by what they say: a key's Forward or refusal differs
        # only in its r, t and Retry-After values, so each is built once and reused (bounded).
        self._forwards: dict[tuple[object, ...], Forward] = {}
        self._refusals: dict[tuple[object, ...], Answer] = {}
        self._policy_only = Forward(respond=((b"RateLimit-Policy", self.policy),))
        self.counts: dict[tuple[str, str], int] = {}
        """Decisions by limit name and kind (admit, delay, reject, dry_run_reject, table_full,
        concurrency)."""
        self.redis_events: dict[str, int] = {}
        """Shared mode: Redis errors, switches down and up, and what was done while down (open,
        closed, local)."""
        self.redis_down: str | None = None
        """Why the last shared decision failed, while Redis fails; None while it answers."""
        self.notify: Callable[[str], None] | None = None
        """Told of each switch away from Redis and back (the driver logs it); None: not told."""

    def __repr__(self) -> str:
        shown = ", ".join(f"{r.limit.name}:{r.limit.rate:g}r/s+{r.limit.burst}" for r in self.rules)
        shared = f" redis={self.redis_url}" if self.redis_url else ""
        return f"<RateLimitStage {self.name or self.kind!r} {shown}{shared}>"

    def _count(self, limit: str, what: str) -> None:
        key = (limit, what)
        self.counts[key] = self.counts.get(key, 0) + 1

    def _event(self, what: str) -> None:
        self.redis_events[what] = self.redis_events.get(what, 0) + 1

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        cost = request.notes.get(COST_NOTE, 1)
        if cost != 1 and (not isinstance(cost, (int, float)) or isinstance(cost, bool) or cost < 1):
            cost = 1
        if self._one:
            return self._judge_one(request, tick.mono, cost)
        keyed: _Keyed = []
        for i, rule in enumerate(self.rules):
            key = real_key(rule.key, request, self.trusted)
            if key is not None:
                keyed.append((i, key))
        if not keyed:
            return None
        if self.redis_url is None:
            return self._local(request, keyed, tick.mono, cost)
        command = script_call(
            [self.rules[i].limit for i, _ in keyed],
            [not self.rules[i].dry_run for i, _ in keyed],
            [key for _, key in keyed],
            cost,
        )
        return Call(
            command,
            lambda result: self._shared(request, keyed, cost, tick, result, loaded=False),
            self.redis_timeout,
        )

    # -- local mode: this process's tables ---------------------------------------------------------

    def _judge_one(self, request: Request, now: float, cost: float) -> Effect | None:
        """:meth:`_local` for the usual stage, one enforced limit without a concurrency bound, in
        one call instead of a dozen (the limiter's hot path; tests/test_ratelimit_stage.py checks
        that both give the same effects and counts)."""
        rule = self.rules[0]
        key = rule.key.extract(request) if self.trusted is None else real_key(rule.key, request, self.trusted)
        if key is None:
            return None
        table = self.tables[0]
        decision = rule.limit.decide(table.get(key), now, cost)
        kind = decision.kind
        if kind is DecisionKind.REJECT:
            return self._conclude(request, [], decision)
        if not table.put(key, decision.state, now):  # type: ignore[arg-type]  # admitted: a state
            refused = table_full(decision.limit, table.retry_after(now))
            self._count(decision.limit.name, "table_full")
            return self._conclude(request, [], refused)
        counts = self.counts
        counted = self._counted[kind]
        counts[counted] = counts.get(counted, 0) + 1
        memo = (0, decision.remaining, decision.reset)
        forward = self._forwards.get(memo)
        if forward is None:
            forward = self._forward([(0, key, decision)])
        if decision.delay > 0:
            return Hold(decision.delay, then=lambda _: forward)
        return forward

    def _local(self, request: Request, keyed: _Keyed, now: float, cost: float) -> Effect | None:
        judged: _Judged = []
        refused: Decision | None = None
        for i, key in keyed:
            rule = self.rules[i]
            decision = rule.limit.decide(self.tables[i].get(key), now, cost)
            if decision.kind is DecisionKind.REJECT:
                if rule.dry_run:
                    self._dry_run(request, rule)
                    continue
                refused = decision
                break
            judged.append((i, key, decision))
        if refused is None:  # every limit admits: store their states (a full table refuses a new key)
            for k, (i, key, decision) in enumerate(judged):
                if decision.state is not None and not self.tables[i].put(key, decision.state, now):
                    refused = table_full(decision.limit, self.tables[i].retry_after(now))
                    self._count(decision.limit.name, "table_full")
                    del judged[k:]  # as a bucket's refusal: the limits before it are reported
                    break
        return self._conclude(request, judged, refused)

    # -- shared mode: one script call to Redis -----------------------------------------------------

    def _shared(
        self, request: Request, keyed: _Keyed, cost: float, tick: Tick, result: CallResult, *, loaded: bool
    ) -> Effect | None:
        error = result.error
        if error is not None and error.startswith("NOSCRIPT") and not loaded:
            command = script_call(
                [self.rules[i].limit for i, _ in keyed],
                [not self.rules[i].dry_run for i, _ in keyed],
                [key for _, key in keyed],
                cost,
                load=True,
            )
            return Call(
                command,
                lambda again: self._shared(request, keyed, cost, tick, again, loaded=True),
                self.redis_timeout,
            )
        if error is None:
            try:
                verdict = read_reply(result.value, len(keyed))
            except RespProtocolError as exc:
                error = str(exc)
        if error is not None:
            return self._redis_failed(request, keyed, cost, tick, error)
        if self.redis_down is not None:
            self.redis_down = None
            self._event("up")
            if self.notify is not None:
                self.notify(f"ratelimit stage {self.name!r}: Redis answers again; limits are shared again")
        judged: _Judged = []
        refused: Decision | None = None
        for (i, key), state in zip(keyed, verdict.states, strict=True):
            rule = self.rules[i]
            decision = rule.limit.decide(state, verdict.now, cost)
            if decision.kind is DecisionKind.REJECT:
                if rule.dry_run:
                    self._dry_run(request, rule)
                    continue
                refused = decision  # the others after it are not asked, as in local mode
                break
            if verdict.refused is not None and keyed[verdict.refused][0] == i:
                # The server refused where this process's arithmetic admits: a rounding tie, and
                # the server's verdict (which stored nothing) stands.
                limit = rule.limit
                refused = Decision(
                    DecisionKind.REJECT, limit, None, retry_after=1, remaining=0, reset=limit.window
                )
                break
            judged.append((i, key, decision))
        return self._conclude(request, judged, refused)

    def _redis_failed(
        self, request: Request, keyed: _Keyed, cost: float, tick: Tick, error: str
    ) -> Effect | None:
        self._event("error")
        mode = self.on_redis_error
        if self.redis_down is None:
            self._event("down")
            if self.notify is not None:
                self.notify(
                    f"ratelimit stage {self.name!r}: Redis failed ({error}); "
                    + {
                        "open": "admitting every request",
                        "closed": "refusing every request with 503",
                        "local": "judging by this process's own tables",
                    }[mode]
                    + " until it answers again"
                )
        self.redis_down = error
        self._event(mode)
        request.notes[self.name] = f"redis_{mode}"
        if mode == "open":  # admitted, unlimited by rate; the concurrency bound still holds
            busy = self._acquire(request, keyed)
            return busy if busy is not None else self._policy_only
        if mode == "closed":
            return Answer(
                503,
                b"503 Service Unavailable: the rate limiter cannot reach its Redis server\n",
                headers=((b"Retry-After", b"1"),),
                reason=f"rate limiter's Redis failed: {error}",
            )
        return self._local(request, keyed, tick.mono, cost)

    # -- both modes --------------------------------------------------------------------------------

    def _dry_run(self, request: Request, rule: LimitRule) -> None:
        self._count(rule.limit.name, "dry_run_reject")
        request.notes.setdefault(f"{self.name}:dry_run", rule.limit.name)

    def _conclude(self, request: Request, judged: _Judged, refused: Decision | None) -> Effect | None:
        if refused is not None:
            self._count(refused.limit.name, "reject")
            request.notes[self.name] = f"reject:{refused.limit.name}"
            return self._refusal(refused, [d for _, _, d in judged])
        busy = self._acquire(request, [(i, key) for i, key, _ in judged]) if self.uses_done else None
        if busy is not None:
            return busy
        delay = 0.0
        for _, _, decision in judged:
            self._count(decision.limit.name, decision.kind.value)
            if decision.delay > delay:
                delay = decision.delay
        forward = self._forward(judged) if judged else None
        if delay > 0:
            return Hold(delay, then=lambda _: forward)
        return forward

    def _acquire(self, request: Request, keyed: _Keyed) -> Answer | None:
        """Take a concurrency slot for each bounded limit (all or none): None, or the 503."""
        acquired: list[tuple[int, bytes]] = []
        for i, key in keyed:
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
        return None

    def _forward(self, judged: _Judged) -> Forward:
        if len(judged) == 1:
            i, _, d = judged[0]
            memo: tuple[object, ...] = (i, d.remaining, d.reset)
        else:
            memo = tuple((i, d.remaining, d.reset) for i, _, d in judged)
        forward = self._forwards.get(memo)
        if forward is None:
            if len(self._forwards) >= _MEMO_SIZE:
                self._forwards.clear()
            fields = (
                (b"RateLimit-Policy", self.policy),
                (b"RateLimit", ratelimit_field(d for _, _, d in judged)),
            )
            forward = self._forwards[memo] = Forward(respond=fields)
        return forward

    def _refusal(self, refused: Decision, others: list[Decision]) -> Answer:
        memo = (
            refused.limit.name,
            refused.retry_after,
            refused.remaining,
            refused.reset,
            refused.table_full,
            *((d.limit.name, d.remaining, d.reset) for d in others),
        )
        answer = self._refusals.get(memo)
        if answer is None:
            if len(self._refusals) >= _MEMO_SIZE:
                self._refusals.clear()
            answer = self._refusals[memo] = self._build_refusal(refused, others)
        return answer

    def _build_refusal(self, refused: Decision, others: list[Decision]) -> Answer:
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

    def stats(self) -> tuple[Stat, ...]:
        """``distpat_ratelimit_decisions{stage, limit, decision}``, ``distpat_ratelimit_keys{stage,
        limit}`` (keys held in this process's table) and, in shared mode,
        ``distpat_ratelimit_redis_events{stage, event}`` (error, down, up, open, closed, local)."""
        stage = self.name or self.kind
        out: list[Stat] = []
        for (limit, what), count in sorted(self.counts.items()):
            out.append(
                Stat(
                    "distpat_ratelimit_decisions",
                    "Rate-limit decisions by limit: admit, delay, reject, dry_run_reject, table_full, "
                    "concurrency.",
                    "counter",
                    (("stage", stage), ("limit", limit), ("decision", what)),
                    count,
                )
            )
        for what, count in sorted(self.redis_events.items()):
            out.append(
                Stat(
                    "distpat_ratelimit_redis_events",
                    "Shared limiter's Redis events: errors, switches down and up, decisions made while down.",
                    "counter",
                    (("stage", stage), ("event", what)),
                    count,
                )
            )
        for rule, table in zip(self.rules, self.tables, strict=True):
            out.append(
                Stat(
                    "distpat_ratelimit_keys",
                    "Keys held in this process's limiter table.",
                    "gauge",
                    (("stage", stage), ("limit", rule.limit.name)),
                    len(table),
                )
            )
        return tuple(out)
