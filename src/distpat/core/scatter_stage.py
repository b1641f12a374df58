"""The scatter/gather root as a pipeline stage (the book's chapter 7): a query fanned out to one
replica of every shard, hedged where a replica is slow, merged, and answered for what it is.

:class:`ScatterStage` answers ``GET /search?q=WORDS&k=K`` with a :class:`~distpat.core.stage.Fetch`:
one :class:`~distpat.core.stage.SubRequest` per shard, to that shard's pool, its replicas as the
preference order, all sent at once, with a deadline. With hedging (*The Tail at Scale*, Dean and
Barroso, 2013) a request still unanswered after ``hedge_after`` seconds (fixed, or the observed
``hedge_percentile`` of the shards' recent latencies) is sent again to the shard's next replica,
the first answer wins and the other copy is aborted (the carrier closes its connection,
:mod:`distpat.net.subrequest`).

**The hedge budget.** Hedges stay under ``hedge_max_percent`` of the sub-requests sent: each
Fetch may hedge as many requests as the budget has left (``Fetch.hedge_max``). A request hedged is
one still out at ``hedge_after``; the stage charges the budget for every result whose elapsed time
reached ``hedge_after`` (each was hedged, budget and replicas allowing), which never undercounts.

**The answer** says what it is (docs/scatter-gather.md): the merged top-k
(:func:`~distpat.core.search.merge_topk`), and ``shards: {total, ok, failed, timed_out}``,
``partial``, ``took_ms``. With ``need="all"`` a partial answer is an error status (502 when a shard
failed, 504 when shards only timed out) with the same body; ``"any"`` (at least one) or a number
of shards: 200 with ``partial: true`` when that many answered, the error status otherwise.

Pure: the latencies come from the results, the stage keeps a bounded window of them per shard.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence

from distpat.core.leaf_stage import error_answer, query_args
from distpat.core.search import Hit, merge_topk
from distpat.core.stage import Answer, Effect, Fetch, Request, Stage, Stat, SubRequest, SubResult, Tick
from distpat.errors import ConfigError

__all__ = ["LATENCY_BUCKETS", "ScatterStage", "WINDOW"]

WINDOW = 1000
"""Latencies kept per shard for a percentile hedge."""
MIN_SAMPLES = 20
"""Below this many latencies the percentile hedge uses ``hedge_after`` (or 10 ms)."""
RECOMPUTE = 64
"""Queries between two computations of the percentile hedge's delay."""
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_JSON = b"application/json"


