"""The scatter/gather root of *Designing Distributed Systems* (Burns, 2018), chapter 7: a query
fanned out to one replica of every shard, slow ones hedged, the answers merged, and a partial
answer said to be one.

:class:`ScatterStage` is a pipeline stage (:mod:`distpat.core.stage`). For ``GET path?q=...``
it answers a :class:`~distpat.core.stage.Fetch` with one
:class:`~distpat.core.stage.SubRequest` per shard (its pool, its replicas as the ``order``, the
request's target as it came), and the Fetch's continuation merges what came back
(:mod:`distpat.core.scatter_merge`) into the root's JSON answer::

    {"hits": [...], "shards": {"total": N, "ok": n, "failed": f, "timed_out": t},
     "partial": bool, "took_ms": ms}

* A shard is **ok** when its leaf answered 200 with JSON of the right shape; **timed out** when
  the deadline came first (``SubResult.error == "timeout"``); **failed** otherwise (refused,
  broken, another status, not JSON).
* ``need``: ``"any"`` (the default: one shard is enough), ``N`` (at least N) or ``"all"``.
  With that many ok the answer is 200 (``partial: true`` when some are missing); with fewer it
  is 502 when a shard failed, 504 when the missing ones only timed out: the same body.
* ``took_ms`` is the slowest shard's ``elapsed``, bounded by the deadline.
* ``q`` missing or blank, or ``k`` not a whole number from 1 to 1000 (default 10): 400
  ``{"error": ...}``. Another path: 404; another method than GET or HEAD: 405.
* Generic mode (``mode="concat:FIELD"``, ``"topk:FIELD:KEY"``, ``"sum:FIELD"``): any GET
  (``path=None``) is fanned out as it came and the named field of the answers merged; the body
  is ``{FIELD: merged, "shards": ..., "partial": ..., "took_ms": ...}``; no ``q`` is needed, and
  ``k`` is read by ``topk`` only.

**Hedging** (*The Tail at Scale*, Dean and Barroso, 2013). ``hedge_after`` seconds, or
``hedge_percentile`` (95: a shard's p95 over its last ``window`` latencies, the fixed
``hedge_after`` (or half the deadline) until it has ``min_samples``). The sub-request carrier has
one hedge timer per Fetch, so a Fetch hedges at the largest of its shards' percentiles.
``hedge_max_percent`` caps the hedges at P% of the sub-requests sent: each Fetch may use
``hedge_max`` = what the running budget (``floor(sent x P / 100)`` minus the hedges charged)
allows, charged when the Fetch is made. A hedge that lost its race leaves no trace in the
results, so the charge is lowered afterwards only by what certainly was not sent: a shard
answered before ``hedge_after``, or one with a single replica, is never hedged. What remains
charged is an upper bound of the hedges sent, and it never passes P%.

**Metrics** (:meth:`stats`): ``distpat_scatter_answers_total{result}`` (complete, partial,
failed, timed_out, bad_request), ``distpat_scatter_shard_results_total{shard, result}`` (ok,
failed, timed_out), the latency histogram ``distpat_scatter_shard_seconds{shard}``, and
``distpat_scatter_hedges_total{result}``: ``won`` (results with ``hedged=True``: the hedge
answered first and the first copy was cancelled) and ``lost`` (hedges charged minus won: sent
hedges whose first copy answered first, the hedge then cancelled; an upper bound, see above).
Every hedge race ends with one copy's connection closed, so
``distpat_scatter_cancelled_total`` = won + lost counts those cancelled losers.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Final
from urllib.parse import parse_qs

from distpat.core.scatter_merge import LatencyWindow, MergeSpec, combine, extract, parse_merge
from distpat.core.stage import Answer, Fetch, Request, Stage, Stat, SubRequest, SubResult, Tick
from distpat.errors import ConfigError

__all__ = ["DEFAULT_K", "LATENCY_BUCKETS", "MAX_K", "ScatterStage"]

DEFAULT_K: Final = 10
MAX_K: Final = 1000
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""The upper bounds (seconds) of ``distpat_scatter_shard_seconds``'s buckets (and +Inf)."""

_JSON = b"application/json"
_EARLY = 0.001
"""A result this close under ``hedge_after`` may still have been hedged (timer slack)."""


def _json(status: int, document: dict[str, Any], reason: str = "") -> Answer:
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    return Answer(status, body, content_type=_JSON, reason=reason)


class _Shard:
    """One shard's pool, replicas, latency window and counts."""

    __slots__ = ("pool", "order", "window", "counts", "buckets", "total_seconds")

    def __init__(self, pool: str, order: tuple[str, ...], window: LatencyWindow) -> None:
        self.pool = pool
        self.order = order
        self.window = window
        self.counts = {"ok": 0, "failed": 0, "timed_out": 0}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total_seconds = 0.0

    def observe(self, seconds: float) -> None:
        index = next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))
        self.buckets[index] += 1
        self.total_seconds += seconds


