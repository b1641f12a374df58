"""What the scatter/gather root (:mod:`distpat.core.scatter_stage`) does with its leaves' answers:
read each one's JSON, merge them, and keep each shard's recent latencies.

Designing Distributed Systems (Burns, 2018), chapter 7: the root sends a query to every leaf
and merges what comes back. Two families of merge:

* ``search``: the leaf contract's ``{"hits": [{"id", "score", "snippet"}...]}``; the merged
  hits are sorted by score descending, then id ascending, deduplicated by id (the first, highest
  scored copy kept) and cut to ``k``. (:func:`merge_hits`, private to the root for now: it is to
  become ``distpat.core.search.merge_topk``, shared with the leaf.)
* generic, for any JSON API (:func:`parse_merge`): ``concat:FIELD`` (the arrays under FIELD,
  in shard order), ``topk:FIELD:KEY`` (the same, sorted by the numeric KEY of each item,
  largest first, cut to ``k``; ties keep shard order) and ``sum:FIELD`` (the numbers under
  FIELD added up).

An answer whose body is not JSON (RFC 8259), or lacks the field in the right shape, is a failed
shard: :func:`extract` returns None for it. :class:`LatencyWindow` is a bounded ring buffer of
one shard's recent latencies and their percentiles, for hedging at a shard's pNN (*The Tail at
Scale*, Dean and Barroso, 2013). Pure: no clock, no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from distpat.core.search import Hit, merge_topk
from distpat.errors import ConfigError

__all__ = ["MERGE_KINDS", "LatencyWindow", "MergeSpec", "combine", "extract", "merge_hits", "parse_merge"]

MERGE_KINDS: Final = ("search", "concat", "topk", "sum")


@dataclass(frozen=True, slots=True)
class MergeSpec:
    """How answers are merged: ``kind`` (one of :data:`MERGE_KINDS`), the JSON ``field`` merged
    (``hits`` for search), and ``key``, the numeric key ``topk`` sorts by (``score`` for search)."""

    kind: str = "search"
    field: str = "hits"
    key: str = "score"

    @property
    def text(self) -> str:
        if self.kind == "search":
            return "search"
        return f"topk:{self.field}:{self.key}" if self.kind == "topk" else f"{self.kind}:{self.field}"

    @property
    def limited(self) -> bool:
        """Whether the merge is cut to ``k`` (the request's ``k`` argument is read)."""
        return self.kind in ("search", "topk")


def parse_merge(text: str) -> MergeSpec:
    """``search``, ``concat:FIELD``, ``topk:FIELD:KEY`` or ``sum:FIELD``; ConfigError otherwise."""
    parts = text.strip().split(":")
    usage = "search, concat:FIELD, topk:FIELD:KEY or sum:FIELD"
    if parts == ["search"]:
        return MergeSpec()
    if parts[0] in ("concat", "sum") and len(parts) == 2 and parts[1]:
        return MergeSpec(parts[0], parts[1], "")
    if parts[0] == "topk" and len(parts) == 3 and parts[1] and parts[2]:
        return MergeSpec("topk", parts[1], parts[2])
    raise ConfigError(f"merge {text!r}: must be {usage}")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _hit(item: object) -> bool:
    return isinstance(item, dict) and isinstance(item.get("id"), str) and _number(item.get("score"))


def extract(spec: MergeSpec, body: bytes) -> Any:
    """The part of one leaf's JSON answer that ``spec`` merges, or None when the answer does not
    have it in the right shape (not JSON, no such field, a hit without a string id and a numeric
    score, a topk item without a numeric key, a sum that is no number)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    value = document.get(spec.field)
    if spec.kind == "sum":
        return value if _number(value) else None
    if not isinstance(value, list):
        return None
    if spec.kind == "search" and not all(_hit(item) for item in value):
        return None
    if spec.kind == "topk" and not all(isinstance(i, dict) and _number(i.get(spec.key)) for i in value):
        return None
    return value


def merge_hits(lists: Iterable[Sequence[dict[str, Any]]], k: int) -> list[dict[str, Any]]:
    """Hits of several leaves as one list: :func:`distpat.core.search.merge_topk` (by score
    descending then id ascending, one per id, at most ``k``), the very merge the property test
    proves equal to one index over the whole corpus."""
    merged = merge_topk(
        ([Hit(str(h["id"]), float(h["score"]), str(h.get("snippet", ""))) for h in hits] for hits in lists), k
    )
    return [hit.as_json() for hit in merged]


def combine(spec: MergeSpec, values: Sequence[Any], k: int) -> Any:
    """The merged value of the shards' extracted ``values`` (see the module docstring)."""
    if spec.kind == "search":
        return merge_hits(values, k)
    if spec.kind == "sum":
        return sum(values, 0)
    items = [item for value in values for item in value]
    if spec.kind == "topk":
        items.sort(key=lambda item: -item[spec.key])  # stable: ties keep shard order
        return items[:k]
    return items


class LatencyWindow:
    """The last ``size`` latencies of one shard (a ring buffer), and their percentiles.

    :meth:`percentile` is the nearest-rank percentile of what the window holds, or None while it
    holds fewer than ``min_samples`` (the caller then uses its fixed fallback)."""

    __slots__ = ("size", "min_samples", "_values", "_next")

    def __init__(self, size: int = 256, min_samples: int = 20) -> None:
        if size < 1 or not 1 <= min_samples <= size:
            raise ConfigError(
                f"latency window: size >= 1 and 1 <= min_samples <= size, not {size}, {min_samples}"
            )
        self.size = size
        self.min_samples = min_samples
        self._values: list[float] = []
        self._next = 0

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<LatencyWindow {len(self._values)}/{self.size}>"

    def add(self, seconds: float) -> None:
        if len(self._values) < self.size:
            self._values.append(seconds)
        else:
            self._values[self._next] = seconds
        self._next = (self._next + 1) % self.size

    def percentile(self, p: float) -> float | None:
        """The smallest latency at or above ``p`` percent of the window (nearest rank), or None."""
        if len(self._values) < self.min_samples:
            return None
        ordered = sorted(self._values)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[min(rank, len(ordered)) - 1]