class ScatterStage(Stage):
    """See the module's docstring. ``shards``: (pool name, replica upstream names) per shard."""

    kind = "scatter"
    uses_tick = False

    def __init__(
        self,
        shards: Sequence[tuple[str, tuple[str, ...]]],
        *,
        deadline: float = 1.0,
        hedge_after: float | None = None,
        hedge_percentile: int | None = None,
        hedge_max_percent: float = 10.0,
        need: str | int = "any",
        path: bytes = b"/search",
        name: str = "scatter",
    ) -> None:
        if not shards:
            raise ConfigError("a scatter stage needs at least one shard")
        if deadline <= 0:
            raise ConfigError(f"deadline must be positive, not {deadline!r}")
        if hedge_percentile is not None and not 1 <= hedge_percentile <= 99:
            raise ConfigError(f"a hedge percentile is p1 to p99, not p{hedge_percentile}")
        if not 0 <= hedge_max_percent <= 100:
            raise ConfigError(f"hedge_max_percent must be 0 to 100, not {hedge_max_percent!r}")
        if not (need in ("all", "any") or (isinstance(need, int) and 1 <= need <= len(shards))):
            raise ConfigError(f"need must be all, any or a number of shards 1..{len(shards)}, not {need!r}")
        self.name = name
        self.shards = tuple((pool, tuple(replicas)) for pool, replicas in shards)
        self.pools = tuple(pool for pool, _ in self.shards)
        self.deadline = deadline
        self.hedge_after = hedge_after
        self.hedge_percentile = hedge_percentile
        self.hedge_max_percent = hedge_max_percent
        self.need = need
        self.path = path
        self.latencies: list[deque[float]] = [deque(maxlen=WINDOW) for _ in self.shards]
        self.buckets = [[0] * (len(LATENCY_BUCKETS) + 1) for _ in self.shards]
        self.sent = 0
        self.hedges = 0
        self._delay: float | None = None
        self._delay_at = 0
        self.counts: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<ScatterStage {len(self.shards)} shards, deadline {self.deadline:g}s>"

    def _count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def hedge_delay(self) -> float | None:
        """When a request is hedged: the fixed delay, or the largest of the shards' percentiles
        (computed again every :data:`RECOMPUTE` queries, not per query)."""
        if self.hedge_percentile is None:
            return self.hedge_after
        if self._delay is not None and self.sent - self._delay_at < RECOMPUTE * len(self.shards):
            return self._delay
        self._delay, self._delay_at = self._percentile(), self.sent
        return self._delay

    def _percentile(self) -> float | None:
        assert self.hedge_percentile is not None
        fallback = self.hedge_after if self.hedge_after is not None else 0.010
        worst = 0.0
        for window in self.latencies:
            if len(window) < MIN_SAMPLES:
                return fallback
            ordered = sorted(window)
            worst = max(
                worst,
                ordered[min(len(ordered) - 1, math.ceil(len(ordered) * self.hedge_percentile / 100) - 1)],
            )
        return worst

    def hedge_budget(self, requests: int) -> int:
        """Hedges this fetch may make, keeping all hedges under ``hedge_max_percent`` of the sent."""
        allowed = math.floor((self.sent + requests) * self.hedge_max_percent / 100) - self.hedges
        return max(0, min(requests, allowed))

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        if request.path != self.path:
            return error_answer(404, f"no such resource: {request.path.decode('latin-1')[:100]}")
        if request.method not in (b"GET", b"HEAD"):
            return error_answer(405, "only GET")
        args = query_args(request)
        if isinstance(args, Answer):
            return args
        _, k = args
        subs = tuple(SubRequest(pool, request.target, order=replicas) for pool, replicas in self.shards)
        hedge_after = self.hedge_delay()
        budget = self.hedge_budget(len(subs)) if hedge_after is not None else 0
        self.sent += len(subs)
        return Fetch(
            subs,
            lambda results: self._gathered(results, k, hedge_after, budget),
            self.deadline,
            hedge_after if budget else None,
            budget,
        )

    def _gathered(
        self, results: tuple[SubResult, ...], k: int, hedge_after: float | None, budget: int
    ) -> Answer:
        lists: list[list[Hit]] = []
        ok = failed = timed_out = 0
        took = 0.0
        hedged = 0
        for i, result in enumerate(results):
            took = max(took, result.elapsed)
            if hedge_after is not None and budget and result.elapsed >= hedge_after:
                hedged += 1
            if result.hedged:
                self._count("hedge_won")
            hits = _hits(result) if result.ok and result.status == 200 else None
            if hits is None:
                if result.error == "timeout":
                    timed_out += 1
                else:
                    failed += 1
                continue
            ok += 1
            lists.append(hits)
            self.latencies[i].append(result.elapsed)
            self.buckets[i][bisect_left(LATENCY_BUCKETS, result.elapsed)] += 1
        charged = min(budget, hedged)
        self.hedges += charged
        self._count("hedge_sent", charged)
        self._count("shard_failed", failed)
        self._count("shard_timed_out", timed_out)
        total = len(results)
        partial = ok < total
        if partial:
            self._count("partial")
        needed = total if self.need == "all" else 1 if self.need == "any" else int(self.need)
        body = {
            "hits": [h.as_json() for h in merge_topk(lists, k)],
            "shards": {"total": total, "ok": ok, "failed": failed, "timed_out": timed_out},
            "partial": partial,
            "took_ms": round(took * 1000, 3),
        }
        status = 200 if ok >= needed else 502 if failed else 504
        return Answer(
            status,
            json.dumps(body).encode() + b"\n",
            content_type=_JSON,
            reason=""
            if status == 200
            else f"{ok} of {total} shards answered ({failed} failed, {timed_out} late)",
        )

    def stats(self) -> tuple[Stat, ...]:
        stage = self.name or self.kind
        out = [
            Stat(
                "distpat_scatter_events",
                "Scatter/gather: hedge_sent, hedge_won, partial answers, shard_failed, shard_timed_out.",
                "counter",
                (("stage", stage), ("event", what)),
                count,
            )
            for what, count in sorted(self.counts.items())
        ]
        for (pool, _), buckets in zip(self.shards, self.buckets, strict=True):
            running = 0
            for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), buckets, strict=True):
                running += count
                out.append(
                    Stat(
                        "distpat_scatter_shard_answers",
                        "Shard answers by latency, cumulative (le: seconds).",
                        "counter",
                        (("stage", stage), ("shard", pool), ("le", bound)),
                        running,
                    )
                )
        return tuple(out)


def _hits(result: SubResult) -> list[Hit] | None:
    """A leaf's answer as hits, or None when it is not the contract's JSON."""
    try:
        data = json.loads(result.body)
        return [Hit(str(h["id"]), float(h["score"]), str(h.get("snippet", ""))) for h in data["hits"]]
    except (ValueError, KeyError, TypeError):
        return None
