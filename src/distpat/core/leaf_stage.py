"""A search leaf as a pipeline stage: one shard's index answering ``/search`` and ``/stats`` itself.

The stage answers every request locally (it has no upstream): ``GET /search?q=WORDS&k=K`` with
the shard's top ``K`` hits as JSON (the contract of docs/scatter-gather.md: ``hits`` of ``id``,
``score``, ``snippet``, best first, ties by id; ``shard``, ``docs``), ``GET /stats`` with the
shard's size, anything else 404 or 405, bad parameters 400, each as a JSON ``{"error": ...}``.
The index is built once, at start (:mod:`distpat.core.search`); as it never changes, the answers
of the last :data:`ANSWERS` distinct queries are kept and given again as they are.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from distpat.core.search import Index
from distpat.core.stage import Answer, Effect, Request, Stage, Tick

__all__ = ["MAX_K", "LeafStage", "error_answer", "query_args"]

MAX_K = 1000
ANSWERS = 4096
"""Answers a leaf keeps, by (query, k): its index is immutable, so a repeated query costs nothing."""
_JSON = b"application/json"


def error_answer(status: int, message: str) -> Answer:
    body = json.dumps({"error": message}).encode() + b"\n"
    return Answer(status, body, content_type=_JSON, reason=message)


def query_args(request: Request, max_k: int = MAX_K) -> tuple[str, int] | Answer:
    """``q`` and ``k`` of a search request, or the 400 that says what is wrong with them."""
    try:
        args = parse_qs(request.query.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return error_answer(400, "the query string is not UTF-8")
    q = args.get("q", [""])[-1].strip()
    if not q:
        return error_answer(400, "give the query as q=WORDS")
    k_text = args.get("k", ["10"])[-1]
    if not k_text.isdigit() or not 1 <= int(k_text) <= max_k:
        return error_answer(400, f"k must be a whole number from 1 to {max_k}, not {k_text!r}")
    return q, int(k_text)


class LeafStage(Stage):
    """One shard's index (see the module's docstring)."""

    kind = "leaf"
    uses_tick = False

    def __init__(self, index: Index, shard: str, *, max_k: int = MAX_K, name: str = "leaf") -> None:
        self.name = name
        self.index = index
        self.shard = shard
        self.max_k = max_k
        stats = {"shard": shard, "docs": len(index), "terms": index.terms}
        self._stats = Answer(200, json.dumps(stats).encode() + b"\n", content_type=_JSON)
        self._answers: dict[tuple[str, int], Answer] = {}

    def on_request(self, request: Request, tick: Tick) -> Effect | None:
        path = request.path
        if path not in (b"/search", b"/stats"):
            return error_answer(404, f"no such resource: {path.decode('latin-1')[:100]}")
        if request.method not in (b"GET", b"HEAD"):
            return Answer(
                405,
                b'{"error": "only GET"}\n',
                headers=((b"Allow", b"GET, HEAD"),),
                content_type=_JSON,
                reason="method not allowed",
            )
        if path == b"/stats":
            return self._stats
        args = query_args(request, self.max_k)
        if isinstance(args, Answer):
            return args
        answer = self._answers.get(args)
        if answer is None:  # the index never changes: an answer, once made, stands (bounded)
            q, k = args
            hits = self.index.search(q, k)
            body = {"hits": [h.as_json() for h in hits], "shard": self.shard, "docs": len(self.index)}
            answer = Answer(200, json.dumps(body).encode() + b"\n", content_type=_JSON)
            if len(self._answers) >= ANSWERS:
                self._answers.clear()
            self._answers[args] = answer
        return answer