class ScatterStage(Stage):
    """Fan a query out to every shard, hedge, merge (see the module docstring).

    ``shards``: ``(pool name, replica upstream names)`` per shard, in shard order. ``deadline``
    and ``hedge_after`` are seconds. ``need``: ``"all"``, ``"any"`` or a count. ``mode``:
    ``"search"`` or a generic merge (``concat:FIELD``, ``topk:FIELD:KEY``, ``sum:FIELD``).
    ``path``: the one path answered (None: every path, for generic mode). ConfigError for a
    value it cannot work with.
    """

    kind: ClassVar[str] = "scatter"
    uses_tick = False
    uses_done = False

    def __init__(
        self,
        shards: Sequence[tuple[str, Sequence[str]]],
        *,
        deadline: float = 1.0,
        hedge_after: float | None = None,
        hedge_percentile: int | None = None,
        hedge_max_percent: float = 5.0,
        need: str | int = "any",
        mode: str = "search",
        path: bytes | None = b"/search",
        name: str = "",
        window: int = 256,
        min_samples: int = 20,
    ) -> None:
        self.name = name
        if not shards:
            raise ConfigError("scatter: needs at least one shard")
        self.shards = []
        for i, (pool, replicas) in enumerate(shards):
            if not pool or not replicas or len(set(replicas)) != len(replicas):
                raise ConfigError(
                    f"scatter: shard {i} needs a pool and distinct replicas, not {pool!r} {replicas!r}"
                )
            self.shards.append(_Shard(pool, tuple(replicas), LatencyWindow(window, min_samples)))
        if not (isinstance(deadline, int | float) and math.isfinite(deadline) and deadline > 0):
            raise ConfigError(f"scatter: the deadline must be a positive number of seconds, not {deadline!r}")
        self.deadline = float(deadline)
        if hedge_after is not None and not (math.isfinite(hedge_after) and hedge_after >= 0):
            raise ConfigError(f"scatter: hedge_after must be 0 or more seconds, not {hedge_after!r}")
        if hedge_percentile is not None and not (
            isinstance(hedge_percentile, int) and 1 <= hedge_percentile <= 99
        ):
            raise ConfigError(f"scatter: the hedge percentile must be 1 to 99, not {hedge_percentile!r}")
        self.hedge_after = hedge_after
        self.hedge_percentile = hedge_percentile
        if not (isinstance(hedge_max_percent, int | float) and 0 <= hedge_max_percent <= 100):
            raise ConfigError(f"scatter: hedge_max_percent must be 0 to 100, not {hedge_max_percent!r}")
        self.hedge_max_percent = float(hedge_max_percent)
        self.need = self._need(need)
        self.merge: MergeSpec = parse_merge(mode)
        if path is not None and not path.startswith(b"/"):
            raise ConfigError(f"scatter: the path must start with /, not {path!r}")
        self.path = path
        self.pools = tuple(dict.fromkeys(s.pool for s in self.shards))
        self.sent = 0
        """Sub-requests sent (one per shard per Fetch; hedges not counted)."""
        self.charged = 0
        """Hedges that may have been sent (an upper bound; see the module docstring)."""
        self.won = 0
        self.answers = {"complete": 0, "partial": 0, "failed": 0, "timed_out": 0, "bad_request": 0}

    def _need(self, need: str | int) -> int:
        total = len(self.shards)
        if need == "all":
            return total
        if need == "any":
            return 1
        if isinstance(need, str) and need.isdigit() and need.isascii():
            need = int(need)
        if isinstance(need, bool) or not isinstance(need, int) or not 1 <= need <= total:
            raise ConfigError(f"scatter: need must be all, any or 1 to {total} (the shards), not {need!r}")
        return need

    def __repr__(self) -> str:
        return f"<ScatterStage {self.name or self.kind!r} {len(self.shards)} shards {self.merge.text}>"

    # -- the request ---------------------------------------------------------------------

    def on_request(self, request: Request, tick: Tick) -> Answer | Fetch:
        if self.path is not None and request.path != self.path:
            return self._refuse(
                request, 404, f"no such path; the search is GET {self.path.decode('latin-1')}?q=..."
            )
        if request.method not in (b"GET", b"HEAD"):
            answer = self._refuse(request, 405, "only GET")
            return Answer(405, answer.body, headers=((b"Allow", b"GET, HEAD"),), content_type=_JSON)
        args = parse_qs(request.query.decode("latin-1"), keep_blank_values=True)
        if self.merge.kind == "search" and not "".join(args.get("q", [""])[:1]).strip():
            return self._refuse(request, 400, "q is required: GET /search?q=WORDS&k=K")
        k = DEFAULT_K
        if self.merge.limited and "k" in args:
            text = args["k"][0].strip()
            k = int(text) if text.isdigit() and text.isascii() and len(text) <= 6 else 0
            if not 1 <= k <= MAX_K:
                return self._refuse(
                    request, 400, f"k must be a whole number from 1 to {MAX_K}, not {args['k'][0]!r}"
                )
        hedge_after, hedge_max = self._hedge_plan()
        requests = tuple(
            SubRequest(s.pool, request.target, headers=((b"Accept", _JSON),), order=s.order)
            for s in self.shards
        )
        return Fetch(
            requests,
            functools.partial(self._gather, request, k, hedge_after, hedge_max),
            deadline=self.deadline,
            hedge_after=hedge_after,
            hedge_max=hedge_max,
        )

    def _refuse(self, request: Request, status: int, message: str) -> Answer:
        self.answers["bad_request"] += 1
        request.notes[self.name] = "bad_request"
        return _json(status, {"error": message}, reason=message)

    def _hedge_plan(self) -> tuple[float | None, int]:
        """This Fetch's hedge delay and hedge_max, charged to the budget now."""
        self.sent += len(self.shards)
        after = self.hedge_after
        if self.hedge_percentile is not None:
            fallback = after if after is not None else self.deadline / 2
            seen = [s.window.percentile(self.hedge_percentile) for s in self.shards]
            after = max(fallback if p is None else p for p in seen)
        if after is None or after >= self.deadline:
            return after, 0
        hedgeable = sum(1 for s in self.shards if len(s.order) > 1)
        budget = math.floor(self.sent * self.hedge_max_percent / 100 + 1e-9) - self.charged
        hedge_max = max(0, min(budget, hedgeable))
        self.charged += hedge_max
        return after, hedge_max

    # -- the answers ---------------------------------------------------------------------

    def _gather(
        self,
        request: Request,
        k: int,
        hedge_after: float | None,
        hedge_max: int,
        results: tuple[SubResult, ...],
    ) -> Answer:
        values: list[Any] = []
        ok = failed = timed_out = won = maybe_hedged = 0
        slowest = 0.0
        for shard, result in zip(self.shards, results, strict=True):
            slowest = max(slowest, result.elapsed)
            shard.observe(result.elapsed)
            won += result.hedged and result.ok
            if hedge_after is not None and len(shard.order) > 1 and result.elapsed >= hedge_after - _EARLY:
                maybe_hedged += 1
            value = extract(self.merge, result.body) if result.ok and result.status == 200 else None
            if value is not None:
                ok += 1
                shard.counts["ok"] += 1
                shard.window.add(result.elapsed)
                values.append(value)
            elif result.error == "timeout":
                timed_out += 1
                shard.counts["timed_out"] += 1
                shard.window.add(result.elapsed)
            else:
                failed += 1
                shard.counts["failed"] += 1
        self.charged -= hedge_max - min(hedge_max, maybe_hedged)  # refund what was surely not sent
        self.won += won
        total = len(self.shards)
        if ok == total:
            status, verdict = 200, "complete"
        elif ok >= self.need:
            status, verdict = 200, "partial"
        else:
            status, verdict = (502, "failed") if failed else (504, "timed_out")
        self.answers[verdict] += 1
        request.notes[self.name] = verdict
        merged = combine(self.merge, values, k)
        document = {
            self.merge.field: merged,
            "shards": {"total": total, "ok": ok, "failed": failed, "timed_out": timed_out},
            "partial": ok < total,
            "took_ms": round(min(slowest, self.deadline) * 1000, 3),
        }
        reason = "" if status == 200 else f"{ok} of {total} shards answered; {self.need} needed"
        return _json(status, document, reason=reason)

    # -- metrics ---------------------------------------------------------------------------

    def stats(self) -> tuple[Stat, ...]:
        stage = self.name or self.kind
        base = (("stage", stage),)
        out = [
            Stat(
                "distpat_scatter_answers",
                "Root answers: complete, partial, failed (502), timed_out (504), bad_request.",
                "counter",
                (*base, ("result", what)),
                n,
            )
            for what, n in self.answers.items()
        ]
        lost = max(0, self.charged - self.won)
        for what, n in (("won", self.won), ("lost", lost)):
            out.append(
                Stat(
                    "distpat_scatter_hedges",
                    "Hedged sub-requests: won (the hedge answered first), lost "
                    "(an upper bound: hedges allowed minus won).",
                    "counter",
                    (*base, ("result", what)),
                    n,
                )
            )
        out.append(
            Stat(
                "distpat_scatter_cancelled",
                "Losing copies of hedged sub-requests cancelled (their connection closed): won + lost.",
                "counter",
                base,
                self.won + lost,
            )
        )
        for i, shard in enumerate(self.shards):
            labels = (*base, ("shard", str(i)))
            for what, n in shard.counts.items():
                out.append(
                    Stat(
                        "distpat_scatter_shard_results",
                        "Shard results: ok, failed, timed_out.",
                        "counter",
                        (*labels, ("result", what)),
                        n,
                    )
                )
            help_text = "Seconds each shard took to answer (or the deadline)."
            running = 0
            for bound, n in zip((*LATENCY_BUCKETS, math.inf), shard.buckets, strict=True):
                running += n
                le = "+Inf" if bound == math.inf else repr(bound)
                out.append(
                    Stat(
                        "distpat_scatter_shard_seconds_bucket",
                        help_text,
                        "histogram",
                        (*labels, ("le", le)),
                        running,
                    )
                )
            out.append(Stat("distpat_scatter_shard_seconds_count", help_text, "histogram", labels, running))
            out.append(
                Stat("distpat_scatter_shard_seconds_sum", help_text, "histogram", labels, shard.total_seconds)
            )
        return tuple(out)
