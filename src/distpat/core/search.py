"""The document search of the book's chapter 7: an inverted index per shard, BM25 with global
statistics, and the root's merge of the shards' top-k.

Pure: documents come in as ``(path, text)`` pairs, queries as text; nothing is read, timed or
drawn at random here (the leaf process reads the corpus, :mod:`distpat.core.leaf_stage` answers).

* **Tokens**: lowercase, runs of Unicode letters and digits (``str.isalnum``); no stemming, no
  stop words. A query's terms are deduplicated.
* **Shards**: a document belongs to shard ``mmh3(path) % N`` (``mmh3.hash`` of its path relative
  to the corpus, UTF-8, seed 0, unsigned): stable across processes, machines and runs.
* **BM25** (Robertson and Zaragoza, 2009), ``k1 = 1.2``, ``b = 0.75``, ``idf = ln(1 + (N - df +
  0.5) / (df + 0.5))``. A leaf indexes only its shard's documents but scores them with the
  **global** statistics (:class:`CorpusStats`: the number of documents, their average length and
  every term's document frequency over the whole corpus, which each leaf counts once at start
  from the same corpus). A document's score is then the same whichever leaf holds it, so the
  root's merge (:func:`merge_topk`) of every shard's top-k equals the top-k one index over the
  whole corpus answers, ties broken by document id (the tests check it for random corpora).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import mmh3

from distpat.errors import ConfigError

__all__ = ["K1", "B", "CorpusStats", "Hit", "Index", "merge_topk", "parse_shard", "shard_of", "tokenize"]

K1 = 1.2
B = 0.75
SNIPPET = 200
"""Characters of a hit's snippet, at most."""


def tokenize(text: str) -> list[str]:
    """The terms of ``text``: lowercase runs of letters and digits, in order."""
    out: list[str] = []
    word: list[str] = []
    for ch in text:
        if ch.isalnum():
            word.append(ch)
        elif word:
            out.append("".join(word).lower())
            word.clear()
    if word:
        out.append("".join(word).lower())
    return out


def shard_of(path: str, shards: int) -> int:
    """The shard (0..shards-1) document ``path`` belongs to."""
    return mmh3.hash(path.encode("utf-8"), 0, signed=False) % shards


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (0 <= I < N) -> (I, N); ConfigError otherwise."""
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise ConfigError(f"shard {text!r}: give I/N with 0 <= I < N, such as 0/4")
    return int(index), int(count)


@dataclass(frozen=True, slots=True)
class CorpusStats:
    """What BM25 needs of the whole corpus: documents, average length, document frequencies."""

    documents: int
    average_length: float
    frequencies: dict[str, int]

    @classmethod
    def of(cls, documents: Iterable[tuple[str, str]]) -> CorpusStats:
        count = 0
        total = 0
        df: Counter[str] = Counter()
        for _, text in documents:
            terms = tokenize(text)
            count += 1
            total += len(terms)
            df.update(set(terms))
        return cls(count, total / count if count else 0.0, dict(df))

    def idf(self, term: str) -> float:
        df = self.frequencies.get(term, 0)
        return math.log(1.0 + (self.documents - df + 0.5) / (df + 0.5))


@dataclass(frozen=True, slots=True)
class Hit:
    """One document answering a query."""

    id: str
    score: float
    snippet: str = ""

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "score": self.score, "snippet": self.snippet}


def _order(hit: Hit) -> tuple[float, str]:
    return (-hit.score, hit.id)


class Index:
    """An inverted index of some documents, scored with ``stats`` (the whole corpus's)."""

    def __init__(self, documents: Iterable[tuple[str, str]], stats: CorpusStats) -> None:
        self.stats = stats
        self.texts: dict[str, str] = {}
        self.lengths: dict[str, int] = {}
        self.postings: dict[str, list[tuple[str, int]]] = {}
        for path, text in documents:
            terms = tokenize(text)
            self.texts[path] = text
            self.lengths[path] = len(terms)
            for term, tf in Counter(terms).items():
                self.postings.setdefault(term, []).append((path, tf))

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def terms(self) -> int:
        return len(self.postings)

    def search(self, query: str, k: int) -> list[Hit]:
        """The ``k`` best documents for ``query`` by BM25, best first (ties: by id)."""
        stats = self.stats
        average = stats.average_length or 1.0
        scores: dict[str, float] = {}
        terms = list(dict.fromkeys(tokenize(query)))
        for term in terms:
            postings = self.postings.get(term)
            if not postings:
                continue
            idf = stats.idf(term)
            for path, tf in postings:
                norm = K1 * (1.0 - B + B * self.lengths[path] / average)
                scores[path] = scores.get(path, 0.0) + idf * tf * (K1 + 1.0) / (tf + norm)
        best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]
        return [Hit(path, score, self.snippet(path, terms)) for path, score in best]

    def snippet(self, path: str, terms: Sequence[str]) -> str:
        """Up to :data:`SNIPPET` characters of the document around the first query term in it."""
        text = " ".join(self.texts[path].split())
        lowered = text.lower()
        at = min((i for i in (lowered.find(t) for t in terms) if i >= 0), default=0)
        start = max(0, at - SNIPPET // 4)
        return text[start : start + SNIPPET]


def merge_topk(lists: Iterable[Iterable[Hit]], k: int) -> list[Hit]:
    """The root's merge: every shard's hits, best first (ties by id), one per document, ``k`` of them."""
    best: dict[str, Hit] = {}
    for hits in lists:
        for hit in hits:
            old = best.get(hit.id)
            if old is None or _order(hit) < _order(old):
                best[hit.id] = hit
    return sorted(best.values(), key=_order)[:k]
